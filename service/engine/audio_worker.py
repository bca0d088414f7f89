"""The audio thread's queue: token -> audio jobs in arrival order, run in batches across requests.

Decoding one chunk of one request is hundreds of small ops (codec decoder, HiFi-GAN, resampler); on a GPU that is
kernel launches and Python, so one stream at a time cannot keep up with hundreds of streams. The worker takes every
job queued since its last round and hands the decode jobs to ``run_batch`` in batches of distinct requests (a
request's next chunk continues the state its previous chunk left, so two jobs of one request never share a batch),
at most ``max_batch`` at a time. A round's jobs go in waves: every request's earliest chunk, then every request's
next one, and so on — a backlog of several chunks a request (the audio stage behind the LM) is then a few batches of
every request rather than a batch cut wherever the arrival order repeats a request (streams that the back-pressure
paused and resumed close their chunks out of step with the others; at 256 clients the mean batch rose from 66 to 98
chunks, docs/BENCHMARKS.md §4 W). A request's jobs — its chunks and its end-of-stream — keep their order: a batch is
run before a later chunk of one of its requests, and an end-of-stream whose request has a chunk in the batch runs
right after the batch (it does not cut the batch short: every request ends with a last chunk and its end, so cutting
there made most of a busy round's batches single chunks). ``max_batch=1`` decodes one job at a time. With
``merge_tokens`` a request's consecutive steady chunks in one round are first joined into one job of up to that many
tokens (``_merged``): fewer, wider pushes — a pass's cost is largely per op, not per token — delivered as one chunk.

Under load the batches are let fill: when jobs arrived while the last round ran (a backlog), the next round waits until
its oldest job has waited as long as that round took, at most ``max_wait_s``, or until ``max_batch`` jobs are there —
unless an urgent job (a request's first chunks) is queued. A round decodes the requests with urgent jobs first, in
batches of their own, then the others: a new stream's first audio does not wait for a batch of hundreds of steady
streams that each have seconds of audio buffered (``urgent_first``; the engine turns it off where an ``UrgentLane``
decodes those chunks, unless told otherwise: there they only split its rounds into smaller batches, docs/BENCHMARKS.md
§4 X). A batch's cost grows far slower than its size (one launch per op for all streams), and while this thread sleeps
the engine loop, which shares the GIL with it, produces more chunks. Without a backlog nothing waits.

``UrgentLane`` is a second path for the requests' first chunks only, beside the worker, for a decoder of its own
(a second audio process, ``Engine``): it runs whatever urgent jobs are queued at once, in batches of a few, while the
worker may be in the middle of a round of hundreds of steady streams. The worker still decodes every job, the first
chunks included (its decoder state must continue from them), and whichever path finishes a chunk first delivers it.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mamtra.engine")


@dataclass
class AudioJob:
    handle: Any
    tokens: list[int] | None  # None: the end-of-stream job
    flush: bool = False  # the decoder emits everything it holds back (and starts afresh)
    submitted: float = 0.0  # time.monotonic() when handed to the worker
    ended: list[tuple[Any, int]] = field(default_factory=list)  # (sentence, k): it ends after tokens[:k]
    urgent: bool = False  # a request's first chunks: time to first audio, and a player with almost nothing buffered
    index: int = 0  # the request's chunk number, 1, 2, ... (0: the end-of-stream job)
    absorbed: int = 0  # earlier chunks of the request joined into this one (AudioWorker's merge_tokens)

    @property
    def is_decode(self) -> bool:
        return self.tokens is not None

    def joined(self, later: "AudioJob") -> "AudioJob":
        """This chunk and the request's next one as one: their tokens, the later one's flush and number, the sentence
        ends of both (the later one's offset by this one's tokens), this one's submission time."""
        n = len(self.tokens)
        return AudioJob(self.handle, self.tokens + later.tokens, later.flush, self.submitted,
                        self.ended + [(sentence, k + n) for sentence, k in later.ended], urgent=False,
                        index=later.index, absorbed=self.absorbed + 1 + later.absorbed)


