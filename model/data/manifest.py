"""The corpus manifest: one JSON object per line, one line per utterance.

The same format holds the synthetic corpus and imported real datasets (LJSpeech, LibriTTS), so everything
downstream (tokenizer training, LM training, evaluation) reads one thing. ``path`` is relative to the folder of
the manifest file, so a corpus folder can be moved or carried to another machine as it is. Required fields:
``id path text speaker voice engine licence duration split``; ``sample_rate``, ``source``, ``rate`` and ``pitch``
are recorded where known. ``split`` is ``"train"`` or ``"test"``: test sentences are held out and no train line
uses them.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_VERSION = 1
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Utterance:
    id: str
    path: str
    text: str
    speaker: str
    voice: str
    engine: str
    licence: str
    duration: float
    split: str
    sample_rate: int | None = None
    source: str | None = None
    rate: float | None = None
    pitch: float | None = None

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not self.text or not self.speaker or self.duration < 0:
            raise ValueError(f"incomplete manifest entry {self.id!r}")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Utterance:
        data = json.loads(line)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    with open(path, encoding="utf-8") as f:
        return [Utterance.from_json(line) for line in f if line.strip()]


def write_manifest(path: str | os.PathLike, entries: Iterable[Utterance]) -> int:
    """Write atomically (temp file + rename); returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(entry.to_json() + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def audio_path(manifest: str | os.PathLike, entry: Utterance) -> Path:
    return Path(manifest).parent / entry.path


def stats(entries: Iterable[Utterance]) -> dict:
    """Hours and counts in total, per split, per speaker (with its voices) and per engine."""
    total = {"utterances": 0, "hours": 0.0}
    by_split: dict[str, dict] = defaultdict(lambda: {"utterances": 0, "hours": 0.0})
    by_speaker: dict[str, dict] = defaultdict(lambda: {"utterances": 0, "hours": 0.0, "voices": set()})
    by_engine: dict[str, dict] = defaultdict(lambda: {"utterances": 0, "hours": 0.0})
    licences: set[str] = set()
    for e in entries:
        hours = e.duration / 3600
        for bucket in (total, by_split[e.split], by_speaker[e.speaker], by_engine[e.engine]):
            bucket["utterances"] += 1
            bucket["hours"] += hours
        by_speaker[e.speaker]["voices"].add(e.voice)
        licences.add(e.licence)

    def rounded(d: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else sorted(v) if isinstance(v, set) else v)
                for k, v in d.items()}

    return {**rounded(total), "speakers": len(by_speaker), "licences": sorted(licences),
            "by_split": {k: rounded(v) for k, v in sorted(by_split.items())},
            "by_speaker": {k: rounded(v) for k, v in sorted(by_speaker.items())},
            "by_engine": {k: rounded(v) for k, v in sorted(by_engine.items())}}
