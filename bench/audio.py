"""``mamtra bench audio``: the token -> audio stage alone, one stream at a time vs many streams batched.

The default-size codec decoder and HiFi-GAN V1 with random weights (the cost does not depend on them), steady
16-token chunks (what the engine sends after a request's first chunk): milliseconds per chunk pushing one stream
at a time (``CodecDecoderStream.push``) and pushing B streams in one ``CodecSpeechDecoder.push_many``, for each
vocoder dtype; peak device memory per batch size on CUDA. One chunk is 0.64 s of audio, so ``640 / ms`` is how
many real-time streams one audio thread could serve at that cost.
"""

from __future__ import annotations

import time

import torch

CHUNK_TOKENS = 16


def audio_stage(*, device: str = "cuda", batches=(1, 8, 32, 64, 128, 256), vocoder_dtypes=("fp32", "bf16"),
                warmup: int = 4, reps: int = 4) -> list[dict]:
    from model.codec.codec import SpeechCodec
    from model.codec.config import CodecConfig
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder

    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows = []
    tokens = list(range(CHUNK_TOKENS))
    for name in vocoder_dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        torch.manual_seed(0)
        decoder = CodecSpeechDecoder(SpeechCodec(CodecConfig()).to(device).eval(),
                                     Vocoder.random(device=device, dtype=dtype))
        stream = decoder.open("random", speed=1.0)
        for _ in range(warmup):
            stream.push(tokens, flush=False)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            stream.push(tokens, flush=False)
        sync()
        rows.append(dict(vocoder_dtype=name, mode="one stream at a time", streams=1,
                         ms_per_chunk=(time.perf_counter() - t0) / reps * 1e3, peak_bytes=None))
        for b in batches:
            streams = [decoder.open("random", speed=1.0) for _ in range(b)]
            for _ in range(warmup):
                decoder.push_many(streams, [tokens] * b, [False] * b)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                decoder.push_many(streams, [tokens] * b, [False] * b)
            sync()
            rows.append(dict(vocoder_dtype=name, mode="batched", streams=b,
                             ms_per_chunk=(time.perf_counter() - t0) / reps / b * 1e3,
                             peak_bytes=torch.cuda.max_memory_allocated() if cuda else None))
            del streams
    return rows