class _JobThread(abc.ABC):
    """A queue of jobs and the thread that runs them (``_loop``), started by the first job."""

    THREAD_NAME = "mamtra-audio"

    def __init__(self, run_batch: Callable[[list[AudioJob]], None], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._jobs: deque[AudioJob] = deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def _accepts(self, job: AudioJob) -> bool:
        return True

    def submit(self, job: AudioJob) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[AudioJob]) -> None:
        """Queue jobs in order, all at once: a round never sees only some of them (the engine hands over one step's
        chunks together, so they can share a batch)."""
        jobs = [job for job in jobs if self._accepts(job)]
        if not jobs:
            return
        with self._cv:
            if self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.THREAD_NAME, daemon=True)
                self._thread.start()
            self._jobs.extend(jobs)
            self._cv.notify()

    def shutdown(self) -> None:
        """Drop what is queued and stop after the round in progress."""
        with self._cv:
            self._stopped = True
            self._jobs.clear()
            self._cv.notify()

    @abc.abstractmethod
    def _loop(self) -> None:
        """The thread: take queued jobs (under ``_cv``) and run them until ``shutdown``."""


class AudioWorker(_JobThread):
    def __init__(self, *, run_batch: Callable[[list[AudioJob]], None], run_end: Callable[[AudioJob], None],
                 max_batch: int, max_wait_s: float = 0.0, urgent_first: bool = True, merge_tokens: int = 0) -> None:
        super().__init__(run_batch, max_batch)
        self._run_end = run_end
        self.max_wait_s = max_wait_s
        # urgent jobs cut the fill wait and run first, in batches of their own; off: they are jobs like the others
        # (where an UrgentLane delivers them, the worker's copy only continues its decoder state)
        self.urgent_first = urgent_first
        # > 0: a request's consecutive steady chunks queued in one round decode as one push of up to this many tokens
        self.merge_tokens = merge_tokens
        self._fill_s = 0.0  # how long the next round lets its batch fill (0 without a backlog)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopped:
                    self._cv.wait()
                if self._fill_s > 0:
                    deadline = time.perf_counter() + self._fill_s
                    while (not self._stopped and len(self._jobs) < self.max_batch
                           and not (self.urgent_first and any(job.urgent for job in self._jobs))):
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._cv.wait(remaining)
                if self._stopped:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
            start = time.perf_counter()
            try:
                self._round(jobs)
            except Exception:  # run_batch / run_end handle their own faults; this is a last resort
                log.exception("audio worker round failed")
            with self._cv:
                backlog = bool(self._jobs)
            self._fill_s = min(time.perf_counter() - start, self.max_wait_s) if backlog else 0.0

    def _round(self, jobs: list[AudioJob]) -> None:
        """The requests with an urgent job first, as batches of their own (a small batch is quick), then the rest;
        a request's jobs all go in one of the two, in order. Without ``urgent_first``: all in one."""
        urgent = {id(job.handle) for job in jobs if job.urgent} if self.urgent_first else set()
        if urgent and len(urgent) < len({id(job.handle) for job in jobs}):
            self._run_in_order([job for job in jobs if id(job.handle) in urgent])
            self._run_in_order([job for job in jobs if id(job.handle) not in urgent])
        else:
            self._run_in_order(jobs)

    @staticmethod
    def _waves(jobs: list[AudioJob]) -> list[AudioJob]:
        """``jobs`` reordered in waves (the module docstring): each request's first decode job with the end jobs
        that follow it, for every request in order of first appearance, then each request's second, ...; an end job
        with no decode job of its request before it in ``jobs`` comes first. Each request's jobs keep their order."""
        lead: list[AudioJob] = []
        groups: dict[int, list[list[AudioJob]]] = {}  # request -> [decode job, the end jobs after it], in order
        for job in jobs:
            mine = groups.setdefault(id(job.handle), [])
            if job.is_decode:
                mine.append([job])
            elif mine:
                mine[-1].append(job)
            else:
                lead.append(job)
        out = lead
        for k in range(max((len(g) for g in groups.values()), default=0)):
            for mine in groups.values():
                if k < len(mine):
                    out += mine[k]
        return out

    def _merged(self, jobs: list[AudioJob]) -> list[AudioJob]:
        """``jobs`` with each request's consecutive steady chunks joined (``AudioJob.joined``) while their tokens fit
        ``merge_tokens``: a backlog of several chunks a request (the audio stage behind the LM) decodes in fewer,
        wider pushes. Not joined: urgent chunks (the urgent lane decodes them too, by number), a chunk after a flush
        (a new decode session) or after the request's end job, and nothing at all without ``merge_tokens``."""
        if self.merge_tokens <= 0:
            return jobs
        out: list[AudioJob] = []
        open_at: dict[int, int] = {}  # request -> position in ``out`` of its last job, while another may join it
        for job in jobs:
            key = id(job.handle)
            i = open_at.pop(key, None)
            if (i is not None and job.is_decode and not job.urgent
                    and len(out[i].tokens) + len(job.tokens) <= self.merge_tokens):
                out[i] = out[i].joined(job)
            else:
                i = len(out)
                out.append(job)
            if out[i].is_decode and not out[i].urgent and not out[i].flush:
                open_at[key] = i
        return out

    def _run_in_order(self, jobs: list[AudioJob]) -> None:
        jobs = self._waves(self._merged(jobs))
        batch: list[AudioJob] = []
        in_batch: set[int] = set()
        ends: list[AudioJob] = []  # end-of-stream jobs of requests in ``batch``: run right after it
        for job in jobs:
            if not job.is_decode:
                if id(job.handle) in in_batch:
                    ends.append(job)  # not a reason to cut the batch: every request ends with a chunk then this
                else:
                    self._run_end(job)  # its chunks went in earlier batches
                continue
            if batch and (id(job.handle) in in_batch or len(batch) >= self.max_batch):
                self._run(batch, ends)
                batch, in_batch, ends = [], set(), []
            batch.append(job)
            in_batch.add(id(job.handle))
        if batch:
            self._run(batch, ends)

    def _run(self, batch: list[AudioJob], ends: list[AudioJob]) -> None:
        self._run_batch(batch)
        for job in ends:
            self._run_end(job)


