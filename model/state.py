"""Per-request decode state: what each layer needs for one stream, and the pool of slots that holds it.

Layers *declare* their state (``StateSpec``: named tensors with per-stream shapes and dtypes); the ``StatePool``
preallocates every tensor for ``max_streams`` slots up front, so admission control is arithmetic on known sizes and
the hot path never allocates. A request holds one slot index for its whole life; batched steps gather and scatter by
slot. ``model.plan`` reports sizes from the same specs, so what ops teams read is what the pool really allocates.

- Attention: K and V for up to ``max_context`` positions, ``(max_streams, max_context, n_kv_heads, head_dim)`` each,
  in the KV dtype (bf16 on GPU). Bounded per slot rather than paged: simple, static shapes, CUDA-graph friendly.
- Mamba: the conv window ``(max_streams, conv_kernel - 1, conv_dim)`` in the KV dtype, and the SSM state
  ``(max_streams, n_heads, head_dim, d_state)`` in ``ssm_dtype`` (fp32 by default: it is carried for the whole
  request and accumulates rounding at every step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.config import ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # per stream
    dtype: torch.dtype

    @property
    def bytes_per_stream(self) -> int:
        numel = 1
        for s in self.shape:
            numel *= s
        return numel * _itemsize(self.dtype)


@dataclass(frozen=True)
class StateSpec:
    kind: str  # "A" or "M"
    tensors: tuple[TensorSpec, ...]

    @property
    def bytes_per_stream(self) -> int:
        return sum(t.bytes_per_stream for t in self.tensors)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def attention_state_spec(config: ModelConfig, *, max_context: int, dtype: torch.dtype) -> StateSpec:
    shape = (max_context, config.n_kv_heads, config.head_dim)
    return StateSpec("A", (TensorSpec("k", shape, dtype), TensorSpec("v", shape, dtype)))


def mamba_state_spec(config: ModelConfig, *, dtype: torch.dtype, ssm_dtype: torch.dtype) -> StateSpec:
    return StateSpec("M", (
        TensorSpec("conv", (config.conv_kernel - 1, config.conv_dim), dtype),
        TensorSpec("ssm", (config.n_heads, config.head_dim, config.d_state), ssm_dtype),
    ))


def layer_state_specs(config: ModelConfig, *, max_context: int, dtype: torch.dtype,
                      ssm_dtype: torch.dtype = torch.float32) -> list[StateSpec]:
    """One spec per layer, in layer order."""
    return [attention_state_spec(config, max_context=max_context, dtype=dtype) if kind == "A"
            else mamba_state_spec(config, dtype=dtype, ssm_dtype=ssm_dtype)
            for kind in config.layout]


@dataclass
class AttentionState:
    """K/V cache of one attention layer for all slots: k, v (max_streams, max_context, n_kv_heads, head_dim)."""

    k: Tensor
    v: Tensor


@dataclass
class MambaState:
    """State of one Mamba layer for all slots: conv (max_streams, kernel-1, conv_dim), ssm (max_streams, h, p, n)."""

    conv: Tensor
    ssm: Tensor


LayerState = AttentionState | MambaState


def _allocate(spec: StateSpec, max_streams: int, device: torch.device | str) -> LayerState:
    tensors = {t.name: torch.zeros((max_streams, *t.shape), dtype=t.dtype, device=device) for t in spec.tensors}
    return AttentionState(**tensors) if spec.kind == "A" else MambaState(**tensors)


@dataclass(frozen=True)
class Batch:
    """Which slots a prefill or decode step works on, and where each request's new tokens sit in its context.

    Built on the host from Python ints (the scheduler knows every length), so the step needs no host sync to size
    its attention window.
    """

    slots: Tensor  # (b,) int64
    positions: Tensor  # (b, t) int64: absolute position of every new token in its request's context
    valid: Tensor  # (b, t) bool: False on right padding
    lengths: Tensor  # (b,) int64: new tokens per request (>= 1)
    kv_len: int  # max over the batch of (start + length): how many cache positions the step must read
    # Write every (row, column) to the KV cache, padding included (no host sync to find the valid entries; a
    # row's padding lands beyond its length, where its own later tokens overwrite it before any query sees it)
    dense_writes: bool = False

    @property
    def num_new_tokens(self) -> int:
        return self.positions.shape[1]

    @classmethod
    def make(cls, slots: list[int], starts: list[int], lengths: list[int], *, max_context: int,
             device: torch.device | str = "cpu") -> "Batch":
        if not (len(slots) == len(starts) == len(lengths)) or not slots:
            raise ValueError("slots, starts and lengths must be non-empty and of equal length")
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot appears twice in one batch: {slots}")
        if min(lengths) < 1 or min(starts) < 0:
            raise ValueError("every request needs at least one new token and a non-negative start")
        kv_len = max(s + n for s, n in zip(starts, lengths))
        if kv_len > max_context:
            raise ValueError(f"context of {kv_len} tokens exceeds max_context {max_context}")
        return cls.of(torch.tensor(slots, dtype=torch.long, device=device),
                      torch.tensor(starts, dtype=torch.long, device=device),
                      torch.tensor(lengths, dtype=torch.long, device=device), max(lengths), kv_len=kv_len)

    @classmethod
    def of(cls, slots: Tensor, starts: Tensor, lengths: Tensor, tokens: int, *, kv_len: int,
           dense_writes: bool = False) -> "Batch":
        """From device tensors, unchecked (``make`` checks; a CUDA graph builds it from its static inputs):
        ``tokens`` new-token columns per row, row i's at ``starts[i]`` onward, valid below ``lengths[i]``."""
        ar = torch.arange(tokens, device=slots.device)
        return cls(slots=slots, positions=starts[:, None] + ar[None, :], valid=ar[None, :] < lengths[:, None],
                   lengths=lengths, kv_len=kv_len, dense_writes=dense_writes)


