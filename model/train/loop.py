"""Training loops: the Transformer teacher (cross-entropy) and MamTra students (CE + KL + embedding MSE).

One loop serves both: with a ``teacher`` and a ``DistillConfig`` it distils, without them it trains on ground truth.
Runs are resumable: every ``save_every`` steps the model (safetensors + versioned config, ``model.checkpoint``)
and the optimiser/step/history (``train_state.pt``) are written; a restarted run continues from there and sees the
same batches it would have seen (batches are a function of the seed and the step). bf16 autocast on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.lm import SpeechLM
from model.schedule import warmup_cosine
from model.train.data import IGNORE, collate
from model.transfer import ce_loss, distillation_loss, set_trainable

STATE_FILE = "train_state.pt"
BEST_DIR = "best"  # weights (model.checkpoint format) at the lowest held-out CE seen


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    save_every: int = 250
    eval_batches: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"invalid training config {self}")


@dataclass(frozen=True)
class DistillConfig:
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    embedding_weight: float = 1.0
    temperature: float = 1.0
    freeze: str = "all"  # "mamba": only the new Mamba layers train (the paper's released code); "all"

    def __post_init__(self) -> None:
        if min(self.ce_weight, self.kl_weight, self.embedding_weight) < 0 or self.temperature <= 0:
            raise ValueError(f"invalid distillation config {self}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    return warmup_cosine(step, lr=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, min_ratio=cfg.min_lr_ratio)


def batch_indices(step: int, n: int, cfg: TrainConfig) -> np.ndarray:
    """The examples of ``step``: epochs are seeded permutations, so a resumed run replays the same batches."""
    start = step * cfg.batch_size
    idx = []
    while len(idx) < cfg.batch_size:
        epoch, offset = divmod(start + len(idx), n)
        perm = np.random.default_rng(cfg.seed * 100_003 + epoch).permutation(n)
        idx.extend(perm[offset: offset + cfg.batch_size - len(idx)].tolist())
    return np.array(idx)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def evaluate(model: SpeechLM, sequences: list, *, batch_size: int, device: torch.device,
             max_batches: int | None = None) -> float:
    """Mean cross-entropy per generated token on ``sequences``."""
    device = torch.device(device)
    model.eval()
    total, count = 0.0, 0
    for b, start in enumerate(range(0, len(sequences), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        ids, targets = collate(sequences[start: start + batch_size])
        ids, targets = ids.to(device), targets.to(device)
        with _autocast(device):
            logits = model(ids)
        n = int((targets != IGNORE).sum())
        total += float(ce_loss(logits, targets)) * n
        count += n
    model.train()
    return total / max(count, 1)


def train(model: SpeechLM, train_seqs: list, eval_seqs: list, cfg: TrainConfig, out_dir: str | Path, *,
          device: torch.device | str = "cpu", teacher: SpeechLM | None = None,
          distill: DistillConfig | None = None, meta: dict | None = None, progress: bool = True,
          max_seconds: float | None = None, stop_at: int | None = None) -> list[dict]:
    """Train (or distil into) ``model``; returns the history (one dict per eval). Resumes from ``out_dir``.

    ``max_seconds`` / ``stop_at`` end the call early (after a save) so a run can be split across calls of a
    time-limited machine; the next call resumes where this one stopped.
    """
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not train_seqs:
        raise ValueError("no training sequences")
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if distill is not None:
        if teacher is None:
            raise ValueError("distillation needs a teacher")
        set_trainable(model, distill.freeze)
        teacher.to(device).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    step, history = 0, []
    state_path = out / STATE_FILE
    if state_path.exists():  # resume
        resumed = load_checkpoint(out, backend="ref", device=device)
        model.load_state_dict(resumed.state_dict())
        state = torch.load(state_path, map_location=device, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{'distil' if distill else 'train'} {model.config.layout}",
               disable=not progress)
    t0 = time.perf_counter()
    while step < cfg.steps:
        if (stop_at is not None and step >= stop_at) or (
                max_seconds is not None and time.perf_counter() - t0 > max_seconds):
            _save(model, opt, step, history, out, cfg, distill, meta)
            break
        ids, targets = collate([train_seqs[i] for i in batch_indices(step, len(train_seqs), cfg)])
        ids, targets = ids.to(device), targets.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with _autocast(device):
            if distill is None:
                losses = {"total": ce_loss(model(ids), targets)}
            else:
                with torch.no_grad():
                    t_logits, t_hidden = teacher(ids, return_hidden=True)
                s_logits, s_hidden = model(ids, return_hidden=True)
                losses = distillation_loss(student_logits=s_logits, teacher_logits=t_logits,
                                           student_hidden=s_hidden[-1], teacher_hidden=t_hidden[-1],
                                           targets=targets, ce_weight=distill.ce_weight,
                                           kl_weight=distill.kl_weight, embedding_weight=distill.embedding_weight,
                                           temperature=distill.temperature)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total'].item():.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            entry = {"step": step, "train_loss": losses["total"].item(), "grad_norm": grad_norm.item(),
                     "lr": lr_at(step - 1, cfg), "seconds": time.perf_counter() - t0,
                     **{f"train_{k}": v.item() for k, v in losses.items() if k != "total"}}
            if eval_seqs:
                entry["eval_ce"] = evaluate(model, eval_seqs, batch_size=cfg.batch_size, device=device,
                                            max_batches=cfg.eval_batches)
            history.append(entry)
            bar.write(json.dumps(entry))
            if "eval_ce" in entry and entry["eval_ce"] <= min(h.get("eval_ce", float("inf")) for h in history):
                # The lowest held-out CE so far: small data overfits, so the last step is not always the best.
                save_checkpoint(model, out / BEST_DIR, meta={**(meta or {}), "step": step,
                                                              "eval_ce": entry["eval_ce"]})
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save(model, opt, step, history, out, cfg, distill, meta)
    bar.close()
    return history


def _save(model, opt, step, history, out: Path, cfg: TrainConfig, distill: DistillConfig | None,
          meta: dict | None) -> None:
    info = {"train": asdict(cfg), "distill": asdict(distill) if distill else None, "step": step,
            "history": history, **(meta or {})}
    save_checkpoint(model, out, meta=info)
    tmp = out / (STATE_FILE + ".tmp")
    torch.save({"optimizer": opt.state_dict(), "step": step, "history": history}, tmp)
    tmp.replace(out / STATE_FILE)  # atomic: a run killed mid-save resumes from the previous save
