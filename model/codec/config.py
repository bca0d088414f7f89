"""Frozen configs of the speech codec, with every rate the pipeline depends on.

Rates, and why they are exact:

- The vocoder (pretrained HiFi-GAN V1 "universal") fixes the mel: 22,050 Hz, hop 256 → 86.1328 frames/s.
- Tokens are at exactly ``token_rate`` = 25 per second (what the LM and ``Pipeline.tokens_per_second`` assume).
  22050/256/25 = 3.445 mel frames per token is not an integer, so the networks work on a *grid* at
  ``grid_rate`` = 100 frames/s: the encoder linearly interpolates the 86.13 fps mel onto it and downsamples by
  ``frames_per_token`` = 4; the decoder upsamples tokens by 4 and its 100 fps output is linearly interpolated back
  onto the vocoder's frame times (mel frame j sits at grid position j·512/441). The same interpolation, with its
  step multiplied by ``speed``, stretches the mel for the API's ``speed`` without changing the pitch.
- FSQ levels (7, 5, 5, 5, 5): 4,375 codes, the FSQ paper's recommendation for a ~2^12 codebook; all levels odd, so
  every level is symmetric around 0 and needs no half-step offset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

CODEC_CONFIG_VERSION = 1


@dataclass(frozen=True)
class MelConfig:
    """The mel that the pretrained HiFi-GAN was trained on (its data/config.json). Not meant to be changed."""

    sample_rate: int = 22_050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_clamp: float = 1e-7

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def log_floor(self) -> float:
        """The lowest value a log-mel can take (digital silence sits higher: see ``MelSpectrogram.silence``)."""
        return math.log(self.log_clamp)


@dataclass(frozen=True)
class CodecConfig:
    fsq_levels: tuple[int, ...] = (7, 5, 5, 5, 5)
    token_rate: float = 25.0
    grid_rate: float = 100.0
    # Encoder: ConvNeXt blocks on the 100 fps grid, then a stride-4 conv, then blocks at the token rate.
    enc_grid_dim: int = 192
    enc_grid_blocks: int = 2
    enc_dim: int = 320
    enc_blocks: int = 4
    # Decoder: blocks at the token rate (the first ``dec_lookahead`` of them see one token ahead), ×4, grid blocks.
    dec_dim: int = 320
    dec_blocks: int = 6
    dec_lookahead: int = 2
    dec_grid_dim: int = 192
    dec_grid_blocks: int = 3
    token_kernel: int = 5
    grid_kernel: int = 7
    mlp_ratio: int = 3
    # Voice conditioning: a learned embedding per voice name; index 0 is "no voice" (trained by voice dropout).
    voices: tuple[str, ...] = ()
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self):
        if not self.fsq_levels or any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"fsq_levels must be integers >= 2, got {self.fsq_levels}")
        ratio = self.grid_rate / self.token_rate
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
            raise ValueError(f"grid_rate / token_rate must be an integer, got {ratio}")
        if not 0 <= self.dec_lookahead <= self.dec_blocks:
            raise ValueError("dec_lookahead must be between 0 and dec_blocks")
        if self.token_kernel < 2 or self.grid_kernel < 1:
            raise ValueError("kernels too small")
        if len(set(self.voices)) != len(self.voices) or "" in self.voices:
            raise ValueError("voice names must be distinct and non-empty")
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        object.__setattr__(self, "voices", tuple(self.voices))

    @property
    def frames_per_token(self) -> int:
        return round(self.grid_rate / self.token_rate)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)

    @property
    def grid_per_mel(self) -> float:
        """Grid frames per vocoder mel frame (512/441 at the defaults)."""
        return self.grid_rate / self.mel.frame_rate

    @property
    def lookahead_tokens(self) -> int:
        return self.dec_lookahead

    def voice_index(self, voice: str | None) -> int:
        """1 + position in ``voices``; 0 (no voice) for None or an unknown name."""
        if voice is None or voice not in self.voices:
            return 0
        return 1 + self.voices.index(voice)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        d["voices"] = list(self.voices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown codec config keys: {sorted(unknown)}")
        mel = MelConfig(**d.pop("mel", {}))
        if mel != MelConfig():
            raise ValueError("the mel config must match the pretrained HiFi-GAN's")
        return cls(**{**d, "fsq_levels": tuple(d.get("fsq_levels", cls.fsq_levels)),
                      "voices": tuple(d.get("voices", ()))}, mel=mel)


def tiny_codec_config(**overrides) -> CodecConfig:
    """A few-thousand-parameter codec for CPU tests."""
    base = dict(fsq_levels=(5, 5, 3), enc_grid_dim=16, enc_grid_blocks=1, enc_dim=24, enc_blocks=1, dec_dim=24,
                dec_blocks=2, dec_lookahead=2, dec_grid_dim=16, dec_grid_blocks=1, mlp_ratio=2)
    base.update(overrides)
    return CodecConfig(**base)
