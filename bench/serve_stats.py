"""What ``mamtra bench serve`` computes from the arrival times of audio bytes: percentiles, a simulated player's
underruns, per-stream and aggregate real-time factors. Pure functions on plain lists (no I/O), unit-tested on
synthetic arrivals in ``tests/bench/test_serve.py``.

Conventions:

- Audio is the API's ``pcm``: 24 kHz, 16-bit, mono, so ``BYTES_PER_SECOND`` = 48,000 bytes of audio per second.
- An *arrival* is one read from the socket that carried bytes. TCP may split one server chunk into several reads;
  reads closer together than ``coalesce_s`` are merged into one chunk before gaps are taken (they are one chunk
  to a listener), so the gap percentiles describe the server's pacing, not the socket's segmentation.
- The *player* starts once ``prebuffer_s`` seconds of audio have arrived (0: at the first chunk), plays in real
  time, stalls when it has played everything received so far, and resumes the moment more audio arrives (no
  re-buffering delay). An underrun is one such stall; its length is the wall time the player stood silent.
- Real-time factor here is *audio seconds per wall second* (above 1 is faster than real time): per stream, the
  request's audio over its wall time from sending the request to the last byte; aggregate, every completed
  request's audio over the level's wall time. (The server's ``mamtra_real_time_factor`` is the inverse.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 24_000
BYTES_PER_SECOND = 2 * SAMPLE_RATE  # s16le mono


@dataclass
class RequestRecord:
    """One request as the client saw it; times are ``time.perf_counter()`` seconds."""

    client: int
    sent: float
    status: int | None = None
    arrivals: list[float] = field(default_factory=list)  # one per read that carried bytes
    sizes: list[int] = field(default_factory=list)  # bytes of each read
    ended: float | None = None  # last byte read and the body complete
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.ended is not None and self.error is None

    @property
    def rejected(self) -> bool:
        return self.status == 429

    @property
    def audio_s(self) -> float:
        return sum(self.sizes) / BYTES_PER_SECOND

    def to_json(self) -> dict:
        return {"client": self.client, "status": self.status, "error": self.error, "audio_s": self.audio_s,
                "ttfa_s": self.arrivals[0] - self.sent if self.arrivals else None,
                "wall_s": self.ended - self.sent if self.ended is not None else None, "reads": len(self.arrivals)}


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ..., "max": ..., "n": ...}`` (linear interpolation; None when empty)."""
    out: dict[str, float | None] = {}
    arr = np.asarray(values, dtype=np.float64)
    for q in qs:
        out[f"p{q:g}"] = float(np.percentile(arr, q)) if arr.size else None
    out["max"] = float(arr.max()) if arr.size else None
    out["n"] = int(arr.size)
    return out


def coalesce(arrivals: Sequence[float], sizes: Sequence[int], window_s: float) -> tuple[list[float], list[int]]:
    """Merge reads that follow the previous read within ``window_s`` into it (the chunk's time is its first
    read's)."""
    times: list[float] = []
    counts: list[int] = []
    last = -math.inf
    for t, n in zip(arrivals, sizes):
        if times and t - last < window_s:
            counts[-1] += n
        else:
            times.append(t)
            counts.append(n)
        last = t
    return times, counts


def gaps(arrivals: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(arrivals[:-1], arrivals[1:])]


def player_stalls(arrivals: Sequence[float], seconds: Sequence[float], *, prebuffer_s: float = 0.0
                  ) -> list[tuple[float, float, int]]:
    """The underruns of the player described in the module docstring, for chunks of ``seconds`` of audio arriving at
    ``arrivals``: (seconds of audio played when it ran dry, seconds it stood silent, the number (1, 2, ...) of the
    late chunk whose arrival ended the stall) each. A stream shorter than the pre-buffer plays from its end: no
    underrun. Only stalls between chunks count: the end of the stream is not an underrun."""
    need = min(prebuffer_s, float(sum(seconds)))
    received = 0.0
    runs_dry: float | None = None  # wall time at which the player will have played everything received
    stalls: list[tuple[float, float, int]] = []
    for k, (t, a) in enumerate(zip(arrivals, seconds), start=1):
        if runs_dry is None:
            received += a
            if received >= need - 1e-12:
                runs_dry = t + received
            continue
        if t > runs_dry:
            stalls.append((received, t - runs_dry, k))
            runs_dry = t + a
        else:
            runs_dry += a
        received += a
    return stalls


def player_underruns(arrivals: Sequence[float], seconds: Sequence[float], *, prebuffer_s: float = 0.0
                     ) -> tuple[int, float]:
    """(underrun events, total stalled seconds) of ``player_stalls``."""
    stalls = player_stalls(arrivals, seconds, prebuffer_s=prebuffer_s)
    return len(stalls), sum(s for _, s, _ in stalls)


# where in the stream a player runs dry (seconds of audio played): at the start (the first chunks' audio) or later
STALL_POSITIONS = (("<1s", 0.0, 1.0), ("1-3s", 1.0, 3.0), (">=3s", 3.0, float("inf")))
# which chunk (as the listener sees them, after ``coalesce``) came late: the second (the first chunk's audio ran out),
# the third, ... — whether the start's urgent chunks or the steady stream's make the stalls
STALL_CHUNKS = (("2", 2, 3), ("3", 3, 4), ("4-6", 4, 7), ("7+", 7, math.inf))


