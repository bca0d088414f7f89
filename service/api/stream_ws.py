"""``WS /v1/audio/stream``: incremental text in, audio out, several contexts per socket.

Each context is one engine stream (one slot) with its own voice, format and speed. Text frames append text (an LLM
may send it word by word); the engine speaks at sentence ends, on ``flush`` and on ``close``. A pump task per context
reads the stream's chunks and sends ``audio`` frames (base64 of the context's format, ``seq`` counting from 0 per
context), then ``timestamps`` for the words that chunk finished, and ``done`` at the end. Sends share one lock, so
frames of interleaved contexts never mix, and a slow reader pushes back on the engine through the stream's bounded
queue. Garbage from the client gets a typed ``error`` frame and the socket stays usable; when the socket closes
every open context is cancelled, freeing its slot.

Idle timeout: the socket is closed (after an ``idle_timeout`` error frame) when neither a client frame nor an audio
frame has passed for ``MAMTRA_WS_IDLE_TIMEOUT_S``, so a context left open without text cannot hold a slot forever.
Per-context metrics: time to first audio (from the context's first text), outcome and duration; not gaps, underruns
or real-time factor, which on this endpoint mostly measure how fast the client sends text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.api.deps import get_request_id, key_matches
from service.api.schemas import AudioFormat
from service.api.streaming import StreamStats, failure_outcome
from service.api.voices import resolve_voice
from service.audio import Encoder, make_encoder
from service.engine.types import EngineError, QueueFull, StreamFailed, StreamHandle
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("service.api.ws")
router = APIRouter()

POLICY_VIOLATION = 1008
NORMAL_CLOSURE = 1000

ContextId = Annotated[str, Field(min_length=1, max_length=128)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    context_id: ContextId


class StartMessage(_Message):
    type: Literal["start"]
    voice: str = Field(min_length=1, max_length=128)
    format: AudioFormat = "pcm"
    speed: float = Field(1.0, ge=0.25, le=4.0)


class TextMessage(_Message):
    type: Literal["text"]
    text: str
    flush: bool = False


class FlushMessage(_Message):
    type: Literal["flush"]


class CloseMessage(_Message):
    type: Literal["close"]


class CancelMessage(_Message):
    type: Literal["cancel"]


ClientMessage = Annotated[StartMessage | TextMessage | FlushMessage | CloseMessage | CancelMessage,
                          Field(discriminator="type")]
_parse = TypeAdapter(ClientMessage).validate_python


@dataclass
class Context:
    id: str
    handle: StreamHandle
    encoder: Encoder
    stats: StreamStats
    task: asyncio.Task | None = None
    input_closed: bool = False
    got_text: bool = False
    seq: int = 0


class _SocketGone(Exception):
    pass


class Session:
    def __init__(self, ws: WebSocket, *, engine, settings: Settings, metrics: Metrics, request_id: str) -> None:
        self.ws = ws
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.request_id = request_id
        self.contexts: dict[str, Context] = {}
        self.send_lock = asyncio.Lock()
        self.last_activity = time.monotonic()
        self.closed = False

    # sending
    async def send(self, payload: dict) -> None:
        if self.closed:
            raise _SocketGone
        async with self.send_lock:
            try:
                await self.ws.send_text(json.dumps(payload, separators=(",", ":")))
            except Exception as exc:  # the client went away under us
                self.closed = True
                raise _SocketGone from exc

    async def error(self, code: str, message: str, context_id: str | None = None, **extra) -> None:
        await self.send({"type": "error", "context_id": context_id, "code": code, "message": message, **extra})

    # the receive loop
    async def run(self) -> None:
        idle = self.settings.ws_idle_timeout_s
        try:
            while True:
                remaining = idle - (time.monotonic() - self.last_activity)
                if remaining <= 0:
                    await self.error("idle_timeout", f"no frames for {idle:g} s; closing")
                    await self.ws.close(code=NORMAL_CLOSURE, reason="idle timeout")
                    self.closed = True
                    return
                try:
                    message = await asyncio.wait_for(self.ws.receive(), timeout=remaining)
                except TimeoutError:
                    continue  # re-check: audio frames also count as activity
                if message["type"] == "websocket.disconnect":
                    self.closed = True
                    return
                self.last_activity = time.monotonic()
                await self.handle_frame(message)
        except _SocketGone:
            return
        finally:
            self.closed = True
            await self.cancel_all()

    async def handle_frame(self, message: dict) -> None:
        text = message.get("text")
        if text is None:
            await self.error("unsupported_frame", "binary frames are not supported; send JSON text frames")
            return
        if len(text.encode()) > self.settings.ws_max_frame_bytes:
            await self.error("frame_too_large", f"frames are limited to {self.settings.ws_max_frame_bytes} bytes")
            return
        try:
            raw = json.loads(text)
        except ValueError:
            await self.error("invalid_json", "the frame is not valid JSON")
            return
        if not isinstance(raw, dict):
            await self.error("invalid_message", "a frame must be a JSON object with a 'type'")
            return
        context_id = raw.get("context_id") if isinstance(raw.get("context_id"), str) else None
        try:
            msg = _parse(raw)
        except ValidationError as exc:
            await self.error(*_describe(exc, raw), context_id=context_id)
            return
        await getattr(self, f"on_{msg.type}")(msg)

    # messages
    async def on_start(self, msg: StartMessage) -> None:
        if msg.context_id in self.contexts:
            await self.error("duplicate_context", f"context {msg.context_id!r} is already open", msg.context_id)
            return
        if len(self.contexts) >= self.settings.ws_max_contexts:
            await self.error("too_many_contexts", f"at most {self.settings.ws_max_contexts} open contexts per "
                             "socket", msg.context_id)
            return
        if self.engine is None:
            await self.error("not_ready", "the engine is starting", msg.context_id)
            return
        voice_id = resolve_voice(msg.voice, self.engine.voices())
        if voice_id is None:
            await self.error("voice_not_found", f"unknown voice {msg.voice!r}", msg.context_id)
            return
        try:
            handle = self.engine.open_stream(voice=voice_id, speed=msg.speed,
                                             request_id=f"{self.request_id}:{msg.context_id}")
        except EngineError as exc:
            if exc.status in (429, 503):
                self.metrics.requests.labels(outcome="rejected").inc()
            extra = {"retry_after_s": exc.retry_after_s} if isinstance(exc, QueueFull) else {}
            await self.error(exc.code, exc.message, msg.context_id, **extra)
            return
        ctx = Context(id=msg.context_id, handle=handle, encoder=make_encoder(msg.format),
                      stats=StreamStats(self.metrics, time.monotonic(), gaps=False))
        self.contexts[ctx.id] = ctx
        ctx.task = asyncio.create_task(self.pump(ctx), name=f"ws-context-{ctx.id}")
        log.info("context started", extra={"context_id": ctx.id, "voice": voice_id, "format": msg.format})

    async def _context(self, msg) -> Context | None:
        ctx = self.contexts.get(msg.context_id)
        if ctx is None:
            await self.error("unknown_context", f"no open context {msg.context_id!r}; send 'start' first",
                             msg.context_id)
        return ctx

    async def _push(self, ctx: Context, action) -> None:
        if ctx.input_closed:
            await self.error("context_closed", f"context {ctx.id!r} was closed; it takes no more text", ctx.id)
            return
        try:
            action()
        except EngineError as exc:
            await self.error(exc.code, exc.message, ctx.id)

    async def on_text(self, msg: TextMessage) -> None:
        ctx = await self._context(msg)
        if ctx is None:
            return
        if not ctx.got_text and msg.text:
            ctx.got_text = True
            ctx.stats.arrival = time.monotonic()  # time to first audio counts from the first text

        def push() -> None:
            if msg.text:
                ctx.handle.push_text(msg.text)
            if msg.flush:
                ctx.handle.flush()

        await self._push(ctx, push)

    async def on_flush(self, msg: FlushMessage) -> None:
        ctx = await self._context(msg)
        if ctx is not None:
            await self._push(ctx, ctx.handle.flush)

    async def on_close(self, msg: CloseMessage) -> None:
        ctx = await self._context(msg)
        if ctx is not None:
            await self._push(ctx, ctx.handle.end_input)
            ctx.input_closed = True

    async def on_cancel(self, msg: CancelMessage) -> None:
        ctx = await self._context(msg)
        if ctx is None:
            return
        await self._stop(ctx, "cancelled")
        await self.send({"type": "done", "context_id": ctx.id, "reason": "cancelled"})

    # audio out
    async def pump(self, ctx: Context) -> None:
        chunks = ctx.handle.chunks()
        try:
            try:
                async for chunk in chunks:
                    await self._send_audio(ctx, ctx.encoder.encode(chunk.pcm))
                    ctx.stats.on_audio(chunk.duration)
                    if chunk.words:
                        await self.send({"type": "timestamps", "context_id": ctx.id, "words": [
                            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                             **({"estimated": True} if w.estimated else {})} for w in chunk.words]})
                await self._send_audio(ctx, ctx.encoder.finish())
                ctx.stats.finish("completed")
                await self.send({"type": "done", "context_id": ctx.id, "reason": "completed"})
            except StreamFailed as exc:
                ctx.stats.finish(failure_outcome(exc))
                await self.error(exc.code, exc.message, ctx.id)
            except _SocketGone:
                raise
            except Exception:
                log.exception("context failed", extra={"context_id": ctx.id})
                ctx.stats.finish("error")
                await self.error("internal_error", "internal error in this context", ctx.id)
        except _SocketGone:
            ctx.stats.finish("disconnected")
        finally:
            ctx.handle.cancel("disconnected")  # no-op after completion
            ctx.encoder.close()
            if self.contexts.get(ctx.id) is ctx:
                del self.contexts[ctx.id]
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except (Exception, asyncio.CancelledError):
                    pass

    async def _send_audio(self, ctx: Context, data: bytes) -> None:
        if not data:
            return
        await self.send({"type": "audio", "context_id": ctx.id, "audio": base64.b64encode(data).decode(),
                         "seq": ctx.seq})
        ctx.seq += 1
        self.last_activity = time.monotonic()

    async def _stop(self, ctx: Context, outcome: str) -> None:
        """Cancel a context and wait until its pump has stopped: no frame of it is sent after this returns."""
        ctx.stats.finish(outcome)
        ctx.handle.cancel(outcome)
        self.contexts.pop(ctx.id, None)
        if ctx.task is not None and not ctx.task.done():
            ctx.task.cancel()
            try:
                await ctx.task
            except (asyncio.CancelledError, Exception):
                pass

    async def cancel_all(self) -> None:
        for ctx in list(self.contexts.values()):
            await self._stop(ctx, "disconnected")


def _describe(exc: ValidationError, raw: dict) -> tuple[str, str]:
    """(code, message) for a frame that does not fit the protocol."""
    first = exc.errors()[0]
    if first["type"] == "union_tag_invalid":
        return "unknown_type", (f"unknown message type {raw.get('type')!r}; one of start, text, flush, close, "
                                "cancel")
    if first["type"] == "union_tag_not_found":
        return "invalid_message", "missing 'type'"
    field = ".".join(str(p) for p in first["loc"][1:]) or "frame"
    return "invalid_message", f"{field}: {first['msg']}"


@router.websocket("/v1/audio/stream")
async def audio_stream(websocket: WebSocket) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    await websocket.accept()
    if not key_matches(settings.api_key, websocket.headers.get("authorization"),
                       websocket.query_params.get("api_key")):
        await websocket.close(code=POLICY_VIOLATION, reason="missing or invalid API key")
        return
    session = Session(websocket, engine=app.state.engine, settings=settings, metrics=app.state.metrics,
                      request_id=get_request_id(websocket))
    await session.run()
