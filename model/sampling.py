"""Sampling settings and the sampler used by the engine's runner.

One frozen dataclass holds every knob. Sampling is restricted to the tokens a step may emit (speech tokens and
end-of-speech), then temperature, top-k, top-p and a repetition guard apply. Each request can carry its own seed:
its noise comes from its own generator, so the same seed gives the same audio whatever else shares the batch.
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
           last_token: Tensor | None = None, run_length: Tensor | None = None,
           generators: list[torch.Generator | None] | None = None) -> Tensor:
    """logits (b, v) -> token ids (b,).

    allowed: tokens that may be sampled, as a (v,) bool mask or as their ids, ascending (long). With ids only those
    columns are sampled over (the paper-scale head has 158,500 rows, speech 4,376 of them: the work of a step's
    sampling shrinks by that ratio) and the step needs no host sync besides reading the result.
    last_token/run_length (b,): the previous token and how many times in a row it was emitted (repetition guard).
    generators: one per row (None = the global RNG).
    """
    if allowed is not None and allowed.dtype != torch.bool:
        index = allowed
        sub = logits.index_select(-1, index).float()
        if last_token is not None and run_length is not None:
            pos = torch.searchsorted(index, last_token.to(index.dtype)).clamp(max=index.numel() - 1)
            blocked = (run_length >= config.max_repeat) & (index[pos] == last_token)
            _block(sub, pos, blocked)
        return index[_draw(sub, config, generators)]
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if last_token is not None and run_length is not None:
        _block(logits, last_token.clamp(min=0), run_length >= config.max_repeat)
    return _draw(logits, config, generators)


def _block(logits: Tensor, column: Tensor, blocked: Tensor) -> None:
    """In place: -inf at ``logits[i, column[i]]`` where ``blocked[i]`` (no host sync)."""
    col = column.long().unsqueeze(1)
    cur = logits.gather(1, col)
    logits.scatter_(1, col, torch.where(blocked.unsqueeze(1), torch.full_like(cur, float("-inf")), cur))


def _draw(logits: Tensor, config: SamplingConfig, generators: list[torch.Generator | None] | None) -> Tensor:
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token if the mass before it already reaches top_p (the first token always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= config.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Gumbel-max with per-row noise: sampling from softmax(logits) with each row's own generator.
    noise = _uniform(logits.shape, logits.device, generators)
    gumbel = -torch.log(-torch.log(noise.clamp(min=1e-10, max=1 - 1e-7)))
    return (logits + gumbel).argmax(-1)


def _uniform(shape: torch.Size, device: torch.device, generators: list[torch.Generator | None] | None) -> Tensor:
    if not generators or all(g is None for g in generators):
        return torch.rand(shape, device=device)
    return torch.stack([torch.rand(shape[-1], device=device, generator=g) for g in generators])
