"""How well the word aligner places words, measured against Whisper's own word timestamps on held-out audio.

Each word's placement is compared with Whisper base's word timestamps (``Transcriber.words``, cross-attention DTW;
an independent model, itself accurate to some tens of ms, so the numbers are agreement with it, not error against a
hand-marked truth):

- ``aligner``: the CTC forced alignment of the phones on the speech tokens (``model.align.aligner``);
- ``estimate``: the engine's fallback, words spread over the audio in proportion to their length.

Two modes. Corpus (``--aligner --tokens --manifest``): held-out corpus audio (per voice, the test split by id,
after ``--skip``) and the codec tokens of that audio, several blank penalties side by side (choose on one subset,
report on another). Bundle (``--bundle DIR``): what the service sends — the bundle's engine speaks held-out
sentences in each of its voices with word timestamps on (the aligner the bundle ships, on the tokens the LM
generated), Whisper listens to the generated audio.

Words are paired where both sides have the same spelling (lower case, letters, digits and apostrophes), in order
(``difflib``); numbers Whisper writes as digits go unpaired. Reported per system: mean and median absolute start
and end differences, their signed means (ours − Whisper's), the share of words with both within 50 / 100 ms,
per voice and overall.

    python -m model.align.eval --aligner runs/aligner/best --tokens tokens.npz --manifest corpus/manifest.jsonl \
        --skip 3 --per-voice 8 --out docs/eval/aligner.json   (penalties chosen on --skip 0 --per-voice 3)
    python -m model.align.eval --bundle model/bundled --manifest corpus/manifest.jsonl --per-voice 4 \
        --out docs/eval/aligner-bundle.json
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.align.aligner import proportional_spans


def _key(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower()).strip("'")


def pair_words(ours: list[str], theirs: list[str]) -> list[tuple[int, int]]:
    """Indices ``(i, j)`` of words spelled alike, in order."""
    a, b = [_key(w) for w in ours], [_key(w) for w in theirs]
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return [(blk.a + k, blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size) if a[blk.a + k]]


def estimate(words: list[str], duration: float) -> list[tuple[float, float]]:
    """The engine's fallback, in seconds over ``duration``."""
    return [(a * duration, b * duration) for a, b in proportional_spans(words)]


def summarise(diffs: list[tuple[float, float]]) -> dict:
    if not diffs:
        return {"words": 0}
    signed = np.asarray(diffs, dtype=np.float64)
    d = np.abs(signed)
    both = d.max(axis=1)
    return {"words": len(d), "start_bias_ms": round(1e3 * signed[:, 0].mean(), 1),
            "end_bias_ms": round(1e3 * signed[:, 1].mean(), 1), "start_mean_ms": round(1e3 * d[:, 0].mean(), 1),
            "start_median_ms": round(1e3 * float(np.median(d[:, 0])), 1),
            "end_mean_ms": round(1e3 * d[:, 1].mean(), 1), "end_median_ms": round(1e3 * float(np.median(d[:, 1])), 1),
            "within_50ms": round(float((both <= 0.05).mean()), 3), "within_100ms": round(float((both <= 0.10).mean()), 3)}


def _selection(entries, per_voice: int, skip: int) -> dict[str, list[int]]:
    by_voice: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(entries)), key=lambda i: entries[i].id):
        if entries[i].split == "test" and len(by_voice[entries[i].voice]) < skip + per_voice:
            by_voice[entries[i].voice].append(i)
    return {v: idx[skip:] for v, idx in sorted(by_voice.items())}


class _Scores:
    def __init__(self):
        self.diffs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.words = self.paired = 0

    def add(self, group: str, words: list[str], placed: dict[str, list[tuple[float, float]]],
            ref: list[tuple[str, float, float]]) -> None:
        pairs = pair_words(words, [w for w, _, _ in ref])
        self.words += len(words)
        self.paired += len(pairs)
        for name, times in placed.items():
            for a, b in pairs:
                d = (times[a][0] - ref[b][1], times[a][1] - ref[b][2])
                self.diffs[name][group].append(d)
                self.diffs[name]["all"].append(d)

    def results(self) -> dict:
        return {"words": self.words, "words_paired": self.paired,
                "systems": {name: {v: summarise(d) for v, d in per.items()} for name, per in self.diffs.items()}}


