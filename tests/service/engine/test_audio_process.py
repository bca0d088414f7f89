"""The audio stage in a child process (``MAMTRA_AUDIO_PROCESS``): the same audio as in-process, the same failure
semantics (one faulty stream fails, the others go on), state released when requests end, a dead child reported."""

import asyncio
import dataclasses
import os

import numpy as np
import pytest
import torch

from service.engine.audio_process import AudioProcessError, ProcessDecoder
from service.engine.bundle import load_bundle
from service.engine.types import StreamFailed
from tests.conftest import collect_chunks, serve_texts, write_tiny_models
from tests.service.engine.fakes import SAMPLES_PER_TOKEN, SPEECH0, make_engine

FACTORY = "tests.service.engine.fakes:tone_decoder_factory"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("ap"), ["rhvoice-slt", "flite-rms"], model_id="m",
                             voices=[{"id": "slt", "name": "Slt", "speaker": "rhvoice-slt"},
                                     {"id": "rms", "name": "Rms", "speaker": "flite-rms"}])["bundle"]


def test_child_decoder_gives_what_the_local_decoder_gives(bundle):
    from model.codec.stream import bundle_decoder

    import json

    spec = {"device": "cpu", **json.loads((bundle / "pipeline.json").read_text())["decoder"]}
    local = bundle_decoder(bundle, spec)
    remote = ProcessDecoder("model.codec.stream:bundle_decoder", bundle, spec, threads=1)
    try:
        off = spec["token_offset"]
        rng = np.random.default_rng(0)
        toks = [[(rng.integers(0, 64, size=n) + off).tolist() for n in (12, 16, 9)] for _ in range(2)]
        ls = [local.open(v, speed=s) for v, s in (("slt", 1.0), ("rms", 1.3))]
        rs = [remote.open(v, speed=s) for v, s in (("slt", 1.0), ("rms", 1.3))]
        for k in range(3):
            flush = [k == 2, k == 2]
            want = local.push_many(ls, [t[k] for t in toks], flush)
            got = remote.push_many(rs, [t[k] for t in toks], flush)
            for w, g in zip(want, got):
                assert w.shape == g.shape and np.allclose(w, g, atol=1e-6)
        assert np.allclose(rs[0].push(toks[0][0], flush=True), ls[0].push(toks[0][0], flush=True), atol=1e-6)
        rs[0].close()
        rs[1].close()
    finally:
        remote.shutdown()
    assert not remote.alive


def test_a_dead_child_is_reported_not_hung():
    dec = ProcessDecoder(FACTORY, ".", {})
    stream = dec.open("ava", speed=1.0)
    assert len(stream.push([SPEECH0, SPEECH0 + 1], flush=False)) == 2 * SAMPLES_PER_TOKEN
    dec._proc.kill()
    dec._proc.join(5)
    with pytest.raises(AudioProcessError, match="gone"):
        stream.push([SPEECH0], flush=False)
    dec.shutdown()


def test_the_engine_turns_unready_when_its_audio_process_dies():
    engine = make_engine(batching=True)
    engine.pipeline = dataclasses.replace(engine.pipeline, decoder=ProcessDecoder(FACTORY, ".", {}))

    async def main():
        await engine.start()
        try:
            assert engine.ready
            engine.pipeline.decoder._proc.kill()
            engine.pipeline.decoder._proc.join(5)
            return engine.ready
        finally:
            await engine.stop()

    assert asyncio.run(asyncio.wait_for(main(), 60)) is False


def test_a_factory_that_fails_is_a_start_error():
    with pytest.raises(AudioProcessError, match="failed to start"):
        ProcessDecoder("tests.service.engine.fakes:no_such_factory", ".", {})


def test_engine_with_a_child_decoder_fails_only_the_faulty_stream():
    """A token the child's decoder rejects fails its batch; the engine retries one by one, and only the stream with
    that token fails: the other gets all of its audio."""
    poison = SPEECH0 + 16  # one of the 32 speech tokens: some streams sample it, some do not
    engine = make_engine(max_streams=2, cap_seconds=0.4, batching=True)
    engine.pipeline = dataclasses.replace(engine.pipeline, decoder=ProcessDecoder(FACTORY, ".", {"poison": poison}))

    async def collect(handle):
        chunks = []
        try:
            async for c in handle.chunks():
                chunks.append(c)
        except StreamFailed as e:
            return e
        return chunks

    async def main():
        await engine.start()
        try:
            outs = []
            for pair in range(6):  # two streams at a time, decoded in shared batches
                handles = [engine.synthesize("Short one.", voice="ava", request_id=f"r{pair}-{k}", seed=2 * pair + k)
                           for k in range(2)]
                outs += await asyncio.gather(*(collect(h) for h in handles))
            return outs
        finally:
            await engine.stop()

    outs = asyncio.run(asyncio.wait_for(main(), 120))
    failed = [o for o in outs if isinstance(o, StreamFailed)]
    ok = [o for o in outs if not isinstance(o, StreamFailed)]
    assert ok and failed, (len(ok), len(failed))
    assert all(e.code == "internal_error" for e in failed)
    for chunks in ok:
        assert sum(len(c.pcm) for c in chunks) == 10 * SAMPLES_PER_TOKEN
    assert not engine.pipeline.decoder.alive  # stopped with the engine


