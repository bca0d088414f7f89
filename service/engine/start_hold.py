"""The start hold: under load, a request's first audio waits until the client will not run dry right after it.

A client that plays a stream as it arrives (a browser's audio element, ``curl | ffplay``) goes silent whenever the
next chunk comes after the audio it has runs out. The first chunk is short (``MAMTRA_FIRST_CHUNK_TOKENS`` tokens
hold back ~6 for the codec's look-ahead: ~0.24 s of audio), so when the server is busy — a burst of arrivals, a
full pool — the second chunk's tokens and audio take longer than the first plays, and nearly every new stream
stalls once in its first second. Releasing the first audio later, with the next chunk already in hand or due in
time, turns that stall into a longer wait for the first sound; a player that buffers does the same, but for every
request, loaded or not. The server knows its load, so it holds only when the next chunk is predicted late:

- the next chunk's arrival = when its tokens close (its remaining steps × the engine's step period) + its audio
  stage (submitted → posted), or, once submitted, its submission + that stage;
- each estimate is a smoothed mean plus twice its mean deviation (the way TCP sizes its retransmission timeout), of
  recent chunks' audio stage, the urgent chunks and the steady ones apart, and of the engine's recent step periods
  (for d steps: d means and √d deviations);
- a burst is planned from the load it brings, not only from the chunks measured before it (which came before the
  burst and were quick): a chunk's audio stage is at least the chunks up to its index still owed to the other
  streams now running (the audio worker decodes every chunk of every stream, a stream's in order) times an audio
  round's cost per chunk (``load=True``). A round is mostly fixed cost, so this overstates a burst's audio stage: a
  margin the burst's tail needs (docs/BENCHMARKS.md §4 AL);
- the plan looks ``lookahead`` chunks ahead: the audio held and the chunks due before each (a chunk's audio
  assumed ``chunk_tokens`` long) must last until that one arrives;
- the audio is released at the latest of those times (or at once, if that is past); each chunk made while the
  audio is held plans again, so a chunk later than predicted moves the release with it. A chunk that ends the
  request's audio for now (a flush: the text is spoken, or more is awaited) releases it, and no hold lasts longer
  than ``max_hold_s``.

Once released a stream is never held again: what the client then hears is the engine keeping up.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

# audio rounds of fewer chunks than this tell little of the cost per chunk (a round's fixed cost dominates them)
MIN_ROUND = 8


class Smoothed:
    """A running estimate of a delay: mean + 2 · mean deviation, each an exponential average (α 1/8, β 1/4)."""

    def __init__(self) -> None:
        self.mean: float | None = None
        self.dev = 0.0

    def add(self, seconds: float) -> None:
        if self.mean is None:
            self.mean, self.dev = seconds, seconds / 2
            return
        self.dev += (abs(seconds - self.mean) - self.dev) / 4
        self.mean += (seconds - self.mean) / 8

    @property
    def value(self) -> float:
        return 0.0 if self.mean is None else self.mean + 2 * self.dev


class StartHold:
    """The estimates and the plan. Written by the engine thread (step periods) and the audio paths (their chunks'
    audio stage, under one lock); planned under the engine's emit lock."""

    def __init__(self, *, chunk_tokens: int, align_chunks: bool, urgent_chunks: int, max_hold_s: float = 2.0,
                 lookahead: int = 2, load: bool = True) -> None:
        self.chunk_tokens = chunk_tokens
        self.align_chunks = align_chunks
        self.urgent_chunks = urgent_chunks
        self.max_hold_s = max_hold_s
        self.lookahead = max(1, lookahead)
        self.load = load
        self.step = Smoothed()
        self.urgent = Smoothed()  # a request's first ``urgent_chunks`` chunks
        self.steady = Smoothed()
        self.per_chunk = Smoothed()  # an audio round's seconds per chunk (rounds of at least MIN_ROUND chunks)
        self._lock = threading.Lock()

    def stepped(self, seconds: float) -> None:
        """Engine thread: one step's period."""
        self.step.add(seconds)

    def delivered(self, index: int, seconds: float) -> None:
        """An audio path: chunk ``index`` of a request was posted ``seconds`` after its tokens were handed over."""
        with self._lock:
            (self.urgent if index <= self.urgent_chunks else self.steady).add(seconds)

    def round(self, chunks: int, seconds: float) -> None:
        """An audio path: a round decoded ``chunks`` chunks in ``seconds``."""
        if chunks >= MIN_ROUND:
            with self._lock:
                self.per_chunk.add(seconds / chunks)

    def audio(self, index: int, owed: int = 0) -> float:
        """The predicted audio stage of a request's chunk ``index``, ``owed`` chunks up to that index being due to
        other streams (counted with ``load``)."""
        est = (self.urgent if index <= self.urgent_chunks else self.steady).value
        if self.load and owed and self.per_chunk.mean is not None:
            est = max(est, (owed + 1) * self.per_chunk.mean)
        return est

    def steps_to_close(self, pending: int, steps: int) -> int:
        """Engine steps until a later chunk with ``pending`` tokens closes, the engine having run ``steps`` steps
        (the rule of ``Engine._chunk_ready``: every ``chunk_tokens`` steps on the step clock, with at least half a
        chunk, or at twice a chunk)."""
        c = self.chunk_tokens
        if not self.align_chunks:
            return max(c - pending, 1)
        for d in range(1, 2 * c + 1):
            n, s = pending + d, steps + d
            if (n >= max(1, c // 2) and s % c == 0) or n >= 2 * c:
                return d
        return 2 * c

    def arrivals(self, *, now: float, first_index: int, submitted: Mapping[int, float], pending: int, steps: int,
                 owed: Sequence[int]) -> list[float]:
        """When chunks ``first_index``, ``first_index + 1``, … (one per entry of ``owed``, the chunks up to that index
        due to other streams) should be posted. ``pending`` tokens are made towards the first not submitted; each
        after it closes ``chunk_tokens`` steps later."""
        out = []
        d = 0  # steps from now until the chunk before closes (0: it has)
        for k, n in enumerate(owed):
            index = first_index + k
            audio = self.audio(index, n)
            if index in submitted:
                out.append(max(submitted[index] + audio, now))
                continue
            d = self.steps_to_close(pending, steps) if d == 0 else d + self.chunk_tokens
            # d steps: d times the mean period, and a deviation that grows as √d (steps' spreads partly cancel)
            out.append(now + d * (self.step.mean or 0.0) + 2 * d ** 0.5 * self.step.dev + audio)
        return out

    def release_at(self, *, held_since: float, held_s: float, arrivals: Sequence[float], chunk_s: float = 0.0
                   ) -> float:
        """When to release ``held_s`` seconds of audio held since ``held_since`` (a time already past: at once): when
        it and the chunks due before each of ``arrivals`` (``chunk_s`` seconds each) last until that one comes."""
        due = max(a - held_s - k * chunk_s for k, a in enumerate(arrivals))
        return min(due, held_since + self.max_hold_s)
