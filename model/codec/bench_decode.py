"""Decode speed on this machine: tokens → 24 kHz PCM (decoder + interpolation + HiFi-GAN + resampler), streamed.

``python -m model.codec.bench_decode [--codec DIR] [--seconds 10] [--chunk 10] [--threads 2]`` prints JSON with
the real-time factor (seconds of audio per wall-clock second, higher is faster). Without ``--codec`` a randomly
initialised codec of the default (shipped) size is used: the cost does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", help="codec checkpoint directory (default: random weights, default size)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per run")
    p.add_argument("--chunk", type=int, default=10, help="tokens per push")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocoder-dtype", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args(argv)

    from model.codec.codec import SpeechCodec
    from model.codec.config import CodecConfig
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.vocoder_dtype]
    if args.codec:
        decoder = CodecSpeechDecoder.load(args.codec, vocoder_dtype=dtype)
    else:
        decoder = CodecSpeechDecoder(SpeechCodec(CodecConfig()).eval(), Vocoder.load(dtype=dtype))
    cfg = decoder.codec.config
    n = int(args.seconds * cfg.token_rate)
    tokens = torch.randint(0, cfg.codebook_size, (n,)).tolist()

    def run() -> tuple[float, int]:
        stream = decoder.open("default", speed=1.0)
        t0 = time.perf_counter()
        samples = 0
        for i in range(0, n, args.chunk):
            samples += len(stream.push(tokens[i:i + args.chunk], flush=i + args.chunk >= n))
        return time.perf_counter() - t0, samples

    run()  # warm-up
    times = []
    for _ in range(args.repeats):
        wall, samples = run()
        times.append(wall)
    audio_s = samples / 24_000
    t0 = time.perf_counter()
    decoder.decode_offline(tokens)
    offline = time.perf_counter() - t0
    print(json.dumps({"vocoder_dtype": args.vocoder_dtype, "audio_s": round(audio_s, 2),
                      "chunk_tokens": args.chunk, "threads": args.threads,
                      "stream_wall_s": [round(t, 3) for t in times],
                      "stream_x_realtime_best": round(audio_s / min(times), 2),
                      "stream_x_realtime_median": round(audio_s / float(np.median(times)), 2),
                      "offline_x_realtime": round(audio_s / offline, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
