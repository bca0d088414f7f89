"""Long-form behaviour of a bundle: a long text in one request, checked for drift in voice and level and for pauses.

``python -m model.eval.longform --manifest M --voice V [--words 2000] [--model-dir BUNDLE] --out longform.json``

The text is the held-out (test split) sentences of the corpus, in manifest order, until ``--words`` words. It is
synthesised as one request by the same engine the server runs (``service.offline.say``: one slot, sentences appended
to one context, restarts at the context limit). The output is cut into ``--window`` second windows; per window:
RMS level (dBFS over the voiced frames), Resemblyzer similarity to the voice's reference embedding (its corpus
source audio: test utterances of the voice). Reported: the first and last quarter's means and their difference
(drift), the spread over windows, and the longest silent run anywhere (pauses over one second are defects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from model.data.manifest import audio_path, read_manifest

SILENCE_DBFS = -45.0  # 10 ms frames below this RMS are silent


def long_text(entries: list, words: int, *, split: str = "test") -> str:
    """The ``split`` sentences of manifest ``entries``, in order, joined until ``words`` words."""
    out, n = [], 0
    for e in entries:
        if e.split != split:
            continue
        out.append(e.text)
        n += len(e.text.split())
        if n >= words:
            break
    if n < words:
        raise ValueError(f"the {split} split has only {n} words")
    return " ".join(out)


def frame_dbfs(audio: np.ndarray, sample_rate: int, frame_s: float = 0.01) -> np.ndarray:
    n = int(sample_rate * frame_s)
    frames = audio[: len(audio) // n * n].reshape(-1, n).astype(np.float64)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def longest_silence(audio: np.ndarray, sample_rate: int, frame_s: float = 0.01) -> float:
    silent = frame_dbfs(audio, sample_rate, frame_s) < SILENCE_DBFS
    best = run = 0
    for s in silent:
        run = run + 1 if s else 0
        best = max(best, run)
    return best * frame_s


def analyse(audio: np.ndarray, sample_rate: int, reference: np.ndarray, embed, *, window_s: float = 10.0) -> dict:
    """``embed(audio, sample_rate) -> embedding or None``; ``reference`` an embedding (cosine similarity)."""
    from model.eval.speaker import cosine

    n = int(window_s * sample_rate)
    windows = []
    for start in range(0, len(audio) - n + 1, n):
        w = audio[start:start + n]
        db = frame_dbfs(w, sample_rate)
        voiced = db[db >= SILENCE_DBFS]
        level = float(10 * np.log10(np.mean(10 ** (voiced / 10)))) if len(voiced) else float("nan")
        windows.append({"start_s": start / sample_rate, "level_dbfs": level,
                        "similarity": cosine(embed(w, sample_rate), reference)})
    if len(windows) < 4:
        raise ValueError("audio too short for a drift measurement (fewer than 4 windows)")
    q = max(1, len(windows) // 4)

    def mean(key, part):
        return float(np.nanmean([w[key] for w in part]))

    first, last = windows[:q], windows[-q:]
    return {
        "seconds": len(audio) / sample_rate, "windows": windows, "window_s": window_s,
        "level_first_quarter_dbfs": mean("level_dbfs", first), "level_last_quarter_dbfs": mean("level_dbfs", last),
        "level_drift_db": mean("level_dbfs", last) - mean("level_dbfs", first),
        "level_std_db": float(np.nanstd([w["level_dbfs"] for w in windows])),
        "similarity_first_quarter": mean("similarity", first), "similarity_last_quarter": mean("similarity", last),
        "similarity_drift": mean("similarity", last) - mean("similarity", first),
        "similarity_min": float(np.nanmin([w["similarity"] for w in windows])),
        "longest_silence_s": longest_silence(audio, sample_rate),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.eval.longform", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True)
    p.add_argument("--voice", required=True, help="bundle voice id")
    p.add_argument("--reference-voice", help="corpus voice of the reference audio (default: the bundle's mapping)")
    p.add_argument("--model-dir")
    p.add_argument("--words", type=int, default=2000)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wav", help="keep the synthesised audio here")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import soundfile as sf

    from model.eval.speaker import SpeakerEncoder, reference_embedding
    from service.offline import say

    entries = read_manifest(args.manifest)
    text = long_text(entries, args.words)
    wav = args.wav or str(Path(args.out).with_suffix(".wav"))
    t0 = time.perf_counter()
    seconds = say(text, out=wav, voice=args.voice, model_dir=args.model_dir, seed=args.seed)
    synth = time.perf_counter() - t0
    audio, sr = sf.read(wav, dtype="float32")
    ref_voice = args.reference_voice
    if ref_voice is None:
        from service.engine.bundle import DEFAULT_BUNDLE

        spec = json.loads((Path(args.model_dir or DEFAULT_BUNDLE) / "pipeline.json").read_text())
        ref_voice = spec["decoder"]["voices"][args.voice]
    refs = [e for e in entries if e.voice == ref_voice and e.split == "test"][:10]
    encoder = SpeakerEncoder()
    embeddings = []
    for e in refs:
        ref_audio, ref_sr = sf.read(str(audio_path(args.manifest, e)), dtype="float32", always_2d=True)
        embeddings.append(encoder.embed(ref_audio.mean(axis=1), ref_sr))
    reference = reference_embedding(embeddings)
    report = analyse(audio, sr, reference, encoder.embed, window_s=args.window)
    report = {"command": " ".join(["python -m model.eval.longform", *(argv or sys.argv[1:])]),
              "voice": args.voice, "reference_voice": ref_voice, "words": len(text.split()),
              "synth_seconds": synth, "rtf": synth / max(seconds, 1e-9), **report}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "windows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
