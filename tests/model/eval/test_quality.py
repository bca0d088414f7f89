"""PESQ-WB / STOI of a resynthesis: alignment undoes a constant delay; clean beats noisy; silence is missing."""

import math

import numpy as np

from model.eval.quality import align, resynthesis_quality
from tests.model.eval.speech import espeak_speech


def test_align_finds_the_lag_both_ways():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8000).astype(np.float32)
    ref, deg, lag = align(x, np.concatenate([np.zeros(37, np.float32), x]), sr=16_000)
    assert lag == 37 and len(ref) == len(deg) and np.allclose(ref, deg)
    ref, deg, lag = align(x, x[25:], sr=16_000)
    assert lag == -25 and np.allclose(ref, deg)


def test_pesq_and_stoi_rank_clean_above_noisy():
    audio, sr = espeak_speech("The birch canoe slid on the smooth planks.")
    delayed = np.concatenate([np.zeros(100, np.float32), audio])  # a codec's few samples of delay
    clean = resynthesis_quality(audio, sr, delayed, sr)
    noisy = resynthesis_quality(audio, sr, delayed + 0.05 * np.random.default_rng(0).standard_normal(
        len(delayed)).astype(np.float32), sr)
    assert clean["pesq"] > 4.0 and clean["stoi"] > 0.99
    assert noisy["pesq"] < clean["pesq"] - 1.0 and noisy["stoi"] < clean["stoi"]
    assert abs(clean["lag_ms"] - 1000 * 100 / sr) < 0.2


def test_silent_output_is_missing_not_a_number():
    audio, sr = espeak_speech("Hello.")
    q = resynthesis_quality(audio, sr, np.zeros_like(audio), sr)
    assert math.isnan(q["pesq"]) and math.isnan(q["stoi"])
