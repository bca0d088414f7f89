"""``mamtra train`` (the Transformer teacher) and ``mamtra distill`` (MamTra students, ablations, placement search)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the Transformer teacher on tokenised data (resumable)")
    t.add_argument("--data", required=True, help="tokens .npz (model.train.data)")
    t.add_argument("--preset", default="small-transformer")
    _common(t)
    t.set_defaults(func=_cmd_train)

    k = sub.add_parser("tokenize", help="corpus manifest + codec codes -> LM training tokens (.npz)")
    k.add_argument("--manifest", required=True)
    k.add_argument("--codes", required=True, help="from mamtra encode-manifest")
    k.add_argument("-o", "--output", required=True)
    k.add_argument("--speaker-key", choices=["voice", "speaker"], default="voice")
    k.set_defaults(func=_cmd_tokenize)

    d = sub.add_parser("distill", help="distil a hybrid student from a teacher (resumable), or --search-layout")
    d.add_argument("--data", required=True)
    d.add_argument("--teacher", required=True, help="teacher checkpoint directory")
    d.add_argument("--layout", help="a preset name (its layout) or an A/M string")
    d.add_argument("--subset", type=float, default=0.02, help="share of the training utterances (default 2%%)")
    d.add_argument("--no-kl", action="store_true", help="ablation: CE + embedding loss only")
    d.add_argument("--random-init", action="store_true", help="ablation: student from random init, no transfer")
    d.add_argument("--freeze", choices=["all", "mamba"], default="all",
                   help="'mamba': train only the Mamba layers (the paper's released code); 'all': everything")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--search-layout", action="store_true", help="rank layers by importance and print layouts")
    d.add_argument("--attention", type=int, help="with --search-layout: attention layers to keep")
    d.add_argument("--search-steps", type=int, default=0, help="distillation steps per candidate layer")
    _common(d)
    d.set_defaults(func=_cmd_distill)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory (checkpoints, resumable)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-len", type=int, default=1024, help="tokens per packed multi-utterance sequence")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop (after saving) when this much time has passed; rerun "
                                                     "the same command to resume")


def _cmd_tokenize(args) -> int:
    from model.train.prepare import build_token_data

    print(json.dumps(build_token_data(args.manifest, args.codes, args.output, speaker_key=args.speaker_key)))
    return 0


def _seconds(args) -> float | None:
    return None if args.max_minutes is None else 60.0 * args.max_minutes


def _setup(args):
    from model.train.data import load_utterances, pack_sequences

    data = load_utterances(args.data)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evals = pack_sequences(data.layout, data.utterances, max_len=args.max_len, seed=args.seed, split="test")
    return data, device, evals


def _train_config(args):
    from model.train.loop import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
                       eval_every=args.eval_every, save_every=args.eval_every,
                       warmup_steps=min(100, max(1, args.steps // 10)))


def _cmd_train(args) -> int:
    from model.config import preset, replace
    from model.lm import SpeechLM
    from model.train.data import pack_sequences
    from model.train.loop import train

    if not args.out:
        raise ValueError("--out is required")
    data, device, evals = _setup(args)
    config = replace(preset(args.preset), vocab_size=data.layout.vocab_size, max_context=max(args.max_len, 16))
    if set(config.layout) != {"A"}:
        raise ValueError("the teacher is a pure-attention preset")
    seqs = pack_sequences(data.layout, data.utterances, max_len=args.max_len, seed=args.seed)
    torch.manual_seed(args.seed)
    model = SpeechLM(config, backend="auto")
    train(model, seqs, evals, _train_config(args), args.out, device=device, max_seconds=_seconds(args),
          meta={"layout_tokens": data.layout.to_dict(), "speakers": data.speakers, "role": "teacher"})
    return 0


def _cmd_distill(args) -> int:
    from model.checkpoint import load_checkpoint
    from model.config import PRESETS, replace
    from model.lm import SpeechLM
    from model.train.data import pack_sequences, subset
    from model.train.loop import DistillConfig, train
    from model.train.search import evenly_spaced, layout_from_ranking, rank_layers
    from model.transfer import build_student

    data, device, evals = _setup(args)
    teacher = load_checkpoint(args.teacher, device=device)
    n = teacher.config.n_layers
    part = subset(data.utterances, args.subset, seed=args.seed)
    seqs = pack_sequences(data.layout, part, max_len=args.max_len, seed=args.seed)
    if args.search_layout:
        if args.attention is None:
            raise ValueError("--search-layout needs --attention N")
        base, ranking = rank_layers(teacher, evals, device=device, train_seqs=seqs, steps=args.search_steps,
                                    batch_size=args.batch, work_dir=args.out or "runs/search")
        print(json.dumps({
            "teacher_eval_ce": base,
            "ranking": [{"layer": r.layer, "eval_ce": r.eval_ce, "delta": r.delta} for r in ranking],
            "searched_layout": layout_from_ranking(ranking, n, args.attention),
            "evenly_spaced_layout": evenly_spaced(n, args.attention)}, indent=1))
        return 0
    if not args.out or not args.layout:
        raise ValueError("--out and --layout are required")
    layout = PRESETS[args.layout].layout if args.layout in PRESETS else args.layout
    if args.random_init:
        torch.manual_seed(args.seed)
        student = SpeechLM(replace(teacher.config, layout=layout), backend="auto")
    else:
        student = build_student(teacher, layout)
    distill = DistillConfig(kl_weight=0.0 if args.no_kl else 1.0, freeze=args.freeze, temperature=args.temperature)
    train(student, seqs, evals, _train_config(args), args.out, device=device, teacher=teacher, distill=distill,
          max_seconds=_seconds(args), meta={"layout_tokens": data.layout.to_dict(), "speakers": data.speakers, "role": "student",
                "teacher": str(Path(args.teacher)), "subset": args.subset, "init": "random" if args.random_init
                else "transfer", "train_utterances": sum(u.split == "train" for u in part)})
    return 0
