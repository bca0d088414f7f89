"""A fake engine for the API tests: the ``EngineAPI`` contract with deterministic audio and no model.

Each word becomes one audio chunk: a sine tone of ``word_seconds / speed`` seconds whose pitch depends on the voice
and the word's index, with its ``WordTiming`` (marked as an estimate). Text is spoken at a sentence end (``.!?``),
on ``flush()`` or on ``end_input()``, as the real engine does. ``max_streams`` slots, up to ``max_queue`` more
streams admitted (they wait for a slot), and ``QueueFull`` beyond. Every stream's fate is recorded (``completed``,
``cancelled`` with reasons, ``failed``) so tests can assert that slots are freed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import numpy as np

from service.engine.types import (
    SAMPLE_RATE,
    AudioChunk,
    Draining,
    EngineAPI,
    InvalidRequest,
    NotReady,
    QueueFull,
    StreamFailed,
    StreamHandle,
    Voice,
    WordTiming,
)

_WORD = re.compile(r"\w[\w'-]*")
_SENTENCE_END = re.compile(r"[.!?]\s*$")

DEFAULT_VOICES = (
    Voice(id="ava", name="Ava", language="en", description="warm", gender="female"),
    Voice(id="leo", name="Leo", language="en", description="calm", gender="male"),
    Voice(id="mia", name="Mia", language="en", description="bright", gender="female"),
)


def tone(seconds: float, freq: float) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


class FakeStream(StreamHandle):
    def __init__(self, engine: FakeEngine, *, voice: str, speed: float, request_id: str) -> None:
        self.id = request_id
        self.voice = voice
        self.speed = speed
        self._engine = engine
        self._buffer = ""
        self._ready: list[str] = []  # words ready to be spoken
        self._ended = False
        self.cancel_reason: str | None = None
        self.pushed: list[str] = []
        self.flushes = 0
        self.done = False
        self._wake = asyncio.Event()

    # text in
    def push_text(self, text: str) -> None:
        if self._ended:
            raise InvalidRequest("text after end of input", param="text")
        self.pushed.append(text)
        self._buffer += text
        if _SENTENCE_END.search(self._buffer):
            self._release()

    def flush(self) -> None:
        self.flushes += 1
        self._release()

    def end_input(self) -> None:
        self._release()
        self._ended = True
        self._wake.set()

    def _release(self) -> None:
        words = _WORD.findall(self._buffer)
        if not words:
            return
        self._ready.extend(words)
        self._buffer = ""
        self._wake.set()

    def cancel(self, reason: str = "cancelled") -> None:
        if self.cancel_reason is None and not self.done:
            self.cancel_reason = reason
            self._engine._release(self, "cancelled")
        self._wake.set()

    # audio out
    async def chunks(self) -> AsyncIterator[AudioChunk]:
        engine = self._engine
        await engine._acquire_slot(self)
        seq = 0
        t = 0.0
        word_index = 0
        base = engine.voice_freq(self.voice)
        while True:
            if self.cancel_reason is not None:
                return
            if not self._ready:
                if self._ended:
                    self.done = True
                    engine._release(self, "completed")
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            word = self._ready.pop(0)
            delay = engine.first_chunk_delay_s if seq == 0 else engine.chunk_delay_s
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            if self.cancel_reason is not None:
                return
            if engine.fail_after_chunks is not None and seq >= engine.fail_after_chunks:
                engine._release(self, "failed")
                raise StreamFailed(engine.fail_code, "the fake engine failed this stream")
            seconds = engine.word_seconds / self.speed
            pcm = tone(seconds, base + 20 * (word_index % 8))
            timing = WordTiming(word=word, start=round(t, 6), end=round(t + seconds, 6), estimated=True)
            t += seconds
            word_index += 1
            engine.chunks_emitted += 1
            yield AudioChunk(pcm=pcm, seq=seq, words=[timing])
            seq += 1


class FakeEngine(EngineAPI):
    def __init__(self, *, voices=DEFAULT_VOICES, model_ids=("mamtra-small",), max_streams: int = 4,
                 max_queue: int = 0, word_seconds: float = 0.25, chunk_delay_s: float = 0.0,
                 first_chunk_delay_s: float = 0.0, retry_after_s: float = 1.5, fail_after_chunks: int | None = None,
                 fail_code: str = "internal_error", start_ready: bool = True) -> None:
        self._voices = list(voices)
        self._model_ids = list(model_ids)
        self.max_streams = max_streams
        self.max_queue = max_queue
        self.word_seconds = word_seconds
        self.chunk_delay_s = chunk_delay_s
        self.first_chunk_delay_s = first_chunk_delay_s
        self.retry_after_s = retry_after_s
        self.fail_after_chunks = fail_after_chunks
        self.fail_code = fail_code
        self.start_ready = start_ready
        self._ready = False
        self._draining = False
        self.started = False
        self.stopped = False
        self.drain_timeout: float | None = None
        self.streams: list[FakeStream] = []  # every stream ever opened, in order
        self.admitted: set[FakeStream] = set()  # open: holding a slot or waiting for one
        self.running: set[FakeStream] = set()  # holding a slot
        self.outcomes: dict[str, str] = {}  # request id -> completed / cancelled / failed
        self.chunks_emitted = 0

    # contract
    def voices(self) -> list[Voice]:
        return list(self._voices)

    def model_ids(self) -> list[str]:
        return list(self._model_ids)

    def open_stream(self, *, voice: str, speed: float = 1.0, request_id: str,
                    word_timestamps: bool = True) -> FakeStream:
        if self._draining:
            raise Draining("the server is shutting down")
        if not self._ready:
            raise NotReady("the engine is warming up")
        if voice not in {v.id for v in self._voices}:
            raise InvalidRequest(f"unknown voice {voice!r}", param="voice")
        if len(self.admitted) >= self.max_streams + self.max_queue:
            raise QueueFull("all slots are busy", retry_after_s=self.retry_after_s)
        stream = FakeStream(self, voice=voice, speed=speed, request_id=request_id)
        self.streams.append(stream)
        self.admitted.add(stream)
        return stream

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0, request_id: str,
                   word_timestamps: bool = True) -> FakeStream:
        if not _WORD.search(text):
            raise InvalidRequest("the input has nothing to speak", param="input")
        return super().synthesize(text, voice=voice, speed=speed, request_id=request_id,
                                  word_timestamps=word_timestamps)

    @property
    def ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    async def start(self) -> None:
        self.started = True
        self._ready = self.start_ready

    async def drain(self, timeout_s: float) -> None:
        self._draining = True
        self.drain_timeout = timeout_s
        for stream in list(self.admitted):
            stream.cancel("draining")

    async def stop(self) -> None:
        self.stopped = True

    # test controls and helpers
    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def voice_freq(self, voice: str) -> float:
        ids = [v.id for v in self._voices]
        return 220.0 + 110.0 * ids.index(voice)

    @property
    def open_count(self) -> int:
        return len(self.admitted)

    async def _acquire_slot(self, stream: FakeStream) -> None:
        while len(self.running) >= self.max_streams and stream.cancel_reason is None:
            await asyncio.sleep(0.005)
        if stream.cancel_reason is None:
            self.running.add(stream)

    def _release(self, stream: FakeStream, outcome: str) -> None:
        self.admitted.discard(stream)
        self.running.discard(stream)
        self.outcomes.setdefault(stream.id, outcome)


# helpers shared by the API tests

def make_settings(**overrides):
    from service.settings import Settings

    base = dict(log_json=True, log_level="warning", api_key=None, cors_origins=[])
    base.update(overrides)
    return Settings(**base)


def make_app(engine: FakeEngine | None = None, **settings):
    from service.app import create_app

    engine = engine or FakeEngine()
    return create_app(make_settings(**settings), engine=engine), engine


AV_FORMATS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


def decode_audio(data: bytes, fmt: str) -> tuple[int, float, int]:
    """(sample rate, seconds, channels) of encoded audio, decoded with PyAV (pcm: read as 24 kHz s16le mono)."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return SAMPLE_RATE, len(data) / 2 / SAMPLE_RATE, 1
    import io

    import av

    with av.open(io.BytesIO(data), format=AV_FORMATS[fmt]) as container:
        stream = container.streams.audio[0]
        samples = 0
        rate = None
        channels = None
        for frame in container.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate
            channels = len(frame.layout.channels)
    assert rate, "no audio decoded"
    return rate, samples / rate, channels
