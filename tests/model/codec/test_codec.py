"""The codec and its streaming decoder: rates, exact streaming, speed, voices, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.codec.codec import CodecCheckpointError, SpeechCodec, load_codec, save_codec
from model.codec.config import CodecConfig
from model.codec.stream import CodecSpeechDecoder, FrameInterpStream
from model.codec.mel import interp_frames

from .conftest import chirp_tones, random_codec

STREAM_TOL = dict(rtol=0, atol=2e-4)  # streamed vs offline PCM (decoder + vocoder + resampler float rounding)
DECODER_TOL = dict(rtol=1e-5, atol=1e-5)


def tokens(n: int, decoder: CodecSpeechDecoder, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, decoder.codec.fsq.codebook_size, (n,), generator=g) + decoder.token_offset).tolist()


def stream_decode(decoder, toks, sizes, *, voice="alice", speed=1.0):
    stream = decoder.open(voice, speed=speed)
    outs, i = [], 0
    for n in sizes:
        outs.append(stream.push(toks[i:i + n], flush=False))
        i += n
    outs.append(stream.push(toks[i:], flush=True))
    return outs


def test_default_config_rates():
    c = CodecConfig()
    assert c.codebook_size == 4375 and c.frames_per_token == 4
    assert c.grid_per_mel == pytest.approx(512 / 441)
    with pytest.raises(ValueError):
        CodecConfig(grid_rate=90.0)
    with pytest.raises(ValueError):
        CodecConfig(voices=("a", "a"))


def test_encoder_emits_25_tokens_per_second():
    codec = random_codec()
    for seconds in (1.0, 2.0, 3.3):
        ids = codec.encode(torch.from_numpy(chirp_tones(seconds)))
        assert ids.dtype == torch.int64 and ids.dim() == 1
        assert abs(ids.numel() - 25 * seconds) <= 1, (seconds, ids.numel())
        assert int(ids.min()) >= 0 and int(ids.max()) < codec.fsq.codebook_size


def test_decoder_net_stream_equals_offline():
    codec = random_codec(voices=("alice",))
    ids = torch.randint(0, codec.fsq.codebook_size, (1, 37))
    ref = codec.decode_grid(ids, 1)
    stream = codec.decoder.stream(1)
    codes = codec.fsq.indices_to_codes(ids)
    outs, i = [], 0
    for n in (1, 4, 0, 2, 9):
        outs.append(stream.step(codes[..., i:i + n], False))
        i += n
    outs.append(stream.step(codes[..., i:], True))
    torch.testing.assert_close(torch.cat(outs, -1), ref, **DECODER_TOL)
    # look-ahead is dec_lookahead tokens: 1 + 4 + 0 + 2 + 9 = 16 tokens in → (16 - 2) · 4 grid frames out
    assert sum(o.shape[-1] for o in outs[:-1]) == (16 - codec.config.dec_lookahead) * 4


@pytest.mark.parametrize("step", [512 / 441, 512 / 441 * 0.25, 512 / 441 * 2.7, 1.0])
def test_frame_interp_stream_equals_offline(step):
    x = torch.randn(1, 3, 41)
    s = FrameInterpStream(step)
    outs, i = [], 0
    for n in (1, 0, 5, 2, 13):
        outs.append(s.step_frames(x[..., i:i + n], False))
        i += n
    outs.append(s.step_frames(x[..., i:], True))
    torch.testing.assert_close(torch.cat(outs, -1), interp_frames(x, step), rtol=0, atol=1e-6)


@pytest.mark.parametrize("step", [512 / 441, 512 / 441 * 0.6, 512 / 441 * 2.7])
def test_frame_interp_step_ragged_is_each_stream_alone(step):
    """Streams at different phases (different frames received before) and with inputs of different lengths,
    stepped together where their keys match (fresh ones together too), give exactly (bit for bit) what each gives
    alone, and stay in step afterwards."""
    from model.codec.streaming import Lens

    torch.manual_seed(0)
    xs = [torch.randn(1, 3, 300) for _ in range(5)]
    rounds = [[1, 3, 4, 6, 9]] + [[16, 12 + r % 5, 16, 20, 8 + r] for r in range(8)]  # each stream's pieces
    alone, batched = [FrameInterpStream(step) for _ in xs], [FrameInterpStream(step) for _ in xs]
    want, got = [[] for _ in xs], [[] for _ in xs]
    pos, ran_together = [0] * 5, 0
    for lens in rounds:
        for i, (a, x) in enumerate(zip(alone, xs)):
            want[i].append(a.step_frames(x[..., pos[i]:pos[i] + lens[i]], False))
        groups = {}
        for i, b in enumerate(batched):
            groups.setdefault(FrameInterpStream.ragged_key(b), []).append(i)
        for idx in groups.values():
            x = torch.full((len(idx), 3, max(lens[i] for i in idx)), 1e6)  # past a row's end: never read
            for r, i in enumerate(idx):
                x[r, :, :lens[i]] = xs[i][0, :, pos[i]:pos[i] + lens[i]]
            out, m = FrameInterpStream.step_ragged([batched[i] for i in idx], x, Lens([lens[i] for i in idx], "cpu"))
            ran_together += len(idx) > 1
            for r, i in enumerate(idx):
                got[i].append(out[r:r + 1, :, :m.values[r]])
        pos = [q + n for q, n in zip(pos, lens)]
    for w, g in zip(want, got):
        assert torch.equal(torch.cat(w, -1), torch.cat(g, -1))
    assert ran_together >= 5


@pytest.mark.parametrize("sizes", [[1, 3, 7, 2, 11, 5], [1] * 25, [40]])
def test_streamed_pcm_equals_offline_decode(speech_decoder, sizes):
    toks = tokens(40, speech_decoder)
    ref = speech_decoder.decode_offline(toks, "alice")
    outs = stream_decode(speech_decoder, toks, sizes)
    got = np.concatenate(outs)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert abs(got.size / 24_000 - 40 / 25) < 0.02  # 40 tokens = 1.6 s at 24 kHz
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref), **STREAM_TOL)


def test_stream_joins_are_inaudible(speech_decoder):
    outs = stream_decode(speech_decoder, tokens(60, speech_decoder, seed=1), [3, 5, 2, 8, 6, 9, 4, 7])
    audio = np.concatenate(outs)
    joins = [b for b in np.cumsum([o.size for o in outs])[:-1] if 0 < b < audio.size]
    assert len(joins) >= 5
    d = np.abs(np.diff(audio))
    assert max(d[b - 1] for b in joins) <= np.quantile(d, 0.99)


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_speed_scales_duration_and_streams_exactly(speech_decoder, speed):
    toks = tokens(24, speech_decoder, seed=2)
    normal = speech_decoder.decode_offline(toks, "alice").size
    ref = speech_decoder.decode_offline(toks, "alice", speed=speed)
    assert ref.size / normal == pytest.approx(1 / speed, rel=0.03)
    got = np.concatenate(stream_decode(speech_decoder, toks, [4, 9, 1, 3], speed=speed))
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref), **STREAM_TOL)
    with pytest.raises(ValueError):
        speech_decoder.open("alice", speed=4.5)


def test_flush_ends_a_sentence_and_the_stream_starts_afresh(speech_decoder):
    a, b = tokens(20, speech_decoder, seed=3), tokens(15, speech_decoder, seed=4)
    stream = speech_decoder.open("bob", speed=1.0)
    first = np.concatenate([stream.push(a[:7], flush=False), stream.push(a[7:], flush=True)])
    second = stream.push(b, flush=True)
    torch.testing.assert_close(torch.from_numpy(first), torch.from_numpy(speech_decoder.decode_offline(a, "bob")),
                               **STREAM_TOL)
    torch.testing.assert_close(torch.from_numpy(second), torch.from_numpy(speech_decoder.decode_offline(b, "bob")),
                               **STREAM_TOL)
    assert stream.push([], flush=True).size == 0  # nothing held, nothing out


def test_voices_and_odd_token_ids(speech_decoder):
    toks = tokens(30, speech_decoder, seed=5)
    alice, bob = speech_decoder.decode_offline(toks, "alice"), speech_decoder.decode_offline(toks, "bob")
    assert np.abs(alice - bob).max() > 1e-3  # the voice embedding changes the audio
    unknown = speech_decoder.decode_offline(toks, "nobody")
    torch.testing.assert_close(torch.from_numpy(unknown), torch.from_numpy(speech_decoder.decode_offline(toks, None)))
    out = speech_decoder.open("alice", speed=1.0).push([-5, 0, 10**9, 99], flush=True)  # clamped, never a crash
    assert out.size > 0 and np.isfinite(out).all()


def test_checkpoint_round_trip_and_strictness(tmp_path):
    codec = random_codec(voices=("v1", "v2"))
    save_codec(codec, tmp_path / "c", meta={"note": "test"})
    loaded = load_codec(tmp_path / "c")
    assert loaded.config == codec.config
    ids = torch.randint(0, codec.fsq.codebook_size, (1, 12))
    torch.testing.assert_close(loaded.decode_mel(ids, 2), codec.decode_mel(ids, 2))
    audio = torch.from_numpy(chirp_tones(1.0))
    assert torch.equal(loaded.encode(audio), codec.encode(audio))
    doc = json.loads((tmp_path / "c" / "config.json").read_text())
    doc["version"] = 99
    (tmp_path / "c" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CodecCheckpointError, match="version"):
        load_codec(tmp_path / "c")
    save_codec(random_codec(dec_dim=32), tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text((tmp_path / "c" / "config.json").read_text().replace("99", "1"))
    with pytest.raises(CodecCheckpointError, match="shape mismatch"):
        load_codec(tmp_path / "d")


def test_large_weights_are_sharded(tmp_path):
    from model.codec.codec import load_tensors, save_tensors

    tensors = {f"w{i}": torch.randn(1000) for i in range(10)}
    paths = save_tensors(tensors, tmp_path, "big", max_bytes=12_000)
    assert len(paths) == 4 and all(p.stat().st_size < 13_000 for p in paths)
    back = load_tensors(tmp_path, "big")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    save_tensors(tensors, tmp_path, "big")  # one file now: the stale shards are gone
    assert [p.name for p in tmp_path.iterdir()] == ["big.safetensors"]


def test_shipped_size_fits_the_file_limit():
    codec = SpeechCodec(CodecConfig(voices=tuple(f"v{i}" for i in range(14))))
    n_dec = sum(p.numel() for p in codec.decoder.parameters())
    n_enc = sum(p.numel() for p in codec.encoder.parameters())
    assert n_dec * 4 < 3 * 15 * 2**20 and n_dec < 6e6 and n_enc < 5e6


def test_bundle_factory_maps_voices_and_offsets(tmp_path):
    from model.codec.stream import bundle_decoder

    save_codec(random_codec(voices=("v1", "v2")), tmp_path / "codec")
    decoder = bundle_decoder(tmp_path, {"kind": "mamtra-codec", "path": "codec", "token_offset": 7,
                                        "voices": {"Alice": "v2"}})
    assert decoder.token_offset == 7 and decoder.voice_index("Alice") == 2 and decoder.voice_index("v1") == 1
    assert decoder.voice_index("someone") == 0 and not decoder.channels_last  # on CPU; on CUDA it defaults on
    spec = {"kind": "mamtra-codec", "path": "codec", "vocoder_channels_last": True, "first_chunk_graphs": True}
    assert bundle_decoder(tmp_path, spec).channels_last and bundle_decoder(tmp_path, spec).graphs is not None
    assert decoder.graphs is None  # on CPU; on CUDA first chunks replay from graphs by default
    assert not decoder.fused  # on CPU; on CUDA the fused kernels run by default
    assert bundle_decoder(tmp_path, {**spec, "vocoder_fused": True}).fused
    pcm = decoder.open("Alice", speed=1.0).push(list(range(7, 27)), flush=True)
    assert pcm.dtype == np.float32 and abs(pcm.size / 24_000 - 20 / 25) < 0.02


BATCH_TOL = dict(rtol=0, atol=1e-5)  # batched vs alone: the same ops per row, only a batched conv's float rounding


def _decoder(base: CodecSpeechDecoder, buckets: bool) -> CodecSpeechDecoder:
    """The same decoder, with or without what it does on CUDA: shape buckets (padded batches, split sentence ends)
    and the vocoder's channels-last activations."""
    return CodecSpeechDecoder(base.codec, base.vocoder, token_offset=base.token_offset, shape_buckets=buckets,
                              channels_last=buckets)


