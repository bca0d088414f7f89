"""Fixtures for the codec tests: the pretrained vocoder (loaded once), tiny random codecs, synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.codec.codec import SpeechCodec
from model.codec.config import tiny_codec_config
from model.codec.stream import CodecSpeechDecoder
from model.codec.vocoder import Vocoder

SR = 22_050


@pytest.fixture(scope="session")
def vocoder() -> Vocoder:
    torch.set_num_threads(2)
    return Vocoder.load()


def random_codec(seed: int = 0, **overrides) -> SpeechCodec:
    """A tiny codec whose weights are perturbed so that every layer (layer scales, voice table) matters."""
    torch.manual_seed(seed)
    codec = SpeechCodec(tiny_codec_config(**overrides))
    with torch.no_grad():
        for p in codec.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return codec.eval()


@pytest.fixture
def speech_decoder(vocoder) -> CodecSpeechDecoder:
    return CodecSpeechDecoder(random_codec(voices=("alice", "bob")), vocoder, token_offset=100)


def chirp_tones(seconds: float, *, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Speech-like test audio: a gliding harmonic tone with syllable-rate amplitude modulation and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(100, 220) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t), 0, None) ** 0.5
    return (0.3 * x * env).astype(np.float32)
