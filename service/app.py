"""The app factory: ``create_app(settings)`` wires settings, metrics, the engine, routers and middleware.

Nothing is created at import time. The lifespan builds the engine (unless one is passed in, as tests do with a fake),
starts it (load, warm up, start the loop) and, on shutdown, drains it (``MAMTRA_DRAIN_TIMEOUT_S``) and stops it.
Everything a request needs lives on ``app.state`` and reaches the routers through typed dependencies.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import gc_tuning
from service.api import meta, speech, stream_ws
from service.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from service.engine.types import EngineAPI
from service.errors import install_error_handlers
from service.logging import configure_logging
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.app")

DESCRIPTION = """
Streaming text-to-speech on a hybrid Mamba/Transformer speech language model. Audio leaves as it is generated.

**REST** — `POST /v1/audio/speech` is OpenAI's speech endpoint (works with the official `openai` SDKs):
formats mp3, opus (Ogg), aac (ADTS), flac, wav (streamed header, sizes 0xFFFFFFFF) and pcm (24 kHz s16le mono);
`stream_format: "sse"` for `speech.audio.delta` / `speech.audio.done` events.

**Errors** — always `{"error": {"type", "message", "param", "code"}}`: 400 invalid request (including malformed
JSON and schema errors, which are 400 as in OpenAI's API, not 422), 401 API key, 404, 413 body too large, 429 full
(with `Retry-After`), 503 warming up or draining, 500/504 for our faults. Every response carries `X-Request-ID`
(yours, if you sent a sane one).

**Auth** — when `MAMTRA_API_KEY` is set, `/v1/*` needs `Authorization: Bearer <key>` (WebSocket: the header or
`?api_key=<key>`; a wrong key closes the socket with code 1008). `/healthz`, `/readyz` and `/metrics` stay open.

**WebSocket `/v1/audio/stream`** — incremental text in, audio out; several *contexts* (one per utterance or
conversation turn) share one socket. All frames are JSON text frames.

Client → server:

| frame | effect |
| --- | --- |
| `{"type":"start","context_id":"c1","voice":"alloy","format":"pcm","speed":1.0}` | open a context (`format`: pcm (default), wav, mp3, opus, aac, flac; `speed` 0.25–4) |
| `{"type":"text","context_id":"c1","text":"Hello "}` | append text (word by word is fine); speech starts at sentence ends; `"flush": true` also flushes |
| `{"type":"flush","context_id":"c1"}` | speak what is buffered now |
| `{"type":"close","context_id":"c1"}` | flush, then finish: `done` follows the last audio |
| `{"type":"cancel","context_id":"c1"}` | stop at once; answered by `done` with `"reason":"cancelled"`, nothing after it |

Server → client:

| frame | meaning |
| --- | --- |
| `{"type":"audio","context_id":"c1","audio":"<base64>","seq":0}` | the next bytes of the context's audio in its format (`seq` 0, 1, 2, … per context) |
| `{"type":"timestamps","context_id":"c1","words":[{"word":"Hello","start":0.0,"end":0.31,"estimated":true}]}` | words whose audio ended in the preceding audio frame; seconds from the context's first sample; `estimated` where the engine estimated rather than aligned |
| `{"type":"done","context_id":"c1","reason":"completed"}` | the context finished (or `"cancelled"`); its id may be reused |
| `{"type":"error","context_id":"c1","code":"…","message":"…"}` | a typed error; the socket stays usable |

Error codes: `invalid_json`, `invalid_message`, `unknown_type`, `unsupported_frame` (binary), `frame_too_large`
(`MAMTRA_WS_MAX_FRAME_BYTES`), `unknown_context`, `duplicate_context`, `too_many_contexts`
(`MAMTRA_WS_MAX_CONTEXTS`), `context_closed`, `voice_not_found`, `server_busy` (with `retry_after_s`),
`shutting_down`, `not_ready`, `invalid_request`, `timeout`, `internal_error`, and `idle_timeout` (context_id null,
then the socket closes with 1000 after `MAMTRA_WS_IDLE_TIMEOUT_S` without frames either way). Closing the socket
cancels its open contexts.
"""


def max_body_bytes(settings: Settings) -> int:
    """The largest speech request worth reading: input and instructions at the worst JSON escaping
    (6 bytes per character, ``\\uXXXX``) plus room for the other fields."""
    return 6 * (settings.max_input_chars + 4096) + 16 * 1024


def create_app(settings: Settings | None = None, *, engine: EngineAPI | None = None,
               metrics: Metrics | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(level=settings.log_level, json_lines=settings.log_json)
        if app.state.engine is None:
            from service.engine.engine import build_engine  # the real model: imported only when serving it

            app.state.engine = build_engine(settings, metrics)
        log.info("starting the engine")
        await app.state.engine.start()
        metrics.gc_pauses.install()
        if settings.gc_freeze:  # what start-up built stays for good: no full collection walks it again
            log.info("garbage collector: start-up objects frozen", extra={"objects": gc_tuning.freeze()})
        log.info("ready", extra={"voices": [v.id for v in app.state.engine.voices()]})
        try:
            yield
        finally:
            log.info("draining", extra={"timeout_s": settings.drain_timeout_s})
            await app.state.engine.drain(settings.drain_timeout_s)
            await app.state.engine.stop()
            metrics.gc_pauses.uninstall()
            if settings.gc_freeze:
                gc_tuning.unfreeze()
            metrics.ready.set(0)
            log.info("stopped")

    app = FastAPI(title="MamTra streaming TTS", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  openapi_tags=[{"name": "speech", "description": "Text to speech"},
                                {"name": "catalog", "description": "Voices and models"},
                                {"name": "operations", "description": "Health, readiness, metrics"}])
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.created = int(time.time())

    install_error_handlers(app)
    app.include_router(speech.router)
    app.include_router(stream_ws.router)
    app.include_router(meta.catalog)
    app.include_router(meta.ops)

    # Middleware added last runs first: request id outermost, so even CORS and 413 answers carry it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes(settings))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.add_middleware(RequestIdMiddleware)
    return app
