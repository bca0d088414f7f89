"""The engine: scheduler + runner in a loop thread, token->audio decoding in its own thread, streams to asyncio.

Threads and why:

- **Engine loop thread**: plan (scheduler, under a lock) -> execute (runner, torch; no lock held, so the API can
  admit and cancel meanwhile) -> update. One process drives one device; the loop never waits on a client. With
  ``step_overlap`` (``MAMTRA_STEP_OVERLAP``) it launches the next step before it reads this one's tokens (``_loop``).
- **Audio thread**: speech tokens -> PCM through each request's decoder stream. Decoding is the slow part on CPU;
  keeping it off the LM loop means the LM's steps never wait for it (decoding only lags, it never stalls others).
- **asyncio**: the API reads ``AudioChunk``s from each handle's queue. A handle whose reader is behind by
  ``client_queue_chunks`` chunks is paused in the scheduler (back-pressure): generation for it stops, nothing is
  dropped and nothing buffers without bound. With the start hold (``MAMTRA_START_HOLD``, ``start_hold``) a request's
  first chunks wait in its reader until the audio path's plan releases them.

Word timestamps (for streams that ask for them: the WebSocket's contexts): when a sentence's audio is done, the
pipeline's ``WordAligner`` (``model.align``: a CTC phone aligner on the speech tokens) places its words on the tokens
generated for it, measured; without an aligner in the bundle, or where a sentence cannot be aligned, its words are
spread over its audio in proportion to their length and marked ``estimated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import torch

from model import norm_fused
from model.align.aligner import proportional_spans
from model.lm import SpeechLM
from model.sampling import SamplingConfig
from service.engine.audio_worker import AudioJob, AudioWorker, UrgentLane
from service.engine.pipeline import DecoderStream, Pipeline, SentenceText
from service.engine.runner import Runner
from service.engine.scheduler import AdmissionError, Event, Phase, Scheduler, SchedulerConfig, Sentence
from service.engine.start_hold import StartHold
from service.engine.types import (SAMPLE_RATE, AudioChunk, Draining, EngineAPI, InvalidRequest, NotReady, QueueFull,
                                  StreamFailed, StreamHandle, Voice, WordTiming)
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("mamtra.engine")

# A sentence is complete once its terminal punctuation is followed by whitespace (text may still be streaming in).
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s+")
_END = object()  # queue sentinel


@dataclass(frozen=True)
class EngineConfig:
    max_streams: int = 16
    max_queue: int = 64
    max_context: int | None = None
    prefill_budget_tokens: int = 512
    # At most this many requests prefilled per step. The fused Mamba-2 prefill (fla-core's Triton kernels) autotunes
    # per batch size: every size is warmed at startup, so a burst of arrivals never stalls the loop on autotuning.
    max_prefill_seqs: int = 8
    # requests starting at once: a newcomer's first prefill waits while this many have not had their first
    # ``urgent_chunks`` chunks delivered (Scheduler's start-up cap; 0: no cap)
    max_starting: int = 0
    prefill_graphs: bool = True  # on CUDA: prefills replayed from CUDA graphs where a bucket holds them
    prefill_overlap: bool = True  # a graphed prefill runs beside the step's decode on a second CUDA stream (Runner)
    request_timeout_s: float = 300.0
    first_chunk_tokens: int = 12
    chunk_tokens: int = 16
    client_queue_chunks: int = 8
    stall_timeout_s: float = 10.0
    audio_max_batch: int = 256  # decode jobs of different requests run together (1: one at a time)
    urgent_chunks: int = 2  # a request's first chunks decoded ahead of steady streams' (audio_worker; 0: none)
    urgent_lane_max_batch: int = 32  # with the pipeline's urgent_decoder: urgent chunks per batch of the lane
    # the main audio worker runs urgent chunks first and cuts its fill wait for them (AudioWorker.urgent_first);
    # None: only without an urgent lane (the lane delivers them)
    urgent_first: bool | None = None
    align_chunks: bool = True  # later chunks close on the engine's step clock (see Engine._chunk_ready)
    # A sentence whose successor is already queued does not flush the decoder: the request's audio is one decode
    # session, its chunks keep the usual size and batch with other streams' (a flush's odd-sized chunk and the
    # restarted decoder's first chunk each had a batch of their own). Sentences waiting for text still flush.
    continuous_audio: bool = True
    audio_batch_wait_s: float = 0.05  # under load, how long the audio thread may let a batch fill (audio_worker)
    # a request's consecutive steady chunks queued in one audio round decode as one push of up to 2 * chunk_tokens
    # (the widths the decoder plans at start-up) and reach the client as one chunk (AudioWorker.merge_tokens)
    audio_merge_chunks: bool = True
    gil_switch_interval_s: float = 0.0005  # see Engine.start
    step_overlap: bool = False  # launch step N+1 before reading step N's tokens (Engine._loop)
    # > 0: a request whose client would have more than this many seconds of audio buffered (a player started at its
    # first chunk, in real time) skips decode steps until it has less (0: streams run as fast as the device goes)
    pace_ahead_s: float = 0.0
    # under load, a request's first audio waits until its next chunks are predicted in time (service.engine.start_hold)
    start_hold: bool = False
    start_hold_max_s: float = 2.0
    start_hold_lookahead: int = 2  # chunks the hold plans ahead (StartHold)
    start_hold_load: bool = True  # a chunk's audio stage predicted from the chunks owed to running streams too
    dtype: torch.dtype = torch.float32
    ssm_dtype: torch.dtype = torch.float32
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_settings(cls, settings: Settings, *, device: torch.device) -> "EngineConfig":
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if settings.dtype == "auto" \
            else dtypes[settings.dtype]
        return cls(max_streams=settings.max_streams, max_queue=settings.max_queue, max_context=settings.max_context,
                   prefill_budget_tokens=settings.prefill_budget_tokens, max_prefill_seqs=settings.prefill_max_seqs,
                   max_starting=settings.max_starting,
                   prefill_graphs=settings.prefill_graphs,
                   prefill_overlap=settings.prefill_overlap,
                   request_timeout_s=settings.request_timeout_s, first_chunk_tokens=settings.first_chunk_tokens,
                   chunk_tokens=settings.chunk_tokens, client_queue_chunks=settings.client_queue_chunks,
                   stall_timeout_s=settings.stall_timeout_s, audio_max_batch=settings.audio_max_batch,
                   audio_batch_wait_s=settings.audio_batch_wait_ms / 1e3, urgent_chunks=settings.audio_urgent_chunks,
                   audio_merge_chunks=settings.audio_merge_chunks,
                   urgent_lane_max_batch=settings.audio_urgent_lane_batch,
                   urgent_first={"auto": None, "on": True, "off": False}[settings.audio_urgent_first],
                   gil_switch_interval_s=settings.gil_switch_interval_ms / 1e3, step_overlap=settings.step_overlap,
                   pace_ahead_s=settings.pace_ahead_s,
                   start_hold=settings.start_hold, start_hold_max_s=settings.start_hold_max_ms / 1e3,
                   start_hold_lookahead=settings.start_hold_lookahead, start_hold_load=settings.start_hold_load,
                   dtype=dtype,
                   ssm_dtype=dtypes[settings.ssm_dtype],
                   sampling=SamplingConfig(seed=settings.seed))


class _Handle(StreamHandle):
    def __init__(self, engine: "Engine", request_id: str, voice: str, speed: float, seed: int | None,
                 word_timestamps: bool = True) -> None:
        self.id = request_id
        self.word_timestamps = word_timestamps
        self.voice = voice
        self.speed = speed
        self.seed = seed
        self._engine = engine
        self._loop = engine._aloop  # chunks are delivered on the event loop the engine was started on
        self._queue: asyncio.Queue = asyncio.Queue()
        self._buffer = ""
        self.created = time.monotonic()
        self.deadline = self.created + engine.config.request_timeout_s
        self.admitted_at: float | None = None
        self.first_sentence_at: float | None = None  # the first sentence handed to the scheduler (first-audio stages)
        self.first_token_at: float | None = None  # engine thread (the first-audio stages)
        self.first_chunk_at: float | None = None  # engine thread: chunk 1 handed to the audio thread
        self.closed = False  # no more chunks will be produced
        self.produced = 0  # chunks posted (written under the engine's emit lock)
        self.empty_jobs = 0  # decode jobs that produced no chunk (under the emit lock)
        self.settled = 0  # the last chunk index delivered or found empty (emit lock): either audio path may be first
        self.started = False  # its first urgent chunks are delivered (emit lock; the scheduler's start-up cap)
        self.urgent_decoder: DecoderStream | None = None  # the urgent lane's stream (its thread only)
        self.consumed = 0  # chunks read (written by the asyncio side only)
        # The start hold (service.engine.start_hold): the asyncio side releases the audio at ``hold_until`` (None: at
        # once), planned by the audio path with each chunk it posts until then; the engine thread notes when each
        # chunk was handed to audio, the next one's arrival being part of the plan
        self.released = engine._hold is None
        self.hold_until: float | None = None
        self.held_since: float | None = None
        self.submitted_at: dict[int, float] = {}
        # Audio-thread state
        self.decoder: DecoderStream | None = None
        self.tokens: list[int] = []  # engine thread: tokens not yet handed to the audio thread
        self.chunks_submitted = 0  # engine thread: decode jobs handed to the audio thread
        self.seq = 0
        self.samples_out = 0
        # Audio thread: a real-time player started at the first audio (the pace, EngineConfig.pace_ahead_s): the
        # audio posted, in seconds, and the player's position at ``played_at`` (it stalls when it runs out)
        self.posted_s = 0.0
        self.played_s = 0.0
        self.played_at: float | None = None
        self.ended: list[tuple[SentenceText, int]] = []  # engine thread: sentences ended in ``tokens`` (at k)
        # Audio thread, word timestamps: the decode session (since the last flush) and the sentences in it
        self.session_start_sample = 0
        self.session_tokens = 0
        self.sentence_start_sample = 0
        self.sentence_tokens: list[int] = []  # the current sentence's speech tokens so far (for alignment)
        self.pending_words: deque[tuple[int, int, SentenceText, list[int]]] = deque()  # ended, audio not all out
        self.tokens_emitted = 0

    def buffered_s(self, now: float) -> float:
        """Seconds of audio a client playing in real time since the first audio would have buffered at ``now``."""
        if self.played_at is None:
            return 0.0
        return self.posted_s - min(self.played_s + (now - self.played_at), self.posted_s)

    def _posted(self, seconds: float, now: float) -> None:
        """Audio thread: ``seconds`` of audio posted at ``now``."""
        if self.played_at is not None:
            self.played_s = min(self.played_s + (now - self.played_at), self.posted_s)
        self.played_at = now
        self.posted_s += seconds

    # --- text in -------------------------------------------------------------------------------------------------
    def push_text(self, text: str) -> None:
        if self.closed:
            return
        self._buffer += text
        complete, rest = _split_complete(self._buffer)
        self._buffer = rest
        if complete:
            self._engine._add_text(self, complete)

    def flush(self) -> None:
        text, self._buffer = self._buffer, ""
        if text.strip() and not self.closed:
            self._engine._add_text(self, text)

    def end_input(self) -> None:
        self.flush()
        self._engine._end_input(self)

    def cancel(self, reason: str = "cancelled") -> None:
        if reason != "shutdown":  # a drain-cancelled stream is still read to its error by its client
            self._engine._live.discard(self)
        self._engine._cancel(self, reason)

    # --- audio out -----------------------------------------------------------------------------------------------
    async def chunks(self) -> AsyncIterator[AudioChunk]:
        held: list[AudioChunk] = []  # chunks made while the start hold keeps the audio back
        try:
            while True:
                if held:
                    wait = (self.hold_until or 0.0) - time.monotonic()
                    if wait <= 0:
                        for chunk in self._release(held):
                            yield chunk
                        held = []
                        continue
                    try:
                        async with asyncio.timeout(wait):
                            item = await self._queue.get()
                    except TimeoutError:
                        continue
                else:
                    item = await self._queue.get()
                if item is _END or isinstance(item, StreamFailed):
                    for chunk in self._release(held):
                        yield chunk
                    if item is _END:
                        return
                    raise item
                if not self.released:
                    held.append(item)
                    continue
                yield self._consume(item, item.made_at)
        finally:
            self._engine._live.discard(self)

    def _release(self, held: list[AudioChunk]) -> list[AudioChunk]:
        """Asyncio side: the start hold is over; the chunks it held, consumed in order."""
        self.released = True
        now = time.monotonic()
        for chunk in held:
            if chunk.seq < 2 and chunk.made_at is not None:
                self._engine._stage(chunk.seq + 1, "hold", now - chunk.made_at)
        return [self._consume(chunk, now) for chunk in held]

    def _consume(self, chunk: AudioChunk, since: float | None) -> AudioChunk:
        """A chunk read: the first two chunks' delivery stage runs from ``since`` (made, or released)."""
        self.consumed += 1
        if chunk.seq < 2 and since is not None:
            self._engine._stage(chunk.seq + 1, "delivery", time.monotonic() - since)
        return chunk

    @property
    def outstanding(self) -> int:
        """Chunks handed to the audio thread or made, and not yet read by the client: the back-pressure signal.
        Counted from submission, so a lagging audio thread cannot let tokens pile up unbounded before it."""
        return self.chunks_submitted - self.empty_jobs - self.consumed

    def _post(self, item) -> None:
        """From any thread: hand an item to the asyncio side."""
        if isinstance(item, AudioChunk):
            self.produced += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


