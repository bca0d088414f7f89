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
- the audio is released at that arrival less the audio held (or at once, if that is past); each chunk made while
  the audio is held plans again, so a chunk later than predicted moves the release with it. A chunk that ends the
  request's audio for now (a flush: the text is spoken, or more is awaited) releases it, and no hold lasts longer
  than ``max_hold_s``.

Once released a stream is never held again: what the client then hears is the engine keeping up.
"""

from __future__ import annotations

import threading


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

    def __init__(self, *, chunk_tokens: int, align_chunks: bool, urgent_chunks: int, max_hold_s: float = 2.0) -> None:
        self.chunk_tokens = chunk_tokens
        self.align_chunks = align_chunks
        self.urgent_chunks = urgent_chunks
        self.max_hold_s = max_hold_s
        self.step = Smoothed()
        self.urgent = Smoothed()  # a request's first ``urgent_chunks`` chunks
        self.steady = Smoothed()
        self._lock = threading.Lock()

    def stepped(self, seconds: float) -> None:
        """Engine thread: one step's period."""
        self.step.add(seconds)

    def delivered(self, index: int, seconds: float) -> None:
        """An audio path: chunk ``index`` of a request was posted ``seconds`` after its tokens were handed over."""
        with self._lock:
            (self.urgent if index <= self.urgent_chunks else self.steady).add(seconds)

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

    def next_arrival(self, *, now: float, next_index: int, submitted_at: float | None, pending: int,
                     steps: int) -> float:
        """When chunk ``next_index`` should be posted: from its submission if it has been handed to audio, else
        from the steps until its tokens close."""
        audio = (self.urgent if next_index <= self.urgent_chunks else self.steady).value
        if submitted_at is not None:
            return max(submitted_at + audio, now)
        # d steps: d times the mean period, and a deviation that grows as √d (steps' spreads partly cancel)
        d = self.steps_to_close(pending, steps)
        step = self.step.mean or 0.0
        return now + d * step + 2 * d ** 0.5 * self.step.dev + audio

    def release_at(self, *, held_since: float, held_s: float, next_arrival: float) -> float:
        """When to release ``held_s`` seconds of audio held since ``held_since`` (a time already past: at once)."""
        return min(next_arrival - held_s, held_since + self.max_hold_s)
