"""Import real speech datasets into the corpus manifest format, so training can use human speech.

- **LJSpeech** layout: ``metadata.csv`` with ``id|text|normalized text`` lines (no header, ``|`` separated, quotes
  are literal) and ``wavs/ID.wav``. One speaker, ``ljspeech``; public domain. The normalised column (numbers
  spelled out) is the manifest ``text``, falling back to the raw column when it is empty.
- **LibriTTS** layout: ``[subset/]SPEAKER/CHAPTER/ID.wav`` with ``ID.normalized.txt`` beside it (``ID.original.txt``
  when there is no normalised one). Speaker = ``libritts-SPEAKER``; CC-BY-4.0. A subset folder whose name contains
  ``test`` or ``dev`` (``test-clean``, ``dev-other``) is the test split, all else train.

The audio is referenced where it lies (paths relative to the manifest), not copied or resampled: the manifest
records each file's own sample rate and the consumers resample. Durations come from the file headers, so importing
is fast. For LJSpeech, whose only split is none, a seeded held-out fraction of utterances is marked ``test`` with
the same keyed hash the synthetic corpus uses.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import soundfile as sf

from model.data.manifest import Utterance
from model.data.sentences import is_heldout

FORMATS = ("ljspeech", "libritts")


def _rel(path: Path, manifest: Path) -> str:
    return os.path.relpath(path.resolve(), manifest.resolve().parent)


def _info(path: Path) -> tuple[float, int]:
    info = sf.info(str(path))
    return info.frames / info.samplerate, info.samplerate


def import_ljspeech(src: str | Path, manifest: str | Path, *, seed: int = 0,
                    heldout_fraction: float = 0.02) -> list[Utterance]:
    src, manifest = Path(src), Path(manifest)
    meta = src / "metadata.csv"
    if not meta.exists():
        raise ValueError(f"{src} is not an LJSpeech folder: no metadata.csv")
    entries = []
    with open(meta, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
            if not row or not row[0].strip():
                continue
            uid = row[0].strip()
            text = (row[2] if len(row) > 2 and row[2].strip() else row[1] if len(row) > 1 else "").strip()
            wav = src / "wavs" / f"{uid}.wav"
            if not text or not wav.exists():
                continue
            duration, sr = _info(wav)
            split = "test" if is_heldout(text, seed=seed, fraction=heldout_fraction) else "train"
            entries.append(Utterance(id=uid, path=_rel(wav, manifest), text=text, speaker="ljspeech",
                                     voice="ljspeech", engine="human", licence="public domain",
                                     duration=round(duration, 3), split=split, sample_rate=sr, source="ljspeech"))
    return entries


def import_libritts(src: str | Path, manifest: str | Path) -> list[Utterance]:
    src, manifest = Path(src), Path(manifest)
    entries = []
    for wav in sorted(src.rglob("*.wav")):
        stem = wav.name[:-4]
        text_file = wav.with_name(stem + ".normalized.txt")
        if not text_file.exists():
            text_file = wav.with_name(stem + ".original.txt")
        if not text_file.exists():
            continue
        text = " ".join(text_file.read_text(encoding="utf-8").split())
        rel = wav.relative_to(src).parts
        if len(rel) < 3 or not text:
            continue  # not SPEAKER/CHAPTER/FILE
        speaker = rel[-3]
        subset = rel[-4] if len(rel) >= 4 else src.name
        split = "test" if ("test" in subset or "dev" in subset) else "train"
        duration, sr = _info(wav)
        entries.append(Utterance(id=stem, path=_rel(wav, manifest), text=text, speaker=f"libritts-{speaker}",
                                 voice=f"libritts-{speaker}", engine="human", licence="CC-BY-4.0",
                                 duration=round(duration, 3), split=split, sample_rate=sr, source="libritts"))
    return entries


def import_dataset(fmt: str, src: str | Path, manifest: str | Path, **kwargs) -> list[Utterance]:
    if fmt == "ljspeech":
        return import_ljspeech(src, manifest, **kwargs)
    if fmt == "libritts":
        return import_libritts(src, manifest)
    raise ValueError(f"unknown dataset format {fmt!r}; known: {FORMATS}")
