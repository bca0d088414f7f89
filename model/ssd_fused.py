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

try:  # Triton is optional (CPU-only installs); the kernels below are built only where it imports
    import triton as _triton
    import triton.language as _tl
except Exception:  # pragma: no cover - without Triton nothing here runs
    _triton = None

if _triton is not None:
    # Module level, so that the kernels reach it as a global (Triton's interpreter, which CI runs them in, resolves
    # globals only).
    @_triton.jit
    def _state_tile(STATE, slot, stride_ss, stride_sh, stride_sp, GROUP: _tl.constexpr, N: _tl.constexpr,
                    BLOCK_P: _tl.constexpr):
        """This program's (request, head, block of p) of a pooled SSM state: the head, the p and n ranges, the KV
        head whose x and B it reads (GQA), and the pointers to its state tile in the pool's ``slot``."""
        h = _tl.program_id(1)
        p = _tl.program_id(2) * BLOCK_P + _tl.arange(0, BLOCK_P)
        n = _tl.arange(0, N)
        kv = h // GROUP  # x and B live at the KV heads; query head h reads KV head h // GROUP
        s_ptr = STATE + slot * stride_ss + h * stride_sh + p[:, None] * stride_sp + n[None, :]
        return h, p, n, kv, s_ptr

    @_triton.jit
    def _softplus(v):
        """torch's softplus (threshold 20) with log1p's precision: log(1 + u) alone loses the digits of a small
        u = exp(v) (dt ~ 1e-4 would be off by ~1e-3 of itself); log(w) · u / (w − 1) restores them (Goldberg)."""
        u = _tl.exp(_tl.minimum(v, 20.0))
        w = 1.0 + u
        return _tl.where(v > 20.0, v, _tl.where(w == 1.0, u, _tl.log(w) * (u / (w - 1.0))))


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
        h, p, n, kv, s_ptr = _state_tile(STATE, tl.load(SLOTS + b), stride_ss, stride_sh, stride_sp, GROUP, N,
                                         BLOCK_P)
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
    # strided views (slices of the conv output) are read as they are; only a last dimension with a stride is copied
    x, B, C, dt = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, B, C, dt))
    y = torch.empty(b, h, p, device=x.device, dtype=torch.float32)
    block_p = min(p, 32)
    _step_kernel()[(b, h, p // block_p)](
        state, slots, x, dt, A, B, C, D, y, state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        y.stride(0), y.stride(1), GROUP=h // kv_heads, N=n, BLOCK_P=block_p, num_warps=4)
    return y


def conv_step_inplace(conv: Tensor, slots: Tensor, xbc: Tensor, weight: Tensor, bias: Tensor | None,
                      dt_raw: Tensor, dt_bias: Tensor) -> tuple[Tensor, Tensor]:
    """A Mamba layer's decode step up to the scan, as one kernel: the depthwise causal conv of each stream's new
    input with its pooled window, SiLU, the window shifted *in place* by slot, and dt = softplus(dt_raw + dt_bias).

    conv (slots, k-1, d) the pool's windows (any float dtype; last dimension contiguous); slots (b,); xbc (b, d) and
    dt_raw (b, h) may be strided views of the input projection (last dimension contiguous); weight (d, k); bias (d,)
    or None; dt_bias (h,). Returns act (b, d) in xbc's dtype and dt (b, h) float32. Equals
    ``causal_conv1d_step_ref`` + ``silu`` + the scatter of the new window + ``softplus``, with the conv summed in
    float32 and rounded once (the reference rounds the product in xbc's dtype). No host sync: CUDA-graph safe.
    Padding rows that share a scratch slot race on that slot's window, which nothing reads.
    """
    b, d = xbc.shape
    k = weight.shape[-1]
    h = dt_raw.shape[-1]
    if conv.shape[1:] != (k - 1, d) or conv.stride(-1) != 1 or xbc.stride(-1) != 1 or dt_raw.stride(-1) != 1:
        raise ValueError("conv_step_inplace: the pool's windows must be (slots, k-1, d) and the inputs' last "
                         "dimension contiguous")
    weight = weight.reshape(d, k).contiguous()
    act = torch.empty(b, d, device=xbc.device, dtype=xbc.dtype)
    dt = torch.empty(b, h, device=xbc.device, dtype=torch.float32)
    block = 256
    _conv_kernel()[(b, -(-d // block))](
        conv, slots, xbc, weight, weight if bias is None else bias, act, dt_raw, dt_bias, dt,
        conv.stride(0), conv.stride(1), xbc.stride(0), act.stride(0), dt_raw.stride(0), dt.stride(0), d, h,
        K=k, BLOCK=block, BLOCK_H=max(16, 1 << (h - 1).bit_length()), HAS_BIAS=bias is not None, num_warps=4)
    return act, dt


@functools.cache
def _conv_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def conv_step_kernel(POOL, SLOTS, XBC, W, BIAS, ACT, DT_RAW, DT_BIAS, DT, stride_ps, stride_pk, stride_xb,
                         stride_ab, stride_rb, stride_db, n_dim, n_heads, K: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCK_H: tl.constexpr, HAS_BIAS: tl.constexpr):
        b = tl.program_id(0)
        blk = tl.program_id(1)
        d = blk * BLOCK + tl.arange(0, BLOCK)
        m = d < n_dim
        slot = tl.load(SLOTS + b)
        x = tl.load(XBC + b * stride_xb + d, mask=m, other=0.0)
        acc = x.to(tl.float32) * tl.load(W + d * K + (K - 1), mask=m, other=0.0).to(tl.float32)
        base = POOL + slot * stride_ps + d
        for j in tl.static_range(K - 1):  # the window's oldest input first; each moves one place back
            cur = tl.load(base + j * stride_pk, mask=m, other=0.0)
            acc += cur.to(tl.float32) * tl.load(W + d * K + j, mask=m, other=0.0).to(tl.float32)
            if j > 0:
                tl.store(base + (j - 1) * stride_pk, cur, mask=m)
        tl.store(base + (K - 2) * stride_pk, x.to(POOL.dtype.element_ty), mask=m)
        if HAS_BIAS:
            acc += tl.load(BIAS + d, mask=m, other=0.0).to(tl.float32)
        tl.store(ACT + b * stride_ab + d, (acc * tl.sigmoid(acc)).to(ACT.dtype.element_ty), mask=m)
        if blk == 0:
            hh = tl.arange(0, BLOCK_H)
            mh = hh < n_heads
            v = tl.load(DT_RAW + b * stride_rb + hh, mask=mh, other=0.0).to(tl.float32) + \
                tl.load(DT_BIAS + hh, mask=mh, other=0.0).to(tl.float32)
            tl.store(DT + b * stride_db + hh, _softplus(v), mask=mh)

    return conv_step_kernel


def conv_prefill_inplace(conv: Tensor, slots: Tensor, xbc: Tensor, lengths: Tensor, weight: Tensor,
                         bias: Tensor | None) -> Tensor:
    """A Mamba layer's prefill conv as one kernel: the depthwise causal conv of each row's new inputs after its
    pooled window, SiLU, and the window replaced *in place* by the row's last k-1 real inputs (its ``lengths``; the
    right padding after them is convolved like the reference does but never kept).

    conv (slots, k-1, d) the pool's windows (any float dtype; last dimension contiguous); slots, lengths (b,), may be
    strided (a prefill graph's are columns of its packed input); xbc (b, t, d) may be a strided view of the input
    projection (last dimension contiguous); weight (d, k) with k = 4; bias (d,) or None. Returns act (b, t, d) in
    xbc's dtype. Equals ``causal_conv1d_ref`` with the gathered windows + ``silu`` + the scatter of
    ``Mamba2Mixer._last_inputs``, with the conv summed in float32 and rounded once. No host sync: CUDA-graph safe.
    Padding rows that share a scratch slot race on its window, which nothing reads.
    """
    b, t, d = xbc.shape
    k = weight.shape[-1]
    if (k != 4 or conv.shape[1:] != (k - 1, d) or conv.stride(-1) != 1 or xbc.stride(-1) != 1):
        raise ValueError("conv_prefill_inplace: a kernel of 4, the pool's windows (slots, 3, d) and the inputs' last "
                         "dimension contiguous")
    weight = weight.reshape(d, k).contiguous()
    act = torch.empty(b, t, d, device=xbc.device, dtype=xbc.dtype)
    block = 128
    _conv_prefill_kernel()[(b, -(-d // block))](
        conv, slots, lengths, xbc, weight, weight if bias is None else bias, act, slots.stride(0), lengths.stride(0),
        conv.stride(0), conv.stride(1), xbc.stride(0), xbc.stride(1), act.stride(0), act.stride(1), t, d,
        BLOCK=block, HAS_BIAS=bias is not None, num_warps=4)
    return act


@functools.cache
def _conv_prefill_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def conv_prefill_kernel(POOL, SLOTS, LENGTHS, XBC, W, BIAS, ACT, stride_slot, stride_len, stride_ps, stride_pk,
                            stride_xb, stride_xt, stride_ab, stride_at, n_t, n_dim, BLOCK: tl.constexpr,
                            HAS_BIAS: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = d < n_dim
        slot = tl.load(SLOTS + b * stride_slot)
        length = tl.load(LENGTHS + b * stride_len)
        base = POOL + slot * stride_ps + d
        r0 = tl.load(base, mask=m, other=0.0).to(tl.float32)  # the window, oldest input first
        r1 = tl.load(base + stride_pk, mask=m, other=0.0).to(tl.float32)
        r2 = tl.load(base + 2 * stride_pk, mask=m, other=0.0).to(tl.float32)
        w0 = tl.load(W + d * 4, mask=m, other=0.0).to(tl.float32)
        w1 = tl.load(W + d * 4 + 1, mask=m, other=0.0).to(tl.float32)
        w2 = tl.load(W + d * 4 + 2, mask=m, other=0.0).to(tl.float32)
        w3 = tl.load(W + d * 4 + 3, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(BIAS + d, mask=m, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK], dtype=tl.float32)
        k0, k1, k2 = r0, r1, r2  # what the window holds after the last real input
        xs = XBC + b * stride_xb + d
        x_next = tl.load(xs, mask=m, other=0.0).to(tl.float32)  # one step ahead (see scan_prefill_kernel)
        i = 0
        while i < n_t:  # (a while loop: Triton's interpreter cannot range over a runtime bound)
            xf = x_next
            x_next = tl.load(xs + tl.minimum(i + 1, n_t - 1) * stride_xt, mask=m, other=0.0).to(tl.float32)
            acc = bias + w0 * r0 + w1 * r1 + w2 * r2 + w3 * xf
            tl.store(ACT + b * stride_ab + i * stride_at + d, (acc * tl.sigmoid(acc)).to(ACT.dtype.element_ty),
                     mask=m)
            r0, r1, r2 = r1, r2, xf
            real = i < length
            k0 = tl.where(real, r0, k0)
            k1 = tl.where(real, r1, k1)
            k2 = tl.where(real, r2, k2)
            i += 1
        ty = POOL.dtype.element_ty
        tl.store(base, k0.to(ty), mask=m)
        tl.store(base + stride_pk, k1.to(ty), mask=m)
        tl.store(base + 2 * stride_pk, k2.to(ty), mask=m)

    return conv_prefill_kernel


def ssd_prefill_inplace(state: Tensor, slots: Tensor, lengths: Tensor, x: Tensor, dt_raw: Tensor, dt_bias: Tensor,
                        A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """A prompt's scan step by step in one kernel, from and back into the pooled SSM state *in place* by slot, with
    dt = softplus(dt_raw + dt_bias) (0 past each row's ``lengths``: the state passes the padding unchanged) and the
    D skip. For short prompts (the server's first sentences, tens of tokens) one sequential kernel costs less than
    the chunked scan's kernels and the glue around them.

    state (slots, h, p, n) any float dtype (arithmetic in fp32; last dimension contiguous); slots, lengths (b,), may be
    strided; x (b, t, kv_heads, p) and B (b, t, kv_heads, n) before the GQA repeat, C (b, t, h, n), dt_raw (b, t, h):
    views with a contiguous last dimension; dt_bias, A, D (h,). Returns y (b, t, h, p) float32 = the scan's output
    + D x. No host sync: CUDA-graph safe.
    """
    b, t, h = dt_raw.shape
    kv_heads, p = x.shape[2], x.shape[3]
    n = B.shape[-1]
    if state.stride(-1) != 1 or any(v.stride(-1) != 1 for v in (x, B, C, dt_raw)):
        raise ValueError("ssd_prefill_inplace: the state's and the inputs' last dimensions must be contiguous")
    y = torch.empty(b, t, h, p, device=x.device, dtype=torch.float32)
    block_p = min(p, 16)
    _scan_prefill_kernel()[(b, h, p // block_p)](
        state, slots, lengths, x, dt_raw, dt_bias, A, B, C, D, y, slots.stride(0), lengths.stride(0),
        state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), x.stride(1), x.stride(2), dt_raw.stride(0), dt_raw.stride(1), B.stride(0), B.stride(1),
        B.stride(2), C.stride(0), C.stride(1), C.stride(2), y.stride(0), y.stride(1), y.stride(2), t,
        GROUP=h // kv_heads, N=n, BLOCK_P=block_p, num_warps=4)
    return y


@functools.cache
def _scan_prefill_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def scan_prefill_kernel(STATE, SLOTS, LENGTHS, X, DT_RAW, DT_BIAS, A, B, C, D, Y, stride_slot, stride_len,
                            stride_ss, stride_sh, stride_sp, stride_xb, stride_xt, stride_xh, stride_rb, stride_rt,
                            stride_bb, stride_bt, stride_bh, stride_cb, stride_ct, stride_ch, stride_yb, stride_yt,
                            stride_yh, n_t, GROUP: tl.constexpr, N: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0)
        h, p, n, kv, s_ptr = _state_tile(STATE, tl.load(SLOTS + b * stride_slot), stride_ss, stride_sh, stride_sp,
                                         GROUP, N, BLOCK_P)
        length = tl.load(LENGTHS + b * stride_len)
        s = tl.load(s_ptr).to(tl.float32)
        a = tl.load(A + h).to(tl.float32)
        skip = tl.load(D + h).to(tl.float32)
        bias = tl.load(DT_BIAS + h).to(tl.float32)
        raw = DT_RAW + b * stride_rb + h
        xs = X + b * stride_xb + kv * stride_xh + p
        bs = B + b * stride_bb + kv * stride_bh + n
        cs = C + b * stride_cb + h * stride_ch + n
        # each step's inputs are loaded one step ahead: the loads overlap the step before (the loop is latency-bound)
        v_next = tl.load(raw).to(tl.float32)
        x_next = tl.load(xs).to(tl.float32)
        b_next = tl.load(bs).to(tl.float32)
        c_next = tl.load(cs).to(tl.float32)
        i = 0
        while i < n_t:
            v, x, bv, cv = v_next + bias, x_next, b_next, c_next
            j = tl.minimum(i + 1, n_t - 1)
            v_next = tl.load(raw + j * stride_rt).to(tl.float32)
            x_next = tl.load(xs + j * stride_xt).to(tl.float32)
            b_next = tl.load(bs + j * stride_bt).to(tl.float32)
            c_next = tl.load(cs + j * stride_ct).to(tl.float32)
            dt = tl.where(i < length, _softplus(v), 0.0)
            s = s * tl.exp(dt * a) + (dt * x)[:, None] * bv[None, :]
            y = tl.sum(s * cv[None, :], 1) + skip * x
            tl.store(Y + b * stride_yb + i * stride_yt + h * stride_yh + p, y)
            i += 1
        tl.store(s_ptr, s.to(STATE.dtype.element_ty))

    return scan_prefill_kernel
