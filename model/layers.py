"""Transformer building blocks in Qwen2 form: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.

Module and parameter names follow Qwen2's (``q_proj``, ``input_layernorm``, ...), so a Qwen2 state dict maps onto
ours by renaming ``self_attn`` to ``mixer`` (see ``model.qwen2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import attention_fused, norm_fused
from model.config import ModelConfig
from model.state import AttentionState, Batch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if norm_fused.usable(x):  # inference on GPU: one kernel instead of ~7 (same arithmetic)
            return norm_fused.rms_norm(x, self.weight, self.eps)
        # Statistics in float32, as Qwen2 does: bf16 mean-of-squares drifts at d_model ~ 900.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for every position up to max_context (static shapes on the hot path)."""

    def __init__(self, head_dim: int, max_context: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_context, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # (max_context, head_dim), Qwen2's half-split layout
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (b, t) -> cos, sin (b, t, 1, head_dim) in float32."""
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (b, t, heads, d); cos/sin (b, t, 1, d). Rotation in float32, result in x's dtype."""
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def repeat_heads(x: Tensor, group: int) -> Tensor:
    """(b, t, kv_heads, d) -> (b, t, kv_heads * group, d); query head h reads KV head h // group (as Qwen2)."""
    return x if group == 1 else x.repeat_interleave(group, dim=2)


class Attention(nn.Module):
    """Qwen2-style grouped-query attention with RoPE and a per-slot KV cache."""

    def __init__(self, config: ModelConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend  # "ref" never uses the fused kernels; "auto"/"triton" do on CUDA
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.group = config.kv_group
        self.q_proj = nn.Linear(config.d_model, config.d_inner, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, config.d_kv, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, config.d_kv, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.d_inner, config.d_model, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], state: AttentionState | None = None,
                batch: Batch | None = None) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (b, t, h, d)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)  # (b, t, kvh, d)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if state is None:  # whole sequences from position 0 (training, scoring)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), repeat_heads(k, self.group).transpose(1, 2),
                repeat_heads(v, self.group).transpose(1, 2), is_causal=True)
        else:
            assert batch is not None
            self._write_cache(state, batch, k, v)
            if self._fused(x.device):  # the cache read in place, each request's own length (attention_fused)
                if t == 1:
                    out = attention_fused.decode_attention(q[:, 0], state.k, state.v, batch.slots,
                                                           batch.positions[:, 0] + 1)
                else:
                    out = attention_fused.prefill_attention(q, state.k, state.v, batch.slots, batch.positions[:, 0])
                return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim).to(x.dtype))
            keys = state.k[batch.slots, : batch.kv_len]  # (b, kv_len, kvh, d)
            values = state.v[batch.slots, : batch.kv_len]
            # Key j is visible to the query at absolute position p iff j <= p: causal, and bounded by what this
            # request has written (stale entries of a slot's previous owner sit beyond its length).
            mask = torch.arange(batch.kv_len, device=x.device)[None, None, :] <= batch.positions[:, :, None]
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2).to(keys.dtype), repeat_heads(keys, self.group).transpose(1, 2),
                repeat_heads(values, self.group).transpose(1, 2), attn_mask=mask[:, None])
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim).to(x.dtype)
        return self.o_proj(out)

    def _fused(self, device: torch.device) -> bool:
        if self.backend == "ref" or device.type != "cuda":
            return False
        if not attention_fused.available():
            if self.backend == "triton":
                raise RuntimeError("backend 'triton' requested but Triton is not importable")
            return False
        return True

    @staticmethod
    def _write_cache(state: AttentionState, batch: Batch, k: Tensor, v: Tensor) -> None:
        if batch.num_new_tokens == 1:  # decode: every row is valid
            pos = batch.positions[:, 0]
            state.k[batch.slots, pos] = k[:, 0].to(state.k.dtype)
            state.v[batch.slots, pos] = v[:, 0].to(state.v.dtype)
            return
        if batch.dense_writes:
            state.k[batch.slots[:, None], batch.positions] = k.to(state.k.dtype)
            state.v[batch.slots[:, None], batch.positions] = v.to(state.v.dtype)
            return
        rows, cols = batch.valid.nonzero(as_tuple=True)  # padding is never written
        slots, pos = batch.slots[rows], batch.positions[rows, cols]
        state.k[slots, pos] = k[rows, cols].to(state.k.dtype)
        state.v[slots, pos] = v[rows, cols].to(state.v.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
