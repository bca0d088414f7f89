"""``mamtra eval``: score systems (source audio, codec resynthesis, TTS bundles) on held-out corpus sentences.

Selection: the manifest's ``--split`` (``test``: sentences no training line uses), grouped by voice in manifest
order; the first ``per_voice`` utterances of each voice are evaluated (deterministic: the same manifest gives the
same sentences). Every system speaks the same sentences.

Per utterance: the output is transcribed by Whisper base and compared with the manifest text (``model.eval.wer``);
embedded with Resemblyzer and compared with the voice's reference embedding, the normalised mean of up to
``reference_utterances`` other held-out source utterances of that voice (those not evaluated first; never the same
sentence); its duration is compared with the source's; resynthesis also gets PESQ-WB and STOI against the source;
systems that synthesise are timed (real-time factor = wall time / audio seconds, on the threads recorded).

Per system × voice, and per system over all voices: corpus-level WER (total edits / total reference words, %),
mean speaker similarity, mean PESQ and STOI, RTF (total wall / total audio), mean duration ratio, and the number of
EOS failures: outputs that hit the engine's token cap, or run over ``OVERLONG_RATIO`` × the source duration.
Missing values (silent output: no speaker embedding, no PESQ) are counted, never averaged in as numbers.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model.data.manifest import SPLITS, Utterance, audio_path, read_manifest
from model.eval.audio import read_mono, resample, write_wav
from model.eval.speaker import cosine, reference_embedding
from model.eval.systems import EvalError, SystemSpec, open_runner, system_voices, voice_for
from model.eval.wer import WordErrors, compact, text_errors

RESULTS_FORMAT = "mamtra-eval"
RESULTS_VERSION = 1
OVERLONG_RATIO = 2.0


@dataclass(frozen=True)
class EvalConfig:
    manifest: Path
    split: str = "test"
    per_voice: int = 10
    voices: tuple[str, ...] | None = None
    reference_utterances: int = 5
    seed: int = 0
    beam_size: int = 5
    threads: int = 0  # torch and Whisper CPU threads; 0: their defaults
    device: str = "cpu"  # where bundles and codecs run; the metric models always run on CPU
    keep_audio: Path | None = None
    progress: bool = True

    def __post_init__(self):
        if self.split not in SPLITS:
            raise EvalError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.per_voice < 1 or self.reference_utterances < 1:
            raise EvalError("--per-voice and --reference-utterances must be at least 1")


@dataclass(frozen=True)
class Selection:
    evaluated: dict[str, list[Utterance]]  # voice → utterances scored, in manifest order
    held_out: dict[str, list[Utterance]]  # voice → reference candidates: not-evaluated first, then evaluated


def select(config: EvalConfig) -> Selection:
    if not Path(config.manifest).is_file():
        raise EvalError(f"manifest {config.manifest} not found")
    try:
        entries = read_manifest(config.manifest)
    except (ValueError, KeyError, TypeError) as e:
        raise EvalError(f"{config.manifest}: not a corpus manifest ({e})") from None
    by_voice: dict[str, list[Utterance]] = defaultdict(list)
    for e in entries:
        if e.split == config.split:
            by_voice[e.voice].append(e)
    if not by_voice:
        raise EvalError(f"{config.manifest}: no utterances with split {config.split!r}")
    voices = list(config.voices) if config.voices else list(by_voice)
    unknown = [v for v in voices if v not in by_voice]
    if unknown:
        raise EvalError(f"unknown voice(s) {', '.join(unknown)} in split {config.split!r}; known: "
                        f"{', '.join(sorted(by_voice))}")
    evaluated = {v: by_voice[v][:config.per_voice] for v in voices}
    held_out = {v: by_voice[v][config.per_voice:] + by_voice[v][:config.per_voice] for v in voices}
    return Selection(evaluated, held_out)


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values) -> float | None:
    kept = _finite(values)
    return float(np.mean(kept)) if kept else None


def aggregate(rows: Sequence[dict], *, synthesises: bool, resynth: bool) -> dict:
    """Metrics of a group of per-utterance rows (one voice, or all)."""
    errors = sum((WordErrors(r["ref_words"], r["substitutions"], r["deletions"], r["insertions"]) for r in rows),
                 WordErrors(0))
    out_s = sum(r["output_seconds"] for r in rows)
    src_s = sum(r["source_seconds"] for r in rows)
    sims = [r["speaker_similarity"] for r in rows]
    doc = {
        "utterances": len(rows), "ref_words": errors.ref_words, "edits": errors.edits,
        "substitutions": errors.substitutions, "deletions": errors.deletions, "insertions": errors.insertions,
        "wer": 100.0 * errors.wer if errors.ref_words else None,
        "speaker_similarity": _mean(sims), "speaker_similarity_missing": len(sims) - len(_finite(sims)),
        "duration_ratio": _mean(r["duration_ratio"] for r in rows),
        "output_seconds": out_s, "source_seconds": src_s,
        "capped": sum(bool(r["capped"]) for r in rows),
        "overlong": sum(bool(r["overlong"]) for r in rows),
        "eos_failures": sum(bool(r["capped"]) or bool(r["overlong"]) for r in rows),
        "errors": sum(r["error"] is not None for r in rows),
        "asr_seconds": sum(r.get("asr_s") or 0.0 for r in rows),
        "pesq": None, "stoi": None, "rtf": None,
    }
    if resynth:
        pesqs, stois = [r["pesq"] for r in rows], [r["stoi"] for r in rows]
        doc.update(pesq=_mean(pesqs), stoi=_mean(stois), pesq_missing=len(pesqs) - len(_finite(pesqs)))
    if synthesises:
        wall = sum(r["wall_s"] for r in rows)
        doc.update(rtf=wall / out_s if out_s > 0 else None, synth_seconds=wall)
    return doc


def _machine(threads: int) -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu,
            "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "threads_requested": threads}


class _Scorer:
    """The metric models, loaded once, and the voices' reference embeddings (cached source embeddings)."""

    def __init__(self, config: EvalConfig, selection: Selection):
        from model.eval.asr import Transcriber
        from model.eval.speaker import SpeakerEncoder

        self.config, self.selection = config, selection
        self.asr = Transcriber(beam_size=config.beam_size, threads=config.threads)
        self.speaker = SpeakerEncoder()
        self._source_embedding: dict[str, np.ndarray | None] = {}

    def source_embedding(self, utt: Utterance) -> np.ndarray | None:
        if utt.id not in self._source_embedding:
            self._source_embedding[utt.id] = self.speaker.embed(*read_mono(audio_path(self.config.manifest, utt)))
        return self._source_embedding[utt.id]

    def reference(self, utt: Utterance) -> tuple[np.ndarray | None, list[str]]:
        """Mean embedding of up to M other held-out utterances of ``utt``'s voice (never ``utt`` itself)."""
        others = [u for u in self.selection.held_out[utt.voice] if u.id != utt.id and u.text != utt.text]
        chosen = others[:self.config.reference_utterances]
        return reference_embedding([self.source_embedding(u) for u in chosen]), [u.id for u in chosen]


