"""The fused norms (``model.norm_fused``) on and off, side by side in one process: a graph-replayed decode step of
B streams and a graph-replayed prefill of one prompt, paper dims, random weights (GPU profiling aid).

python -m bench.profile_norms [--preset mamtra-1:3] [--batch 64] [--position 512] [--tokens 40] [--out DIR]
Per variant: median replay time over 50 replays (CUDA events) and the kernels in one replay (torch.profiler).
"""
from __future__ import annotations

import argparse
import json

import torch


def _kernels(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamtra-1:3")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--position", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from bench.lm import Device, _time, build_model
    from model import norm_fused
    from model.config import preset
    from model.cuda_graphs import GraphedDecoder, GraphedPrefill
    from model.state import StatePool

    dev = torch.device("cuda")
    config = preset(a.preset)
    device = Device(dev)
    model = build_model(config, device, dtype=torch.bfloat16)
    rows = []
    for fused in (True, False, True, False):
        norm_fused.set_enabled(fused)
        pool = StatePool(config, max_streams=a.batch + 1, max_context=8192, dtype=torch.bfloat16, device=dev)
        dec = GraphedDecoder(model, pool, scratch_slot=a.batch, buckets=(a.batch,))
        pre = GraphedPrefill(model, pool, scratch_slot=a.batch, seq_buckets=(1,), len_buckets=(64,))
        tokens = torch.randint(0, 1000, (a.batch,), device=dev)
        slots = torch.arange(a.batch, device=dev)
        pos = torch.full((a.batch,), a.position, device=dev)
        prompt = [tuple(range(100, 100 + a.tokens))]
        with torch.inference_mode():
            dec.capture(a.batch)
            pre.capture(1, 64)
            g_dec = dec._graphs[a.batch][0]
            g_pre = pre._graphs[(1, 64)][0]
            dec(tokens, slots, pos)
            pre(prompt, [0], [0])
            row = dict(fused=fused, preset=a.preset, batch=a.batch, position=a.position, prompt_tokens=a.tokens,
                       decode_ms=1e3 * _time(g_dec.replay, device, warmup=5, reps=50),
                       prefill_ms=1e3 * _time(g_pre.replay, device, warmup=5, reps=50),
                       decode_kernels=_kernels(g_dec.replay), prefill_kernels=_kernels(g_pre.replay))
        print(json.dumps(row), flush=True)
        rows.append(row)
        del dec, pre, pool
        torch.cuda.empty_cache()
    norm_fused.set_enabled(True)
    if a.out:
        with open(f"{a.out}/profile_norms.json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
