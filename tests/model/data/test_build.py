"""The corpus builder end to end with a fake engine (no Debian packages needed), and the real engines when present."""

import json
import wave
from pathlib import Path

import numpy as np
import pytest

import model.data.build as build_mod
from model.data.build import CorpusConfig, build, estimate_seconds, plan
from model.data.engines import EngineEnv, Job, Voice, engine_for
from model.data.manifest import read_manifest, stats
from model.data.sentences import Sentence, extract, is_clean, is_heldout

VOICES = ("rhvoice-slt", "flite-slt", "rhvoice-alan", "flite-awb", "pico-en-gb")  # 3 distinct speakers


class FakeEngine:
    """Writes a 16 kHz tone whose length follows the word count and the rate: no binaries needed."""

    native_rate = native_pitch = True
    calls: list[int] = []

    def available(self, env):
        return True

    def tape_speed(self, job):
        return 1.0

    def synthesize(self, voice: Voice, jobs: list[Job], env: EngineEnv) -> None:
        FakeEngine.calls.append(len(jobs))
        for job in jobs:
            sr = 16_000
            n = int(sr * (0.2 + 0.3 * len(job.text.split()) / job.rate))
            tone = 0.3 * np.sin(2 * np.pi * 150 * job.pitch * np.arange(n) / sr)
            with wave.open(str(job.out), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
                w.writeframes((tone * 32767).astype("<i2").tobytes())


def _sentences(n=400):
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))).capitalize() + "." for _ in range(n)]
    return extract((("fake", t) for t in texts), seed=0, heldout_fraction=0.1)


@pytest.fixture
def fake_engine(monkeypatch):
    FakeEngine.calls = []
    monkeypatch.setattr(build_mod, "engine_for", lambda voice: FakeEngine())


def test_sentence_filters_and_split():
    assert is_clean("The cat sat on the mat.")
    assert not is_clean("Too short.")                         # < 4 words
    assert not is_clean("It costs 5 dollars today.")          # digits
    assert not is_clean("the lower case start is here.")
    assert not is_clean("A <b>tag</b> is not a sentence.")
    assert not is_clean(" ".join(["word"] * 31).capitalize() + ".")
    out = extract([("a", "The cat sat on the mat. The cat sat on the mat! THE CAT SAT ON THE MAT.")],
                  seed=0, heldout_fraction=0.0)
    assert [s.text for s in out] == ["The cat sat on the mat.", "The cat sat on the mat!"]  # dedup is per text
    held = [is_heldout(f"Sentence number {i} here.", seed=3, fraction=0.1) for i in range(2000)]
    assert 120 < sum(held) < 280
    assert held == [is_heldout(f"Sentence number {i} here.", seed=3, fraction=0.1) for i in range(2000)]
    assert held != [is_heldout(f"Sentence number {i} here.", seed=4, fraction=0.1) for i in range(2000)]


def test_plan_is_seeded_balanced_and_extends():
    sentences = _sentences()
    config = CorpusConfig(hours=0.2, seed=1, voices=VOICES, test_fraction=0.1)
    a, b = plan(sentences, config), plan(sentences, config)
    assert a == b
    assert a != plan(sentences, CorpusConfig(hours=0.2, seed=2, voices=VOICES, test_fraction=0.1))
    bigger = plan(sentences, CorpusConfig(hours=0.4, seed=1, voices=VOICES, test_fraction=0.1))
    assert bigger[:len(a)] == a and len(bigger) > len(a)  # a larger run extends a smaller one
    assert sum(estimate_seconds(i.text, i.rate) for i in a) >= 0.2 * 3600
    # speakers take turns: awb (2 voices), slt (2 voices), svox-en-gb (1 voice) get equal item counts
    speakers = [config.voice_objects[[v.name for v in config.voice_objects].index(i.voice)].speaker for i in a]
    counts = {s: speakers.count(s) for s in set(speakers)}
    assert len(counts) == 3 and max(counts.values()) - min(counts.values()) <= 1
    heldout = {s.text for s in sentences if s.split == "test"}
    assert all((i.text in heldout) == (i.split == "test") for i in a)  # train never reads a held-out sentence
    assert any(i.split == "test" for i in a)
    assert all(0.85 <= i.rate <= 1.15 and 0.92 <= i.pitch <= 1.08 for i in a)


