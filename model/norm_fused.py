"""RMSNorm and Mamba-2's gated RMSNorm as one Triton kernel each, for inference on GPU.

In a decode step every op is a kernel of its own, and a step of the paper-scale model is ~1,000 small kernels whose
launch gaps, not their work, set its time inside a CUDA graph. An RMSNorm in PyTorch is ~7 of them (cast, square,
mean, add, rsqrt, scale, cast back, weight) and the gated norm of a Mamba-2 layer ~10 (cast, SiLU, gate, the same
norm, weight, cast): with 49 RMSNorms and 18 gated norms in ``mamtra-1:3``, ~500 kernels a step. Here each is one
kernel, one program per row (per head for the gated norm), the statistics in float32.

The arithmetic is the reference's (``model.layers.RMSNorm``, ``Mamba2Mixer._gated_norm``): for RMSNorm the normalised
row is rounded to the input's dtype before the weight multiplies it; the gated norm computes in float32 and rounds
once, to ``out_dtype``. Only the order of the mean's additions differs. Used when the input is on CUDA, Triton is
importable, autograd is off (training keeps the PyTorch ops) and ``set_enabled`` has not turned them off; checked against the reference by
``tests/model/test_norm_fused.py`` (GPU-marked; the same file runs the kernels in Triton's interpreter on CPU).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn the fused kernels on or off for this process (``MAMTRA_FUSED_NORMS``; on by default)."""
    global _enabled
    _enabled = enabled


def usable(x: Tensor) -> bool:
    """Whether the fused kernels serve this input: on, CUDA, no autograd, Triton importable."""
    return _enabled and x.is_cuda and not torch.is_grad_enabled() and _triton_importable()


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(X, W, O, stride_x, stride_o, D, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < D
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
        y = (x * r).to(X.dtype.element_ty).to(tl.float32)  # the reference rounds the normalised row first
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(O + row * stride_o + cols, (w * y).to(O.dtype.element_ty), mask=mask)

    @triton.jit
    def gated_norm_kernel(Y, Z, W, O, stride_y, stride_z, stride_o, eps, P: tl.constexpr):
        tok = tl.program_id(0)
        head = tl.program_id(1)
        p = head * P + tl.arange(0, P)
        y = tl.load(Y + tok * stride_y + p).to(tl.float32)
        z = tl.load(Z + tok * stride_z + p).to(tl.float32)
        g = y * (z * tl.sigmoid(z))
        r = 1.0 / tl.sqrt(tl.sum(g * g, 0) / P + eps)
        w = tl.load(W + p).to(tl.float32)
        tl.store(O + tok * stride_o + p, (g * r * w).to(O.dtype.element_ty))

    return rms_norm_kernel, gated_norm_kernel


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * (x * rsqrt(mean(x², -1) + eps)).to(x.dtype)`` with float32 statistics; x (..., d), weight (d,)."""
    d = x.shape[-1]
    rows = _rows(x, d)
    out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if rows.shape[0]:
        block = _pow2(d)
        _kernels()[0][(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), d, eps, BLOCK=block,
                                        num_warps=4 if block <= 1024 else 8)
    return out.reshape(x.shape)


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    """Mamba-2's ``norm(y · silu(z))`` per head, times ``weight``, in float32, rounded once to ``out_dtype``.

    y (b, t, h, p), z (b, t, h·p) (a strided view is fine: its last dimension contiguous), weight (h·p,) ->
    (b, t, h·p). p must be a power of two (the head dimension)."""
    b, t, h, p = y.shape
    if p & (p - 1):
        raise ValueError(f"head dimension {p} is not a power of two")
    y2, z2 = _rows(y, h * p), _rows(z, h * p)
    out = torch.empty(b * t, h * p, dtype=out_dtype, device=y.device)
    if b * t:
        _kernels()[1][(b * t, h)](y2, z2, weight, out, y2.stride(0), z2.stride(0), out.stride(0), eps, P=p,
                                  num_warps=1 if p <= 64 else 2)
    return out.reshape(b, t, h * p)


def _rows(x: Tensor, width: int) -> Tensor:
    """x as (rows, width) with unit stride along a row (a view where it can be: a strided slice keeps its row
    stride, which the kernels take)."""
    rows = x.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()
