"""Training the speech codec (encoder + FSQ + decoder) on log-mels, resumable in short calls.

Data comes either from a corpus manifest (``model.data.manifest``: audio read with soundfile, resampled to
22,050 Hz, turned into the vocoder's mel) or from precomputed feature shards written by ``write_features``
(``mamtra codec-features``): fp16 log-mels (13.8 KB per second of audio, ~1.3 h per 64 MiB carried) or 8-bit ones
(6.9 KB/s, ~2.6 h per 64 MiB), where the audio would not fit at all; ``--max-hours`` caps a subset, voices taking
turns. All mels are held in one tensor on the training device.

Objective: L1 between the input log-mel and its reconstruction (through FSQ with a straight-through gradient), on
random crops of ``segment_frames`` (padding masked out). Optionally (``stft_weight`` > 0) a multi-resolution STFT
loss between the frozen HiFi-GAN's waveforms from the reconstructed and the true mel, on a ``stft_frames`` window
per crop: cheap on a GPU, skipped by default on a CPU. Voice dropout (``voice_dropout``) trains the "no voice"
embedding that unknown voices get.

Resumable: every ``save_every`` steps and at the end (or when ``max_minutes`` is up, so a call never runs past the
GPU machine's 10-minute limit) the output directory receives the codec checkpoint (``model.codec.codec`` format,
fp32), the optimiser moments (bf16, ``train_state*.safetensors``) and ``train.json`` (format, version, step, the
training config, recent losses). The moments make a resumed run continue smoothly; a checkpoint carried without
them (to save space: they are as large as the weights) still resumes, with a short learning-rate ramp
(``REWARM_STEPS``). ``--resume`` keeps the saved training config except ``steps``. Batches are drawn from a
generator seeded with ``seed`` and the step, so a run cut into calls sees the same batches as one long run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.codec.codec import (SpeechCodec, load_tensors, read_codec_config, save_codec, save_tensors,
                               _load_strict)
from model.codec.config import CodecConfig, MelConfig
from model.codec.mel import MelSpectrogram
from model.schedule import warmup_cosine

TRAIN_FORMAT = "mamtra-codec-train"
TRAIN_VERSION = 1
FEATURES_FORMAT = "mamtra-codec-features"
FEATURES_VERSION = 1
REWARM_STEPS = 200  # learning-rate ramp after resuming without optimiser moments


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    batch: int = 32
    segment_frames: int = 256  # 2.97 s crops
    lr: float = 1e-3
    warmup: int = 500
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    voice_dropout: float = 0.1
    stft_weight: float = 0.0
    stft_frames: int = 32
    save_every: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or self.segment_frames < 8:
            raise ValueError("steps and batch must be >= 1, segment_frames >= 8")
        if not 0 <= self.voice_dropout <= 1 or self.stft_weight < 0:
            raise ValueError("voice_dropout must be in [0, 1] and stft_weight >= 0")
        if self.stft_weight and self.stft_frames > self.segment_frames:
            raise ValueError("stft_frames must not exceed segment_frames")

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, lr=self.lr, warmup=self.warmup, total=self.steps, min_ratio=self.min_lr_ratio)


# --- data -----------------------------------------------------------------------------------------------------

@dataclass
class MelData:
    """All utterances' mels concatenated: ``mel (80, ΣT)``, ``starts``/``lengths`` per utterance, voice names."""

    mel: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    voices: list[str]

    def to(self, device: torch.device) -> MelData:
        return MelData(self.mel.to(device), self.starts.to(device), self.lengths.to(device), self.voices)


def load_audio_22k(path: str | Path) -> torch.Tensor:
    """Any file soundfile reads → mono float32 at 22,050 Hz."""
    import soundfile as sf
    import torchaudio.functional as AF

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(audio.mean(axis=1))
    sample_rate = MelConfig().sample_rate
    return AF.resample(x, sr, sample_rate) if sr != sample_rate else x


