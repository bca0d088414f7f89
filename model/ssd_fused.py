"""Fused GPU kernels for the SSD scan, with the same signatures as ``model.ssd_ref``.

Mamba-2's SSD is a linear recurrence with a per-head scalar decay, i.e. "simple gated linear attention":
q = C, k = B, v = dt·x, log-decay g = dt·A, scale 1. The Triton kernels of ``fla-core`` (pure-Python wheels, no
CUDA build step, unlike mamba-ssm/causal-conv1d whose source builds do not fit our GPU calls) implement exactly
that: ``chunk_simple_gla`` for prefill and ``fused_recurrent_simple_gla`` for one decode step. ``state_v_first``
makes their state layout (h, p, n), the same as ours, so states move between paths without transposes.

Padding: dt = 0 gives g = 0 (decay 1) and v = 0, so padded steps leave the state untouched, as in the reference.
Checked against the reference by ``tests/model/test_ssd_fused.py`` (GPU-marked).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops.simple_gla  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise
        return False
    return True


def ssd_chunked_fused(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int = 64,
                      initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as ``ssd_chunked_ref``: y (b, t, h, p) in x's dtype, final state (b, h, p, n) float32."""
    from fla.ops.simple_gla import chunk_simple_gla

    dtype = x.dtype
    v = (x.float() * dt.float()[..., None]).to(dtype)
    g = (dt.float() * A.float()).contiguous()  # (b, t, h) log-decay
    h0 = None if initial_state is None else initial_state.float().contiguous()
    y, final = chunk_simple_gla(q=C.to(dtype).contiguous(), k=B.to(dtype).contiguous(), v=v.contiguous(), g=g,
                                scale=1.0, initial_state=h0, output_final_state=True, state_v_first=True)
    return y.to(dtype), final.float()


def ssd_step_fused(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Same contract as ``ssd_step_ref``: y (b, h, p) float32, new state in the state's dtype."""
    from fla.ops.simple_gla import fused_recurrent_simple_gla

    v = x.float() * dt.float()[..., None]
    g = dt.float() * A.float()
    y, new_state = fused_recurrent_simple_gla(
        q=C.float().unsqueeze(1).contiguous(), k=B.float().unsqueeze(1).contiguous(), v=v.unsqueeze(1).contiguous(),
        g=g.unsqueeze(1).contiguous(), scale=1.0, initial_state=state.float().contiguous(), output_final_state=True,
        state_v_first=True)
    return y[:, 0].float(), new_state.to(state.dtype)


@functools.cache
def _step_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ssd_step_kernel(STATE, SLOTS, X, DT, A, B, C, D, Y, stride_ss, stride_sh, stride_sp,
                        stride_xb, stride_xh, stride_dtb, stride_bb, stride_bh, stride_cb, stride_ch,
                        stride_yb, stride_yh, GROUP: tl.constexpr, N: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        n = tl.arange(0, N)
        kv = h // GROUP  # x and B live at the KV heads; query head h reads KV head h // GROUP
        slot = tl.load(SLOTS + b)
        s_ptr = STATE + slot * stride_ss + h * stride_sh + p[:, None] * stride_sp + n[None, :]
        s = tl.load(s_ptr).to(tl.float32)
        dt = tl.load(DT + b * stride_dtb + h).to(tl.float32)
        a = tl.load(A + h).to(tl.float32)
        x = tl.load(X + b * stride_xb + kv * stride_xh + p).to(tl.float32)
        bv = tl.load(B + b * stride_bb + kv * stride_bh + n).to(tl.float32)
        cv = tl.load(C + b * stride_cb + h * stride_ch + n).to(tl.float32)
        s = s * tl.exp(dt * a) + (dt * x)[:, None] * bv[None, :]
        y = tl.sum(s * cv[None, :], 1) + tl.load(D + h).to(tl.float32) * x
        tl.store(s_ptr, s.to(STATE.dtype.element_ty))
        tl.store(Y + b * stride_yb + h * stride_yh + p, y)

    return ssd_step_kernel


def ssd_step_inplace(state: Tensor, slots: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     D: Tensor) -> Tensor:
    """One decode step that updates the pooled SSM state *in place*, by slot, and adds the D skip.

    state (slots, h, p, n) any float dtype (arithmetic in fp32); slots (b,); x (b, kv_heads, p) and B (b, kv_heads, n)
    before the GQA repeat; dt (b, h) softplus'd; A, D (h,); C (b, h, n). Returns y (b, h, p) float32 = S_t C_t + D x_t.
    Equivalent to gathering the slots' states, ``ssd_step_ref``, adding ``D * x`` and scattering back — two passes
    over the state instead of six. No host sync: CUDA-graph safe.
    """
    b, h = dt.shape
    kv_heads, p = x.shape[1], x.shape[2]
    n = B.shape[-1]
    if state.stride(-1) != 1:
        raise ValueError("ssd_step_inplace updates the pool in place: its last dimension must be contiguous")
    x, B, C, dt = x.contiguous(), B.contiguous(), C.contiguous(), dt.contiguous()  # small per-step inputs
    y = torch.empty(b, h, p, device=x.device, dtype=torch.float32)
    block_p = min(p, 32)
    _step_kernel()[(b, h, p // block_p)](
        state, slots, x, dt, A, B, C, D, y, state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        y.stride(0), y.stride(1), GROUP=h // kv_heads, N=n, BLOCK_P=block_p, num_warps=4)
    return y
