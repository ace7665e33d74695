"""Measurements of streams: Prometheus metric families and per-stream bound metrics
(:mod:`.metrics`)."""