def _source_seconds(config: EvalConfig, utt: Utterance) -> float:
    """The file's own length (the manifest's ``duration`` is rounded), read from its header."""
    import soundfile as sf

    return float(sf.info(str(audio_path(config.manifest, utt))).duration)


def run_eval(config: EvalConfig, specs: Sequence[SystemSpec], *, argv: Sequence[str] | None = None) -> dict:
    """Evaluate every system on the selection; returns the results document (``write_results`` saves it)."""
    import torch
    from tqdm import tqdm

    if not specs:
        raise EvalError("give at least one --system")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"system names must be unique, got {', '.join(names)}")
    if config.threads:
        torch.set_num_threads(config.threads)
    selection = select(config)
    utterances = [u for us in selection.evaluated.values() for u in us]
    for spec in specs:  # before loading anything: every system must have a voice for every utterance
        voices = system_voices(spec)
        missing = sorted({u.voice for u in utterances if voice_for(voices, u) is None})
        if missing:
            raise EvalError(f"--system {spec.name}: it has no voice for {', '.join(missing)} (neither the manifest "
                            f"voice nor its speaker); its voices: {', '.join(voices or [])}")
    scorer = _Scorer(config, selection)
    started = datetime.now(timezone.utc)
    results: dict = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "command": " ".join(["mamtra", "eval", *argv]) if argv is not None else None,
        "date": started.isoformat(timespec="seconds"), "machine": _machine(config.threads),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "models": {"asr": scorer.asr.describe(), "speaker": scorer.speaker.describe()},
        "selection": {v: [u.id for u in us] for v, us in selection.evaluated.items()},
        "systems": {}, "utterances": [],
    }
    for spec in specs:
        t_system = time.perf_counter()
        runner = open_runner(spec, config.manifest, seed=config.seed, device=config.device)
        try:
            rows = []
            for utt in tqdm(utterances, desc=spec.name, unit="utt", disable=not config.progress):
                rows.append(_score(config, scorer, spec, runner, utt))
        finally:
            runner.close()
        by_voice: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_voice[r["voice"]].append(r)
        flags = dict(synthesises=runner.synthesises, resynth=spec.kind == "resynth")
        results["systems"][spec.name] = {
            "spec": str(spec), "kind": spec.kind, "paths": list(spec.paths), "details": runner.describe(),
            "voices_used": {u.voice: runner.voice_for(u) for u in utterances},
            "voices": {v: aggregate(rs, **flags) for v, rs in by_voice.items()},
            "all": aggregate(rows, **flags),
            "seconds": time.perf_counter() - t_system,
        }
        results["utterances"].extend(rows)
    results["machine"]["torch_threads"] = torch.get_num_threads()
    return results


