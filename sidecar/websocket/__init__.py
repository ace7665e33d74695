"""The WebSocket transport: the duplex bridge (:mod:`.bridge`), one generation
(:mod:`.generation`), and the JSON messages (:mod:`.messages`, docs/websocket.md)."""
