"""The ``mamtra`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_plan(args: argparse.Namespace) -> int:
    from model.checkpoint import read_config
    from model.config import preset
    from model.plan import memory_plan, parse_dtype

    config = read_config(args.checkpoint)[0] if args.checkpoint else preset(args.preset)
    plan = memory_plan(config, context=args.context, streams=args.streams, dtype=parse_dtype(args.dtype),
                       ssm_dtype=parse_dtype(args.ssm_dtype))
    plan = {"preset": None if args.checkpoint else args.preset, **plan}
    print(json.dumps(plan))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.engine.bundle import BundleError
    from service.engine.engine import build_engine
    from service.metrics import Metrics
    from service.server import serve
    from service.settings import Settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("model_dir", args.model_dir),
                                   ("device", args.device)) if v is not None}
    settings = Settings(**overrides)
    metrics = Metrics()
    try:  # load before binding the port, so a missing model is a clear message, not a crashed lifespan
        engine = build_engine(settings, metrics)
    except BundleError as e:
        print(f"mamtra serve: {e}", file=sys.stderr)
        return 2
    serve(settings, engine=engine, metrics=metrics)
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from service.engine.bundle import assemble_bundle

    voices = json.loads(open(args.voices).read()) if args.voices else None
    out = assemble_bundle(args.out, lm_dir=args.lm, codec_dir=args.codec, model_id=args.model_id, voices=voices,
                          aligner_dir=args.aligner, blank_penalty=args.blank_penalty)
    print(out)
    return 0


def _cmd_say(args: argparse.Namespace) -> int:
    from service.engine.bundle import BundleError
    from service.engine.types import InvalidRequest
    from service.offline import say

    try:
        seconds = say(args.text, out=args.output, voice=args.voice, model_dir=args.model_dir, seed=args.seed,
                      speed=args.speed)
    except (BundleError, InvalidRequest) as e:
        print(f"mamtra say: {e}", file=sys.stderr)
        return 2
    if args.output != "-":
        print(f"{args.output}: {seconds:.2f} s", file=sys.stderr)
    return 0


def _cmd_voices(args: argparse.Namespace) -> int:
    from service.engine.bundle import BundleError
    from service.offline import voices

    try:
        print("\n".join(voices(args.model_dir)))
    except BundleError as e:
        print(f"mamtra voices: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from service.engine.bundle import BundleError
    from service.offline import info_json

    try:
        print(info_json(args.model_dir))
    except BundleError as e:
        print(f"mamtra info: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from model.config import PRESETS

    parser = argparse.ArgumentParser(prog="mamtra", description="MamTra streaming TTS")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="memory plan (weights and per-stream state) as JSON")
    src = plan.add_mutually_exclusive_group()
    src.add_argument("--preset", default="mamtra-1:3", choices=sorted(PRESETS))
    src.add_argument("--checkpoint", help="a checkpoint directory instead of a preset")
    plan.add_argument("--context", type=int, default=4096, help="tokens of context per stream")
    plan.add_argument("--streams", type=int, default=1, help="concurrent streams")
    plan.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weights and KV cache")
    plan.add_argument("--ssm-dtype", default="fp32", choices=["bf16", "fp16", "fp32"], help="Mamba SSM state")
    plan.set_defaults(func=_cmd_plan)

    serve = sub.add_parser("serve", help="run the HTTP/WebSocket service (settings: MAMTRA_* variables)")
    serve.add_argument("--host", help="bind address (MAMTRA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (MAMTRA_PORT, default 8000)")
    serve.add_argument("--model-dir", help="model bundle directory (MAMTRA_MODEL_DIR, default: the bundled model)")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N (MAMTRA_DEVICE)")
    serve.set_defaults(func=_cmd_serve)

    say = sub.add_parser("say", help="speak TEXT into a WAV file (or - for a WAV stream on stdout)")
    say.add_argument("text")
    say.add_argument("-o", "--output", default="out.wav")
    say.add_argument("--voice", help="a voice id (mamtra voices); default: the first (best) one")
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--seed", type=int, help="sampling seed: the same seed gives the same audio")
    say.add_argument("--model-dir", help="model bundle (default: the bundled model)")
    say.set_defaults(func=_cmd_say)
    for name, func, help_ in (("voices", _cmd_voices, "the bundle's voices, one id per line, best first"),
                              ("info", _cmd_info, "the bundle's model config as JSON")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model-dir", help="model bundle (default: the bundled model)")
        p.set_defaults(func=func)

    bundle = sub.add_parser("bundle", help="assemble a servable model bundle from a trained LM and codec")
    bundle.add_argument("--lm", required=True, help="LM checkpoint directory (from mamtra train/distill)")
    bundle.add_argument("--codec", required=True, help="codec directory (from mamtra train-codec)")
    bundle.add_argument("--aligner", help="word aligner directory (from mamtra train-aligner; word timestamps)")
    bundle.add_argument("--blank-penalty", type=float, help="the aligner's blank penalty (python -m model.align.eval "
                        "chooses it; default: the aligner's own)")
    bundle.add_argument("--out", required=True)
    bundle.add_argument("--model-id", default="mamtra-small")
    bundle.add_argument("--voices", help='JSON file: [{"id", "name", "speaker", "gender", "description"}], best first')
    bundle.set_defaults(func=_cmd_bundle)

    from bench.cli import register as register_bench
    from model.train.cli import register as register_train

    register_train(sub)

    register_bench(sub)

    from model.data.cli import register as register_corpus
    from model.text.cli import register as register_text

    register_text(sub)
    register_corpus(sub)

    from model.codec.cli import register as register_codec

    register_codec(sub)

    from model.eval.cli import register as register_eval

    register_eval(sub)

    from model.align.cli import register as register_align

    register_align(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"mamtra {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
