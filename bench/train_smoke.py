"""Training throughput on one GPU with synthetic token data shaped like the real corpus (for planning runs).

Writes a synthetic tokens .npz (8 speakers, ~3 s utterances at 25 tokens/s, 4096 codes, the text vocabulary's
size), then times ``mamtra train`` (teacher) and ``mamtra distill`` (a 1:3 student) for a few steps each.
Usage: python -m bench.train_smoke --out DIR [--steps 100] [--utterances 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model.text.vocab import Vocabulary
from model.train.data import Utterance, save_utterances
from service.cli import main as mamtra


def synthetic_tokens(path: Path, *, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    text_vocab = len(Vocabulary())
    utts = []
    for i in range(n):
        words = rng.integers(4, 16)
        text = rng.integers(5, text_vocab, size=words * 5)
        speech = rng.integers(0, 4096, size=int(words * 0.35 * 25))
        utts.append(Utterance(i % 8, text, speech, "test" if i % 50 == 0 else "train"))
    save_utterances(path, utts, speakers=[f"s{i}" for i in range(8)], text_vocab=text_vocab, speech_codes=4096)
    return sum(len(u.speech_codes) for u in utts) / 25 / 3600


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--utterances", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=2048)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hours = synthetic_tokens(out / "tokens.npz", n=args.utterances)
    common = ["--data", str(out / "tokens.npz"), "--steps", str(args.steps), "--batch", str(args.batch),
              "--max-len", str(args.max_len), "--eval-every", str(args.steps)]
    report = {"synthetic_hours": hours}
    for name, argv in (("teacher", ["train", "--preset", "small-transformer", "--out", str(out / "teacher")]),
                       ("student_1_3", ["distill", "--teacher", str(out / "teacher"), "--layout", "small-1:3",
                                        "--subset", "1.0", "--out", str(out / "student")])):
        t0 = time.perf_counter()
        assert mamtra(argv + common) == 0
        seconds = time.perf_counter() - t0
        tokens = args.steps * args.batch * args.max_len
        report[name] = {"seconds": seconds, "steps": args.steps, "tokens_per_second_upper_bound": tokens / seconds}
    print(json.dumps(report, indent=1))
    (out / "train_smoke.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
