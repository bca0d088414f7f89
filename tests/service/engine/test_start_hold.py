"""The start hold (``MAMTRA_START_HOLD``): a request's first audio waits while its next chunk is predicted late."""

import asyncio

import pytest

from service.engine.start_hold import Smoothed, StartHold
from tests.service.engine.fakes import make_engine


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_smoothed_is_a_mean_plus_twice_its_deviation():
    s = Smoothed()
    assert s.value == 0.0  # nothing seen: no delay predicted
    s.add(0.1)
    assert s.value == pytest.approx(0.1 + 2 * 0.05)
    for _ in range(200):
        s.add(0.1)
    assert s.value == pytest.approx(0.1, abs=1e-6)  # a steady delay: its deviation decays away
    s.add(0.5)  # one late sample raises the estimate by more than its share of the mean
    assert s.value > 0.1 + (0.5 - 0.1) / 8 + 0.15


@pytest.mark.parametrize("align", [True, False])
def test_steps_to_close_follows_the_engines_chunk_rule(align):
    """The plan's count of steps until a later chunk closes is the step the engine's own rule would close it at."""
    c = 16
    hold = StartHold(chunk_tokens=c, align_chunks=align, urgent_chunks=2)
    engine = make_engine(chunk_tokens=c, align_chunks=align)

    class Handle:
        chunks_submitted = 1
        tokens: list = []

    for steps in range(0, 40):
        for pending in range(0, 2 * c):
            engine._steps, d = steps, 0
            Handle.tokens = [0] * pending
            while True:  # one token a step, the engine's clock advancing with it
                d += 1
                engine._steps, Handle.tokens = steps + d, [0] * (pending + d)
                if engine._chunk_ready(Handle):
                    break
            assert hold.steps_to_close(pending, steps) == d, (steps, pending)


def test_the_plan_releases_at_once_when_the_next_chunk_is_due_in_time_and_holds_when_it_is_late():
    hold = StartHold(chunk_tokens=16, align_chunks=False, urgent_chunks=2, max_hold_s=2.0)
    for _ in range(50):
        hold.stepped(0.004)  # 4 ms steps
        hold.delivered(2, 0.05)  # chunk 2's audio stage 50 ms
    # light load: 16 steps x 4 ms + 50 ms = 114 ms < the 240 ms held
    arrival = hold.arrivals(now=10.0, first_index=2, submitted={}, pending=0, steps=0, owed=(0,))[0]
    assert arrival == pytest.approx(10.0 + 16 * 0.004 + 0.05, abs=1e-3)
    hold.stepped(0.012)  # one slow step: 16 steps' deviation grows as 4 (√16) deviations of one, not 16
    dev = hold.step.dev
    arrival = hold.arrivals(now=10.0, first_index=2, submitted={}, pending=0, steps=0, owed=(0,))[0]
    assert arrival == pytest.approx(10.0 + 16 * hold.step.mean + 2 * 4 * dev + hold.urgent.value)
    assert hold.release_at(held_since=10.0, held_s=0.24, arrivals=[arrival]) <= 10.0
    # loaded: 15 ms steps and a 500 ms audio stage: chunk 2 due at +0.74 s, the audio held until +0.5 s
    for _ in range(200):
        hold.stepped(0.015)
        hold.delivered(2, 0.5)
    arrival = hold.arrivals(now=10.0, first_index=2, submitted={}, pending=0, steps=0, owed=(0,))[0]
    assert hold.release_at(held_since=10.0, held_s=0.24, arrivals=[arrival]) == pytest.approx(
        10.0 + 16 * 0.015 + 0.5 - 0.24, abs=1e-3)
    # a chunk already handed to audio is due its audio stage after that; one overdue is due now
    due = hold.arrivals(now=10.0, first_index=2, submitted={2: 9.8}, pending=0, steps=0, owed=(0,))[0]
    assert due == pytest.approx(10.3)
    assert hold.arrivals(now=10.0, first_index=2, submitted={2: 9.0}, pending=0, steps=0, owed=(0,))[0] == 10.0
    # never held longer than the cap
    assert hold.release_at(held_since=9.0, held_s=0.24, arrivals=[20.0]) == 11.0


def test_a_burst_is_planned_from_the_chunks_owed_to_running_streams():
    """With ``load`` a chunk's audio stage is at least the chunks up to its index owed to other streams (and its own)
    times a round's cost per chunk; rounds of a few chunks (their fixed cost dominates) are not counted."""
    hold = StartHold(chunk_tokens=16, align_chunks=False, urgent_chunks=2, load=True)
    for _ in range(50):
        hold.delivered(2, 0.05)  # before the burst: chunk 2's audio stage 50 ms
        hold.round(4, 0.2)  # small rounds: not a cost per chunk
    assert hold.per_chunk.mean is None and hold.audio(2, 200) == pytest.approx(0.05, abs=1e-3)
    for _ in range(50):
        hold.round(64, 0.064)  # 1 ms a chunk
    assert hold.audio(2, 0) == pytest.approx(0.05, abs=1e-3)  # nothing owed: the measured delay
    assert hold.audio(2, 10) == pytest.approx(0.05, abs=1e-3)  # 11 chunks' 11 ms: less than measured
    assert hold.audio(2, 255) == pytest.approx(0.256, abs=1e-3)  # the burst: 256 chunks' 256 ms
    hold.load = False
    assert hold.audio(2, 255) == pytest.approx(0.05, abs=1e-3)


