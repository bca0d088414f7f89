"""The contract between the HTTP/WebSocket layer and the synthesis engine.

The API layer only sees these types: it opens a stream, pushes text into it, reads audio chunks out of it, and
cancels it when the client goes away. The engine (``service.engine.engine.Engine``) implements them on the real
model; tests implement them with a fake (``tests/service/fakes.py``).

Audio leaves the engine as 16-bit mono PCM at ``SAMPLE_RATE`` (24 kHz, OpenAI's ``pcm`` format); the API layer only
encodes it into the requested container.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 24_000


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    language: str = "en"
    description: str = ""
    gender: str | None = None


@dataclass(frozen=True)
class WordTiming:
    """A word and where it sits in the stream's audio, in seconds from the stream's first sample."""

    word: str
    start: float
    end: float
    estimated: bool = False  # True where the timing is an estimate rather than a measured alignment


@dataclass
class AudioChunk:
    pcm: np.ndarray  # (n,) int16 mono at SAMPLE_RATE
    seq: int  # 0, 1, 2, ... per stream
    words: list[WordTiming] = field(default_factory=list)  # words whose audio ends in this chunk
    made_at: float | None = None  # time.monotonic() when the audio stage posted it (the delivery stage's start)

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


class EngineError(Exception):
    """A request the engine will not take. ``code`` is machine-readable; ``status`` the HTTP status to answer."""

    code = "engine_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueueFull(EngineError):
    code = "server_busy"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(EngineError):
    code = "shutting_down"
    status = 503


class NotReady(EngineError):
    code = "not_ready"
    status = 503


class InvalidRequest(EngineError):
    """Unknown voice, text with nothing speakable, and other faults of the request."""

    code = "invalid_request"
    status = 400

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StreamFailed(Exception):
    """Raised from ``StreamHandle.chunks()`` when a stream ends abnormally after it started (timeout, engine
    fault). ``code``: 'timeout' or 'internal_error'."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamHandle(abc.ABC):
    """One request's stream: text goes in (possibly piece by piece), audio chunks come out.

    The request holds one state slot for its whole text: sentences are appended to the same context.
    Text pushed is buffered until a sentence ends, ``flush()`` or ``end_input()``; after ``end_input()`` the stream
    finishes once everything pushed has been spoken. ``chunks()`` yields until then (or raises ``StreamFailed``).
    ``cancel()`` frees the slot within one engine step; it is idempotent and safe after completion.
    """

    id: str

    @abc.abstractmethod
    def push_text(self, text: str) -> None: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def end_input(self) -> None: ...

    @abc.abstractmethod
    def cancel(self, reason: str = "cancelled") -> None: ...

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[AudioChunk]: ...


class EngineAPI(abc.ABC):
    """What the app needs from an engine."""

    @abc.abstractmethod
    def voices(self) -> list[Voice]: ...

    @abc.abstractmethod
    def model_ids(self) -> list[str]: ...

    @abc.abstractmethod
    def open_stream(self, *, voice: str, speed: float = 1.0, request_id: str,
                    word_timestamps: bool = True) -> StreamHandle:
        """Admit a request (raises QueueFull, Draining, NotReady, InvalidRequest). Text is pushed afterwards.
        ``word_timestamps``: whether its chunks carry the words their audio finished."""

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0, request_id: str,
                   word_timestamps: bool = True) -> StreamHandle:
        """A whole text at once (the REST endpoint)."""
        handle = self.open_stream(voice=voice, speed=speed, request_id=request_id, word_timestamps=word_timestamps)
        handle.push_text(text)
        handle.end_input()
        return handle

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Warm, not draining, and the engine loop is stepping (not stalled)."""

    @property
    @abc.abstractmethod
    def draining(self) -> bool: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Load, warm up, start the engine loop."""

    @abc.abstractmethod
    async def drain(self, timeout_s: float) -> None:
        """Stop admitting; wait up to ``timeout_s`` for in-flight streams; cancel what is left."""

    @abc.abstractmethod
    async def stop(self) -> None: ...
