import wave
from pathlib import Path

import numpy as np
import pytest

from model.data.importers import import_dataset, import_libritts, import_ljspeech
from model.data.manifest import audio_path, read_manifest, write_manifest
from service.cli import main


def _wav(path: Path, seconds: float, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sr)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((0.1 * np.sin(np.arange(n) / 10) * 32767).astype("<i2").tobytes())


@pytest.fixture
def ljspeech(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    _wav(root / "wavs/LJ001-0001.wav", 1.5, 22050)
    _wav(root / "wavs/LJ001-0002.wav", 0.5, 22050)
    _wav(root / "wavs/LJ001-0003.wav", 0.5, 22050)  # no metadata line: ignored
    (root / "metadata.csv").write_text(
        'LJ001-0001|Printing, in 1450, "the only" art|Printing, in fourteen fifty, "the only" art\n'
        "LJ001-0002|Raw only||\n"
        "LJ009-9999|No audio for this line|No audio for this line\n", encoding="utf-8")
    return root


@pytest.fixture
def libritts(tmp_path):
    root = tmp_path / "LibriTTS"
    for subset, spk, chap, utt, secs in (("train-clean-100", "19", "198", "000000", 1.0),
                                         ("train-clean-100", "19", "198", "000001", 2.0),
                                         ("test-clean", "1089", "134686", "000002", 0.75)):
        base = root / subset / spk / chap / f"{spk}_{chap}_{utt}"
        _wav(base.with_suffix(".wav"), secs, 24000)
        base.with_name(base.name + ".normalized.txt").write_text(f"Utterance {utt} of speaker {spk}.\n")
    _wav(root / "train-clean-100/19/198/19_198_000009.wav", 1.0, 24000)  # no transcript: ignored
    return root


def test_ljspeech(ljspeech, tmp_path):
    manifest = tmp_path / "out/lj.jsonl"
    entries = import_ljspeech(ljspeech, manifest)
    assert [e.id for e in entries] == ["LJ001-0001", "LJ001-0002"]
    assert entries[0].text == 'Printing, in fourteen fifty, "the only" art'  # normalised column, quotes literal
    assert entries[1].text == "Raw only"  # empty normalised column falls back to the raw one
    assert entries[0].duration == pytest.approx(1.5, abs=1e-3) and entries[0].sample_rate == 22050
    assert {e.speaker for e in entries} == {"ljspeech"} and entries[0].licence == "public domain"
    write_manifest(manifest, entries)
    back = read_manifest(manifest)
    assert back == entries
    assert audio_path(manifest, back[0]).resolve() == (ljspeech / "wavs/LJ001-0001.wav").resolve()


def test_libritts(libritts, tmp_path):
    manifest = tmp_path / "libri.jsonl"
    entries = import_libritts(libritts, manifest)
    assert len(entries) == 3
    by_id = {e.id: e for e in entries}
    assert by_id["19_198_000001"].duration == pytest.approx(2.0, abs=1e-3)
    assert by_id["19_198_000001"].speaker == "libritts-19"
    assert by_id["1089_134686_000002"].split == "test" and by_id["19_198_000000"].split == "train"
    assert by_id["19_198_000000"].text == "Utterance 000000 of speaker 19."
    assert all(audio_path(manifest, e).exists() for e in entries)


def test_unknown_format_and_empty_folder(tmp_path):
    with pytest.raises(ValueError):
        import_dataset("vctk", tmp_path, tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="metadata.csv"):
        import_ljspeech(tmp_path, tmp_path / "m.jsonl")


def test_cli_import_and_stats(libritts, ljspeech, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(["corpus", "import", "--format", "libritts", str(libritts), "--out", str(out)]) == 0
    assert '"utterances": 3' in capsys.readouterr().out
    assert main(["corpus", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 utterances" in text and "2 speakers" in text and "libritts-19" in text
    assert main(["corpus", "import", "--format", "ljspeech", str(tmp_path / "nothing"), "--out", str(out)]) == 2
