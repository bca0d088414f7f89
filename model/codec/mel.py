"""The vocoder's log-mel spectrogram, and linear interpolation of frame sequences onto other frame grids.

The mel matches the pretrained HiFi-GAN V1 training recipe (jik876/hifi-gan ``meldataset.py``): reflect-pad the
waveform by (n_fft − hop)/2 on both sides, STFT without centring (Hann window 1024, hop 256), magnitude
``sqrt(re² + im² + 1e-9)``, slaney-scale slaney-normalised 80-bin filterbank over 0–8000 Hz (the same matrix as
librosa's default ``filters.mel``, built here with ``torchaudio.functional.melscale_fbanks``), natural log of the
value clamped at 1e-7. With that padding a waveform of L samples gives L // 256 frames and frame j is centred on
sample 256·j + 128, the middle of the 256 samples the vocoder renders from it — so mel frames and vocoder output
line up exactly (T frames → 256·T samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from model.codec.config import MelConfig


class MelSpectrogram(torch.nn.Module):
    """``(B, L)`` or ``(L,)`` float waveform at 22,050 Hz → ``(B, 80, L // 256)`` float32 log-mel."""

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config = config or MelConfig()
        fb = AF.melscale_fbanks(config.n_fft // 2 + 1, config.fmin, config.fmax, config.n_mels, config.sample_rate,
                                norm="slaney", mel_scale="slaney")  # (n_freq, n_mels)
        self.register_buffer("fbank", fb.T.contiguous(), persistent=False)  # (n_mels, n_freq)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        c = self.config
        squeeze = audio.dim() == 1
        x = audio[None] if squeeze else audio
        x = x.float()
        pad = (c.n_fft - c.hop_length) // 2
        mode = "reflect" if x.shape[-1] > pad else "constant"
        x = F.pad(x[:, None], (pad, pad), mode=mode)[:, 0]
        if x.shape[-1] < c.n_fft:  # shorter than one window: zero-extend (only for clips < 1024 samples)
            x = F.pad(x, (0, c.n_fft - x.shape[-1]))
        spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
                          center=False, return_complex=True)  # (B, n_freq, T)
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)
        mel = torch.log(torch.clamp(self.fbank @ mag, min=c.log_clamp))  # (B, n_mels, T)
        return mel[0] if squeeze else mel

    def silence(self) -> torch.Tensor:
        """``(80,)``: the log-mel of digital silence (the 1e-9 magnitude epsilon through the filterbank)."""
        return self(self.fbank.new_zeros(self.config.n_fft))[:, 0]


def num_frames_at(n_in: int, step: float) -> int:
    """How many outputs ``interp_frames`` gives for ``n_in`` inputs: positions 0, step, 2·step, … ≤ n_in − 1."""
    if n_in <= 0:
        return 0
    return int((n_in - 1) / step + 1e-9) + 1


def interp_frames(x: torch.Tensor, step: float, *, n_out: int | None = None, start: int = 0) -> torch.Tensor:
    """Linear interpolation along the last axis at positions (start + j)·step, j = 0..n_out−1.

    ``x``: ``(..., T)``. Positions past the last frame hold the last frame (so ``n_out`` may ask for a few more
    frames than ``num_frames_at`` gives, e.g. to cover a rounded-up grid). Positions are computed in float64 from the
    absolute index so a streamed run (``start`` > 0 on a window of frames) reproduces the offline values exactly.
    """
    T = x.shape[-1]
    if n_out is None:
        n_out = num_frames_at(T, step) - start
    n_out = max(0, n_out)
    pos = (torch.arange(start, start + n_out, dtype=torch.float64) * step).clamp(max=T - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    w = (pos - lo).to(x.dtype).to(x.device)
    lo, hi = lo.to(x.device), hi.to(x.device)
    return x[..., lo] * (1 - w) + x[..., hi] * w
