"""Audio helpers for the corpus: load to mono float, trim engine silence, resample, write 16-bit files.

The corpus is stored at one rate, ``CORPUS_SAMPLE_RATE`` = 24 kHz: the service's PCM output rate (OpenAI's ``pcm``
format) and RHVoice's native rate; 16 and 32 kHz engine output is resampled (upsampling adds no bandwidth, it only
gives every file one rate). Files are FLAC by default (lossless, about half the size of WAV) or WAV, 16-bit
mono either way. Resampling uses torchaudio's windowed-sinc resampler (already a dependency); an extra ``speed``
factor resamples as a tape would — tempo and pitch move together — which gives engines without rate/pitch controls
prosodic variety at no extra cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

CORPUS_SAMPLE_RATE = 24_000
FORMATS = ("flac", "wav")


def load_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """Any file soundfile reads → ``(float32 array (T,), sample_rate)``; channels are averaged."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def trim_silence(audio: np.ndarray, sr: int, *, threshold_db: float = -45.0, pad_s: float = 0.1) -> np.ndarray:
    """Cut leading/trailing stretches quieter than ``threshold_db`` (re full scale), keeping ``pad_s`` of each."""
    if audio.size == 0:
        return audio
    frame = max(1, sr // 100)
    n = audio.size // frame
    if n == 0:
        return audio
    energy = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(energy) > threshold_db)
    if loud.size == 0:
        return audio[:0]
    pad = int(pad_s * sr)
    return audio[max(0, loud[0] * frame - pad): min(audio.size, (loud[-1] + 1) * frame + pad)]


def resample(audio: np.ndarray, sr_in: int, sr_out: int, *, speed: float = 1.0) -> np.ndarray:
    """Resample ``sr_in`` → ``sr_out``; ``speed`` > 1 plays faster and higher (the input rate is taken as
    ``sr_in * speed``, rounded to 10 Hz so the polyphase ratio stays small)."""
    effective = int(round(sr_in * speed / 10) * 10)
    if effective == sr_out:
        return audio.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(1)  # one process per core already
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), effective, sr_out)
    return out.numpy()


def write_audio(path: str | Path, audio: np.ndarray, sr: int, fmt: str = "flac") -> float:
    """Write 16-bit mono; returns the duration in seconds. Peaks over full scale are clipped."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16", format=fmt.upper())
    tmp.replace(path)
    return audio.size / sr
