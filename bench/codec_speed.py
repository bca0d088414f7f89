"""Codec training step speed on the GPU: bf16 autocast vs fp32/TF32, cuDNN autotuning on/off.

``python bench/codec_speed.py FEATURES_DIR OUT_DIR`` writes OUT_DIR/codec_speed.json (steps/s per variant, the
fastest) and OUT_DIR/codec_profile.txt (torch.profiler's top CUDA kernels of the slowest variant's steps).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.codec.train import TrainConfig, mels_from_features, train

VARIANTS = (("bf16", False), ("bf16", True), ("fp32", False), ("fp32", True))


def main(features: str, out: str) -> None:
    data = mels_from_features(features)
    results = []
    with tempfile.TemporaryDirectory() as tmp:  # CUDA context, allocator and library handles: not timed
        train(data, tmp, config=TrainConfig(steps=5, batch=32, save_every=10**6), device="cuda", progress=False,
              precision="fp32")
    for precision, bench in VARIANTS:
        times = []
        for steps in (10, 60):  # the difference cancels set-up, first-step compilation and the final save
            with tempfile.TemporaryDirectory() as tmp:
                torch.cuda.synchronize()
                t = time.perf_counter()
                train(data, tmp, config=TrainConfig(steps=steps, batch=32, save_every=10**6), device="cuda",
                      progress=False, precision=precision, cudnn_benchmark=bench)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        rate = 50 / max(times[1] - times[0], 1e-6)
        results.append({"precision": precision, "cudnn_benchmark": bench, "steps_per_s": round(rate, 2)})
        print(json.dumps(results[-1]), flush=True)
    best = max(results, key=lambda r: r["steps_per_s"])
    worst = min(results, key=lambda r: r["steps_per_s"])
    Path(out, "codec_speed.json").write_text(json.dumps({"variants": results, "best": best,
                                                         "card": torch.cuda.get_device_name()}, indent=1))
    with tempfile.TemporaryDirectory() as tmp, torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        train(data, tmp, config=TrainConfig(steps=8, batch=32, save_every=10**6), device="cuda", progress=False,
              precision=worst["precision"], cudnn_benchmark=worst["cudnn_benchmark"])
    Path(out, "codec_profile.txt").write_text(
        f"variant {worst}\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
