"""The MamTra TTS service: CLI, engine and HTTP/WebSocket API."""
