"""MAMTRA_AUDIO_MERGE_CHUNKS: with the audio stage behind the LM, a request's queued steady chunks decode as one push
and reach the client as one chunk — the same audio and words as without, fewer chunks, and the back-pressure count
(a request's chunks outstanding) still returns to zero."""

import asyncio

import numpy as np

from tests.conftest import collect_chunks
from tests.service.engine.fakes import SAMPLES_PER_TOKEN, make_engine

TEXTS = [f"Request number {i} speaks now. Then it says more." for i in range(4)]


async def _serve(engine):
    await engine.start()
    try:
        handles = [engine.synthesize(t, voice="ava", request_id=f"r{i}", seed=i) for i, t in enumerate(TEXTS)]
        results = await asyncio.gather(*(collect_chunks(h) for h in handles))
        return results, [h.outstanding for h in handles]
    finally:
        await engine.stop()


def _run(merge):
    # a slow audio stage (0.05 s a batch) behind a fast LM: several chunks a request queue per round
    engine = make_engine(max_streams=4, max_queue=4, cap_seconds=0.8, batching=True, decode_delay_s=0.05,
                         client_queue_chunks=16, audio_merge_chunks=merge)
    results, outstanding = asyncio.run(asyncio.wait_for(_serve(engine), 60))
    return results, outstanding, engine


def test_merged_chunks_carry_the_same_audio_and_words_in_fewer_chunks():
    plain, plain_out, plain_engine = _run(False)
    merged, merged_out, engine = _run(True)
    assert engine._audio.merge_tokens == 2 * engine.config.chunk_tokens and plain_engine._audio.merge_tokens == 0
    for x, y in zip(plain, merged, strict=True):
        assert [c.seq for c in y] == list(range(len(y)))
        assert np.array_equal(np.concatenate([c.pcm for c in x]), np.concatenate([c.pcm for c in y]))
        assert [(w.word, w.start, w.end) for c in x for w in c.words] == \
            [(w.word, w.start, w.end) for c in y for w in c.words]
        assert sum(len(c.pcm) for c in y) == 40 * SAMPLES_PER_TOKEN  # two sentences of 0.8 s, nothing twice
    joined = engine.metrics.audio_chunks_merged._value.get()
    assert joined > 0 and plain_engine.metrics.audio_chunks_merged._value.get() == 0
    assert sum(map(len, merged)) < sum(map(len, plain))
    assert merged_out == plain_out == [0, 0, 0, 0]  # every chunk submitted is accounted for once read


def test_the_setting_reaches_the_engine(monkeypatch):
    import torch

    from service.engine.engine import EngineConfig
    from service.settings import Settings

    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).audio_merge_chunks is True
    monkeypatch.setenv("MAMTRA_AUDIO_MERGE_CHUNKS", "false")
    assert EngineConfig.from_settings(Settings(), device=cpu).audio_merge_chunks is False
