"""``mamtra corpus build|import|stats|voices``: the training corpus from the command line."""

from __future__ import annotations

import argparse
import json


def _cmd_build(args: argparse.Namespace) -> int:
    from model.data.build import CorpusConfig, build
    from model.data.engines import VOICES, EngineEnv
    from model.data.manifest import read_manifest, stats

    voices = args.voices or [v.name for v in VOICES if not args.engines or v.engine in args.engines]
    config = CorpusConfig(hours=args.hours, seed=args.seed, voices=tuple(voices), audio_format=args.format)
    result = build(args.out, config, workers=args.workers, env=EngineEnv(args.engine_prefix),
                   progress=not args.no_progress)
    summary = stats(read_manifest(f"{args.out}/manifest.jsonl"))
    print(json.dumps({"planned": result.planned, "skipped": result.skipped, "synthesised": result.synthesised,
                      "failed": result.failed, "wall_s": round(result.seconds, 1), "hours": summary["hours"],
                      "speakers": summary["speakers"], "utterances": summary["utterances"]}))
    return 0 if result.failed == 0 else 1


def _cmd_import(args: argparse.Namespace) -> int:
    from model.data.importers import import_dataset
    from model.data.manifest import write_manifest

    entries = import_dataset(args.format, args.src, args.out)
    if not entries:
        raise ValueError(f"no utterances found in {args.src} ({args.format} layout)")
    write_manifest(args.out, entries)
    print(json.dumps({"utterances": len(entries), "hours": round(sum(e.duration for e in entries) / 3600, 4),
                      "manifest": args.out}))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from model.data.manifest import read_manifest, stats

    s = stats(read_manifest(args.manifest))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['utterances']} utterances, {s['hours']:.3f} h, {s['speakers']} speakers; licences: "
          + ", ".join(s["licences"]))
    for split, d in s["by_split"].items():
        print(f"  split {split:<6} {d['utterances']:>8} utt {d['hours']:>9.3f} h")
    for speaker, d in s["by_speaker"].items():
        print(f"  {speaker:<24} {d['utterances']:>8} utt {d['hours']:>9.3f} h  ({', '.join(d['voices'])})")
    return 0


def _cmd_voices(args: argparse.Namespace) -> int:
    from model.data.engines import VOICES, EngineEnv, engine_for

    env = EngineEnv(args.engine_prefix)
    for v in VOICES:
        ok = "yes" if engine_for(v).available(env) else "no"
        print(f"{v.name:<18} engine={v.engine:<9} speaker={v.speaker:<11} {v.gender} {v.accent:<9} "
              f"available={ok:<3} licence={v.licence}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from model.data.audio import FORMATS
    from model.data.importers import FORMATS as DATASETS

    corpus = sub.add_parser("corpus", help="build, import and inspect training corpora")
    csub = corpus.add_subparsers(dest="corpus_command", required=True)

    b = csub.add_parser("build", help="synthesise the multi-speaker corpus with the Debian engines (resumable)")
    b.add_argument("--out", required=True, help="corpus folder (resumes if it exists)")
    b.add_argument("--hours", type=float, default=50.0, help="target hours (estimated while planning)")
    b.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--engines", nargs="+", choices=["rhvoice", "flite", "festival", "pico"],
                   help="only these engines' voices")
    b.add_argument("--voices", nargs="+", help="only these voices (see 'mamtra corpus voices')")
    b.add_argument("--format", default="flac", choices=FORMATS)
    b.add_argument("--engine-prefix", help="folder of unpacked .deb files (dpkg -x) put first on PATH/LD_LIBRARY_PATH")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_build)

    i = csub.add_parser("import", help="write a manifest for a real dataset (LJSpeech or LibriTTS layout)")
    i.add_argument("src", help="dataset folder")
    i.add_argument("--format", required=True, choices=DATASETS)
    i.add_argument("--out", required=True, help="manifest .jsonl to write (paths are relative to it)")
    i.set_defaults(func=_cmd_import)

    s = csub.add_parser("stats", help="hours and counts per split and speaker")
    s.add_argument("manifest")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_stats)

    v = csub.add_parser("voices", help="the corpus voices, their speakers, licences and availability")
    v.add_argument("--engine-prefix")
    v.set_defaults(func=_cmd_voices)