def _corpus(args, entries, asr) -> dict:
    from model.align.aligner import WordAligner, load_aligner
    from model.data.manifest import audio_path
    from model.eval.audio import read_mono, resample
    from model.text.frontend import TextFrontend
    from model.train.data import load_utterances

    utterances = load_utterances(args.tokens).utterances
    if len(entries) != len(utterances) or any(e.split != u.split for e, u in zip(entries, utterances)):
        raise SystemExit("the token file does not match the manifest (count or splits differ)")
    model = load_aligner(args.aligner)
    penalties = args.blank_penalty or [model.config.blank_penalty]
    aligners = {f"aligner (blank penalty {bp:g})": WordAligner(model, blank_penalty=bp) for bp in penalties}
    frontend = TextFrontend()
    scores, failed, selection = _Scores(), 0, _selection(entries, args.per_voice, args.skip)
    for voice, chosen in selection.items():
        for i in chosen:
            e = entries[i]
            codes = utterances[i].speech_codes
            duration = len(codes) / model.config.token_rate
            ids, spans, words = [], [], []
            for piece in frontend.prepare(e.text):  # as the engine sees it: words without punctuation
                for w, span in zip(piece.words, piece.encoded.spans):
                    if not w.is_punctuation:
                        words.append(w.word)
                        spans.append((span[0] + len(ids), span[1] + len(ids)))
                ids += piece.encoded.ids
            placed = {"estimate": estimate(words, duration)}
            for name, aligner in aligners.items():
                fractions = aligner.align(ids, spans, codes)
                if fractions is None:
                    placed[name] = placed["estimate"]  # as the engine falls back
                    failed += 1
                else:
                    placed[name] = [(a * duration, b * duration) for a, b in fractions]
            audio, sr = read_mono(audio_path(args.manifest, e))
            scores.add(voice, words, placed, asr.words(resample(audio, sr)))
        print(f"{voice}: {len(scores.diffs['estimate'][voice])} words paired", flush=True)
    return {"mode": "corpus", "reference": "whisper-base word timestamps (faster-whisper, greedy), source audio",
            "aligner": args.aligner, "utterances": sum(len(v) for v in selection.values()),
            "skip_per_voice": args.skip, "alignment_failures": failed, **scores.results()}


def _bundle(args, entries, asr) -> dict:
    import asyncio

    from model.eval.audio import resample
    from service.offline import _engine
    from service.engine.types import SAMPLE_RATE

    engine = _engine(args.bundle)
    texts = [entries[i].text for i in sorted((i for i in range(len(entries)) if entries[i].split == "test"),
                                              key=lambda i: entries[i].id)][args.skip:args.skip + args.per_voice]
    scores, n_aligned, n_estimated = _Scores(), 0, 0

    async def speak(text: str, voice: str):
        handle = engine.synthesize(text, voice=voice, request_id="align-eval", seed=0)
        return [c async for c in handle.chunks()]

    async def run_all():
        nonlocal n_aligned, n_estimated
        await engine.start()
        try:
            for voice in engine.pipeline.voices:
                for text in texts:
                    chunks = await speak(text, voice)
                    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.float32) / 32767.0
                    words, placed, est, start, samples = [], [], [], 0.0, 0
                    for c in chunks:
                        samples += len(c.pcm)
                        if c.words:  # a sentence ended with this chunk: its audio is [start, samples)
                            end = samples / SAMPLE_RATE
                            words += [w.word for w in c.words]
                            placed += [(w.start, w.end) for w in c.words]
                            est += [(start + a, start + b) for a, b in estimate([w.word for w in c.words], end - start)]
                            n_estimated += sum(w.estimated for w in c.words)
                            n_aligned += sum(not w.estimated for w in c.words)
                            start = end
                    scores.add(voice, words, {"aligner": placed, "estimate": est},
                               asr.words(resample(pcm, SAMPLE_RATE)))
                print(f"{voice}: {len(scores.diffs['estimate'][voice])} words paired", flush=True)
        finally:
            await engine.stop()

    asyncio.run(run_all())
    return {"mode": "bundle", "bundle": args.bundle, "reference": "whisper-base word timestamps (faster-whisper, "
            "greedy) on the generated audio", "texts": len(texts), "voices": list(engine.pipeline.voices),
            "skip": args.skip, "words_aligned": n_aligned, "words_estimated": n_estimated, **scores.results()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.align.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--aligner", help="corpus mode: the aligner directory")
    p.add_argument("--tokens", help="corpus mode: the token file the aligner was trained from (its test split)")
    p.add_argument("--bundle", help="bundle mode: a model bundle with an aligner (e.g. model/bundled)")
    p.add_argument("--manifest", required=True, help="the corpus manifest (held-out sentences and audio)")
    p.add_argument("--per-voice", type=int, default=8, help="utterances per corpus voice / texts per bundle voice")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N held-out utterances (per voice) (a "
                   "tuning set of its own: choose the blank penalty with --skip 0 --per-voice N, report with --skip N)")
    p.add_argument("--blank-penalty", type=float, nargs="+", help="corpus mode: alignment blank penalties to "
                   "compare (default: the aligner's own)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON results")
    args = p.parse_args(argv)
    if bool(args.bundle) == bool(args.aligner and args.tokens):
        p.error("give --bundle, or --aligner and --tokens")

    import torch

    from model.data.manifest import read_manifest
    from model.eval.asr import Transcriber

    torch.set_num_threads(args.threads)
    entries = read_manifest(args.manifest)
    asr = Transcriber(beam_size=1, threads=args.threads)
    t0 = time.perf_counter()
    results = _bundle(args, entries, asr) if args.bundle else _corpus(args, entries, asr)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    for name, per in results["systems"].items():
        print(name, json.dumps(per["all"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
