"""``mamtra eval``: WER (Whisper base), speaker similarity (Resemblyzer), PESQ/STOI, RTF and EOS failures of systems
on held-out corpus sentences (``model.eval.harness``). Every model is local: nothing is downloaded.

    mamtra eval --manifest corpus/manifest.jsonl --split test --per-voice 20 \\
        --system source=source --system codec=resynth:runs/codec \\
        --system tts=bundle:runs/bundle --out eval.json --markdown eval.md

Bad inputs (missing manifest, unknown voice, bad ``--system``, a voice a system lacks) exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line, rebuilt from the parsed arguments (defaults spelled out), for the results file."""
    argv = ["--manifest", args.manifest, "--split", args.split, "--per-voice", str(args.per_voice)]
    if args.voices:
        argv += ["--voices", *args.voices]
    for s in args.system:
        argv += ["--system", s]
    argv += ["--reference-utterances", str(args.reference_utterances), "--seed", str(args.seed), "--beam",
             str(args.beam), "--threads", str(args.threads), "--device", args.device, "--out", args.out]
    if args.markdown:
        argv += ["--markdown", args.markdown]
    if args.keep_audio:
        argv += ["--keep-audio", args.keep_audio]
    return argv


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.eval.asr import ASRError
    from model.eval.harness import EvalConfig, run_eval, write_results
    from model.eval.report import markdown, write_markdown
    from model.eval.systems import EvalError, SystemSpec
    from service.engine.bundle import BundleError

    try:
        specs = [SystemSpec.parse(s) for s in args.system]
        config = EvalConfig(manifest=Path(args.manifest), split=args.split, per_voice=args.per_voice,
                            voices=tuple(args.voices) if args.voices else None,
                            reference_utterances=args.reference_utterances, seed=args.seed, beam_size=args.beam,
                            threads=args.threads, device=args.device,
                            keep_audio=Path(args.keep_audio) if args.keep_audio else None,
                            progress=not args.no_progress)
        results = run_eval(config, specs, argv=_argv(args))
    except (EvalError, BundleError, ASRError) as e:
        print(f"mamtra eval: {e}", file=sys.stderr)
        return 2
    write_results(results, args.out)
    results = json.loads(Path(args.out).read_text())  # the tables show exactly the numbers the JSON keeps
    if args.markdown:
        write_markdown(results, args.markdown)
    print(markdown(results).split("## By system and voice")[0].rstrip())
    print(f"\nresults: {args.out}" + (f", {args.markdown}" if args.markdown else ""), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="WER / speaker similarity / PESQ / RTF of systems on held-out sentences",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="corpus manifest (JSONL; paths relative to its folder)")
    p.add_argument("--split", default="test", choices=["test", "train"], help="which sentences (default: held out)")
    p.add_argument("--per-voice", type=int, default=10, help="first N utterances of each voice (default 10)")
    p.add_argument("--voices", nargs="+", help="only these manifest voices (default: every voice in the split)")
    p.add_argument("--system", action="append", required=True, metavar="NAME=SPEC",
                   help="NAME=source | NAME=resynth:CODEC_DIR | NAME=bundle:BUNDLE_DIR | NAME=lm:LM_DIR,CODEC_DIR "
                        "(repeat to compare)")
    p.add_argument("--reference-utterances", type=int, default=5,
                   help="held-out source utterances averaged into each voice's speaker reference (default 5)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (each utterance's is derived from it)")
    p.add_argument("--beam", type=int, default=5, help="Whisper beam size (1: greedy, faster)")
    p.add_argument("--threads", type=int, default=0, help="torch and Whisper CPU threads (0: their defaults)")
    p.add_argument("--device", default="cpu", help="where bundles and codecs run (cpu, cuda); RTF is measured there")
    p.add_argument("--out", default="eval.json", help="results JSON (default eval.json)")
    p.add_argument("--markdown", help="also write the tables as Markdown here")
    p.add_argument("--keep-audio", help="write every output as DIR/SYSTEM/VOICE/ID.wav")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m model.eval.cli …``: ``eval`` without the rest of the ``mamtra`` CLI."""
    parser = argparse.ArgumentParser(prog="python -m model.eval.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
