"""What the sidecar records per request: the record and its log line (:mod:`.record`) and
OpenTelemetry spans (:mod:`.tracing`)."""