def test_bundle_served_through_a_child_decoder_sounds_the_same(bundle):
    def run(audio_process, urgent_lane=False):
        model, pipeline = load_bundle(bundle, device=torch.device("cpu"), backend="ref", audio_process=audio_process,
                                      urgent_lane=urgent_lane)
        if urgent_lane:  # a second child, loaded beside the first
            assert isinstance(pipeline.urgent_decoder, ProcessDecoder) and pipeline.urgent_decoder is not \
                pipeline.decoder
        pipeline = dataclasses.replace(pipeline, max_seconds_per_char=0.0, min_cap_seconds=1.0)
        engine, chunks = serve_texts(model, pipeline, [("Hello world. It works!", "slt", "a", 3),
                                                       ("Two at once.", "rms", "b", 4)])
        if urgent_lane:
            assert not pipeline.urgent_decoder.alive  # stopped with the engine
            lane = engine.metrics.urgent_lane_chunks
            # the lane's child decoded chunks (one the worker settled first is skipped: timing; seen under load)
            assert sum(lane.labels(result=r)._value.get() for r in ("won", "lost")) >= 1
            assert sum(lane.labels(result=r)._value.get() for r in ("won", "lost", "skipped")) >= 2
            assert lane.labels(result="failed")._value.get() == 0
        return chunks

    local = run(False)
    for remote in (run(True), run(True, urgent_lane=True)):
        _same(local, remote)


def _same(local, remote):
    for l_chunks, r_chunks in zip(local, remote, strict=True):
        lp = np.concatenate([c.pcm for c in l_chunks])
        rp = np.concatenate([c.pcm for c in r_chunks])
        assert lp.shape == rp.shape and np.abs(lp.astype(np.int32) - rp).max() <= 1
        assert [w.word for c in l_chunks for w in c.words] == [w.word for c in r_chunks for w in c.words]


def test_a_dead_urgent_lane_process_costs_latency_only():
    """The urgent lane's process dies: its chunks fail over to the main audio process, every request still gets all
    of its audio in order, the lane turns itself off and the engine stays ready."""
    engine = make_engine(max_streams=2, cap_seconds=0.4, batching=True, urgent_decoder=ProcessDecoder(FACTORY, ".", {}))
    # the main process is slow, so the lane reaches every first chunk first: before its death it delivers them,
    # after it it fails on them
    engine.pipeline = dataclasses.replace(engine.pipeline, decoder=ProcessDecoder(FACTORY, ".", {"delay_s": 0.2}))

    async def main():
        await engine.start()
        try:
            first = await collect_chunks(engine.synthesize("Before it dies.", voice="ava", request_id="a", seed=1))
            engine.pipeline.urgent_decoder._proc.kill()
            engine.pipeline.urgent_decoder._proc.join(5)
            handles = [engine.synthesize("After it died.", voice="ava", request_id=f"b{k}", seed=k) for k in range(2)]
            after = await asyncio.gather(*(collect_chunks(h) for h in handles))
            return first, after, engine.ready
        finally:
            await engine.stop()

    first, after, ready = asyncio.run(asyncio.wait_for(main(), 120))
    lane = engine.metrics.urgent_lane_chunks
    assert lane.labels(result="won")._value.get() >= 1  # before its death
    assert lane.labels(result="failed")._value.get() >= 1
    assert engine._lane._stopped  # off after the failure
    assert ready
    for chunks in [first, *after]:
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert sum(len(c.pcm) for c in chunks) == 10 * SAMPLES_PER_TOKEN


def test_the_child_gets_its_own_environment():
    """``env`` reaches the child before its decoder is built (and before any CUDA context), not this process."""
    var = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
    with pytest.raises(AudioProcessError, match=f"{var}=40"):
        ProcessDecoder("tests.service.engine.fakes:env_reporting_factory", ".", {"var": var}, env={var: "40"})
    assert var not in os.environ
    with pytest.raises(AudioProcessError, match=f"{var}=unset"):
        ProcessDecoder("tests.service.engine.fakes:env_reporting_factory", ".", {"var": var})


@pytest.mark.parametrize("flag", ["1", "0"])
def test_the_child_freezes_its_garbage_collector_after_warm_up_when_told(flag):
    dec = ProcessDecoder(FACTORY, ".", {}, env={"MAMTRA_GC_FREEZE": flag})
    try:
        assert dec.frozen_objects == 0
        dec.warm_up(4)
        # a child that imported torch holds tens of thousands of objects; without the flag it freezes none
        assert dec.frozen_objects > 10_000 if flag == "1" else dec.frozen_objects == 0
        stream = dec.open("ava", speed=1.0)
        assert len(stream.push([SPEECH0], flush=True)) == SAMPLES_PER_TOKEN  # and still decodes
    finally:
        dec.shutdown()
