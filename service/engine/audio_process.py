"""The token -> audio stage in a process of its own (``MAMTRA_AUDIO_PROCESS``).

Decoding a chunk is hundreds of small ops launched from Python (codec decoder, HiFi-GAN, resampler). In the engine's
process they share one interpreter lock with the LM loop and the HTTP event loop: measured on an H100
(docs/BENCHMARKS.md §4), a chunk that takes 10-25 ms alone took ~70 ms in the server with one client, and the audio
stage, not the GPU, bounded the streams served. ``ProcessDecoder`` is a ``SpeechDecoder`` whose streams live in a
child process (spawned: CUDA cannot be forked) running the bundle's real decoder: the engine's audio thread sends one
message per batch (stream ids, tokens, flush flags) and waits for the PCM with the lock released, so the Python work
of decoding runs beside the LM loop, not between its steps.

Semantics are the local decoder's: ``push_many`` gives each stream what it would give alone, and when it fails it
leaves every stream as it was (the child's decoder guarantees that), so the engine falls back to one-by-one pushes
and only the faulty stream fails. A stream's state is created in the child on its first push and freed after
``close()`` (the engine closes a request's stream when the request ends). If the child dies, every call raises
``AudioProcessError``: the streams in flight fail with an internal error, and the engine reports itself unready
(``/readyz`` 503), so an orchestrator replaces the pod; the child is not restarted in place.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import multiprocessing as mp
import os
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service import gc_tuning

log = logging.getLogger("mamtra.engine")
GC_FREEZE_ENV = "MAMTRA_GC_FREEZE"  # "1" in a child's env: freeze its garbage collector after warm-up (gc_tuning)


class AudioProcessError(RuntimeError):
    pass


def factory_path(factory: Callable | str) -> str:
    """``module:function`` of a decoder factory (what the child imports)."""
    if isinstance(factory, str):
        return factory
    return f"{factory.__module__}:{factory.__qualname__}"


def _child(conn, factory: str, root: str, spec: dict, threads: int | None, env: dict[str, str] | None = None
           ) -> None:
    """The child process: build the decoder, then serve ``push`` messages until ``stop`` or the pipe closes.
    ``env``: set before anything makes a CUDA context (e.g. ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``)."""
    os.environ.update(env or {})
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        module, name = factory.split(":")
        decoder = getattr(importlib.import_module(module), name)(Path(root), spec)
    except BaseException as e:  # noqa: BLE001 — reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    streams: dict[int, Any] = {}
    push_many = getattr(decoder, "push_many", None)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "warm_up":
            try:
                warm = getattr(decoder, "warm_up", None)
                if warm is not None:
                    warm(msg[1], **msg[2])
                frozen = gc_tuning.freeze() if os.environ.get(GC_FREEZE_ENV) == "1" else 0  # MAMTRA_GC_FREEZE
                conn.send(("ok", frozen))
            except Exception as e:  # noqa: BLE001
                conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        _, items, tokens, flush, freed = msg
        for sid in freed:
            streams.pop(sid, None)
        try:
            batch = []
            for sid, voice, speed in items:
                if sid not in streams:
                    streams[sid] = decoder.open(voice, speed=speed)
                batch.append(streams[sid])
            if push_many is not None and len(batch) > 1:
                pcm = push_many(batch, tokens, flush)
            else:
                pcm = [s.push(t, flush=f) for s, t, f in zip(batch, tokens, flush)]
            reply = ("ok", [np.asarray(p, dtype=np.float32) for p in pcm])
        except Exception as e:  # noqa: BLE001
            reply = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        conn.send(reply)


class ProcessStream:
    """A ``DecoderStream`` whose state lives in the child."""

    def __init__(self, owner: ProcessDecoder, sid: int, voice: str, speed: float):
        self.owner, self.id, self.voice, self.speed = owner, sid, voice, speed

    def push(self, tokens: Sequence[int], *, flush: bool) -> np.ndarray:
        return self.owner.push_many([self], [tokens], [flush])[0]

    def close(self) -> None:
        self.owner.release(self.id)


class ProcessDecoder:
    """``SpeechDecoder`` (``open``, ``push_many``) backed by the bundle's decoder in a child process."""

    def __init__(self, factory: Callable | str, root: str | Path, spec: dict, *, threads: int | None = None,
                 start_timeout_s: float = 600.0, wait: bool = True, env: dict[str, str] | None = None):
        """``wait=False``: return once the child is spawned; ``wait_ready()`` then waits for its decoder (so that
        two processes load at once). ``env``: environment variables of the child only."""
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, name="mamtra-audio",
                                 args=(child_conn, factory_path(factory), str(root), dict(spec), threads,
                                       dict(env or {})), daemon=True)
        self._proc.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._freed: list[int] = []
        self._start_timeout_s = start_timeout_s
        self._ready = False
        self.frozen_objects = 0  # the child's objects its garbage collector froze after warm-up (warm_up)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for the child's decoder (``AudioProcessError`` if it fails or takes longer than the start timeout)."""
        if self._ready:
            return
        if not self._conn.poll(self._start_timeout_s):
            self.shutdown()
            raise AudioProcessError(f"the audio process did not start within {self._start_timeout_s:.0f} s")
        status, detail = self._recv()
        if status != "ready":
            self.shutdown()
            raise AudioProcessError(f"the audio process failed to start: {detail}")
        self._ready = True

    def open(self, voice_id: str, *, speed: float = 1.0) -> ProcessStream:
        return ProcessStream(self, next(self._ids), voice_id, float(speed))

    def release(self, sid: int) -> None:
        self._freed.append(sid)  # sent with the next call (list.append is atomic)

    def push_many(self, streams: Sequence[ProcessStream], tokens: Sequence[Sequence[int]],
                  flush: Sequence[bool]) -> list[np.ndarray]:
        items = [(s.id, s.voice, s.speed) for s in streams]
        toks = [np.asarray(t, dtype=np.int64).tolist() for t in tokens]
        with self._lock:
            freed, self._freed = self._freed, []
            try:
                self._conn.send(("push", items, toks, [bool(f) for f in flush], freed))
            except (OSError, ValueError) as e:
                raise AudioProcessError(f"the audio process is gone: {e}") from None
            status, detail = self._recv()
        if status != "ok":
            raise AudioProcessError(detail)
        return detail

    def warm_up(self, max_batch: int, **options: Any) -> None:
        """The child decoder's ``warm_up(max_batch, **options)``, if it has one (``CodecSpeechDecoder.warm_up``);
        then, with ``MAMTRA_GC_FREEZE=1`` in the child's environment, its garbage collector's freeze
        (``service.gc_tuning``: ``frozen_objects`` says how many objects it moved)."""
        with self._lock:
            try:
                self._conn.send(("warm_up", int(max_batch), options))
            except (OSError, ValueError) as e:
                raise AudioProcessError(f"the audio process is gone: {e}") from None
            status, detail = self._recv()
        if status != "ok":
            raise AudioProcessError(detail)
        self.frozen_objects = int(detail)

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as e:
            raise AudioProcessError(f"the audio process is gone (exit code {self._proc.exitcode}): {e!r}") from None

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            try:
                self._conn.send(("stop",))
            except (OSError, ValueError):
                pass
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout_s)
        self._conn.close()
