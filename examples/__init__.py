"""Runnable examples of streamhop (run from the repository root: ``python -m examples.chat``)."""
