"""The mel front-end against a numpy reference written from the slaney formulas (no librosa, no torchaudio)."""

from __future__ import annotations

import math

import numpy as np
import torch

from model.codec.config import MelConfig
from model.codec.mel import MelSpectrogram, interp_frames, num_frames_at

FBANK_TOL = dict(rtol=1e-5, atol=1e-7)
MEL_TOL = dict(rtol=1e-4, atol=1e-3)  # float32 FFT vs float64 DFT, on log values


def slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def reference_fbank(c: MelConfig) -> np.ndarray:
    """(n_mels, n_freq) slaney-scale triangles with slaney (area) normalisation."""
    freqs = np.linspace(0, c.sample_rate / 2, c.n_fft // 2 + 1)
    pts = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(c.fmin), slaney_hz_to_mel(c.fmax), c.n_mels + 2))
    fb = np.zeros((c.n_mels, freqs.size))
    for i in range(c.n_mels):
        lo, mid, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[i] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)
    return fb


def test_filterbank_matches_slaney_reference():
    c = MelConfig()
    torch.testing.assert_close(MelSpectrogram().fbank.double(), torch.from_numpy(reference_fbank(c)), **FBANK_TOL)


def test_mel_frame_equals_direct_dft():
    c = MelConfig()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4096).astype(np.float32) * 0.1
    mel = MelSpectrogram()(torch.from_numpy(x)).numpy()
    assert mel.shape == (80, 4096 // 256)
    pad = (c.n_fft - c.hop_length) // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.n_fft) / c.n_fft)  # periodic Hann
    k = np.arange(c.n_fft // 2 + 1)[:, None] * np.arange(c.n_fft)[None]
    dft = np.exp(-2j * np.pi * k / c.n_fft)
    fb = reference_fbank(c)
    for j in (0, 5, mel.shape[1] - 1):
        spec = dft @ (xp[j * c.hop_length: j * c.hop_length + c.n_fft] * window)
        ref = np.log(np.maximum(fb @ np.sqrt(np.abs(spec) ** 2 + 1e-9), c.log_clamp))
        torch.testing.assert_close(torch.from_numpy(mel[:, j]).double(), torch.from_numpy(ref), **MEL_TOL)


def test_sine_energy_lands_in_its_mel_bin():
    c = MelConfig()
    centres = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(0), slaney_hz_to_mel(c.fmax), c.n_mels + 2))[1:-1]
    mel_fn = MelSpectrogram()
    for f in (300.0, 1000.0, 2500.0, 6000.0):
        t = np.arange(c.sample_rate) / c.sample_rate
        mel = mel_fn(torch.from_numpy((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)))
        peak = int(mel[:, 10:-10].mean(dim=1).argmax())
        expected = int(np.argmin(np.abs(centres - f)))
        assert abs(peak - expected) <= 1, (f, peak, expected)
        assert float(mel[peak, 20]) > float(mel[:, 20].median()) + 5  # a clear peak, not noise


def test_silence_is_the_magnitude_floor_and_lengths_line_up():
    mel_fn = MelSpectrogram()
    mel = mel_fn(torch.zeros(2, 256 * 10))
    assert mel.shape == (2, 80, 10)
    # |X| = sqrt(0 + 1e-9) in every FFT bin (the HiFi-GAN recipe's epsilon), then the filterbank and the clamp
    floor = torch.log(torch.clamp(mel_fn.fbank.sum(dim=1) * math.sqrt(1e-9), min=1e-7))
    torch.testing.assert_close(mel, floor[None, :, None].expand_as(mel), rtol=0, atol=1e-5)
    assert float(mel.max()) < -10  # silence is far below speech (about -6 .. +2)


def test_interp_frames_is_linear_and_counts_right():
    x = torch.arange(10, dtype=torch.float32)[None]  # a ramp: interpolation must reproduce positions
    y = interp_frames(x, 441 / 512)
    assert y.shape[-1] == num_frames_at(10, 441 / 512) == int(9 * 512 / 441) + 1
    torch.testing.assert_close(y[0], torch.arange(y.shape[-1], dtype=torch.float32) * (441 / 512))
    torch.testing.assert_close(interp_frames(x, 1.0), x)
    held = interp_frames(x, 1.0, n_out=12)
    assert held[0, -1] == 9 and held[0, -2] == 9  # past the end: the last frame is held