def _bin(bins: Sequence[tuple[str, float, float]], value: float) -> str:
    """The name of the (name, low, high) bin that holds ``value`` (low <= value < high)."""
    return next(name for name, lo, hi in bins if lo <= value < hi)


# Players that buffer this much audio before they start, besides the level's own ``prebuffer_s``: how the underruns
# fall with a buffer (a strict player at 0 s is the harshest; browsers and phone players buffer ~0.1-0.5 s)
PLAYER_PREBUFFERS = (0.0, 0.1, 0.2, 0.3, 0.5)


def level_summary(records: Sequence[RequestRecord], *, wall_s: float, prebuffer_s: float = 0.0,
                  coalesce_s: float = 0.001) -> dict:
    """Everything one concurrency level reports, from its requests."""
    ttfa, all_gaps, per_stream = [], [], []
    # per player buffer (the level's own among them, replayed once): underrun events, stalled seconds, requests
    players = {p: {"events": 0, "stall_s": 0.0, "requests_with_underruns": 0,
                   "events_at": {name: 0 for name, _, _ in STALL_POSITIONS},
                   "events_before_chunk": {name: 0 for name, _, _ in STALL_CHUNKS}}
               for p in (*PLAYER_PREBUFFERS, prebuffer_s)}
    statuses: dict[str, int] = {}
    errors: list[str] = []
    for r in records:
        key = str(r.status) if r.status is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
        if r.error and len(errors) < 5:
            errors.append(r.error)
        if r.arrivals:
            ttfa.append(r.arrivals[0] - r.sent)
        if not r.completed or not r.arrivals:
            continue
        times, sizes = coalesce(r.arrivals, r.sizes, coalesce_s)
        all_gaps += gaps(times)
        chunk_s = [n / BYTES_PER_SECOND for n in sizes]
        for buffer_s, acc in players.items():
            stalls = player_stalls(times, chunk_s, prebuffer_s=buffer_s)
            acc["events"] += len(stalls)
            acc["stall_s"] += sum(s for _, s, _ in stalls)
            acc["requests_with_underruns"] += bool(stalls)
            for played, _, chunk in stalls:  # by the audio played when the player ran dry, and by the late chunk
                acc["events_at"][_bin(STALL_POSITIONS, played)] += 1
                acc["events_before_chunk"][_bin(STALL_CHUNKS, chunk)] += 1
        per_stream.append(r.audio_s / (r.ended - r.sent))
    completed = [r for r in records if r.completed]
    rejected = sum(r.rejected for r in records)
    audio_s = sum(r.audio_s for r in completed)
    per_stream_arr = np.asarray(per_stream)
    return {
        "requests": {"sent": len(records), "completed": len(completed), "rejected_429": rejected,
                     "failed": len(records) - len(completed) - rejected, "statuses": statuses, "errors": errors},
        "wall_s": wall_s,
        "audio_s": audio_s,
        "audio_s_per_request": percentiles([r.audio_s for r in completed], (50,)),
        "ttfa_s": percentiles(ttfa),
        "gap_s": percentiles(all_gaps),
        "underruns": {**players[prebuffer_s], "prebuffer_s": prebuffer_s},
        # the same requests, players with these buffers (seconds)
        "underruns_by_prebuffer": {f"{p:g}": players[p] for p in PLAYER_PREBUFFERS},
        "x_realtime_per_stream": {
            "p50": float(np.percentile(per_stream_arr, 50)) if per_stream else None,
            "p5": float(np.percentile(per_stream_arr, 5)) if per_stream else None,
            "min": float(per_stream_arr.min()) if per_stream else None,
            "mean": float(per_stream_arr.mean()) if per_stream else None},
        "x_realtime_aggregate": audio_s / wall_s if wall_s > 0 else None,
    }


def level_passes(level: dict) -> bool:
    """Every request completed (none rejected or failed) and the player never ran dry."""
    req = level["requests"]
    return req["completed"] > 0 and req["completed"] == req["sent"] and level["underruns"]["events"] == 0


def max_clients_without_underruns(levels: Sequence[dict], prebuffer: str | None = None) -> int | None:
    """The largest concurrency N such that N and every lower level measured pass (``level_passes``): a level that
    passes above a failing one is noise, not capacity. ``prebuffer``: judged for the player of that buffer (a key of
    ``underruns_by_prebuffer``) instead of the level's own."""
    best = None
    for level in sorted(levels, key=lambda lv: lv["clients"]):
        if prebuffer is not None:
            level = {**level, "underruns": level["underruns_by_prebuffer"][prebuffer]}
        if not level_passes(level):
            break
        best = level["clients"]
    return best


def max_clients_by_prebuffer(levels: Sequence[dict]) -> dict[str, int | None]:
    """``max_clients_without_underruns`` for each player buffer of ``PLAYER_PREBUFFERS`` (levels that have them)."""
    if not levels or any("underruns_by_prebuffer" not in lv for lv in levels):
        return {}
    return {key: max_clients_without_underruns(levels, key) for key in levels[0]["underruns_by_prebuffer"]}
