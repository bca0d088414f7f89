"""``mamtra encode|decode|resynth|encode-manifest|train-codec|codec-features``: the speech codec from the command line.

- ``encode IN.wav -o TOKENS.npy --codec DIR``: any soundfile-readable audio (mono-mixed, resampled to 22,050 Hz) →
  a 1-D array of token ids (uint16 when the codebook fits, else int32).
- ``decode TOKENS.npy -o OUT.wav --codec DIR [--voice V] [--speed S] [--stream-chunk N]``: token ids → 24 kHz
  16-bit WAV, offline or (``--stream-chunk``) through the streaming decoder the service uses.
- ``resynth IN.wav -o OUT.wav --codec DIR [--voice V]``: both, to judge the codec by ear and by ASR.
- ``encode-manifest --manifest M -o CODES.npz --codec DIR``: every utterance of a corpus → token ids (flat
  ``codes`` with ``offsets``, utterance ``ids``), for the LM's training data.
- ``codec-features --manifest M --out DIR [--dtype fp16|u8]``: mel shards to carry to a GPU machine.
- ``train-codec (--manifest M | --features DIR) --out DIR [--steps N] [--batch B] [--device cuda] [--resume]
  [--max-minutes T]``: train or resume the codec.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _write_wav(path: str, audio: np.ndarray, sr: int) -> float:
    import soundfile as sf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), sr, subtype="PCM_16")
    return len(audio) / sr


def _encode_file(path: str, codec_dir: str, device: str) -> np.ndarray:
    from model.codec.codec import load_codec
    from model.codec.train import load_audio_22k

    codec = load_codec(codec_dir, device=device)
    ids = codec.encode(load_audio_22k(path)).cpu().numpy()
    return ids.astype(np.uint16 if codec.config.codebook_size <= 65_536 else np.int32)


def _decode_ids(ids: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    from model.codec.stream import CodecSpeechDecoder

    decoder = CodecSpeechDecoder.load(args.codec, device=args.device)
    ids = ids.astype(np.int64).reshape(-1)
    if not args.stream_chunk:
        return decoder.decode_offline(ids, args.voice, speed=args.speed)
    stream = decoder.open(args.voice or "", speed=args.speed)
    n, k = len(ids), args.stream_chunk
    parts = [stream.push(ids[i:i + k], flush=i + k >= n) for i in range(0, max(n, 1), k)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _check_ids(ids: np.ndarray, path: str) -> np.ndarray:
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected a 1-D integer array of token ids, got {ids.dtype} {ids.shape}")
    return ids


def _cmd_encode(args: argparse.Namespace) -> int:
    ids = _encode_file(args.input, args.codec, args.device)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, ids)
    print(json.dumps({"tokens": int(ids.size), "output": args.output}))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    ids = _check_ids(np.load(args.input), args.input)
    seconds = _write_wav(args.output, _decode_ids(ids, args), 24_000)
    print(json.dumps({"tokens": int(ids.size), "seconds": round(seconds, 3), "output": args.output}))
    return 0


def _cmd_resynth(args: argparse.Namespace) -> int:
    ids = _encode_file(args.input, args.codec, args.device)
    seconds = _write_wav(args.output, _decode_ids(ids, args), 24_000)
    print(json.dumps({"tokens": int(ids.size), "seconds": round(seconds, 3), "output": args.output}))
    return 0


def _cmd_encode_manifest(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from model.codec.codec import load_codec
    from model.codec.train import load_audio_22k, select_entries
    from model.data.manifest import audio_path

    if args.threads:
        torch.set_num_threads(args.threads)
    codec = load_codec(args.codec, device=args.device, parts=("encoder",))
    entries = select_entries(args.manifest, None if args.split == "all" else args.split)
    codes = [codec.encode(load_audio_22k(audio_path(args.manifest, e))).cpu().numpy()
             for e in tqdm(entries, desc="encode", unit="utt", disable=args.no_progress)]
    offsets = np.cumsum([0] + [c.size for c in codes])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, ids=np.array([e.id for e in entries]),
                        codes=np.concatenate(codes).astype(np.uint16 if codec.config.codebook_size <= 65_536
                                                          else np.int32),
                        offsets=offsets.astype(np.int64), codebook_size=np.int64(codec.config.codebook_size),
                        token_rate=np.float64(codec.config.token_rate))
    print(json.dumps({"utterances": len(entries), "tokens": int(offsets[-1]), "output": args.output}))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from model.codec.train import write_features

    doc = write_features(args.manifest, args.out, split=None if args.split == "all" else args.split,
                         dtype=args.dtype, max_hours=args.max_hours, progress=not args.no_progress)
    print(json.dumps({k: doc[k] for k in ("utterances", "frames", "hours", "shards")}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from model.codec.train import TrainConfig, mels_from_features, mels_from_manifest, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.features:
        data = mels_from_features(args.features)
    else:
        data = mels_from_manifest(args.manifest, split=None if args.split == "all" else args.split,
                                  progress=not args.no_progress)
    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                         segment_frames=args.segment_frames, stft_weight=args.stft_weight,
                         save_every=args.save_every)
    codec_config = None
    if args.tiny:
        from model.codec.config import tiny_codec_config

        codec_config = tiny_codec_config()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary = train(data, args.out, config=config, codec_config=codec_config, device=device,
                    resume=args.resume, max_minutes=args.max_minutes, progress=not args.no_progress,
                    precision=args.precision)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser, *, voice: bool) -> None:
        p.add_argument("--codec", required=True, help="codec checkpoint directory (mamtra train-codec --out)")
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        if voice:
            p.add_argument("--voice", help="voice name the codec was trained with (default: no voice)")
            p.add_argument("--speed", type=float, default=1.0, help="0.25-4.0, without a pitch change")
            p.add_argument("--stream-chunk", type=int, default=0,
                           help="decode through the streaming decoder, N tokens per push (default: offline)")

    enc = sub.add_parser("encode", help="audio file -> speech token ids (.npy)")
    enc.add_argument("input")
    enc.add_argument("-o", "--output", required=True)
    common(enc, voice=False)
    enc.set_defaults(func=_cmd_encode)

    dec = sub.add_parser("decode", help="speech token ids (.npy) -> 24 kHz WAV")
    dec.add_argument("input")
    dec.add_argument("-o", "--output", required=True)
    common(dec, voice=True)
    dec.set_defaults(func=_cmd_decode)

    res = sub.add_parser("resynth", help="audio -> tokens -> 24 kHz WAV (judge the codec)")
    res.add_argument("input")
    res.add_argument("-o", "--output", required=True)
    common(res, voice=True)
    res.set_defaults(func=_cmd_resynth)

    em = sub.add_parser("encode-manifest", help="a corpus manifest -> one .npz of token ids per utterance")
    em.add_argument("--manifest", required=True)
    em.add_argument("-o", "--output", required=True, help=".npz: ids (utterance ids), codes (flat), offsets")
    em.add_argument("--split", default="all", choices=["train", "test", "all"])
    em.add_argument("--threads", type=int, default=0)
    em.add_argument("--no-progress", action="store_true")
    common(em, voice=False)
    em.set_defaults(func=_cmd_encode_manifest)

    feats = sub.add_parser("codec-features", help="corpus manifest -> fp16 mel shards for train-codec --features")
    feats.add_argument("--manifest", required=True)
    feats.add_argument("--out", required=True)
    feats.add_argument("--split", default="train", choices=["train", "test", "all"])
    feats.add_argument("--dtype", default="fp16", choices=["fp16", "u8"],
                       help="u8: 8-bit log-mels (step 0.08), half the size of fp16")
    feats.add_argument("--max-hours", type=float, help="cap the hours, voices taking turns (to fit a carry)")
    feats.add_argument("--no-progress", action="store_true")
    feats.set_defaults(func=_cmd_features)

    tr = sub.add_parser("train-codec", help="train or resume the speech tokenizer + token decoder")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="corpus manifest (audio)")
    src.add_argument("--features", help="features directory from codec-features")
    tr.add_argument("--out", required=True, help="checkpoint directory (written every --save-every steps)")
    tr.add_argument("--steps", type=int, default=20_000, help="total steps (a resumed run continues to this)")
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--segment-frames", type=int, default=256, help="crop length in mel frames (86.13 per s)")
    tr.add_argument("--stft-weight", type=float, default=0.0,
                    help="weight of the multi-resolution STFT loss through the frozen vocoder (GPU)")
    tr.add_argument("--save-every", type=int, default=1000)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--split", default="train", choices=["train", "test", "all"])
    tr.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    tr.add_argument("--resume", action="store_true", help="continue from --out's train.json if present")
    tr.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="on CUDA: bf16 autocast, or fp32 with TF32 (see docs/BENCHMARKS.md for which is faster)")
    tr.add_argument("--max-minutes", type=float, help="save and stop after this long (fits a time-limited call)")
    tr.add_argument("--tiny", action="store_true", help="a tiny codec (smoke tests)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=_cmd_train)


def main(argv: list[str] | None = None) -> int:
    """``python -m model.codec.cli …``: the same subcommands without the rest of the ``mamtra`` CLI (for GPU
    machines whose image lacks the service's dependencies)."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m model.codec.cli", description="MamTra speech codec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
