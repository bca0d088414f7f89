"""``mamtra train-aligner``: train the word aligner on a token file (``model.align.train``)."""

from __future__ import annotations

import argparse
import json


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from model.align.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = dict(embed_dim=8, channels=16, dilations=(1, 2)) if args.tiny else None
    result = train(args.tokens, args.out, steps=args.steps, frames=args.frames, lr=args.lr,
                   eval_every=args.eval_every, seed=args.seed, device=args.device, sizes=sizes, init=args.init)
    print(json.dumps({"best_test_ctc_per_phone": round(result["best_test_loss"], 4), "out": result["out"]}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train-aligner", help="train the word aligner (CTC on speech tokens) on a token file")
    tr.add_argument("--tokens", required=True, help="token file from `mamtra tokenize`")
    tr.add_argument("--out", required=True, help="directory: best/ (lowest held-out CTC) and last/")
    tr.add_argument("--steps", type=int, default=3000)
    tr.add_argument("--frames", type=int, default=4096, help="speech tokens per batch (padded)")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--eval-every", type=int, default=250)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    tr.add_argument("--init", help="start from this aligner directory (continue training) instead of random weights")
    tr.add_argument("--tiny", action="store_true", help="a tiny aligner (smoke tests)")
    tr.set_defaults(func=_cmd_train)
