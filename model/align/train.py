"""Train the word aligner (``model.align.aligner.TokenAligner``) with CTC on the LM's token file.

The token file (``mamtra tokenize``) already holds, per utterance, the text ids and the codec codes of its audio,
so the aligner trains on exactly what it will read in service. Held-out CTC loss on the test split is measured every
``eval_every`` steps; the best weights are kept (``best/``) beside the last (``last/``).

    mamtra train-aligner --tokens tokens.npz --out runs/aligner [--steps 3000] [--threads 2]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.align.aligner import BLANK, AlignerConfig, TokenAligner, frames_needed, phone_targets, save_aligner, \
    silent_ids
from model.train.data import TokenData, load_utterances


@dataclass(frozen=True)
class Example:
    codes: np.ndarray
    targets: np.ndarray


def load_examples(data: TokenData, config: AlignerConfig) -> tuple[list[Example], list[Example]]:
    """(train, test) examples of a token file's utterances; those whose frames cannot hold their phones are left
    out."""
    layout = data.layout
    if layout.speech_codes != config.codes or layout.text_vocab > config.symbols:
        raise ValueError(f"{layout.speech_codes} codes / {layout.text_vocab} text symbols do not match the "
                         f"aligner's {config.codes} / {config.symbols}")
    silent = silent_ids()
    train, test = [], []
    for u in data.utterances:
        targets, _ = phone_targets(u.text_ids.tolist(), silent=silent)
        if not targets or len(u.speech_codes) * config.upsample < frames_needed(targets):
            continue
        (test if u.split == "test" else train).append(Example(u.speech_codes, np.asarray(targets, dtype=np.int64)))
    return train, test


def batches(examples: list[Example], frames: int, rng: np.random.Generator) -> list[list[int]]:
    """Length-sorted batches of about ``frames`` speech tokens each (padding stays small), in a random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].codes), rng.random()))
    out, cur, longest = [], [], 0
    for i in order:
        n = len(examples[i].codes)
        if cur and max(longest, n) * (len(cur) + 1) > frames:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return [out[i] for i in rng.permutation(len(out))]


def ctc_loss(model: TokenAligner, examples: list[Example], idx: list[int]) -> torch.Tensor:
    """Mean CTC loss per target phone over the batch."""
    device = next(model.parameters()).device
    items = [examples[i] for i in idx]
    t_max = max(len(e.codes) for e in items)
    codes = torch.zeros(len(items), t_max, dtype=torch.long)
    for r, e in enumerate(items):
        codes[r, :len(e.codes)] = torch.from_numpy(e.codes)
    lp = model(codes.to(device)).transpose(0, 1)  # (T·up, B, V)
    targets = torch.from_numpy(np.concatenate([e.targets for e in items])).to(device)
    in_len = torch.tensor([len(e.codes) * model.config.upsample for e in items], device=device)
    tg_len = torch.tensor([len(e.targets) for e in items], device=device)
    loss = torch.nn.functional.ctc_loss(lp, targets, in_len, tg_len, blank=BLANK, reduction="sum",
                                        zero_infinity=True)
    return loss / tg_len.sum()


@torch.no_grad()
def held_out(model: TokenAligner, examples: list[Example], frames: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for idx in batches(examples, frames, np.random.default_rng(0)):
        k = sum(len(examples[i].targets) for i in idx)
        total += float(ctc_loss(model, examples, idx)) * k
        n += k
    model.train()
    return total / max(n, 1)


def train(tokens: str | Path, out: str | Path, *, steps: int = 3000, frames: int = 4096, lr: float = 2e-3,
          eval_every: int = 250, seed: int = 0, device: str = "cpu", sizes: dict | None = None,
          init: str | Path | None = None, log=print) -> dict:
    """The aligner's codes and symbols come from the token file; ``sizes`` overrides other ``AlignerConfig``
    fields (e.g. a tiny aligner for tests). ``init``: start from these weights (an aligner directory; its config is
    used) instead of random ones."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_utterances(tokens)
    config = AlignerConfig(codes=data.layout.speech_codes, symbols=max(data.layout.text_vocab, 2), **(sizes or {}))
    start = None
    if init is not None:
        from model.align.aligner import load_aligner

        start = load_aligner(init)
        config = start.config
    train_set, test_set = load_examples(data, config)
    log(f"aligner: {len(train_set)} train / {len(test_set)} test utterances, "
        f"{sum(len(e.codes) for e in train_set)} train tokens")
    model = (start if start is not None else TokenAligner(config)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    out = Path(out)
    history, best, step, t0 = [], math.inf, 0, time.perf_counter()
    pending: list[list[int]] = []
    run_loss = None
    while step < steps:
        if not pending:
            pending = batches(train_set, frames, rng)
        loss = ctc_loss(model, train_set, pending.pop())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        value = loss.item()
        run_loss = value if run_loss is None else 0.95 * run_loss + 0.05 * value
        if step % eval_every == 0 or step == steps:
            test_loss = held_out(model, test_set, frames)
            history.append({"step": step, "train_loss": round(run_loss, 4), "test_loss": round(test_loss, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            log(json.dumps(history[-1]))
            meta = {"step": step, "test_ctc_per_phone": test_loss, "tokens": str(tokens), "history": history,
                    "init": str(init) if init else None}
            save_aligner(model, out / "last", meta=meta)
            if test_loss < best:
                best = test_loss
                save_aligner(model, out / "best", meta=meta)
    return {"best_test_loss": best, "history": history, "out": str(out)}
