"""Held-out CE of students right after the transfer init (no training), for layouts to compare: a cheap CPU check
of a placement search's result (``python -m bench.layout_transfer_ce TOKENS TEACHER LAYOUT… [--out F]``).

Not a substitute for distilling each layout (the real comparison); it says which placement loses less of the
teacher before any training."""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.checkpoint import load_checkpoint
from model.train.data import load_utterances, pack_sequences
from model.train.loop import evaluate
from model.transfer import build_student


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tokens")
    p.add_argument("teacher")
    p.add_argument("layouts", nargs="+")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    data = load_utterances(args.tokens)
    evals = pack_sequences(data.layout, data.utterances, max_len=args.max_len, seed=0, split="test")
    teacher = load_checkpoint(args.teacher, device="cpu")
    rows = []
    for layout in ["teacher", *args.layouts]:
        model = teacher if layout == "teacher" else build_student(teacher, layout)
        t = time.perf_counter()
        with torch.inference_mode():
            ce = evaluate(model, evals, batch_size=8, device=torch.device("cpu"), max_batches=args.batches)
        rows.append({"layout": teacher.config.layout if layout == "teacher" else layout, "eval_ce": ce,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"teacher": args.teacher, "sequences": min(len(evals), 8 * args.batches), "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