@pytest.mark.parametrize("buckets", [False, True])
def test_push_many_gives_each_stream_what_it_gives_alone(speech_decoder, monkeypatch, buckets):
    """Batched token -> audio decoding across requests: streams at different points of their utterances (first
    chunk, steady chunks, sentence ends, an empty flush, another voice and speed) pushed together in rounds give
    each stream the same PCM as pushing it alone, and streams whose states match really share one batched run."""
    import model.codec.stream as stream_module

    dec = _decoder(speech_decoder, buckets)
    plans = {  # stream: (voice, speed, [(tokens, flush) per round]); the engine's chunks, scaled down 4x
        "a": ("alice", 1.0, [(3, False), (4, False), (2, True), (3, False)]),
        "b": ("alice", 1.0, [(3, False), (4, False), (4, False), (4, True)]),
        "c": ("bob", 1.0, [(4, False), (0, True), (3, False), (4, False)]),
        "d": ("bob", 1.3, [(3, False), (4, False), (4, False), (1, True)]),
    }
    toks = {name: tokens(16, dec, seed=i) for i, name in enumerate(plans)}

    def pieces(name):
        i = 0
        for n, flush in plans[name][2]:
            yield toks[name][i:i + n], flush
            i += n

    alone = {}
    for name, (voice, speed, _) in plans.items():
        s = speech_decoder.open(voice, speed=speed)  # the plain single-stream path, unbucketed
        alone[name] = [s.push(t, flush=f) for t, f in pieces(name)]

    groups, interp_groups, resample_groups = [], [], []
    real = stream_module.run_batched
    monkeypatch.setattr(stream_module, "run_batched", lambda states, fn, **kw: groups.append(len(states)) or
                        real(states, fn, **kw))
    real_interp, real_resample = FrameInterpStream.step_ragged, stream_module.ResamplerStream.push_many
    monkeypatch.setattr(FrameInterpStream, "step_ragged", staticmethod(
        lambda streams, *a: interp_groups.append(len(streams)) or real_interp(streams, *a)))
    monkeypatch.setattr(stream_module.ResamplerStream, "push_many", staticmethod(
        lambda streams, *a: resample_groups.append(len(streams)) or real_resample(streams, *a)))
    streams = {name: dec.open(voice, speed=speed) for name, (voice, speed, _) in plans.items()}
    together = {name: [] for name in plans}
    for round_ in zip(*(list(pieces(name)) for name in plans)):
        out = dec.push_many(list(streams.values()), [t for t, _ in round_], [f for _, f in round_])
        for name, pcm in zip(plans, out):
            together[name].append(pcm)
    for name in plans:
        assert [len(p) for p in together[name]] == [len(p) for p in alone[name]], name
        torch.testing.assert_close(torch.from_numpy(np.concatenate(together[name])),
                                   torch.from_numpy(np.concatenate(alone[name])), **BATCH_TOL)
    assert max(groups) >= 3  # e.g. a, b and d's token decoders in a steady round
    assert max(interp_groups) >= 2 and max(resample_groups) >= 2  # a and b in step at round 2
    with pytest.raises(ValueError, match="once"):
        dec.push_many([streams["a"], streams["a"]], [[], []], [False, False])


