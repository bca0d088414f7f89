"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate at ``step`` (0-based): ``lr·(step+1)/warmup`` during warm-up, then cosine from ``lr`` down to
    ``lr·min_ratio`` at ``total`` (and flat after it)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