def test_the_plan_looks_ahead_until_the_held_audio_and_the_chunks_before_run_out():
    hold = StartHold(chunk_tokens=16, align_chunks=False, urgent_chunks=2, lookahead=2)
    for _ in range(200):
        hold.stepped(0.01)  # 10 ms steps
        hold.delivered(2, 0.1)  # chunk 2's audio stage 100 ms
        hold.delivered(3, 0.6)  # chunk 3's 600 ms (steady chunks wait behind a burst's urgent ones)
    # chunk 2 closes in 16 steps (160 ms) and arrives at +0.26 s; chunk 3 closes 16 steps later, at +0.92 s
    a2, a3 = hold.arrivals(now=10.0, first_index=2, submitted={}, pending=0, steps=0, owed=(0, 0))
    assert a2 == pytest.approx(10.26, abs=1e-3) and a3 == pytest.approx(10.92, abs=1e-3)
    # 0.24 s held: chunk 2 alone allows a release at +0.02 s, but chunk 3 comes after chunk 2's 0.64 s would
    # have played too: released at +0.92 - 0.24 - 0.64 = +0.04 s
    assert hold.release_at(held_since=10.0, held_s=0.24, arrivals=[a2], chunk_s=0.64) == pytest.approx(10.02, abs=1e-3)
    assert hold.release_at(held_since=10.0, held_s=0.24, arrivals=[a2, a3], chunk_s=0.64) == pytest.approx(
        10.04, abs=1e-3)
    # chunk 2 handed to audio at 9.9: it is due at 10.0; chunk 3's pending tokens close in 16 - 5 steps
    a2, a3 = hold.arrivals(now=10.0, first_index=2, submitted={2: 9.9}, pending=5, steps=0, owed=(0, 0))
    assert a2 == pytest.approx(10.0, abs=1e-3) and a3 == pytest.approx(10.0 + 0.11 + 0.6, abs=1e-3)


def test_the_engine_counts_the_chunks_owed_to_other_admitted_open_streams():
    engine = make_engine(start_hold=True, start_hold_load=True, start_hold_lookahead=2)

    class H:
        def __init__(self, settled, admitted=1.0, closed=False):
            self.settled, self.admitted_at, self.closed = settled, admitted, closed

    me = H(1)
    engine._handles = {i: h for i, h in enumerate([me, H(0), H(1), H(2), H(3), H(0, admitted=None), H(1, closed=True)])}
    # the others admitted and open have had 0, 1, 2 and 3 chunks delivered: up to chunk 2 they are owed 2 + 1
    # chunks, up to chunk 3 3 + 2 + 1
    assert engine._owed(me, 2, 2) == [3, 6]
    engine._hold.load = False
    assert engine._owed(me, 2, 2) == [0, 0]


def _lateness(engine, n_requests):
    """Play each request in turn (a client that plays from its first chunk's arrival): the worst lateness of a
    chunk behind the audio before it, per request, and its time to first audio."""
    async def main():
        await engine.start()
        loop = asyncio.get_running_loop()
        results = []
        try:
            for i in range(n_requests):
                start = loop.time()
                handle = engine.synthesize("A long enough sentence.", voice="ava", request_id=f"r{i}")
                first, audio, late = None, 0.0, 0.0
                async for chunk in handle.chunks():
                    now = loop.time()
                    first = now if first is None else first
                    late = max(late, now - first - audio)
                    audio += chunk.duration
                results.append((late, first - start))
        finally:
            await engine.stop()
        return results

    return run(main())


# A slow audio stage: each push takes 0.3 s (serially, one audio thread); the first chunk is 2 tokens (80 ms of
# audio), later chunks 12 (480 ms, 1.6x real time). A client playing on arrival runs dry after the first chunk.
_SLOW = dict(cap_seconds=1.6, first_chunk_tokens=2, chunk_tokens=12, decode_delay_s=0.3, align_chunks=False,
             client_queue_chunks=8)


def test_without_the_hold_a_slow_audio_stage_leaves_the_player_dry_after_the_first_chunk():
    results = _lateness(make_engine(**_SLOW), 3)
    assert all(late > 0.15 for late, _ in results[1:]), results


@pytest.mark.parametrize("plan", [dict(start_hold_lookahead=1, start_hold_load=False), dict()])
def test_the_hold_keeps_the_first_audio_until_the_next_chunk_is_due(plan):
    """After the first request (nothing measured yet: not held), the hold has the audio stage's delay and keeps
    each request's first chunk back until the second is about due: no chunk comes late, the first audio later."""
    engine = make_engine(start_hold=True, **_SLOW, **plan)
    results = _lateness(engine, 3)
    assert results[0][0] > 0.15  # the first: nothing measured, nothing held
    for late, ttfa in results[1:]:
        assert late < 0.06, results
        assert ttfa > 0.45, results  # its first chunk (~0.3 s) waited for the second (~0.6 s) less 80 ms
    value = engine.metrics.registry.get_sample_value
    held = value("mamtra_first_audio_stage_seconds_sum", {"chunk": "1", "stage": "hold"})
    assert value("mamtra_first_audio_stage_seconds_count", {"chunk": "1", "stage": "hold"}) == 3
    assert held > 2 * 0.15


def test_a_chunk_that_ends_the_audio_releases_it_and_a_fast_audio_stage_holds_nothing():
    """One short sentence: its audio ends with a flush, which releases it at once; and with an audio stage that
    keeps up, the plan releases each first chunk as it comes."""
    engine = make_engine(start_hold=True, cap_seconds=0.4, first_chunk_tokens=2, chunk_tokens=4)
    results = _lateness(engine, 4)
    assert all(late < 0.05 for late, _ in results), results
    value = engine.metrics.registry.get_sample_value
    assert value("mamtra_first_audio_stage_seconds_count", {"chunk": "1", "stage": "hold"}) == 4
    assert value("mamtra_first_audio_stage_seconds_sum", {"chunk": "1", "stage": "hold"}) < 4 * 0.05
