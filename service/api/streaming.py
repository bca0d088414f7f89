"""Streaming one engine handle to one HTTP client, and the client-side metrics only this layer can see.

``StreamResponse`` is a small ASGI response (rather than Starlette's ``StreamingResponse``) because it must:

- hold the status line until the first audio chunk exists, so failures before any audio (a timeout in the queue, an
  engine fault) are still ordinary JSON errors with a 5xx status;
- watch for the client going away *while waiting* for audio, not only when a write fails: Starlette's response
  only notices a disconnect on its next write under ASGI 2.4, which for a request still queued or between chunks
  means holding a slot for nothing. A watcher task reads ``http.disconnect`` and cancels the stream at once, and
  the flag is checked before every chunk;
- close the body generator in every case (its ``finally`` cancels the engine handle, freeing the slot), and record
  the request's outcome exactly once.

A failure after audio has started cannot change the status any more: the response is aborted (the exception
propagates, so the server drops the connection without the final empty chunk) and the client sees a truncated
transfer rather than a short file that looks complete. SSE streams report it as an ``error`` event instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import anyio
from starlette.responses import Response

from service.engine.types import StreamFailed
from service.errors import error_response
from service.metrics import Metrics

log = logging.getLogger("service.api.streaming")


@dataclass
class Piece:
    """Bytes for the client, and how many seconds of audio they carry (0 for headers, trailers, events)."""

    data: bytes
    audio_s: float = 0.0


class StreamStats:
    """Time to first audio, inter-chunk gaps, underruns, real-time factor, duration and outcome of one request.

    An underrun is a chunk that arrives after the audio delivered before it has run out: a player started at the
    first chunk would have gone silent. Counted once per late chunk.
    """

    def __init__(self, metrics: Metrics, arrival: float, *, gaps: bool = True) -> None:
        self.metrics = metrics
        self.arrival = arrival
        self.track_gaps = gaps
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.audio_s = 0.0
        self.chunks = 0
        self.underruns = 0
        self.outcome: str | None = None

    def on_audio(self, seconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.first_at is None:
            self.first_at = now
            self.metrics.time_to_first_audio.observe(now - self.arrival)
        elif self.track_gaps:
            self.metrics.inter_chunk_gap.observe(now - self.last_at)
            if now - self.first_at > self.audio_s:
                self.underruns += 1
                self.metrics.underruns.inc()
        self.last_at = now
        self.audio_s += seconds
        self.chunks += 1

    def finish(self, outcome: str, now: float | None = None) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.metrics.requests.labels(outcome=outcome).inc()
        if outcome == "completed" and self.last_at is not None:
            self.metrics.request_duration.observe(self.last_at - self.arrival)
            if self.audio_s > 0 and self.track_gaps:
                self.metrics.real_time_factor.observe((self.last_at - self.arrival) / self.audio_s)


def failure_outcome(exc: StreamFailed) -> str:
    return "timeout" if exc.code == "timeout" else "error"


def failure_status(exc: StreamFailed) -> int:
    return 504 if exc.code == "timeout" else 500


class ClientGone(Exception):
    pass


class StreamResponse(Response):
    """An ASGI response streaming ``pieces`` (an async generator of ``Piece``) with the given headers.

    ``on_failure(exc)`` may turn a ``StreamFailed`` raised *after* the response started into a last piece (SSE's
    error event); without it the transfer is aborted.
    """

    def __init__(self, pieces: AsyncGenerator[Piece, None], *, media_type: str, headers: dict[str, str],
                 stats: StreamStats, on_failure: Callable[[StreamFailed], bytes] | None = None) -> None:
        self.pieces = pieces
        self.media_type = media_type
        self.extra_headers = headers
        self.stats = stats
        self.on_failure = on_failure
        self.status_code = 200
        self.background = None
        self.raw_headers = []

    def _start_message(self) -> dict:
        headers = [(b"content-type", self.media_type.encode("latin-1"))]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.extra_headers.items()]
        return {"type": "http.response.start", "status": 200, "headers": headers}

    async def __call__(self, scope, receive, send) -> None:
        stats = self.stats
        gone = anyio.Event()
        started = False
        abort: BaseException | None = None  # raised after the task group, so it is not wrapped in a group

        async def watch_disconnect(scope_to_cancel: anyio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    scope_to_cancel.cancel()
                    return

        async def send_error(status: int, message: str, code: str) -> None:
            await error_response(status, message, code=code)({"type": "http"}, receive, send)

        async def body(group_scope: anyio.CancelScope) -> None:
            nonlocal started, abort
            try:
                async for piece in self.pieces:
                    if gone.is_set():  # checked before every chunk, besides the watcher
                        raise ClientGone
                    if not started:
                        await send(self._start_message())
                        started = True
                    if piece.data:
                        await send({"type": "http.response.body", "body": piece.data, "more_body": True})
                    if piece.audio_s:
                        stats.on_audio(piece.audio_s)
                if not started:
                    await send(self._start_message())
                    started = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                stats.finish("completed")
            except (ClientGone, OSError):
                gone.set()
            except StreamFailed as exc:
                stats.finish(failure_outcome(exc))
                if not started:
                    log.warning("stream failed before audio: %s (%s)", exc.message, exc.code)
                    await send_error(failure_status(exc), exc.message, exc.code)
                elif self.on_failure is not None:
                    log.warning("stream failed after audio started: %s (%s)", exc.message, exc.code)
                    await send({"type": "http.response.body", "body": self.on_failure(exc), "more_body": False})
                else:
                    log.error("stream failed after audio started, aborting the response: %s (%s)",
                              exc.message, exc.code)
                    abort = exc
            except Exception as exc:  # our fault (an encoder, the engine): 500 if we still can, else abort
                stats.finish("error")
                log.exception("stream broke")
                if not started:
                    await send_error(500, "internal error while streaming", "internal_error")
                else:
                    abort = exc
            finally:
                group_scope.cancel()  # stops the disconnect watcher

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, tg.cancel_scope)
                await body(tg.cancel_scope)
        finally:
            if stats.outcome is None:
                stats.finish("disconnected" if gone.is_set() else "cancelled")
            with anyio.CancelScope(shield=True):
                await self.pieces.aclose()  # its finally cancels the engine handle
        if abort is not None:
            raise abort
