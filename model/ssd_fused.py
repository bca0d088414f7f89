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