def test_build_end_to_end_with_fake_engine_and_resume(tmp_path, fake_engine):
    config = CorpusConfig(hours=0.05, seed=0, voices=VOICES, test_fraction=0.1, batch_size=4, audio_format="wav")
    result = build(tmp_path, config, workers=1, sentences=_sentences(), progress=False)
    assert result.failed == 0 and result.skipped == 0 and result.synthesised == result.planned > 10
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert len(entries) == result.planned
    assert max(FakeEngine.calls) <= 4
    for e in entries[:5]:
        data = json.loads(e.to_json())
        for key in ("path", "text", "speaker", "voice", "engine", "licence", "duration", "split"):
            assert key in data
        with wave.open(str(tmp_path / e.path)) as w:
            assert w.getframerate() == 24_000 and w.getsampwidth() == 2
            assert abs(w.getnframes() / 24_000 - e.duration) < 0.01
    s = stats(entries)
    assert s["speakers"] == 3
    assert {"train", "test"} <= set(s["by_split"])
    assert s["by_speaker"]["cmu-awb"]["voices"] == ["flite-awb", "rhvoice-alan"]
    assert abs(s["hours"] - sum(e.duration for e in entries) / 3600) < 1e-3
    assert (tmp_path / "sentences.jsonl").exists() and (tmp_path / "corpus.json").exists()

    # resume: nothing to do; then lose one file and get exactly that one back
    again = build(tmp_path, config, workers=1, progress=False)
    assert again.synthesised == 0 and again.skipped == result.planned
    (tmp_path / entries[3].path).unlink()
    fixed = build(tmp_path, config, workers=1, progress=False)
    assert fixed.synthesised == 1
    assert [e.id for e in read_manifest(tmp_path / "manifest.jsonl")] == [e.id for e in entries]

    with pytest.raises(ValueError, match="another configuration"):
        build(tmp_path, CorpusConfig(hours=0.05, seed=9, voices=VOICES, audio_format="wav"), workers=1,
              progress=False)


def test_build_is_reproducible(tmp_path, fake_engine):
    config = CorpusConfig(hours=0.02, seed=5, voices=VOICES, audio_format="wav")
    sentences = _sentences()
    build(tmp_path / "a", config, workers=1, sentences=sentences, progress=False)
    build(tmp_path / "b", config, workers=1, sentences=sentences, progress=False)
    a = (tmp_path / "a/manifest.jsonl").read_text()
    assert a == (tmp_path / "b/manifest.jsonl").read_text()
    assert (tmp_path / "a/audio").exists()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown voices"):
        CorpusConfig(voices=("nobody",))
    with pytest.raises(ValueError):
        CorpusConfig(hours=0)
    with pytest.raises(ValueError):
        CorpusConfig(rate_range=(1.2, 0.8))


def test_missing_engine_is_a_clear_error(tmp_path, monkeypatch):
    class Absent(FakeEngine):
        def available(self, env):
            return False

    monkeypatch.setattr(build_mod, "engine_for", lambda voice: Absent())
    config = CorpusConfig(hours=0.01, voices=("pico-en-gb",))
    with pytest.raises(ValueError, match=r"engines not found: \['pico'\]"):
        build(tmp_path / "c", config, workers=1, sentences=_sentences(), progress=False)
    assert not (tmp_path / "c").exists()  # nothing written before the check


def test_engine_prefix_goes_first_on_the_paths(tmp_path):
    env = EngineEnv(prefix=str(tmp_path)).environ()
    assert env["PATH"].startswith(str(tmp_path.resolve() / "usr/bin"))
    assert env["LD_LIBRARY_PATH"].startswith(str(tmp_path.resolve() / "usr/lib/x86_64-linux-gnu"))


@pytest.mark.parametrize("voice", ["flite-kal16", "pico-en-gb", "rhvoice-bdl", "festival-kal"])
def test_real_engine_small_build(tmp_path, voice):
    """Runs only where the Debian engine is installed (OFFLINE.md); CI machines without it skip."""
    config = CorpusConfig(hours=0.004, seed=0, voices=(voice,))
    if not engine_for(config.voice_objects[0]).available(EngineEnv()):
        pytest.skip(f"{config.voice_objects[0].engine} is not installed (apt-get install, see OFFLINE.md)")
    sentences = [Sentence(f"This is test sentence number {w} for the corpus.", "test", "train")
                 for w in ("one", "two", "three", "four", "five", "six")]
    result = build(tmp_path, config, workers=2, sentences=sentences, progress=False)
    assert result.failed == 0 and result.synthesised >= 2
    entries = read_manifest(tmp_path / "manifest.jsonl")
    assert all(1.0 < e.duration < 10 and e.sample_rate == 24_000 for e in entries)
    assert all(Path(tmp_path / e.path).stat().st_size > 1000 for e in entries)
