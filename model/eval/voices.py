"""Choose the bundled voices from an evaluation: one voice per distinct speaker, best (lowest WER) first.

``python -m model.eval.voices EVAL.json --system NAME --manifest MANIFEST -o voices.json [--max-wer 60]``

Input: a ``mamtra eval`` results JSON and the corpus manifest (for each voice's speaker, engine and licence).
Output: the ``voices`` list ``mamtra bundle --voices`` takes ([{"id", "name", "speaker", "gender", "description",
"wer", "speaker_similarity"}]): per speaker the corpus voice with the lowest WER of ``--system``; voices whose WER
is above ``--max-wer`` or whose licence is non-commercial are left out; ties broken by speaker similarity.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.data.manifest import read_manifest

NON_COMMERCIAL = ("NC", "non-commercial", "noncommercial")


def voice_catalogue(manifest: str | Path) -> dict[str, dict[str, Any]]:
    """voice name → {"speaker", "engine", "licence"} from a corpus manifest."""
    out: dict[str, dict[str, Any]] = {}
    for e in read_manifest(manifest):
        out.setdefault(e.voice, {"speaker": e.speaker, "engine": e.engine, "licence": e.licence})
    return out


def friendly_id(voice: str, speaker: str) -> str:
    """A short, stable voice id: the speaker's name without the corpus prefix (cmu-slt → slt, svox-en-us → en-us)."""
    return speaker.split("-", 1)[1] if "-" in speaker else voice


def select_voices(results: dict[str, Any], system: str, catalogue: dict[str, dict[str, Any]], *,
                  max_wer: float = 60.0, genders: dict[str, str] | None = None) -> list[dict[str, Any]]:
    try:
        per_voice = results["systems"][system]["voices"]
    except KeyError:
        raise ValueError(f"system {system!r} is not in the results (have: {', '.join(results['systems'])})") from None
    best: dict[str, dict[str, Any]] = {}
    for voice, m in per_voice.items():
        info = catalogue.get(voice)
        if info is None or m.get("wer") is None:
            continue
        if any(tag.lower() in str(info["licence"]).lower() for tag in NON_COMMERCIAL) or m["wer"] > max_wer:
            continue
        key = (m["wer"], -(m.get("speaker_similarity") or 0.0))
        held = best.get(info["speaker"])
        if held is None or key < held["_key"]:
            best[info["speaker"]] = {"_key": key, "voice": voice, **info, **m}
    chosen = sorted(best.values(), key=lambda v: v["_key"])
    voices = []
    for v in chosen:
        vid = friendly_id(v["voice"], v["speaker"])
        gender = (genders or {}).get(v["voice"])
        voices.append({"id": vid, "name": vid, "speaker": v["voice"], "gender": gender,
                       "description": f"{v['speaker']} ({v['engine']} voice {v['voice']}, {v['licence']}); "
                                      f"eval WER {v['wer']:.1f} %, speaker similarity "
                                      f"{v.get('speaker_similarity') or float('nan'):.3f}",
                       "wer": round(v["wer"], 2), "speaker_similarity": v.get("speaker_similarity")})
    return voices


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.eval.voices", description=__doc__.split("\n\n")[0])
    p.add_argument("results")
    p.add_argument("--system", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--max-wer", type=float, default=60.0)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
        catalogue = voice_catalogue(args.manifest)
        from model.data.engines import VOICES

        genders = {v.name: v.gender for v in VOICES}
        voices = select_voices(results, args.system, catalogue, max_wer=args.max_wer, genders=genders)
    except (OSError, ValueError, KeyError) as e:
        print(f"model.eval.voices: {e}", file=sys.stderr)
        return 2
    Path(args.output).write_text(json.dumps(voices, indent=1) + "\n")
    for v in voices:
        print(f"{v['id']:8s} {v['speaker']:18s} WER {v['wer']:5.1f}  sim {v['speaker_similarity']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
