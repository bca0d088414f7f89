"""Placement search: which attention layers to keep for a target ratio (the paper's "systematic experiments").

Importance of layer i = how much held-out cross-entropy rises when layer i *alone* becomes a Mamba layer (transfer
init, then optionally a few distillation steps of just that layer, so a layer that is cheap to convert is not
penalised for its untrained init). Keep the most important layers as attention. ``evenly_spaced`` is the baseline
placement at the same ratio (``0, k, 2k, …``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.lm import SpeechLM
from model.train.loop import DistillConfig, TrainConfig, evaluate, train
from model.transfer import build_student


@dataclass(frozen=True)
class LayerImportance:
    layer: int
    eval_ce: float
    delta: float  # eval_ce minus the teacher's


def rank_layers(teacher: SpeechLM, eval_seqs: list, *, device="cpu", train_seqs: list | None = None,
                steps: int = 0, batch_size: int = 8, work_dir: str | Path | None = None,
                progress: bool = False) -> tuple[float, list[LayerImportance]]:
    """(teacher CE, layers sorted by importance, most important first)."""
    base = evaluate(teacher, eval_seqs, batch_size=batch_size, device=device)
    n = teacher.config.n_layers
    out = []
    for i in range(n):
        layout = "".join("M" if j == i else "A" for j in range(n))
        student = build_student(teacher, layout)
        if steps and train_seqs:
            train(student, train_seqs, [], TrainConfig(steps=steps, batch_size=batch_size, warmup_steps=1,
                                                       eval_every=steps, save_every=steps),
                  Path(work_dir or ".") / f"search-layer{i}", device=device, teacher=teacher,
                  distill=DistillConfig(freeze="mamba"), progress=progress)
        ce = evaluate(student, eval_seqs, batch_size=batch_size, device=device)
        out.append(LayerImportance(i, ce, ce - base))
    out.sort(key=lambda r: r.delta, reverse=True)
    return base, out


def layout_from_ranking(ranking: list[LayerImportance], n_layers: int, n_attention: int) -> str:
    keep = {r.layer for r in ranking[:n_attention]}
    return "".join("A" if i in keep else "M" for i in range(n_layers))


def evenly_spaced(n_layers: int, n_attention: int) -> str:
    if not 0 <= n_attention <= n_layers:
        raise ValueError("n_attention out of range")
    if n_attention == 0:
        return "M" * n_layers
    stride = n_layers / n_attention
    keep = {int(round(k * stride)) for k in range(n_attention)}
    return "".join("A" if i in keep else "M" for i in range(n_layers))
