"""Pure-PyTorch reference ops of the Mamba-2 mixer: SSD scan (chunked and naive), single-step recurrence, causal conv.

These run anywhere (CPU, CI) and define the semantics the fused GPU kernels (``model.ssd_fused``) must reproduce.
This module never imports the fused one.

Notation (Mamba-2 paper): per head h, state S_h ∈ R^{P×N} (P = head_dim, N = d_state)

    S_t = exp(dt_t · A) · S_{t-1} + dt_t · x_t B_tᵀ          y_t = S_t C_t

Shapes: x (b, t, h, p); dt (b, t, h) — already softplus'd and masked (dt = 0 leaves the state untouched, which is
how padded positions of a variable-length batch are neutralised); A (h,), negative; B, C (b, t, h, n);
state (b, h, p, n). The scan runs in float32 whatever the input dtype: exp of cumulative sums is where low precision
hurts. Outputs come back in the input dtype; final states in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segsum(a: Tensor) -> Tensor:
    """Stable segment sums: out[..., i, j] = sum(a[..., j+1 : i+1]) for j <= i, -inf above the diagonal.

    Built by masked cumulative sums of a repeated copy rather than cumsum differences, which lose precision for long
    chunks. a (..., L) -> (..., L, L).
    """
    L = a.shape[-1]
    rep = a.unsqueeze(-1).expand(*a.shape, L)  # (..., L_i, L_j) with rep[..., i, j] = a[i]
    strict = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=-1)
    rep = rep.masked_fill(~strict, 0.0)
    out = torch.cumsum(rep, dim=-2)
    keep = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device))
    return out.masked_fill(~keep, float("-inf"))


def ssd_chunked_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, chunk_size: int = 64,
                    initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Parallel (chunked) SSD scan: quadratic inside chunks, a linear recurrence across chunk boundaries.

    Returns y (b, t, h, p) in x's dtype and the final state (b, h, p, n) in float32.
    """
    b, t, h, p = x.shape
    n = B.shape[-1]
    out_dtype = x.dtype
    x, dt, A, B, C = (v.float() for v in (x, dt, A, B, C))
    pad = (-t) % chunk_size
    if pad:  # dt = 0 on padding: decay 1, no input, so the final state is the state after the last real step
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (t + pad) // chunk_size
    L = chunk_size
    x = x.view(b, c, L, h, p)
    B = B.view(b, c, L, h, n)
    C = C.view(b, c, L, h, n)
    a = (dt * A).view(b, c, L, h).permute(0, 3, 1, 2)  # (b, h, c, L) log-decay per step
    xdt = x * dt.view(b, c, L, h, 1)  # dt-weighted input
    a_cum = torch.cumsum(a, dim=-1)  # (b, h, c, L)

    # 1. Inside each chunk: masked "attention" C_i·B_j · exp(a_{j+1..i}).
    decay = torch.exp(segsum(a))  # (b, h, c, L, L)
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * decay
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. State contributed by each chunk alone, at the chunk's end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, h, c, L)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xdt)

    # 3. Recurrence across chunks (including the initial state): state entering chunk k.
    if initial_state is None:
        initial_state = torch.zeros(b, h, p, n, device=x.device, dtype=torch.float32)
    states = torch.cat([initial_state.float().unsqueeze(1), chunk_states], dim=1)  # (b, c+1, h, p, n)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. Contribution of the entering state to each position of its chunk.
    from_start = torch.exp(a_cum)  # (b, h, c, L)
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, from_start)

    y = (y_diag + y_off).reshape(b, c * L, h, p)[:, :t]
    return y.to(out_dtype), final_state


def ssd_naive_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence one step at a time (the definition; used by tests and as the decode path)."""
    b, t, h, p = x.shape
    n = B.shape[-1]
    state = (torch.zeros(b, h, p, n, device=x.device, dtype=torch.float32) if initial_state is None
             else initial_state.float())
    ys = []
    for i in range(t):
        y, state = ssd_step_ref(state, x[:, i], dt[:, i], A, B[:, i], C[:, i])
        ys.append(y)
    return torch.stack(ys, dim=1).to(x.dtype), state


def ssd_step_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One decode step. state (b, h, p, n) any float dtype; x (b, h, p); dt (b, h); B, C (b, h, n).

    Returns y (b, h, p) in float32 and the new state in the state's dtype (arithmetic in float32).
    """
    s = state.float()
    dt = dt.float()
    decay = torch.exp(dt * A.float())  # (b, h)
    s = s * decay[..., None, None] + (dt[..., None] * x.float()).unsqueeze(-1) * B.float().unsqueeze(-2)
    y = torch.einsum("bhpn,bhn->bhp", s, C.float())
    return y, s.to(state.dtype)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None, *,
                      conv_state: Tensor | None = None) -> Tensor:
    """Depthwise causal conv over time. x (b, t, d); weight (d, k); conv_state (b, k-1, d) = the previous inputs
    (zeros when None). Returns (b, t, d) before the activation."""
    k = weight.shape[-1]
    if conv_state is None:
        xp = F.pad(x, (0, 0, k - 1, 0))
    else:
        xp = torch.cat([conv_state.to(x.dtype), x], dim=1)
    out = F.conv1d(xp.transpose(1, 2), weight.unsqueeze(1), bias, groups=weight.shape[0])  # (b, d, t)
    return out.transpose(1, 2)


def causal_conv1d_step_ref(x: Tensor, weight: Tensor, bias: Tensor | None, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the conv. x (b, d); conv_state (b, k-1, d). Returns (out (b, d), new conv_state)."""
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(1)], dim=1)  # (b, k, d)
    out = torch.einsum("bkd,dk->bd", window, weight.to(x.dtype))
    if bias is not None:
        out = out + bias
    return out, window[:, 1:].to(conv_state.dtype)