def _split_complete(text: str) -> tuple[str, str]:
    last = None
    for m in _SENTENCE_END.finditer(text):
        last = m
    if last is None:
        return "", text
    return text[: last.end()], text[last.end():]


class Engine(EngineAPI):
    def __init__(self, *, model: SpeechLM, pipeline: Pipeline, config: EngineConfig, metrics: Metrics) -> None:
        self.model = model
        self.pipeline = pipeline
        self.config = config
        self.metrics = metrics
        max_context = min(config.max_context or model.config.max_context, model.config.max_context)
        self._max_context = max_context
        self.scheduler = Scheduler(SchedulerConfig(
            max_streams=config.max_streams, max_queue=config.max_queue, max_context=max_context,
            prefill_budget_tokens=config.prefill_budget_tokens, eos_id=pipeline.eos_id,
            max_prefill_seqs=config.max_prefill_seqs, max_starting=config.max_starting))
        self.runner: Runner | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._handles: dict[str, _Handle] = {}  # requests the scheduler knows
        self._live: set[_Handle] = set()  # streams whose client has not read to the end (drain waits for these)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Chunks are delivered under this lock by whichever path decodes them first (the worker or the urgent lane)
        self._emit_lock = threading.Lock()
        self._lane: UrgentLane | None = None
        if pipeline.urgent_decoder is not None and config.urgent_chunks > 0:
            self._lane = UrgentLane(run_batch=self._decode_urgent, max_batch=config.urgent_lane_max_batch,
                                    idle=self._release_urgent)
        # the first-chunk lane: requests' first chunks through a third decoder, never behind the lane's second chunks
        self._first_lane: UrgentLane | None = None
        if pipeline.first_decoder is not None and self._lane is not None:
            self._first_lane = UrgentLane(run_batch=self._decode_first, max_batch=config.urgent_lane_max_batch,
                                          max_index=1, name="mamtra-audio-first")
        self._first_stream = None  # on CUDA with an in-process first-chunk decoder: its own CUDA stream
        urgent_first = self._lane is None if config.urgent_first is None else config.urgent_first
        self._audio = AudioWorker(run_batch=self._decode_batch, run_end=lambda job: self._finish_stream(job.handle),
                                  max_batch=config.audio_max_batch, max_wait_s=config.audio_batch_wait_s,
                                  urgent_first=urgent_first,
                                  merge_tokens=2 * config.chunk_tokens if config.audio_merge_chunks else 0)
        self._urgent_open: set[_Handle] = set()  # requests with a stream in the urgent decoder (the lane's thread)
        self._lane_stream = None  # on CUDA with an in-process urgent decoder: the lane's own CUDA stream
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._audio_stream = None  # on CUDA: the audio thread's own stream (see _build_and_warm)
        self._warm = False
        self._draining = False
        self._last_tick = time.monotonic()
        self._steps = 0  # engine steps executed: the clock later chunks close on
        self._hold = StartHold(chunk_tokens=config.chunk_tokens, align_chunks=config.align_chunks,
                               urgent_chunks=config.urgent_chunks, max_hold_s=config.start_hold_max_s,
                               lookahead=config.start_hold_lookahead, load=config.start_hold_load) \
            if config.start_hold else None
        self._failure: BaseException | None = None
        metrics.state_slots_total.set(config.max_streams)

    # --- EngineAPI -----------------------------------------------------------------------------------------------
    def voices(self) -> list[Voice]:
        return [entry.voice for entry in self.pipeline.voices.values()]

    def model_ids(self) -> list[str]:
        return [self.pipeline.model_id]

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def ready(self) -> bool:
        if not self._warm or self._draining or self._failure is not None:
            return False
        if self._thread is None or not self._thread.is_alive():
            return False
        if not getattr(self.pipeline.decoder, "alive", True):  # the audio process died: every stream would fail
            return False
        with self._lock:
            busy = self.scheduler.has_work
        return not busy or time.monotonic() - self._last_tick < self.config.stall_timeout_s

    def open_stream(self, *, voice: str, speed: float = 1.0, request_id: str | None = None,
                    seed: int | None = None, word_timestamps: bool = True) -> StreamHandle:
        """``word_timestamps``: whether chunks carry the words their audio finished (the REST endpoint, which
        never sends them, turns it off: aligning costs the audio thread a few ms per sentence)."""
        if self._draining:
            raise Draining("the server is shutting down")
        if not self._warm:
            raise NotReady("the engine is warming up")
        entry = self.pipeline.voices.get(voice)
        if entry is None:
            raise InvalidRequest(f"unknown voice {voice!r}", param="voice")
        if not 0.25 <= speed <= 4.0:
            raise InvalidRequest("speed must be between 0.25 and 4.0", param="speed")
        handle = _Handle(self, request_id or uuid.uuid4().hex, voice, speed,
                         seed if seed is not None else self.config.sampling.seed, word_timestamps)
        with self._lock:
            try:
                self.scheduler.add_request(handle.id, voice_ids=entry.prompt_ids)
            except AdmissionError as e:
                if e.reason == "queue_full":
                    raise QueueFull("all state slots are busy and the queue is full",
                                    retry_after_s=self._retry_after()) from None
                raise InvalidRequest(f"request rejected: {e.reason}") from None
            self._handles[handle.id] = handle
            self._live.add(handle)
            self.runner.open_request(handle.id, seed=handle.seed)
            self.metrics.requests_waiting.set(self.scheduler.num_waiting)
        self._wake.set()
        return handle

    def synthesize(self, text: str, *, voice: str, speed: float = 1.0, request_id: str | None = None,
                   seed: int | None = None, word_timestamps: bool = True) -> StreamHandle:
        sentences = self.pipeline.frontend.sentences(text)  # once: normalising and G2P are the costly part
        if not sentences:
            raise InvalidRequest("input has nothing speakable", param="input")
        handle = self.open_stream(voice=voice, speed=speed, request_id=request_id, seed=seed,
                                  word_timestamps=word_timestamps)
        self._add_sentences(handle, sentences)
        handle.end_input()
        return handle

    async def start(self) -> None:
        # Three Python threads share the GIL: the event loop, the engine loop and the audio thread, which is mostly
        # Python launching small kernels. A thread coming back from a GPU wait or from epoll waits for the GIL
        # until the holder's switch interval runs out: at Python's default 5 ms that stretched engine steps and
        # delayed HTTP writes behind the audio thread. A shorter interval interleaves them (never raised here).
        if sys.getswitchinterval() > self.config.gil_switch_interval_s:
            sys.setswitchinterval(self.config.gil_switch_interval_s)
        self._aloop = asyncio.get_running_loop()
        await self._aloop.run_in_executor(None, self._build_and_warm)
        self._thread = threading.Thread(target=self._loop, name="mamtra-engine", daemon=True)
        self._thread.start()
        self._warm = True

    async def drain(self, timeout_s: float) -> None:
        self._draining = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._live:
            await asyncio.sleep(0.05)
        for handle in list(self._live):
            handle.cancel("shutdown")

    async def stop(self) -> None:
        self._draining = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)
        self._audio.shutdown()
        for lane in (self._lane, self._first_lane):
            if lane is not None:
                lane.shutdown()
        for decoder in (self.pipeline.decoder, self.pipeline.urgent_decoder, self.pipeline.first_decoder):
            shutdown = getattr(decoder, "shutdown", None)  # a decoder process (MAMTRA_AUDIO_PROCESS)
            if shutdown is not None:
                await asyncio.get_running_loop().run_in_executor(None, shutdown)

    # --- admission helpers (called from handles, asyncio thread) ---------------------------------------------------
    def _retry_after(self) -> float:
        # Rough: a slot frees when the oldest running request finishes; a few seconds is the typical sentence.
        return 2.0

    def _add_text(self, handle: _Handle, text: str) -> None:
        self._add_sentences(handle, self.pipeline.frontend.sentences(text))

    def _add_sentences(self, handle: _Handle, sentences: list[SentenceText]) -> None:
        with self._lock:
            if self.scheduler.phase(handle.id) in (None, Phase.FINISHED):
                return
            for s in sentences:
                prompt = tuple(self.pipeline.frontend.prompt_ids(s))
                cap = min(self.pipeline.max_tokens(s), self.scheduler.max_tokens_that_fit(handle.id, len(prompt)))
                if cap < 1:  # the front-end splits long sentences, so this needs a tiny max_context
                    log.warning("request %s: a sentence of %d tokens cannot fit the context; skipped",
                                handle.id, len(prompt))
                    continue
                self.scheduler.add_sentence(handle.id, Sentence(prompt, cap, tag=s))
                if handle.first_sentence_at is None:
                    handle.first_sentence_at = time.monotonic()
        self._wake.set()

    def _end_input(self, handle: _Handle) -> None:
        with self._lock:
            self.scheduler.end_input(handle.id)
            events = self.scheduler.pop_events()
        self._dispatch(events)
        self._wake.set()

    def _cancel(self, handle: _Handle, reason: str) -> None:
        with self._lock:
            generating = self.scheduler.phase(handle.id) not in (None, Phase.FINISHED)
            self.scheduler.cancel(handle.id, reason)
            events = self.scheduler.pop_events()
        self._dispatch(events)
        if not generating and not handle.closed:  # all tokens made, audio still being decoded: stop that too
            handle.closed = True
            handle._post(StreamFailed("shutting_down", "the server shut down before the audio was done")
                         if reason == "shutdown" else _END)
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------------------------
    def _build_and_warm(self) -> None:
        speech = list(self.pipeline.speech_ids) + [self.pipeline.eos_id]
        self.runner = Runner(self.model, max_streams=self.config.max_streams, max_context=self._max_context,
                             allowed_ids=speech, sampling=self.config.sampling, dtype=self.config.dtype,
                             ssm_dtype=self.config.ssm_dtype, prefill_graphs=self.config.prefill_graphs,
                             overlap_prefill=self.config.prefill_overlap,
                             prefill_seqs=self.config.max_prefill_seqs, stop_id=self.pipeline.eos_id)
        self.metrics.state_bytes.set(self.runner.pool.allocated_bytes()["total"])
        self.metrics.state_bytes_per_stream.set(self.runner.pool.bytes_per_stream)
        # Warm-up: one prefill and one decode through the real code paths (kernels compiled, caches touched).
        from service.engine.scheduler import DecodeItem, PrefillChunk, StepPlan

        voice = next(iter(self.pipeline.voices.values()))
        ids = tuple(voice.prompt_ids) + (self.pipeline.eos_id,)
        self.runner.open_request("warmup", seed=0)
        self.runner.execute(StepPlan(resets=(0,), prefills=(PrefillChunk("warmup", 0, 0, ids, True),)))
        self.runner.execute(StepPlan(decodes=(DecodeItem("warmup", 0, len(ids), self.pipeline.eos_id),)))
        self.runner.close_request("warmup")
        self.runner.pool.reset(0)
        if self.runner.device.type == "cuda" and "M" in self.model.config.layout:
            # every prefill batch size the scheduler can form: fla-core autotunes its kernels per batch size
            sizes = range(1, min(self.config.max_prefill_seqs or self.config.max_streams, self.config.max_streams) + 1)
            for b in sizes:
                self.runner.execute(StepPlan(resets=tuple(range(b)), prefills=tuple(
                    PrefillChunk(f"warmup{i}", i, 0, ids * 4, False) for i in range(b))))
            for b in range(max(sizes, default=0)):
                self.runner.pool.reset(b)
        if self.runner.prefill_graphs is not None:  # every prefill bucket, then every decode bucket, now
            self.runner.prefill_graphs.capture_all()
        if self.runner.graphs is not None:  # capture every decode bucket now, not on the first busy step
            self.runner.graphs.capture_all(self.config.max_streams)
        if self.runner.device.type == "cuda":
            # Audio decoding gets its own CUDA stream: the LM step's one host sync (reading the sampled tokens)
            # then waits for the LM's kernels only, not for vocoder work queued by the audio thread, and vice versa.
            self._audio_stream = self._side_stream()
            if self._lane is not None:
                self._lane_stream = self._side_stream()
            if self._first_lane is not None:
                self._first_stream = self._side_stream()
        warming = []  # the lanes' decoders (other processes, as a rule) warm up beside the main one
        for lane, decoder, stream, name in ((self._lane, self.pipeline.urgent_decoder, self._lane_stream, "urgent"),
                                            (self._first_lane, self.pipeline.first_decoder, self._first_stream,
                                             "first")):
            if lane is not None:
                warming.append(threading.Thread(target=self._warm_decoder, name=f"mamtra-warm-{name}", args=(
                    decoder, stream, voice.voice.id, self.config.urgent_lane_max_batch)))
                warming[-1].start()
        self._warm_decoder(self.pipeline.decoder, self._audio_stream, voice.voice.id, self.config.audio_max_batch)
        for thread in warming:
            thread.join()

    def _warm_decoder(self, decoder, stream, voice_id: str, max_batch: int) -> None:
        with _on(stream):
            stream = decoder.open(voice_id, speed=1.0)
            stream.push(list(self.pipeline.speech_ids[:4]), flush=True)
            if hasattr(stream, "close"):
                stream.close()
            warm = getattr(decoder, "warm_up", None)
            if warm is not None:  # the audio batches' shapes (a no-op where the decoder does not bucket them)
                warm(min(max_batch, self.config.max_streams),
                     first_chunk=self.config.first_chunk_tokens, chunk=self.config.chunk_tokens)

    def _side_stream(self):
        """A CUDA stream of its own for an audio path, ordered after what the device's current stream has queued."""
        stream = torch.cuda.Stream(device=self.runner.device)
        stream.wait_stream(torch.cuda.current_stream(self.runner.device))
        return stream

    def _loop(self) -> None:
        """Plan, launch, apply. With ``step_overlap`` step N+1 is launched before step N's tokens are read: the host
        reads, applies and dispatches them (and plans the step after) while the device runs N+1 (see the scheduler's
        and the runner's docstrings). Without it each step's tokens are applied before the next is planned."""
        try:
            phase = self.metrics.loop_phase_seconds
            pending = None  # (plan, launched step): launched, its tokens not read yet
            while not self._stop.is_set():
                t_plan = time.perf_counter()
                with self._lock:
                    self._expire()
                    pace, now = self.config.pace_ahead_s, time.monotonic()
                    for h in self._handles.values():
                        self.scheduler.set_paused(h.id, h.outstanding >= self.config.client_queue_chunks
                                                  or (pace > 0 and h.buffered_s(now) > pace))
                    plan = self.scheduler.plan()
                    events = self.scheduler.pop_events()
                    self._publish_load()
                t0 = time.perf_counter()
                self._dispatch(events)
                t_dispatch = time.perf_counter() - t0
                self._last_tick = time.monotonic()
                if plan.empty and pending is None:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                t0 = time.perf_counter()
                launched = None if plan.empty else (plan, self.runner.launch(plan))
                if launched is not None:
                    self._steps += 1
                    if self.runner.last_prefill_path is not None:
                        self.metrics.prefill_steps.labels(path=self.runner.last_prefill_path).inc()
                    if plan.decodes:
                        self.metrics.decode_batch_size.observe(len(plan.decodes))
                if not self.config.step_overlap:
                    pending, launched = launched, None  # read now what was just launched
                elif pending is None:  # nothing to read yet: plan the step after this one first
                    pending = launched
                    phase.labels(phase="host").observe(time.perf_counter() - t0)
                    continue
                t1 = time.perf_counter()
                done, result = pending[0], pending[1].result()  # the step's host sync (with overlap: the one before)
                pending = launched
                sync = self.runner.last_sync_s
                with self._lock:
                    events = self.scheduler.update(done, result)
                t2 = time.perf_counter()
                self._dispatch(events)
                t3 = time.perf_counter()
                self._last_tick = time.monotonic()
                kind = "mixed" if done.prefills and done.decodes else ("prefill" if done.prefills else "decode")
                # the loop's time on the device side: its launch and its wait (with overlap, one step period less
                # the host's plan, update and dispatch, which overlap the device's work)
                self.metrics.step_seconds.labels(kind=kind).observe(t1 - t0 + sync)
                phase.labels(phase="plan").observe(t0 - t_plan - t_dispatch)
                phase.labels(phase="host").observe(t1 - t0)
                phase.labels(phase="sync").observe(sync)
                phase.labels(phase="update").observe(max(t2 - t1 - sync, 0.0))
                phase.labels(phase="dispatch").observe(t_dispatch + t3 - t2)
                if self._hold is not None:
                    self._hold.stepped(t3 - t_plan)
        except BaseException as e:  # a fault of ours: fail every stream, turn unready, keep the process up
            log.exception("engine loop failed")
            self._failure = e
            for handle in list(self._handles.values()):
                handle._post(StreamFailed("internal_error", "the engine failed"))
                handle.closed = True

    def _expire(self) -> None:
        now = time.monotonic()
        for h in list(self._handles.values()):
            if now > h.deadline and not h.closed:
                self.scheduler.cancel(h.id, "timeout")

    def _publish_load(self) -> None:
        self.metrics.requests_running.set(self.scheduler.num_running)
        self.metrics.requests_waiting.set(self.scheduler.num_waiting)
        self.metrics.requests_starting.set(self.scheduler.num_starting)
        self.metrics.state_slots_used.set(self.scheduler.num_running)

    # --- events -> audio -----------------------------------------------------------------------------------------
    def _dispatch(self, events: list[Event]) -> None:
        jobs: list[AudioJob] = []
        try:
            self._dispatch_into(events, jobs)
        finally:  # one hand-over per step: the audio thread never starts a round with half of a step's chunks
            for lane in (self._first_lane, self._lane):
                if lane is not None:
                    lane.submit_many(jobs)  # the urgent ones (the first lane: first chunks); the worker too
            self._audio.submit_many(jobs)

    def _dispatch_into(self, events: list[Event], jobs: list[AudioJob]) -> None:
        for ev in events:
            handle = self._handles.get(ev.request_id)
            if handle is None:
                continue
            if ev.kind == "admitted":
                handle.admitted_at = time.monotonic()
                self.metrics.queue_wait.observe(handle.admitted_at - handle.created)
            elif ev.kind == "token":
                handle.tokens.append(ev.token)
                handle.tokens_emitted += 1
                if handle.first_token_at is None:
                    handle.first_token_at = time.monotonic()
                    if handle.admitted_at is not None and handle.first_sentence_at is not None:
                        # a slot and a sentence, in either order (a WebSocket stream is admitted before its text)
                        ready = max(handle.admitted_at, handle.first_sentence_at)
                        self._stage(1, "queue", ready - handle.first_sentence_at)
                        self._stage(1, "prefill", handle.first_token_at - ready)
                if self._chunk_ready(handle):
                    jobs.append(self._chunk_job(handle, flush=False))
            elif ev.kind == "sentence_end":
                handle.ended.append((ev.sentence.tag, len(handle.tokens)))
                # The next sentence queued: its tokens continue this decode (one stream of audio, chunks of the
                # usual size, which batch with other streams'). Otherwise flush: the sentence's last audio leaves
                # now, not when more text arrives.
                if not (ev.continues and self.config.continuous_audio):
                    jobs.append(self._chunk_job(handle, flush=True))
            elif ev.kind == "finished":
                self.metrics.speech_tokens.inc(handle.tokens_emitted)
                with self._lock:
                    self._handles.pop(handle.id, None)
                    self.scheduler.forget(handle.id)
                self.runner.close_request(handle.id)
                if ev.reason in ("cancelled", "disconnected"):
                    handle.closed = True
                    handle._post(_END)
                elif ev.reason == "timeout":
                    handle.closed = True
                    handle._post(StreamFailed("timeout", "the request ran past its time limit"))
                elif ev.reason == "shutdown":  # cut off by the drain deadline: say so, never a silent short file
                    handle.closed = True
                    handle._post(StreamFailed("shutting_down", "the server shut down before the audio was done"))
                # Completed: end after the audio thread has emitted everything queued before this. Otherwise the
                # stream has ended already; the job still releases its decoder state after what is queued.
                jobs.append(AudioJob(handle, None, False, time.monotonic()))

    def _chunk_job(self, handle: _Handle, *, flush: bool) -> AudioJob:
        """Hand the request's pending tokens (and the sentences they end) to the audio thread as its next chunk; a
        request's first ``urgent_chunks`` chunks are urgent, whether the step clock or a sentence end closed them."""
        tokens, handle.tokens = handle.tokens, []
        ended, handle.ended = handle.ended, []
        handle.chunks_submitted += 1
        index = handle.chunks_submitted
        now = time.monotonic()
        if index == 1:
            handle.first_chunk_at = now
            if handle.first_token_at is not None:
                self._stage(1, "tokens", now - handle.first_token_at)
        elif index == 2 and handle.first_chunk_at is not None:
            self._stage(2, "tokens", now - handle.first_chunk_at)
        if not handle.released:
            handle.submitted_at[index] = now
        return AudioJob(handle, tokens, flush, now, ended, urgent=index <= self.config.urgent_chunks, index=index)

    def _stage(self, chunk: int, stage: str, seconds: float) -> None:
        self.metrics.first_audio_stage.labels(chunk=str(chunk), stage=stage).observe(max(0.0, seconds))

    def _chunk_ready(self, handle: _Handle) -> bool:
        """Whether a request's pending tokens make a chunk now. The first chunk of a request closes at
        ``first_chunk_tokens`` (time to first audio). Later ones close on the engine's step clock, every
        ``chunk_tokens`` steps, with at least half a chunk: every running stream's chunk then reaches the audio thread
        in the same step and they decode as one batch — unaligned, they arrive spread over ``chunk_tokens`` steps in
        small groups (the streams admitted together), and each group is decoded on its own."""
        n = len(handle.tokens)
        if handle.chunks_submitted == 0:
            return n >= self.config.first_chunk_tokens
        c = self.config.chunk_tokens
        if not self.config.align_chunks:
            return n >= c
        return (n >= max(1, c // 2) and self._steps % c == 0) or n >= 2 * c

    def _decode_batch(self, jobs: list[AudioJob]) -> None:
        """Audio thread: chunks of distinct requests -> PCM, through the decoder's ``push_many`` when it has one
        (each request's audio as if decoded alone), else one by one. Timed: the audio stage's load and backlog are
        metrics."""
        start = time.monotonic()
        with _on(self._audio_stream):
            for job, pcm in self._decode_jobs(jobs, start):
                self._deliver(job, pcm, start)
        took = time.monotonic() - start
        self.metrics.audio_decode_seconds.observe(took)
        if self._hold is not None:  # the worker decodes every chunk: its rounds are the audio stage's throughput
            self._hold.round(len(jobs), took)

    def _deliver(self, job: AudioJob, pcm: np.ndarray, start: float) -> bool:
        """Either audio path: emit a decoded chunk unless the other path has already (a request's first chunks are
        decoded by both when there is an urgent lane). Chunks leave in order: each path decodes a request's chunks
        in order, and a chunk is emitted under the lock only right after its predecessor was settled."""
        decoded = time.monotonic()
        handle = job.handle
        with self._emit_lock:
            if not self._settle(job):
                return False
            handle.empty_jobs += job.absorbed  # the chunks joined into this one leave as part of it
            self._emit(handle, pcm, job)
            started = not handle.started and job.index >= max(1, self.config.urgent_chunks)
            handle.started = handle.started or started
        if started:  # its first chunks are with the client: its start-up is over (the scheduler's start-up cap)
            with self._lock:
                self.scheduler.started(handle.id)
            self._wake.set()
        if job.absorbed:
            self.metrics.audio_chunks_merged.inc(job.absorbed)
        if job.index in (1, 2):
            self._stage(job.index, "audio_wait", start - job.submitted)
            self._stage(job.index, "audio_decode", decoded - start)
        if self._hold is not None:
            self._hold.delivered(job.index, decoded - job.submitted)
        return True

    @staticmethod
    def _settle(job: AudioJob) -> bool:
        """Under the emit lock: whether this path settles the job's chunk (False: the other path did first). Each
        path takes a request's chunks in order, so the one that settles chunk i finds i - 1 settled."""
        if job.index <= job.handle.settled:
            return False
        job.handle.settled = job.index
        return True

    def _decode_jobs(self, jobs: list[AudioJob], start: float):
        """(job, PCM) for every job whose request is still open and decodes without a fault."""
        live: list[AudioJob] = []
        for job in jobs:
            self.metrics.audio_decode_wait.observe(start - job.submitted)
            handle = job.handle
            if handle.closed:
                with self._emit_lock:
                    if self._settle(job):
                        handle.empty_jobs += 1 + job.absorbed
                continue
            try:
                if handle.decoder is None:
                    handle.decoder = self.pipeline.decoder.open(handle.voice, speed=handle.speed)
            except Exception:
                self._decode_failed(handle)
                continue
            live.append(job)
        if not live:
            return
        self.metrics.audio_decode_batch_size.observe(len(live))
        push_many = getattr(self.pipeline.decoder, "push_many", None)
        if push_many is not None and len(live) > 1:
            try:
                pcms = push_many([j.handle.decoder for j in live], [j.tokens for j in live],
                                 [j.flush for j in live])
            except Exception:  # push_many leaves every stream as it was: decode them one by one instead
                log.exception("batched audio decoding of %d chunks failed; decoding one by one", len(live))
            else:
                yield from zip(live, pcms)
                return
        for job in live:
            try:
                pcm = job.handle.decoder.push(job.tokens, flush=job.flush)
            except Exception:
                self._decode_failed(job.handle)
                continue
            yield job, pcm

    # --- the urgent lane (a second decoder for the first chunks) ------------------------------------------------------
    def _decode_urgent(self, jobs: list[AudioJob]) -> None:
        """Urgent lane thread: requests' first chunks through the urgent decoder, delivered if the audio worker has
        not delivered them yet. A request is left to the worker (its lane stream released) once it has had its
        urgent chunks, when the worker got ahead of the lane, when it is closed, or when the lane's decode fails.
        The batch's first chunks (time to first audio; fresh streams, which the decoder may replay from a graph)
        are decoded and delivered before its later chunks. Beside a first-chunk lane, a first chunk delivered
        already is still decoded (the state its second chunk continues) unless the second is delivered too."""
        decoder = self.pipeline.urgent_decoder
        counted = self.metrics.urgent_lane_chunks
        self._release_urgent()
        live: list[AudioJob] = []
        for job in jobs:
            handle = job.handle
            if handle.closed or (job.index <= handle.settled and not self._carries_on(job)) or (
                    handle.urgent_decoder is None and job.index > 1):
                counted.labels(result="skipped").inc()
                self._drop_urgent(handle)
                continue
            if handle.urgent_decoder is None:
                try:
                    handle.urgent_decoder = decoder.open(handle.voice, speed=handle.speed)
                except Exception:
                    log.exception("urgent audio lane: opening a stream failed; the audio worker decodes it")
                    counted.labels(result="failed").inc()
                    continue
                self._urgent_open.add(handle)
            live.append(job)
        for group in ([job for job in live if job.index == 1], [job for job in live if job.index != 1]):
            if group:
                self._decode_urgent_group(decoder, group)

    def _decode_urgent_group(self, decoder, live: list[AudioJob]) -> None:
        """Urgent lane thread: decode and deliver some of a batch's chunks (on a failure, the worker's)."""
        counted = self.metrics.urgent_lane_chunks
        start = time.monotonic()
        try:
            with _on(self._lane_stream):
                pcms = _push_all(decoder, [job.handle.urgent_decoder for job in live], live)
        except Exception:  # the worker decodes these chunks too: nothing is lost
            log.exception("urgent audio lane: decoding %d chunks failed; the audio worker delivers them", len(live))
            counted.labels(result="failed").inc(len(live))
            for job in live:
                self._drop_urgent(job.handle)
            if not getattr(decoder, "alive", True):  # its process died: the worker alone decodes from now on
                log.error("urgent audio lane: its decoder process is gone; the lane is off")
                self._lane.shutdown()
            return
        for job, pcm in zip(live, pcms):
            won = self._deliver(job, pcm, start)
            counted.labels(result="won" if won else "lost").inc()
            if (not won and not self._carries_on(job)) or job.index >= self.config.urgent_chunks:
                self._drop_urgent(job.handle)

    def _carries_on(self, job: AudioJob) -> bool:
        """Whether the urgent lane decodes a request's first chunk that another path has delivered: beside a
        first-chunk lane (which delivers most first chunks and keeps no state), for the second chunk's sake, while
        that is not delivered either."""
        return self._first_lane is not None and job.index == 1 < self.config.urgent_chunks and job.handle.settled < 2

    def _decode_first(self, jobs: list[AudioJob]) -> None:
        """First-chunk lane thread: requests' first chunks through a decoder of their own, each from a fresh stream
        (a graph replay where the decoder has one) closed right after; delivered if no other path has. The urgent
        lane and the worker decode these chunks too and carry each request on from them."""
        decoder = self.pipeline.first_decoder
        counted = self.metrics.first_lane_chunks
        live = [job for job in jobs if not job.handle.closed and job.index > job.handle.settled]
        if len(live) < len(jobs):
            counted.labels(result="skipped").inc(len(jobs) - len(live))
        if not live:
            return
        start = time.monotonic()
        streams = []
        try:
            with _on(self._first_stream):
                streams = [decoder.open(job.handle.voice, speed=job.handle.speed) for job in live]
                pcms = _push_all(decoder, streams, live)
        except Exception:  # the other paths decode these chunks too: nothing is lost
            log.exception("first-chunk lane: decoding %d chunks failed; the other paths deliver them", len(live))
            counted.labels(result="failed").inc(len(live))
            if not getattr(decoder, "alive", True):  # its process died: the other paths alone from now on
                log.error("first-chunk lane: its decoder process is gone; the lane is off")
                self._first_lane.shutdown()
            return
        finally:
            for s, job in zip(streams, live):
                _release(s, job.handle.id, "first-chunk lane stream")
        for job, pcm in zip(live, pcms):
            counted.labels(result="won" if self._deliver(job, pcm, start) else "lost").inc()

    def _drop_urgent(self, handle: _Handle) -> None:
        """Urgent lane thread: release the request's stream in the urgent decoder, if it has one."""
        stream, handle.urgent_decoder = handle.urgent_decoder, None
        self._urgent_open.discard(handle)
        _release(stream, handle.id, "urgent decoder stream")

    def _release_urgent(self) -> None:
        """Urgent lane thread: release the streams of requests that ended before their urgent chunks were done."""
        for handle in [h for h in self._urgent_open if h.closed]:
            self._drop_urgent(handle)

    def _decode_failed(self, handle: _Handle) -> None:
        log.exception("request %s: audio decoding failed", handle.id)
        with self._emit_lock:  # the urgent lane counts this request's chunks under it too
            handle.empty_jobs += 1
        handle.closed = True
        handle._post(StreamFailed("internal_error", "audio decoding failed"))
        self._cancel(handle, "error")

    def _emit(self, handle: _Handle, pcm: np.ndarray, job: AudioJob) -> None:
        """Audio thread: a decoded chunk (and the words whose audio it completes) to the request's queue."""
        handle.samples_out += len(pcm)
        words = self._advance_words(handle, job) if handle.word_timestamps else []
        if len(pcm) == 0 and not words:
            handle.empty_jobs += 1
            return
        self.metrics.audio_seconds.inc(len(pcm) / SAMPLE_RATE)
        now = time.monotonic()
        if len(pcm):
            handle._posted(len(pcm) / SAMPLE_RATE, now)
        chunk = AudioChunk(pcm=_to_int16(pcm), seq=handle.seq, words=words, made_at=now)
        handle.seq += 1
        if not handle.released:
            handle.hold_until = self._hold_until(handle, job, now)
        handle._post(chunk)

    def _hold_until(self, handle: _Handle, job: AudioJob, now: float) -> float | None:
        """Audio path, under the emit lock, while the start hold keeps a request's audio back: when to release it,
        given the chunk just made (None: at once — the chunk ends the audio for now, or nothing is held)."""
        if job.flush or self._hold is None:
            return None
        if handle.held_since is None:
            handle.held_since = now
        nxt = job.index + 1
        arrivals = self._hold.arrivals(now=now, first_index=nxt, submitted=handle.submitted_at,
                                       pending=len(handle.tokens), steps=self._steps,
                                       owed=self._owed(handle, nxt, self._hold.lookahead))
        chunk_s = self.config.chunk_tokens / self.pipeline.tokens_per_second / handle.speed
        return self._hold.release_at(held_since=handle.held_since, held_s=handle.posted_s, arrivals=arrivals,
                                     chunk_s=chunk_s)

    def _owed(self, handle: _Handle, first: int, n: int) -> list[int]:
        """For chunks ``first`` … ``first + n - 1``: the chunks up to that index not yet delivered to the other
        admitted, open requests (with the start hold's ``load``: the audio worker, which decodes every chunk, owes
        them those before it reaches this request's; else zeros)."""
        owed = [0] * n
        if not self._hold.load:
            return owed
        for h in list(self._handles.values()):
            if h is handle or h.closed or h.admitted_at is None:
                continue
            for k in range(n):
                owed[k] += max(0, first + k - h.settled)
        return owed

    def _advance_words(self, handle: _Handle, job: AudioJob) -> list[WordTiming]:
        """Audio thread: place the sentences this job ends in the stream's audio and return the words of those
        whose audio has now all been sent. Within a decode session (flush to flush) token i starts at sample
        i · 24000 / (25 · speed) (the decoder is exact to the token); a flush's end is the samples sent."""
        tokens = job.tokens or []
        per_token = SAMPLE_RATE / self.pipeline.tokens_per_second / handle.speed
        pos = 0
        for sentence, k in job.ended:
            if job.flush and k == len(tokens):
                end = handle.samples_out
            else:
                end = handle.session_start_sample + round((handle.session_tokens + k) * per_token)
            handle.pending_words.append((handle.sentence_start_sample, end, sentence,
                                         handle.sentence_tokens + tokens[pos:k]))
            handle.sentence_tokens, handle.sentence_start_sample, pos = [], end, k
        handle.sentence_tokens += tokens[pos:]
        handle.session_tokens += len(tokens)
        if job.flush:
            handle.session_start_sample = handle.sentence_start_sample = handle.samples_out
            handle.session_tokens = 0
        words: list[WordTiming] = []
        while handle.pending_words and (job.flush or handle.pending_words[0][1] <= handle.samples_out):
            start, end, sentence, sentence_tokens = handle.pending_words.popleft()
            end = min(end, handle.samples_out)
            words += self._word_times(sentence, sentence_tokens, start / SAMPLE_RATE, end / SAMPLE_RATE)
        return words

    def _word_times(self, sentence: SentenceText, tokens: list[int], start: float, end: float) -> list[WordTiming]:
        """A finished sentence's words on its audio ``[start, end)`` s: aligned when the pipeline has an aligner
        and the sentence can be aligned, else estimated (and labelled)."""
        aligner = self.pipeline.aligner
        if aligner is not None and sentence.spans and len(sentence.spans) == len(sentence.words):
            try:
                fractions = aligner.align(sentence.token_ids, sentence.spans, tokens)
            except Exception:  # a timing is never worth a stream: fall back to the estimate
                log.exception("word alignment failed")
                fractions = None
            if fractions is not None:
                self.metrics.word_alignments.labels(result="aligned").inc()
                return _place_words(sentence.words, fractions, start, end)
            self.metrics.word_alignments.labels(result="estimated").inc()
        return _estimate_word_times(sentence.words, start, end)

    def _finish_stream(self, handle: _Handle) -> None:
        """Audio thread: the request's last job. Its decoder stream is released (a decoder in another process
        holds the state until told), then the stream ends unless it has already."""
        _release(handle.decoder, handle.id, "decoder stream")
        handle.decoder = None
        if handle.closed:
            return
        handle.closed = True
        handle._post(_END)


def _push_all(decoder, streams, jobs: list[AudioJob]) -> list:
    """Each job's chunk through its stream of ``decoder``: one ``push_many`` where the decoder has it and there are
    several, else one push each (an audio path's PCM, in the jobs' order)."""
    push_many = getattr(decoder, "push_many", None)
    if push_many is not None and len(jobs) > 1:
        return push_many(streams, [job.tokens for job in jobs], [job.flush for job in jobs])
    return [s.push(job.tokens, flush=job.flush) for s, job in zip(streams, jobs)]


def _release(stream, request_id: str, what: str) -> None:
    """Close a request's decoder stream (``what``) if it can be closed (one in another process holds its state until
    told); a failure is logged, not raised."""
    close = getattr(stream, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("request %s: releasing its %s failed", request_id, what)


def _on(stream):
    """Work queued on ``stream`` (a CUDA stream), or where it would go anyway (None: no stream of its own)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _to_int16(pcm: np.ndarray) -> np.ndarray:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)


def _place_words(words: tuple[str, ...], fractions, start: float, end: float, *,
                 estimated: bool = False) -> list[WordTiming]:
    """Words at ``(a, b)`` fractions of the audio ``[start, end)`` s → their timings in seconds (ms rounded)."""
    span = end - start
    return [WordTiming(w, round(start + a * span, 3), round(start + b * span, 3), estimated=estimated)
            for w, (a, b) in zip(words, fractions)]


def _estimate_word_times(words: tuple[str, ...], start: float, end: float) -> list[WordTiming]:
    """Spread a sentence's words over its audio in proportion to their length (an estimate, labelled as one)."""
    return _place_words(words, proportional_spans(words), start, end, estimated=True)


def build_engine(settings: Settings, metrics: Metrics) -> Engine:
    """The production engine from settings: the bundled model unless ``MAMTRA_MODEL_DIR`` points elsewhere."""
    from service.engine.audio_process import GC_FREEZE_ENV
    from service.engine.bundle import load_bundle, resolve_device
    from service.engine.mps import start_mps

    # before this process makes a CUDA context (resolve_device's is_available() does not make one)
    mps = start_mps(settings.cuda_mps, device=settings.device, audio_process=settings.audio_process != "off")
    metrics.cuda_mps.set(mps is not None)
    if settings.lm_gpu_percent < 100:  # read when this process makes its CUDA context; the audio processes set theirs
        os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(settings.lm_gpu_percent)
    device = resolve_device(settings.device)
    audio_process = settings.audio_process == "on" or (settings.audio_process == "auto" and device.type == "cuda")
    urgent_lane = settings.audio_urgent_chunks > 0 and (
        settings.audio_urgent_lane == "on" or (settings.audio_urgent_lane == "auto" and audio_process))
    options = {key: value for key, value in (("vocoder_channels_last", settings.vocoder_channels_last),
                                             ("first_chunk_graphs", settings.audio_first_chunk_graphs),
                                             ("vocoder_fused", settings.vocoder_fused))
               if value is not None}
    audio_env = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(settings.audio_gpu_percent),
                 GC_FREEZE_ENV: "1" if settings.gc_freeze else "0"}  # the audio processes freeze after warm-up
    model, pipeline = load_bundle(settings.model_dir, device=device, backend=settings.backend,
                                  audio_process=audio_process, decoder_options=options, urgent_lane=urgent_lane,
                                  first_lane=settings.audio_first_lane,  # load_bundle: only beside the urgent lane
                                  audio_env=audio_env)
    config = EngineConfig.from_settings(settings, device=device)
    norm_fused.set_enabled(settings.fused_norms)
    model.cast_(config.dtype)
    return Engine(model=model, pipeline=pipeline, config=config, metrics=metrics)
