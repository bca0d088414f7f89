"""Decode-step and prefill attention on GPU (Triton) that read the slot-indexed KV cache in place.

The reference path gathers each request's cache rows (``k[slots, :kv_len]``) and repeats the KV heads for GQA before
SDPA. At serving scale that copy is the step: 256 streams x 4,096 tokens x 2 KV heads x 64 x bf16 is 268 MB per
tensor per layer, repeated 7x for the query heads. This kernel instead runs one program per (request, KV head),
loads the request's slot through the index, streams its keys/values once in blocks up to the request's own length
(not the batch maximum), and serves all query heads of the group from each load (online softmax, fp32 accumulation).

Shapes: q (b, h, d); k_cache, v_cache (slots, max_context, kv_heads, d); slots (b,) int64; lengths (b,) int32
(keys visible to each query = its position + 1). Returns (b, h, d) in q's dtype. No host sync: CUDA-graph safe.
Checked against the reference by ``tests/model/test_attention_fused.py`` (GPU-marked).

``prefill_attention`` is the same for a prompt of ``t`` new tokens per request, already written to the cache at
positions ``start .. start + t - 1``: one program per (request, KV head, block of queries) reads keys up to its last
query's position only (causal: key j is visible to the query at position p iff j <= p). The reference path's window
is the batch's ``kv_len`` — for a CUDA-graph prefill, static, so the pool's whole context (8,192 tokens) whatever the
prompt — gathered, repeated for the query heads and masked. Shapes: q (b, t, h, d); starts (b,) (any stride, as
slots': a graph's inputs are columns of one packed buffer). Returns (b, t, h, d) in the cache's dtype; padding
queries (right of a request's length) are computed as the reference computes them and ignored downstream.
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
    # A module-level jit function, so that both kernels reach it as a global (Triton's interpreter, which CI runs
    # them in, resolves globals only).
    @_triton.jit
    def _attend_block(q, k_base, v_base, t, tmask, visible, m, l_sum, acc, stride_kt, stride_vt, scale,
                      HEAD_DIM: _tl.constexpr):
        """One block of keys ``t`` (loaded where ``tmask``) of an online softmax over the rows of ``q``: scores
        where ``visible`` (rows × keys), the running max ``m``, sum ``l_sum`` and output ``acc`` updated (fp32)."""
        d = _tl.arange(0, HEAD_DIM)
        k = _tl.load(k_base + t[:, None] * stride_kt + d[None, :], mask=tmask[:, None], other=0.0)
        s = _tl.dot(q, _tl.trans(k.to(q.dtype))) * scale  # (rows, keys), fp32 accumulate
        s = _tl.where(visible, s, float("-inf"))
        m_new = _tl.maximum(m, _tl.max(s, 1))
        p = _tl.exp(s - m_new[:, None])
        alpha = _tl.exp(m - m_new)
        l_sum = l_sum * alpha + _tl.sum(p, 1)
        v = _tl.load(v_base + t[:, None] * stride_vt + d[None, :], mask=tmask[:, None], other=0.0)
        acc = acc * alpha[:, None] + _tl.dot(p.to(q.dtype), v.to(q.dtype))
        return m_new, l_sum, acc


@functools.cache
def available() -> bool:
    return torch.cuda.is_available() and _triton is not None


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(Q, K, V, O, SLOTS, LENGTHS, stride_qb, stride_qh, stride_ks, stride_kt, stride_kh,
                                stride_vs, stride_vt, stride_vh, stride_ob, stride_oh, scale,
                                GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr,
                                HEAD_DIM: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        slot = tl.load(SLOTS + b)
        n = tl.load(LENGTHS + b)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, HEAD_DIM)
        heads = kvh * GROUP + g
        gmask = g < GROUP
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=gmask[:, None], other=0.0)
        k_base = K + slot * stride_ks + kvh * stride_kh
        v_base = V + slot * stride_vs + kvh * stride_vh
        m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l_sum = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
        for start in range(0, n, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            tmask = t < n
            m, l_sum, acc = _attend_block(q, k_base, v_base, t, tmask, tmask[None, :], m, l_sum, acc, stride_kt,
                                         stride_vt, scale, HEAD_DIM)
        out = acc / l_sum[:, None]
        tl.store(O + b * stride_ob + heads[:, None] * stride_oh + d[None, :], out.to(O.dtype.element_ty),
                 mask=gmask[:, None])

    return decode_attention_kernel


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, lengths: Tensor) -> Tensor:
    b, h, d = q.shape
    kv_heads = k_cache.shape[2]
    group = h // kv_heads
    q = q.to(k_cache.dtype).contiguous()
    out = torch.empty_like(q)
    block_g = max(16, 1 << (group - 1).bit_length())  # tl.dot wants >= 16 rows
    _kernel()[(b, kv_heads)](
        q, k_cache, v_cache, out, slots, lengths.to(torch.int32),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), d**-0.5,
        GROUP=group, BLOCK_G=block_g, BLOCK_T=64, HEAD_DIM=d, num_warps=4)
    return out


@functools.cache
def _prefill_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def prefill_attention_kernel(Q, K, V, O, SLOTS, STARTS, stride_slot, stride_start, stride_qb, stride_qt,
                                 stride_qh, stride_ks, stride_kt, stride_kh, stride_vs, stride_vt, stride_vh,
                                 stride_ob, stride_ot, stride_oh, T, scale, GROUP: tl.constexpr,
                                 BLOCK_G: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
                                 HEAD_DIM: tl.constexpr):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        first = tl.program_id(2) * BLOCK_I  # this program's first query column
        slot = tl.load(SLOTS + b * stride_slot)
        start = tl.load(STARTS + b * stride_start)
        r = tl.arange(0, BLOCK_I * BLOCK_G)  # one row per (query column, head of the group)
        i = first + r // BLOCK_G
        g = r % BLOCK_G
        rmask = (g < GROUP) & (i < T)
        heads = kvh * GROUP + g
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + b * stride_qb + i[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                    mask=rmask[:, None], other=0.0)
        pos = start + i  # each row's absolute position: it sees keys 0 .. pos
        k_base = K + slot * stride_ks + kvh * stride_kh
        v_base = V + slot * stride_vs + kvh * stride_vh
        m = tl.full((BLOCK_I * BLOCK_G,), float("-inf"), tl.float32)
        l_sum = tl.zeros((BLOCK_I * BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_I * BLOCK_G, HEAD_DIM), tl.float32)
        end = start + tl.minimum(first + BLOCK_I, T)  # keys this program's last query sees, exclusive
        k0 = 0
        while k0 < end:  # every row sees key 0, so m is finite after the first block
            t = k0 + tl.arange(0, BLOCK_T)
            m, l_sum, acc = _attend_block(q, k_base, v_base, t, t < end, t[None, :] <= pos[:, None], m, l_sum, acc,
                                         stride_kt, stride_vt, scale, HEAD_DIM)
            k0 += BLOCK_T
        out = acc / l_sum[:, None]
        tl.store(O + b * stride_ob + i[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
                 out.to(O.dtype.element_ty), mask=rmask[:, None])

    return prefill_attention_kernel


def prefill_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, starts: Tensor) -> Tensor:
    """Causal attention of ``t`` new tokens per request over its slot's cache (the module docstring)."""
    import triton

    b, t, h, d = q.shape
    kv_heads = k_cache.shape[2]
    group = h // kv_heads
    q = q.to(k_cache.dtype)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty(b, t, h, d, dtype=k_cache.dtype, device=q.device)
    block_g = 1 << (group - 1).bit_length()
    block_i = max(64 // block_g, 1)  # 64 rows (query columns x heads) a program, at least (tl.dot wants >= 16)
    _prefill_kernel()[(b, kv_heads, triton.cdiv(t, block_i))](
        q, k_cache, v_cache, out, slots, starts, slots.stride(0), starts.stride(0), q.stride(0), q.stride(1),
        q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2), t, d**-0.5,
        GROUP=group, BLOCK_G=block_g, BLOCK_I=block_i, BLOCK_T=64, HEAD_DIM=d, num_warps=4)
    return out
