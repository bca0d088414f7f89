"""The urgent lane: a second decoder for requests' first chunks, beside the audio worker. Whichever path decodes a
chunk first delivers it; the audio a client gets is the same with or without the lane, whatever the lane does
(fast, slow, failing), and the lane's decoder streams are all released."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.engine.audio_worker import AudioJob, UrgentLane
from tests.conftest import collect_chunks
from tests.service.engine.fakes import SAMPLES_PER_TOKEN, ClosingToneDecoder, make_engine

TEXTS = [f"Request number {i} speaks now. Then it says more." for i in range(4)]


def test_the_lane_batches_one_urgent_job_per_request_in_order_and_cleans_up_when_idle():
    batches, idle, done = [], [], threading.Event()

    def run_batch(batch):
        batches.append([job.tokens[0] for job in batch])
        if sum(map(len, batches)) == 4:
            done.set()

    lane = UrgentLane(run_batch=run_batch, max_batch=2, idle=lambda: idle.append(1), idle_s=0.05)
    a, b, c = "A", "B", "C"
    with lane._cv:  # queued before the thread looks: one hand-over
        lane.submit_many([AudioJob(a, ["a1"], urgent=True), AudioJob(a, ["a2"], urgent=True),
                          AudioJob(b, ["b3"]), AudioJob(b, None), AudioJob(b, ["b1"], urgent=True),
                          AudioJob(c, ["c1"], urgent=True)])
    assert done.wait(5)
    time.sleep(0.2)
    lane.shutdown()
    assert batches == [["a1", "b1"], ["a2", "c1"]]  # steady chunks and ends are the worker's only
    assert idle


async def _serve(engine, texts):
    await engine.start()
    try:
        handles = [engine.synthesize(t, voice="ava", request_id=f"r{i}", seed=i) for i, t in enumerate(texts)]
        results = await asyncio.gather(*(collect_chunks(h) for h in handles))
        await asyncio.sleep(0.3)  # the lane's idle clean-up
        return results
    finally:
        await engine.stop()


def _run(texts=TEXTS, urgent=None, worker_delay_s=0.05, cap_seconds=0.8, **kw):
    engine = make_engine(max_streams=4, max_queue=4, cap_seconds=cap_seconds, batching=True,
                         decode_delay_s=worker_delay_s, urgent_decoder=urgent, **kw)
    if engine._lane is not None:
        engine._lane.idle_s = 0.05
    results = asyncio.run(asyncio.wait_for(_serve(engine, texts), 60))
    counts = {r: engine.metrics.urgent_lane_chunks.labels(result=r)._value.get()
              for r in ("won", "lost", "skipped", "failed")}
    return results, counts, engine


def _same_audio(a, b):
    for x, y in zip(a, b, strict=True):
        assert [c.seq for c in y] == list(range(len(y)))
        assert np.array_equal(np.concatenate([c.pcm for c in x]), np.concatenate([c.pcm for c in y]))
        assert [w.word for c in x for w in c.words] == [w.word for c in y for w in c.words]
        assert sum(len(c.pcm) for c in y) == 40 * SAMPLES_PER_TOKEN  # two sentences of 0.8 s: nothing twice


@pytest.fixture(scope="module")
def without_lane():
    return _run()[0]


def test_a_fast_lane_delivers_first_chunks_and_the_audio_is_unchanged(without_lane):
    urgent = ClosingToneDecoder()
    results, counts, engine = _run(urgent=urgent)
    _same_audio(without_lane, results)
    assert counts["won"] >= 4 and counts["failed"] == 0  # every request's first chunk at least
    assert engine.metrics.registry.get_sample_value(
        "mamtra_first_audio_stage_seconds_count", {"chunk": "1", "stage": "audio_decode"}) == 4
    assert urgent.streams and urgent.open_streams == 0  # every lane stream released
    # the first two chunks of a request went through the lane, no more (and the warm-up's four tokens)
    first_two = {sum(len(c.pcm) for c in chunks[:2]) // SAMPLES_PER_TOKEN for chunks in results}
    assert all(len(s.pushed) in first_two | {4} for s in urgent.streams)


def test_a_slow_lane_loses_to_the_worker_and_changes_nothing(without_lane):
    urgent = ClosingToneDecoder(delay_s=0.3)
    results, counts, _ = _run(urgent=urgent, worker_delay_s=0.0)
    _same_audio(without_lane, results)
    assert counts["lost"] + counts["skipped"] >= 1 and counts["failed"] == 0
    assert urgent.open_streams == 0


def test_a_failing_lane_leaves_every_chunk_to_the_worker(without_lane):
    urgent = ClosingToneDecoder(fail=True)
    results, counts, _ = _run(urgent=urgent)
    _same_audio(without_lane, results)
    assert counts["won"] == 0 and counts["failed"] >= 1  # (a first chunk the worker settled first is only skipped)
    assert urgent.open_streams == 0


def test_a_request_shorter_than_its_urgent_chunks_releases_its_lane_stream():
    urgent = ClosingToneDecoder()
    results, counts, _ = _run(texts=["Hi."], urgent=urgent, cap_seconds=0.4,
                                first_chunk_tokens=12)  # one chunk: the flush
    assert [len(c.pcm) for c in results[0]] == [10 * SAMPLES_PER_TOKEN]
    assert counts["won"] + counts["lost"] == 1
    assert len(urgent.streams) == 2 and urgent.open_streams == 0  # the warm-up's and the request's


def test_no_lane_without_urgent_chunks():
    engine = make_engine(urgent_decoder=ClosingToneDecoder(), urgent_chunks=0)
    assert engine._lane is None


def test_the_main_worker_runs_urgent_chunks_first_only_without_a_lane_unless_told(monkeypatch):
    import torch

    from service.engine.engine import EngineConfig
    from service.settings import Settings

    assert make_engine()._audio.urgent_first is True
    assert make_engine(urgent_decoder=ClosingToneDecoder())._audio.urgent_first is False  # the lane delivers them
    assert make_engine(urgent_decoder=ClosingToneDecoder(), urgent_first=True)._audio.urgent_first is True
    assert make_engine(urgent_first=False)._audio.urgent_first is False
    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).urgent_first is None
    for value, want in (("on", True), ("off", False)):
        monkeypatch.setenv("MAMTRA_AUDIO_URGENT_FIRST", value)
        assert EngineConfig.from_settings(Settings(), device=cpu).urgent_first is want


def test_the_lanes_batch_comes_from_the_settings(monkeypatch):
    import pydantic
    import torch

    from service.engine.engine import EngineConfig
    from service.settings import Settings

    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).urgent_lane_max_batch == 32
    monkeypatch.setenv("MAMTRA_AUDIO_URGENT_LANE_BATCH", "64")
    config = EngineConfig.from_settings(Settings(), device=cpu)
    assert config.urgent_lane_max_batch == 64
    assert make_engine(urgent_decoder=ClosingToneDecoder(), urgent_lane_max_batch=64)._lane.max_batch == 64
    monkeypatch.setenv("MAMTRA_AUDIO_URGENT_LANE_BATCH", "0")
    with pytest.raises(pydantic.ValidationError):
        Settings()


class _FirstPushes(ClosingToneDecoder):
    """Records, per ``push_many`` call, which of its streams push for the first time (a request's first chunk)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def push_many(self, streams, tokens, flush):
        self.calls.append([not s.flushes for s in streams])
        return super().push_many(streams, tokens, flush)


class _Request:
    """What the lane reads of a request's handle."""

    def __init__(self, name):
        self.id = self.name = name
        self.closed, self.settled, self.urgent_decoder, self.voice, self.speed = False, 0, None, "ava", 1.0


def test_the_lane_decodes_a_batchs_first_chunks_before_its_second_chunks():
    """A lane batch with first chunks of some requests and second chunks of others decodes the first chunks in a
    push of their own, first (time to first audio; fresh streams, which the decoder may replay from a graph)."""
    urgent = _FirstPushes()
    engine = make_engine(urgent_decoder=urgent)
    delivered = []
    engine._deliver = lambda job, pcm, start: delivered.append((job.handle.name, job.index)) or True
    a, b, c, d = (_Request(n) for n in "abcd")
    engine._decode_urgent([AudioJob(a, [1, 2], urgent=True, index=1), AudioJob(d, [1, 2], urgent=True, index=1)])
    engine._decode_urgent([AudioJob(a, [3, 4], urgent=True, index=2), AudioJob(b, [1, 2], urgent=True, index=1),
                           AudioJob(d, [3, 4], urgent=True, index=2), AudioJob(c, [1, 2], urgent=True, index=1)])
    assert urgent.calls == [[True, True], [True, True], [False, False]]
    assert delivered == [("a", 1), ("d", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 2)]
    assert urgent.open_streams == 2  # b's and c's, for their second chunks; a's and d's released


def test_a_first_chunk_lane_delivers_first_chunks_beside_the_urgent_lane_and_the_audio_is_unchanged(without_lane):
    """MAMTRA_AUDIO_FIRST_LANE: a third decoder takes requests' first chunks only, each from a fresh stream closed
    at once; the urgent lane (slow here: its first chunks come late) still carries every request's second chunk."""
    first, urgent = ClosingToneDecoder(), ClosingToneDecoder(delay_s=0.2)
    results, _, engine = _run(urgent=urgent, first_decoder=first, worker_delay_s=0.2)
    _same_audio(without_lane, results)
    won = {r: engine.metrics.first_lane_chunks.labels(result=r)._value.get()
           for r in ("won", "lost", "skipped", "failed")}
    assert won["won"] >= 1 and won["failed"] == 0 and sum(won.values()) <= 4  # first chunks only
    assert first.open_streams == 0 and urgent.open_streams == 0
    first_len = {len(chunks[0].pcm) // SAMPLES_PER_TOKEN for chunks in results}
    assert all(len(s.pushed) in first_len | {4} for s in first.streams)  # one push each (and the warm-up's)
    assert engine._first_lane.max_index == 1 and engine._first_lane._thread.name == "mamtra-audio-first"
    assert make_engine(first_decoder=ClosingToneDecoder())._first_lane is None  # only beside an urgent lane


def test_a_failing_first_chunk_lane_leaves_its_chunks_to_the_other_paths(without_lane):
    results, _, engine = _run(urgent=ClosingToneDecoder(), first_decoder=ClosingToneDecoder(fail=True))
    _same_audio(without_lane, results)
    assert engine.metrics.first_lane_chunks.labels(result="won")._value.get() == 0


def test_a_lane_with_a_chunk_limit_takes_only_those_chunks():
    lane = UrgentLane(run_batch=lambda batch: None, max_batch=4, max_index=1)
    assert lane._accepts(AudioJob("A", [1], urgent=True, index=1))
    assert not lane._accepts(AudioJob("A", [1], urgent=True, index=2))
    assert UrgentLane(run_batch=lambda batch: None, max_batch=4)._accepts(AudioJob("A", [1], urgent=True, index=2))


def test_beside_a_first_chunk_lane_the_urgent_lane_still_delivers_second_chunks(without_lane):
    """The first-chunk lane wins the first chunks; the urgent lane decodes them anyway (the state its second chunk
    continues, delivery lost) and delivers the second chunks before the slow worker."""
    first, urgent = ClosingToneDecoder(), ClosingToneDecoder(delay_s=0.05)
    results, counts, engine = _run(urgent=urgent, first_decoder=first, worker_delay_s=0.3)
    _same_audio(without_lane, results)
    first_won = engine.metrics.first_lane_chunks.labels(result="won")._value.get()
    assert first_won >= 2 and counts["won"] >= 2 and counts["failed"] == 0
    assert counts["won"] + first_won >= 6  # of the 8 first and second chunks, most through the two lanes
    assert first.open_streams == 0 and urgent.open_streams == 0
