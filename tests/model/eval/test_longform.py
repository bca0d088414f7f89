"""Long-form drift analysis (model.eval.longform) on synthetic signals with known level, drift and pauses."""

import numpy as np
import pytest

from model.eval.longform import analyse, longest_silence

SR = 16000


def tone(seconds: float, amplitude: float, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * f * t)).astype(np.float32)


def fake_embed(audio, sr):  # "voice" = dominant frequency band; silent audio has no embedding
    if np.sqrt(np.mean(audio ** 2)) < 1e-4:
        return None
    spec = np.abs(np.fft.rfft(audio[:sr], n=sr))[:2000]  # the first second: 1 Hz bins whatever the length
    norm = np.linalg.norm(spec)
    return spec / norm if norm > 0 else None


def test_level_drift_and_pause_are_measured():
    audio = np.concatenate([tone(20, 0.1), np.zeros(int(1.5 * SR), np.float32), tone(18.5, 0.05)])
    ref = fake_embed(tone(1, 0.1), SR)
    r = analyse(audio, SR, ref, fake_embed, window_s=10.0)
    assert len(r["windows"]) == 4
    assert r["level_drift_db"] == pytest.approx(-6.02, abs=0.2)  # half the amplitude
    assert r["longest_silence_s"] == pytest.approx(1.5, abs=0.02)
    assert r["similarity_first_quarter"] > 0.99


def test_voice_change_shows_as_similarity_drift():
    audio = np.concatenate([tone(20, 0.1, 220.0), tone(20, 0.1, 900.0)])
    r = analyse(audio, SR, fake_embed(tone(1, 0.1, 220.0), SR), fake_embed, window_s=10.0)
    assert r["similarity_drift"] < -0.5
    assert r["longest_silence_s"] < 0.05


def test_too_short_is_an_error():
    with pytest.raises(ValueError, match="too short"):
        analyse(tone(15, 0.1), SR, None, fake_embed)
    assert longest_silence(np.zeros(SR, np.float32), SR) == pytest.approx(1.0)
