"""Sampling settings and the sampler used by the engine's runner.

One frozen dataclass holds every knob. Sampling is restricted to the tokens a step may emit (speech tokens and
end-of-speech), then temperature, top-k, top-p and a repetition guard apply. Each row can carry its own noise key:
its noise is a hash of (key, token id) (``counter_uniform``), so a request that draws its keys from its own seed gets
the same audio whatever else shares the batch, and the draw needs no generator object: it can run inside a CUDA
graph with the rest of the decode step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.9
    max_repeat: int = 12  # a token already repeated this many times in a row may not be sampled again
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0 or not 0 < self.top_p <= 1 or self.max_repeat < 1:
            raise ValueError(f"invalid sampling config {self}")


def sample(logits: Tensor, config: SamplingConfig, *, allowed: Tensor | None = None,
           last_token: Tensor | None = None, run_length: Tensor | None = None, keys: Tensor | None = None) -> Tensor:
    """logits (b, v) -> token ids (b,). No host sync: every op runs on the logits' device.

    allowed: tokens that may be sampled, as a (v,) bool mask or as their ids, ascending (long). With ids only those
    columns are sampled over (the paper-scale head has 158,500 rows, speech 4,376 of them: the work of a step's
    sampling shrinks by that ratio).
    last_token/run_length (b,): the previous token and how many times in a row it was emitted (repetition guard).
    keys (b,) int64 in [0, 2**32): each row's noise key (``counter_uniform``); None = the global RNG.
    """
    if allowed is not None and allowed.dtype != torch.bool:
        index = allowed
        sub = logits.index_select(-1, index).float()
        if last_token is not None and run_length is not None:
            pos = torch.searchsorted(index, last_token.to(index.dtype)).clamp(max=index.numel() - 1)
            blocked = (run_length >= config.max_repeat) & (index[pos] == last_token)
            _block(sub, pos, blocked)
        return index[_draw(sub, config, keys, ids=index)]
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if last_token is not None and run_length is not None:
        _block(logits, last_token.clamp(min=0), run_length >= config.max_repeat)
    return _draw(logits, config, keys)


def _block(logits: Tensor, column: Tensor, blocked: Tensor) -> None:
    """In place: -inf at ``logits[i, column[i]]`` where ``blocked[i]`` (no host sync)."""
    col = column.long().unsqueeze(1)
    cur = logits.gather(1, col)
    logits.scatter_(1, col, torch.where(blocked.unsqueeze(1), torch.full_like(cur, float("-inf")), cur))


def _draw(logits: Tensor, config: SamplingConfig, keys: Tensor | None, ids: Tensor | None = None) -> Tensor:
    """Column index of each row's draw. ``ids``: the token id of each column (the noise is keyed by token id, so a
    row's draw does not depend on which columns were sampled over)."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    # top-k first: its values come sorted, so top-p needs no sort of the whole row (both as in the usual definition:
    # top-p over the top-k tokens' renormalised probabilities; the first token always stays)
    k = config.top_k if config.top_k and config.top_k < logits.shape[-1] else logits.shape[-1]
    vals, cols = torch.topk(logits, k, dim=-1)
    if config.top_p < 1.0:
        probs = torch.softmax(vals, dim=-1)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= config.top_p
        vals = vals.masked_fill(drop, float("-inf"))
    # Gumbel-max over the kept tokens: a draw from softmax(vals)
    if keys is None:
        noise = torch.rand(vals.shape, device=vals.device)
    else:
        noise = counter_uniform(keys, cols if ids is None else ids[cols])
    gumbel = -torch.log(-torch.log(noise.clamp(min=1e-10, max=1 - 1e-7)))
    pick = (vals + gumbel).argmax(-1, keepdim=True)
    return cols.gather(-1, pick).squeeze(-1)


_M32 = 0xFFFFFFFF


def _pcg(x: Tensor) -> Tensor:
    """The PCG-RXS-M-XS 32-bit hash of x in [0, 2**32), on int64 tensors (every product stays below 2**63)."""
    state = (x * 747796405 + 2891336453) & _M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _M32
    return (word >> 22) ^ word


def counter_uniform(keys: Tensor, columns: Tensor) -> Tensor:
    """Uniform noise in (0, 1), float32, of shape ``columns.shape``: a hash of (row key, column), so the same key
    and column always give the same number (counter-based, no generator state). keys (b,) and columns (b, n) int64,
    keys in [0, 2**32)."""
    h = _pcg(_pcg(keys & _M32).unsqueeze(-1) ^ _pcg(columns & _M32))
    return (h.to(torch.float32) + 0.5) * (1.0 / 2**32)