def select_entries(manifest: str | Path, split: str | None, *, max_hours: float | None = None) -> list:
    """Manifest lines of ``split`` (None: all); with ``max_hours``, voices take turns (round-robin in manifest
    order) until the hours are reached, so a size-capped subset still covers every voice evenly."""
    from model.data.manifest import read_manifest

    entries = [e for e in read_manifest(manifest) if split is None or e.split == split]
    if not entries:
        raise ValueError(f"no utterances in {manifest}" + (f" with split {split!r}" if split else ""))
    if max_hours is None:
        return entries
    by_voice: dict[str, list] = {}
    for e in entries:
        by_voice.setdefault(e.voice, []).append(e)
    queues = [list(reversed(v)) for v in by_voice.values()]
    chosen, seconds = [], 0.0
    while any(queues) and seconds < max_hours * 3600:
        for q in queues:
            if q and seconds < max_hours * 3600:
                e = q.pop()
                chosen.append(e)
                seconds += e.duration
    return chosen


def _manifest_mels(manifest: str | Path, split: str | None, *, progress: bool, max_hours: float | None = None):
    from tqdm import tqdm

    from model.data.manifest import audio_path

    mel_fn = MelSpectrogram()
    for e in tqdm(select_entries(manifest, split, max_hours=max_hours), desc="mels", unit="utt",
                  disable=not progress):
        with torch.no_grad():
            yield mel_fn(load_audio_22k(audio_path(manifest, e))).half(), e.voice


def mels_from_manifest(manifest: str | Path, *, split: str | None = "train", progress: bool = False) -> MelData:
    mels, voices = [], []
    for mel, voice in _manifest_mels(manifest, split, progress=progress):
        mels.append(mel)
        voices.append(voice)
    return _pack(mels, voices)


