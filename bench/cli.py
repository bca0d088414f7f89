"""``mamtra bench {memory,decode,longform}``: run a benchmark, save JSON (and PNG plots when matplotlib is there)."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG under --out)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for name, help_ in (("memory", "state bytes and peak VRAM vs context and concurrency"),
                        ("decode", "decode step time vs batch and context, CUDA graphs vs eager"),
                        ("longform", "step time at token 100 vs 8,000")):
        p = kinds.add_parser(name, help=help_)
        p.add_argument("--quick", action="store_true", help="small presets and sizes (runs on CPU)")
        p.add_argument("--out", default="bench-results", help="output folder")
        p.add_argument("--presets", nargs="*", help="presets to run (default: the paper-scale family)")
        p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
        p.set_defaults(func=_run)
    plot = kinds.add_parser("plot", help="plots from saved JSON results")
    plot.add_argument("results", nargs="+")
    plot.set_defaults(func=_plot)


def _environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        env["card"] = torch.cuda.get_device_name()
    return env


def _run(args: argparse.Namespace) -> int:
    from bench import lm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    presets = tuple(args.presets) if args.presets else (lm.QUICK_PRESETS if quick else lm.PAPER_PRESETS)
    if args.bench == "memory":
        kw = dict(contexts=(64, 256, 1024), streams=(1, 4), fit_budget_bytes=None) if quick else {}
        result = lm.memory(presets=presets, device=device, **kw)
    elif args.bench == "decode":
        kw = dict(batches=(1, 4), positions=(32, 256), reps=5) if quick else {}
        result = {"rows": lm.decode(presets=presets, device=device, **kw)}
    else:
        kw = dict(batch=4, positions=(16, 512)) if quick else {}
        result = lm.longform(presets=presets, device=device, **kw)
    result["environment"] = _environment(device)
    result["command"] = "mamtra bench " + args.bench + (" --quick" if quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.bench}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    _try_plots([path])
    return 0


def _plot(args: argparse.Namespace) -> int:
    return 0 if _try_plots([Path(p) for p in args.results]) else 1


def _try_plots(paths: list[Path]) -> bool:
    try:
        from bench import plots
    except ImportError as e:  # matplotlib is an optional extra (not on the GPU image)
        print(f"no plots: {e}")
        return False
    for path in paths:
        for png in plots.plot(path):
            print(f"wrote {png}")
    return True