@pytest.mark.parametrize("buckets", [False, True])
def test_push_many_runs_chunks_of_different_lengths_as_one_batch(speech_decoder, monkeypatch, buckets):
    """The engine's chunks differ in length (a first chunk, a second one up to the step clock, a paused client's
    longer one): streams of one state signature still run the token decoder and the vocoder once per round (a
    ragged batch), and each stream gets exactly what it gets alone. With shape buckets the five run as a batch of
    eight rows (padding rows copy the first stream's state; their output is dropped)."""
    import model.codec.stream as stream_module

    dec = _decoder(speech_decoder, buckets)
    plan = [[12] * 5, [2, 5, 4, 1, 3], [4, 4, 3, 4, 6], [4, 2, 4, 4, 4]]  # per round, tokens per stream
    toks = [tokens(30, dec, seed=i) for i in range(5)]
    alone = []
    for i in range(5):
        s, pos, outs = speech_decoder.open("alice"), 0, []  # the plain single-stream path, unbucketed
        for lens in plan:
            outs.append(s.push(toks[i][pos:pos + lens[i]], flush=False))
            pos += lens[i]
        alone.append(outs)
    runs, padded = [], []
    real = stream_module.run_batched
    monkeypatch.setattr(stream_module, "run_batched", lambda states, fn, **kw: runs.append(len(states)) or
                        padded.append(kw.get("rows", 0)) or real(states, fn, **kw))
    streams = [dec.open("alice") for _ in range(5)]
    pos = [0] * 5
    got = [[] for _ in range(5)]
    for k, lens in enumerate(plan):
        runs.clear()
        padded.clear()
        out = dec.push_many(streams, [toks[i][pos[i]:pos[i] + lens[i]] for i in range(5)], [False] * 5)
        for i in range(5):
            got[i].append(out[i])
            pos[i] += lens[i]
        if k > 0:
            assert runs == [5, 5], (k, runs)  # one token-decoder run, one vocoder run for all five
            assert padded == ([8, 8] if buckets else [0, 0])
    for g, w in zip(got, alone):
        assert [len(p) for p in g] == [len(p) for p in w]
        torch.testing.assert_close(torch.from_numpy(np.concatenate(g)), torch.from_numpy(np.concatenate(w)),
                                   **BATCH_TOL)