def _pack(mels: list[torch.Tensor], voices: list[str]) -> MelData:
    lengths = torch.tensor([m.shape[-1] for m in mels], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    return MelData(torch.cat(mels, dim=-1), starts, lengths, voices)


# 8-bit features: log-mel in [U8_MIN, U8_MIN + 255·U8_STEP] = [-16.2, 4.0] (silence ≈ -13, loud speech < 3), step
# 0.079: a ±0.04 rounding error, far below what the codec reconstructs (~0.3 mean L1), at half the fp16 size.
U8_MIN = -16.2
U8_STEP = 20.2 / 255


def quantise_u8(mel: torch.Tensor) -> torch.Tensor:
    return torch.round((mel.float() - U8_MIN) / U8_STEP).clamp(0, 255).to(torch.uint8)


def dequantise_u8(q: torch.Tensor) -> torch.Tensor:
    return (q.float() * U8_STEP + U8_MIN).half()


def write_features(manifest: str | Path, out: str | Path, *, split: str | None = "train",
                   shard_bytes: int = 15 * 2**20, dtype: str = "fp16", max_hours: float | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Manifest → mel shards ``mels-00000.safetensors`` ({"mel": (80, ΣT) fp16 or uint8, "lengths", "voice_ids"})
    and ``features.json`` (format, version, dtype, voices, shards, counts). Each shard stays under
    ``shard_bytes``. ``dtype="u8"`` stores 8-bit log-mels (``quantise_u8``): twice the hours per carried MiB."""
    if dtype not in ("fp16", "u8"):
        raise ValueError(f"dtype must be fp16 or u8, got {dtype!r}")
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    voices: list[str] = []
    shards: list[str] = []
    pending: list[tuple[torch.Tensor, int]] = []
    size = frames = utterances = 0

    def flush() -> None:
        nonlocal pending, size
        if not pending:
            return
        name = f"mels-{len(shards):05d}.safetensors"
        mel = torch.cat([m for m, _ in pending], dim=-1)
        save_file({"mel": (quantise_u8(mel) if dtype == "u8" else mel).contiguous(),
                   "lengths": torch.tensor([m.shape[-1] for m, _ in pending], dtype=torch.long),
                   "voice_ids": torch.tensor([v for _, v in pending], dtype=torch.long)}, str(out / name))
        shards.append(name)
        pending, size = [], 0

    for mel, voice in _manifest_mels(manifest, split, progress=progress, max_hours=max_hours):
        if voice not in voices:
            voices.append(voice)
        nbytes = mel.numel() * (1 if dtype == "u8" else 2)
        if pending and size + nbytes > shard_bytes:
            flush()
        pending.append((mel, voices.index(voice)))
        size += nbytes
        frames += mel.shape[-1]
        utterances += 1
    flush()
    doc = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, "mel": asdict(MelConfig()), "dtype": dtype,
           "voices": voices,
           "shards": shards, "utterances": utterances, "frames": frames,
           "hours": round(frames / MelConfig().frame_rate / 3600, 4), "split": split}
    (out / "features.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def mels_from_features(directory: str | Path) -> MelData:
    from safetensors.torch import load_file

    directory = Path(directory)
    doc = json.loads((directory / "features.json").read_text())
    if doc.get("format") != FEATURES_FORMAT or doc.get("version") != FEATURES_VERSION:
        raise ValueError(f"{directory}/features.json: unsupported format/version")
    if MelConfig(**doc["mel"]) != MelConfig():
        raise ValueError(f"{directory}: features were computed with another mel config")
    mels, voices = [], []
    for name in doc["shards"]:
        shard = load_file(str(directory / name))
        mel = shard["mel"]
        mel = dequantise_u8(mel) if mel.dtype == torch.uint8 else mel.half()
        for m, v in zip(torch.split(mel, shard["lengths"].tolist(), dim=-1), shard["voice_ids"].tolist()):
            mels.append(m)
            voices.append(doc["voices"][v])
    if not mels:
        raise ValueError(f"{directory}: no features")
    return _pack(mels, voices)


def sample_batch(data: MelData, voice_index: torch.Tensor, config: TrainConfig, step: int, *,
                 silence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops → ``mel (B, 80, S)`` float32, ``mask (B, 1, S)``, ``voice (B,)``; seeded by (seed, step).
    Crops of short utterances are padded with ``silence`` ``(80,)`` and masked out of the loss."""
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    lengths = data.lengths.cpu().float()
    utt = torch.multinomial(lengths, config.batch, replacement=True, generator=g)  # longer utterances more often
    S = config.segment_frames
    room = (data.lengths.cpu()[utt] - S).clamp(min=0)
    offset = (torch.rand(config.batch, generator=g) * (room + 1).float()).long()
    start = data.starts.cpu()[utt] + offset
    idx = start[:, None] + torch.arange(S)[None]  # (B, S)
    valid = torch.arange(S)[None] < data.lengths.cpu()[utt][:, None]
    idx = torch.where(valid, idx, 0)
    device = data.mel.device
    mel = data.mel[:, idx.to(device)].permute(1, 0, 2).float()  # (B, 80, S)
    mask = valid.to(device)[:, None, :]
    mel = torch.where(mask, mel, silence.to(mel)[None, :, None])
    voice = voice_index.cpu()[utt]
    drop = torch.rand(config.batch, generator=g) < config.voice_dropout
    voice = torch.where(drop, 0, voice).to(device)
    return mel, mask.float(), voice


# --- losses ---------------------------------------------------------------------------------------------------

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def multi_resolution_stft_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over ``STFT_RESOLUTIONS``; ``(B, L)`` waveforms."""
    total = y.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=y.device)
        s_hat = torch.stft(y_hat.float(), n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-5)
        s = torch.stft(y.float(), n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-5)
        sc = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s)
        total = total + sc + F.l1_loss(torch.log(s_hat), torch.log(s))
    return total / len(STFT_RESOLUTIONS)


# --- training loop --------------------------------------------------------------------------------------------

def _save(out: Path, codec: SpeechCodec, opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
          step: int, config: TrainConfig, losses: list[float]) -> None:
    meta = {"step": step, "loss": losses[-1] if losses else None}
    save_codec(codec, out, meta=meta)
    moments = {}
    for name, p in params.items():
        st = opt.state.get(p)
        if st:
            moments[f"{name}.exp_avg"] = st["exp_avg"].to(torch.bfloat16)
            moments[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].to(torch.bfloat16)
    if moments:
        save_tensors(moments, out, "train_state")
    doc = {"format": TRAIN_FORMAT, "version": TRAIN_VERSION, "step": step, "train": asdict(config),
           "recent_losses": [round(x, 5) for x in losses[-50:]]}
    tmp = out / "train.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out / "train.json")


def read_train_state(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / "train.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("format") != TRAIN_FORMAT or doc.get("version") != TRAIN_VERSION:
        raise ValueError(f"{path}: unsupported training state format/version")
    return doc


def train(data: MelData, out: str | Path, *, config: TrainConfig, codec_config: CodecConfig | None = None,
          device: str | torch.device = "cpu", resume: bool = False, max_minutes: float | None = None,
          progress: bool = True, precision: str = "bf16", cudnn_benchmark: bool = True) -> dict[str, Any]:
    """Train (or resume) a codec into ``out``; returns a summary (step, first/last losses, wall time).

    On CUDA, ``precision`` "bf16" runs the nets under bf16 autocast, "fp32" in fp32 with TF32 matmuls/convs;
    ``cudnn_benchmark`` lets cuDNN pick its fastest conv algorithms (the crops have one fixed shape)."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    from tqdm import tqdm

    out = Path(out)
    device = torch.device(device)
    state = read_train_state(out) if resume else None
    if state is not None:
        codec_config, _ = read_codec_config(out)
        config = TrainConfig(**{**state["train"], "steps": config.steps})
    elif codec_config is None:
        codec_config = CodecConfig(voices=tuple(sorted(set(data.voices))))
    elif not codec_config.voices:
        codec_config = CodecConfig(**{**codec_config.__dict__, "voices": tuple(sorted(set(data.voices)))})
    torch.manual_seed(config.seed)
    codec = SpeechCodec(codec_config).to(device)
    params = {n: p for n, p in codec.named_parameters()}
    opt = torch.optim.AdamW(params.values(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    step = 0
    rewarm_from: int | None = None
    if state is not None:
        for part in ("encoder", "decoder"):
            _load_strict(getattr(codec, part), load_tensors(out, part), f"{out}/{part}")
        step = int(state["step"])
        try:
            moments = load_tensors(out, "train_state")
        except ValueError:
            moments = {}
        if not moments:  # carried without its optimiser moments: ramp the learning rate up again
            rewarm_from = step
        for name, p in params.items():
            if f"{name}.exp_avg" in moments:
                opt.state[p] = {"step": torch.tensor(float(step)),
                                "exp_avg": moments[f"{name}.exp_avg"].to(device, torch.float32),
                                "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(device, torch.float32)}
    data = data.to(device)
    voice_index = torch.tensor([codec_config.voice_index(v) for v in data.voices], dtype=torch.long)
    vocoder = None
    if config.stft_weight > 0:
        from model.codec.vocoder import load_generator

        vocoder = load_generator(device=device)
    amp = device.type == "cuda" and precision == "bf16"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    codec.train()
    losses: list[float] = []
    first_loss = None
    t0 = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, desc="train-codec", unit="step", disable=not progress)
    silence = codec.mel.silence()
    stopped_early = False
    while step < config.steps:
        if max_minutes is not None and time.monotonic() - t0 > 60 * max_minutes:
            stopped_early = True
            break
        mel, mask, voice = sample_batch(data, voice_index, config, step, silence=silence)
        lr = config.lr_at(step)
        if rewarm_from is not None and step - rewarm_from < REWARM_STEPS:
            lr *= (step - rewarm_from + 1) / REWARM_STEPS
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            recon, _ = codec(mel, voice)
        recon = recon.float()
        loss = ((recon - mel).abs() * mask).sum() / (mask.sum() * mel.shape[1])
        if vocoder is not None:
            S, W = mel.shape[-1], config.stft_frames
            lo = int(torch.randint(0, S - W + 1, (1,), generator=torch.Generator().manual_seed(step)))
            y_hat = vocoder(recon[..., lo:lo + W])[:, 0]
            with torch.no_grad():
                y = vocoder(mel[..., lo:lo + W])[:, 0]
            loss = loss + config.stft_weight * multi_resolution_stft_loss(y_hat, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), config.grad_clip)
        opt.step()
        step += 1
        value = float(loss.detach())
        first_loss = value if first_loss is None else first_loss
        losses.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        if step % config.save_every == 0 and step < config.steps:
            _save(out, codec, opt, params, step, config, losses)
    bar.close()
    codec.eval()
    _save(out, codec, opt, params, step, config, losses)
    return {"step": step, "steps": config.steps, "done": step >= config.steps, "stopped_early": stopped_early,
            "first_loss": first_loss, "last_loss": float(np.mean(losses[-10:])) if losses else None,
            "wall_s": round(time.monotonic() - t0, 1), "out": str(out), "voices": list(codec_config.voices)}
