"""Where a steady ``push_many`` round spends its time, per stage (GPU profiling aid; METHOD: sync around each stage).

python -m bench.profile_audio [--batches 16 64] [--dtype bf16] [--channels-last] [--plain-pointwise] [--kernels N]
    [--out DIR]

``--kernels N``: the N ops of a round with the most device time (CPU time on a CPU), each with its input shapes:
which conv of the vocoder a slow kernel belongs to (``aten::cudnn_convolution`` with its input's and weight's
shapes). ``--channels-last``: the vocoder's channels-last layout (``CodecSpeechDecoder(channels_last=True)``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark: cuDNN times its "
                    "conv algorithms per shape")
    ap.add_argument("--plain-pointwise", action="store_true", help="the vocoder's biases, activations and residual "
                    "sums op by op instead of in the fused kernels (model.codec.fused; CodecSpeechDecoder(fused=))")
    ap.add_argument("--kernels", type=int, default=0, help="list the N costliest ops of a round with their shapes")
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from model.codec.codec import SpeechCodec
    from model.codec.config import CodecConfig
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder
    import model.codec.stream as S

    dev = a.device
    cuda = dev.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.manual_seed(0)
    dec = CodecSpeechDecoder(SpeechCodec(CodecConfig()).to(dev).eval(), Vocoder.random(device=dev, dtype=dtype),
                             channels_last=a.channels_last, fused=not a.plain_pointwise)
    tokens = list(range(16))
    timers: dict[str, float] = {}

    def timed(name, fn):
        def wrap(*args, **kw):
            sync()
            t = time.perf_counter()
            r = fn(*args, **kw)
            sync()
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - t
            return r
        return wrap

    results = []
    for b in a.batches:
        streams = [dec.open("random") for _ in range(b)]
        for _ in range(a.warmup):
            dec.push_many(streams, [tokens] * b, [False] * b)
        sync()
        reps = a.reps
        t0 = time.perf_counter()
        for _ in range(reps):
            dec.push_many(streams, [tokens] * b, [False] * b)
        sync()
        total = (time.perf_counter() - t0) / reps
        # per stage, with syncs
        orig = {}
        for cls, meth, name in [(S.FrameInterpStream, "step_frames", "interp"),
                                (S.ResamplerStream, "push", "resampler"),
                                (S.FrameInterpStream, "step_ragged", "interp_many"),
                                (S.ResamplerStream, "push_many", "resampler_many"),
                                (S.VocoderStream, "push", "vocoder"),
                                (type(streams[0].net), "step", "net"),
                                (S.CodecSpeechDecoder, "token_ids", "token_ids")]:
            if not hasattr(cls, meth):
                continue
            orig[(cls, meth)] = getattr(cls, meth)
            setattr(cls, meth, timed(name, getattr(cls, meth)))
        import model.codec.streaming as ST
        orig_rb = ST.run_batched
        S.run_batched = timed("run_batched", orig_rb)
        timers.clear()
        for _ in range(reps):
            dec.push_many(streams, [tokens] * b, [False] * b)
        for (cls, meth), f in orig.items():
            setattr(cls, meth, f if meth not in ("step_ragged", "push_many") else staticmethod(f))
        S.run_batched = orig_rb
        stages = {k: v / reps * 1e3 for k, v in timers.items()}
        # profiler: op counts and top CPU ops
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts, record_shapes=a.kernels > 0) as prof:
            dec.push_many(streams, [tokens] * b, [False] * b)
            sync()
        ka = prof.key_averages()
        if a.kernels:
            row_kernels = top_ops(prof, a.kernels, device=cuda)
        n_ops = sum(e.count for e in ka if e.key.startswith("aten::"))
        kernels = sum(e.count for e in ka if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type))
        table = ka.table(sort_by="self_cpu_time_total", row_limit=25)
        gpu_us = sum(e.self_device_time_total for e in ka) if cuda else None
        row = dict(batch=b, channels_last=a.channels_last, cudnn_benchmark=a.cudnn_benchmark,
                   fused=streams[0].vocoder.fused,
                   ms_per_round=total * 1e3, ms_per_chunk=total / b * 1e3,
                   stages_ms=stages, aten_ops=n_ops, kernels=kernels, gpu_busy_ms=(gpu_us / 1e3 if gpu_us else None))
        if a.kernels:
            row["top_ops"] = row_kernels
        print(json.dumps(row), flush=True)
        print(table, flush=True)
        results.append(row)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "profile_audio.json").write_text(json.dumps(results, indent=1))


def top_ops(prof, n: int, *, device: bool) -> list[dict]:
    """The ``n`` aten ops with the most self device time (self CPU time without a device), grouped by input shapes:
    ``{"op", "shapes", "calls", "ms"}``, costliest first."""
    def cost(e) -> float:
        return e.self_device_time_total if device else e.self_cpu_time_total

    rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::") and cost(e) > 0]
    rows.sort(key=cost, reverse=True)
    return [{"op": e.key, "shapes": [list(s) for s in e.input_shapes if s], "calls": e.count, "ms": cost(e) / 1e3}
            for e in rows[:n]]


if __name__ == "__main__":
    main()