def test_a_lone_push_with_shape_buckets_runs_bucketed(speech_decoder, monkeypatch):
    """Where shapes are bucketed, one stream's push goes through push_many (no shape of its own for cuDNN to plan)
    and gives what the plain path gives."""
    calls = []
    real = CodecSpeechDecoder.push_many
    monkeypatch.setattr(CodecSpeechDecoder, "push_many", lambda self, streams, toks, flush: calls.append(
        len(streams)) or real(self, streams, toks, flush))
    toks = tokens(20, speech_decoder)
    plain, bucketed = speech_decoder.open("alice"), _decoder(speech_decoder, True).open("alice")
    want = [plain.push(toks[:12], flush=False), plain.push(toks[12:], flush=True)]
    assert calls == []
    got = [bucketed.push(toks[:12], flush=False), bucketed.push(toks[12:], flush=True)]
    assert calls == [1, 1]
    for g, w in zip(got, want):
        assert len(g) == len(w)
        torch.testing.assert_close(torch.from_numpy(g), torch.from_numpy(w), **BATCH_TOL)


def test_warm_up_runs_every_row_bucket_through_a_streams_shapes(speech_decoder, monkeypatch):
    """With shape buckets (CUDA's default) ``warm_up`` plans each row bucket up to the batch limit: a first chunk,
    the chunk widths of a round, an empty flush; without them (CPU) it does nothing."""
    calls = []
    real = CodecSpeechDecoder.push_many
    monkeypatch.setattr(CodecSpeechDecoder, "push_many", lambda self, streams, toks, flush: calls.append(
        (len(streams), len(toks[0]), flush[0])) or real(self, streams, toks, flush))
    _decoder(speech_decoder, False).warm_up(8)
    assert calls == []
    _decoder(speech_decoder, True).warm_up(5, first_chunk=6, chunk=4)
    assert calls == [(rows, n, f) for rows in (1, 2, 4, 8) for n, f in ((6, False), (4, False), (8, False),
                                                                        (0, True))]


def test_an_empty_push_beside_a_fresh_stream_of_the_same_speed(speech_decoder):
    """A fresh stream's empty chunk batched with another fresh stream's (one frame interpolation: the empty row has
    no input frame to read) gives each what it gives alone; it used to fail the whole batch."""
    toks = tokens(8, speech_decoder, seed=5)
    a, b = speech_decoder.open("alice"), speech_decoder.open("bob")
    out = speech_decoder.push_many([a, b], [toks[:4], []], [False, False])
    assert out[1].size == 0
    rest = speech_decoder.push_many([a, b], [toks[4:], toks[:4]], [True, True])
    alone = speech_decoder.open("alice")
    want = np.concatenate([alone.push(toks[:4], flush=False), alone.push(toks[4:], flush=True)])
    torch.testing.assert_close(torch.from_numpy(np.concatenate([out[0], rest[0]])), torch.from_numpy(want), **BATCH_TOL)
    solo_b = speech_decoder.open("bob").push(toks[:4], flush=True)
    torch.testing.assert_close(torch.from_numpy(rest[1]), torch.from_numpy(solo_b), **BATCH_TOL)
