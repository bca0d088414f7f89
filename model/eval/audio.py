"""Audio helpers for evaluation: read any soundfile format as mono float32, resample with torchaudio.

Every metric model takes 16 kHz (Whisper, Resemblyzer, PESQ-WB); sources (24 kHz corpus FLAC) and outputs (24 kHz
PCM) are resampled once each with the same windowed-sinc resampler, so no metric sees a difference that only one
side's resampler made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

METRIC_SAMPLE_RATE = 16_000


def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(sr)


def resample(audio: np.ndarray, sr: int, target: int = METRIC_SAMPLE_RATE) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sr == target or audio.size == 0:
        return audio
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(audio), sr, target).numpy()


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")
