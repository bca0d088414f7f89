"""Fused pointwise steps of the streaming vocoder (Triton: on the GPU, and in its interpreter for the tests).

Each of HiFi-GAN's 36 residual pairs is conv → bias → leaky-ReLU → conv → bias → + the block's input, delayed
to line up with the convs' look-ahead (``model.codec.streaming.AlignedSum``). Op by op, every pointwise step is a pass
of its own over the activations: in a steady round of 256 streams on an H100 (bf16, channels-last) the convs' bias
adds took 23.5 ms, the leaky-ReLUs 24.5, the joins and copies 21 and the residual sums 13.5 of 122.6 ms of GPU time,
against ~40 for the convolutions themselves (docs/BENCHMARKS.md §4 Z). With these kernels a pair's convs run without
their bias (``StreamConv1d.step_ragged(with_bias=False)``) and

- ``bias_act`` writes ``leaky_relu(y + bias)`` of the first conv's output straight into the second conv's joined
  input (one read, one write, instead of the bias add's and the activation's two of each);
- ``aligned_sum`` adds the branches as ``AlignedSum`` joins them — each branch's held-back frames followed by its new
  ones — plus the second conv's bias, in one pass (no joined copy of the delayed branch, no separate bias add).

Every tensor is the 4-D channels-last ``(B, C, 1, T)`` of ``StreamConv1d`` (the layout the vocoder runs on CUDA); the
sums run in fp32 and round once to the output's dtype.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton is optional (CPU-only installs); without it the vocoder runs op by op
    import triton as _triton
    import triton.language as tl  # named so: Triton's interpreter knows a constexpr by its annotation "tl.constexpr"
except Exception:  # pragma: no cover - without Triton nothing here runs
    _triton = None

BLOCK_T = 64
BLOCK_C = 32

if _triton is not None:
    # Module level, so that the kernels reach them as globals (Triton's interpreter resolves globals only).
    # Every tensor is channels-last with C (a multiple of 16) a compile-time constant, so the loads along the
    # channels vectorise and a row's stride (W·C) is always a multiple of 16. Widths and held-back frames change from
    # round to round and are not specialised on: a new "divisible by 16" would be a kernel compiled of its own in the
    # middle of a stream (a ~1 s stall of the audio stage, seen on an H100). So the kernels compile once per stage's C
    # and flag set, at the decoder's warm-up.
    @_triton.jit(do_not_specialize=["T"])
    def _bias_act_kernel(Y, OUT, BIAS, T, sy_b, so_b, slope, C: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_SLOPE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        b = tl.program_id(2).to(tl.int64)
        t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T))[:, None]
        c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
        mask = (t < T) & (c < C)
        y = tl.load(Y + b * sy_b + t * C + c, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(BIAS + c, mask=c < C, other=0.0).to(tl.float32)
        if HAS_SLOPE:
            y = tl.where(y > 0, y, y * slope)
        tl.store(OUT + b * so_b + t * C + c, y.to(OUT.dtype.element_ty), mask=mask)

    @_triton.jit
    def _joined(PEND, PART, P, sp_b, sq_b, b, t, c, mask, C: tl.constexpr):
        """Frame ``t`` of a branch as ``AlignedSum`` joins it: its ``P`` held-back frames, then its new ones."""
        held = t < P
        v = tl.load(PEND + b * sp_b + t * C + c, mask=mask & held, other=0.0).to(tl.float32)
        w = tl.load(PART + b * sq_b + (t - P) * C + c, mask=mask & (t >= P), other=0.0).to(tl.float32)
        return tl.where(held, v, w)

    @_triton.jit(do_not_specialize=["W", "P0", "P1", "P2"])
    def _aligned_sum_kernel(OUT, BIAS, W, so_b, PEND0, PART0, P0, sp0_b, sq0_b, PEND1, PART1, P1, sp1_b, sq1_b,
                            PEND2, PART2, P2, sp2_b, sq2_b, C: tl.constexpr, THREE: tl.constexpr,
                            HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        b = tl.program_id(2).to(tl.int64)
        t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T))[:, None]
        c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
        mask = (t < W) & (c < C)
        acc = _joined(PEND0, PART0, P0, sp0_b, sq0_b, b, t, c, mask, C)
        acc += _joined(PEND1, PART1, P1, sp1_b, sq1_b, b, t, c, mask, C)
        if THREE:
            acc += _joined(PEND2, PART2, P2, sp2_b, sq2_b, b, t, c, mask, C)
        if HAS_BIAS:
            acc += tl.load(BIAS + c, mask=c < C, other=0.0).to(tl.float32)
        tl.store(OUT + b * so_b + t * C + c, acc.to(OUT.dtype.element_ty), mask=mask)


def available(device: torch.device | str) -> bool:
    """Whether the kernels run on tensors of ``device``: CUDA with Triton, or any device in Triton's interpreter."""
    if _triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _dense(x: Tensor, channels: int) -> bool:
    """Whether ``x`` is channels-last ``(B, C, 1, T)`` with dense frames (``StreamConv1d``'s layout; a slice along
    time is fine)."""
    return (x.dim() == 4 and x.shape[1] == channels and x.shape[2] == 1 and x.stride(1) == 1
            and (x.shape[3] <= 1 or x.stride(3) == channels))