def _score(config: EvalConfig, scorer: _Scorer, spec: SystemSpec, runner, utt: Utterance) -> dict:
    from model.eval.quality import resynthesis_quality

    out = runner(utt)
    out_seconds = len(out.audio) / out.sample_rate
    src_seconds = _source_seconds(config, utt)
    if config.keep_audio is not None:
        write_wav(Path(config.keep_audio) / spec.name / utt.voice / f"{utt.id}.wav", out.audio, out.sample_rate)
    t0 = time.perf_counter()
    hyp = compact(scorer.asr(resample(out.audio, out.sample_rate)))
    asr_s = time.perf_counter() - t0
    errors = text_errors(utt.text, hyp)
    reference, reference_ids = scorer.reference(utt)
    embedding = (scorer.source_embedding(utt) if spec.kind == "source"
                 else scorer.speaker.embed(out.audio, out.sample_rate))
    row = {
        "system": spec.name, "id": utt.id, "voice": utt.voice, "speaker": utt.speaker,
        "system_voice": runner.voice_for(utt), "text": utt.text, "transcript": hyp,
        "ref_words": errors.ref_words, "substitutions": errors.substitutions, "deletions": errors.deletions,
        "insertions": errors.insertions, "wer": 100.0 * errors.wer if errors.ref_words else None,
        "speaker_similarity": cosine(embedding, reference), "reference_ids": reference_ids,
        "source_seconds": src_seconds, "output_seconds": out_seconds,
        "duration_ratio": out_seconds / src_seconds if src_seconds > 0 else None,
        "capped": out.capped, "overlong": out_seconds > OVERLONG_RATIO * src_seconds,
        "wall_s": out.wall_s, "rtf": out.wall_s / out_seconds if out.wall_s is not None and out_seconds else None,
        "pesq": None, "stoi": None, "error": out.error, "asr_s": asr_s,
    }
    if spec.kind == "resynth":
        source, sr = read_mono(audio_path(config.manifest, utt))
        q = resynthesis_quality(source, sr, out.audio, out.sample_rate)
        row.update(pesq=q["pesq"], stoi=q["stoi"], lag_ms=q["lag_ms"])
    return row


def _clean(value):
    """JSON-safe: NaN/inf → null, numpy scalars → Python, floats rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def write_results(results: dict, path: str | Path) -> Path:
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1) + "\n")
    os.replace(tmp, path)
    return path

