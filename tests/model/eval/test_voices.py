"""Choosing the bundled voices from an evaluation (model.eval.voices)."""

import json

import pytest

from model.eval.voices import main, select_voices

CATALOGUE = {
    "rhvoice-slt": {"speaker": "cmu-slt", "engine": "rhvoice", "licence": "LGPL-2.1+"},
    "flite-slt": {"speaker": "cmu-slt", "engine": "flite", "licence": "BSD-like (flite)"},
    "flite-rms": {"speaker": "cmu-rms", "engine": "flite", "licence": "BSD-like (flite)"},
    "pico-en-gb": {"speaker": "svox-en-gb", "engine": "pico", "licence": "Apache-2.0"},
    "uqm-x": {"speaker": "uqm-x", "engine": "uqm", "licence": "CC-BY-NC-SA"},
    "festival-rab": {"speaker": "cstr-rab", "engine": "festival", "licence": "free"},
}


def results(wers: dict[str, float]) -> dict:
    return {"systems": {"tts": {"voices": {v: {"wer": w, "speaker_similarity": 0.9} for v, w in wers.items()}}}}


def test_one_voice_per_speaker_best_first_and_filters():
    voices = select_voices(results({"rhvoice-slt": 12.0, "flite-slt": 9.0, "flite-rms": 20.0, "pico-en-gb": 5.0,
                                    "uqm-x": 1.0, "festival-rab": 80.0}), "tts", CATALOGUE, max_wer=60)
    assert [v["speaker"] for v in voices] == ["pico-en-gb", "flite-slt", "flite-rms"]  # NC and WER>60 left out
    assert [v["id"] for v in voices] == ["en-gb", "slt", "rms"]
    assert voices[0]["wer"] == 5.0


def test_unknown_system_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not in the results"):
        select_voices(results({}), "nope", CATALOGUE)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results({})))
    assert main([str(path), "--system", "nope", "--manifest", str(tmp_path / "missing.jsonl"),
                 "-o", str(tmp_path / "v.json")]) == 2