def _rows(x: Tensor, channels: int) -> int:
    """The batch stride of a tensor the kernels write (checked: channels-last, dense frames)."""
    if not _dense(x, channels):
        raise ValueError(f"expected a channels-last (B, {channels}, 1, T) tensor, got shape {tuple(x.shape)} strides "
                         f"{x.stride()}")
    return x.stride(0)


def _readable(x: Tensor, channels: int) -> Tensor:
    """A tensor the kernels read, in their layout (the caller's ``_rows`` checks the rest): a stream's kept frames
    come back from batching (``model.codec.streaming._take``) in whatever layout indexing gave them; copied (they are
    a few frames)."""
    if x.dim() == 4 and not _dense(x, channels):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _channels(x: Tensor) -> int:
    c = x.shape[1]
    if c % 16:
        raise ValueError(f"channels must be a multiple of 16, got {c}")
    return c


def _grid(width: int, channels: int, rows: int) -> tuple[int, int, int]:
    return -(-width // BLOCK_T), -(-channels // BLOCK_C), rows


def bias_act(y: Tensor, out: Tensor, bias: Tensor | None, slope: float | None) -> Tensor:
    """``out[...] = leaky_relu(y + bias, slope)`` (either step optional); ``y`` and ``out`` (e.g. a slice of a
    joined buffer) channels-last ``(B, C, 1, T)``, C a multiple of 16."""
    if out.shape != y.shape:
        raise ValueError(f"out {tuple(out.shape)} does not match y {tuple(y.shape)}")
    C = _channels(y)
    y = _readable(y, C)
    sy, so = _rows(y, C), _rows(out, C)
    B, T = y.shape[0], y.shape[-1]
    if B and T:
        _bias_act_kernel[_grid(T, C, B)](y, out, y if bias is None else bias, T, sy, so,
                                         0.0 if slope is None else float(slope), C=C, HAS_BIAS=bias is not None,
                                         HAS_SLOPE=slope is not None, BLOCK_T=BLOCK_T, BLOCK_C=BLOCK_C)
    return out


def aligned_sum(branches: list[tuple[Tensor | None, Tensor]], width: int, bias: Tensor | None,
                out: Tensor) -> Tensor:
    """``out = Σ cat(held, new)[..., :width] (+ bias per channel)`` over 2 or 3 branches ``(held, new)`` (``held``
    None or of no frames: the new frames alone), each at least ``width`` frames long once joined; every tensor
    channels-last ``(B, C, 1, ·)``, C a multiple of 16, ``out`` ``width`` frames wide."""
    if len(branches) not in (2, 3):
        raise ValueError(f"2 or 3 branches, got {len(branches)}")
    C = _channels(out)
    if out.shape[-1] != width:
        raise ValueError(f"out has {out.shape[-1]} frames, not {width}")
    args = []
    for held, new in branches:
        p = 0 if held is None else held.shape[-1]
        if new.shape[0] != out.shape[0] or p + new.shape[-1] < width:
            raise ValueError("a branch does not cover the output")
        new = _readable(new, C)
        first = new if p == 0 else _readable(held, C)  # no held frames: never read
        args += [first, new, p, _rows(first, C), _rows(new, C)]
    if len(branches) == 2:
        args += args[-5:]  # an unused third branch (THREE is off)
    if out.shape[0] and width:
        _aligned_sum_kernel[_grid(width, C, out.shape[0])](out, out if bias is None else bias, width,
                                                           _rows(out, C), *args, C=C, THREE=len(branches) == 3,
                                                           HAS_BIAS=bias is not None, BLOCK_T=BLOCK_T,
                                                           BLOCK_C=BLOCK_C)
    return out