class UrgentLane(_JobThread):
    """Runs urgent jobs as they come, at most ``max_batch`` distinct requests a batch (a request's next job waits for
    the next batch), with no fill wait; ``idle`` is called about every ``idle_s`` seconds while nothing is queued (the
    engine releases the lane's decoder streams of finished requests there). Jobs may be dropped by ``run_batch``
    without harm: the ``AudioWorker`` decodes them too."""

    THREAD_NAME = "mamtra-audio-urgent"

    def __init__(self, *, run_batch: Callable[[list[AudioJob]], None], max_batch: int,
                 idle: Callable[[], None] | None = None, idle_s: float = 1.0, max_index: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(run_batch, max_batch)
        if name is not None:
            self.THREAD_NAME = name  # the thread's name (another lane beside this one)
        self._idle = idle
        self.idle_s = idle_s
        self.max_index = max_index  # only a request's first this many chunks (None: every urgent one)

    def _accepts(self, job: AudioJob) -> bool:
        # steady chunks and request ends are the worker's only
        return job.urgent and job.is_decode and (self.max_index is None or job.index <= self.max_index)

    def _take(self) -> list[AudioJob]:
        """The next batch: queued jobs in order, one per request (a request's later job stays queued behind its
        earlier one), at most ``max_batch``. Called with the lock held."""
        batch: list[AudioJob] = []
        kept: deque[AudioJob] = deque()
        seen: set[int] = set()
        for job in self._jobs:
            if id(job.handle) in seen or len(batch) >= self.max_batch:
                kept.append(job)
            else:
                batch.append(job)
            seen.add(id(job.handle))
        self._jobs = kept
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopped:
                    if not self._cv.wait(self.idle_s) and self._idle is not None and not self._jobs:
                        self._cv.release()
                        try:
                            self._idle()
                        except Exception:
                            log.exception("urgent audio lane: idle clean-up failed")
                        finally:
                            self._cv.acquire()
                if self._stopped:
                    return
                batch = self._take()
            try:
                self._run_batch(batch)
            except Exception:  # run_batch handles its own faults; this is a last resort (the worker has the jobs)
                log.exception("urgent audio lane: a batch failed")
