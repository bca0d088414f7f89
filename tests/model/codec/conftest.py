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


class ConvLayouts:
    """What each conv of the streaming code was given: ``calls`` (names) and ``ok`` (whether its input had the layout
    that conv's kind should get: channels-last for the 2-D convs, plain contiguous ``(B, C, T)`` for the 1-D ones)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ok: list[bool] = []


@pytest.fixture
def conv_layouts(monkeypatch) -> ConvLayouts:
    import model.codec.streaming as streaming

    seen = ConvLayouts()
    for name in ("conv2d", "conv_transpose2d", "conv1d", "conv_transpose1d"):
        real = getattr(streaming.F, name)
        fmt = torch.channels_last if name.endswith("2d") else torch.contiguous_format

        def spy(x, *a, _real=real, _fmt=fmt, _name=name, **k):
            seen.ok.append(x.is_contiguous(memory_format=_fmt))
            seen.calls.append(_name)
            return _real(x, *a, **k)
        monkeypatch.setattr(streaming.F, name, spy)
    return seen


def ragged_rounds(streams, mels: torch.Tensor, plan: list[list[int]]) -> list[torch.Tensor]:
    """Vocoder streams pushed together in ragged rounds, as the codec decoder batches them: ``mels`` ``(B, 80, T)``,
    ``plan`` the mel frames each stream takes per round → each stream's audio (float32)."""
    from model.codec.streaming import Lens, StreamState, run_batched

    states = [StreamState(s) for s in streams]
    outs = [[] for _ in streams]
    pos = [0] * len(streams)
    for lens in plan:
        mel = torch.zeros(len(streams), mels.shape[1], max(lens), device=mels.device)
        for r, n in enumerate(lens):
            mel[r, :, :n] = mels[r, :, pos[r]:pos[r] + n]
            pos[r] += n
        audio, n_out = run_batched(states, lambda root, m=mel, ln=lens: root.push_ragged(m, Lens(ln, mels.device)))
        for r in range(len(streams)):
            outs[r].append(audio[r, :n_out.values[r]].float())
    return [torch.cat(o) for o in outs]
