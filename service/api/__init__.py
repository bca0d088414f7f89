"""HTTP and WebSocket routers. Thin: validation, voice/model resolution and streaming glue; the engine does the work."""