class StatePool:
    """Preallocated per-layer state for ``max_streams`` concurrent requests, addressed by slot index."""

    def __init__(self, config: ModelConfig, *, max_streams: int, max_context: int | None = None,
                 dtype: torch.dtype = torch.float32, ssm_dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.config = config
        self.max_streams = max_streams
        self.max_context = max_context or config.max_context
        if self.max_context > config.max_context:
            raise ValueError(f"max_context {self.max_context} exceeds the model's {config.max_context}")
        self.specs = layer_state_specs(config, max_context=self.max_context, dtype=dtype, ssm_dtype=ssm_dtype)
        self.layers: list[LayerState] = [_allocate(s, max_streams, device) for s in self.specs]
        self._free = list(range(max_streams - 1, -1, -1))  # pop() hands out the lowest index first
        self._used: set[int] = set()

    # --- slots -------------------------------------------------------------------------------------------------
    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("state pool is full")
        slot = self._free.pop()
        self._used.add(slot)
        self.reset(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise KeyError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        self._free.append(slot)

    def reset(self, slot: int) -> None:
        """Zero the recurrent state of a slot. K/V need no clearing: reads are bounded by the request's length."""
        for layer in self.layers:
            if isinstance(layer, MambaState):
                layer.conv[slot].zero_()
                layer.ssm[slot].zero_()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    # --- sizes -------------------------------------------------------------------------------------------------
    @property
    def bytes_per_stream(self) -> int:
        return sum(s.bytes_per_stream for s in self.specs)

    def allocated_bytes(self) -> dict[str, int]:
        """Bytes the pool's tensors really hold, split by kind (measured from the tensors, not the specs)."""
        kv = mamba = 0
        for layer in self.layers:
            if isinstance(layer, AttentionState):
                kv += layer.k.nbytes + layer.v.nbytes
            else:
                mamba += layer.conv.nbytes + layer.ssm.nbytes
        return {"kv": kv, "mamba": mamba, "total": kv + mamba}
