"""streamhop sidecar: the reverse proxy (``streamhop serve``), simulator and demo."""
