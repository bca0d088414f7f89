"""What one prefill step costs the engine loop, per number of sequences prefilled together (GPU profiling aid).

python -m bench.profile_prefill [--preset mamtra-1:3] [--sizes 1 2 4 8] [--tokens 40] [--long] [--overlap]
    [--streams 64]
Eager vs CUDA-graph prefill (``model.cuda_graphs.GraphedPrefill``): first call per size (fla-core autotunes per
batch size), the median of the next ones, continuations later in the context; GPU time of one; a decode step of
``--streams`` streams with and without 1 or 8 prefills in it, its host time (``Runner.launch``, what the engine
loop's "host" phase times) apart from its wait for the sampled tokens. ``--overlap`` adds those steps with the
prefill beside the decode (``Runner(overlap_prefill=True)``).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamtra-1:3")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--long", action="store_true", help="the model's 8,192-token window (the server's)")
    ap.add_argument("--graphs-only", action="store_true", help="skip the eager runner (its first call autotunes)")
    ap.add_argument("--overlap", action="store_true", help="also the steps with the prefill beside the decode")
    ap.add_argument("--kernels", type=int, default=0, help="print the N costliest GPU kernels of the graph-mode "
                    "steps (decode, decode + prefill 1) and the N costliest host ops, and time the sampler alone")
    ap.add_argument("--streams", type=int, default=64, help="decoding streams in the decode steps")
    a = ap.parse_args()
    from bench.lm import Device, build_model
    from model.config import preset
    from model.sampling import SamplingConfig
    from service.engine.runner import Runner
    from service.engine.scheduler import DecodeItem, PrefillChunk, StepPlan

    dev = Device(torch.device("cuda"))
    config = preset(a.preset)
    model = build_model(config, dev, dtype=torch.bfloat16)
    n = max(a.sizes)
    rows = []
    modes = (("graphs",) if a.graphs_only else ("eager", "graphs")) + (("overlap",) if a.overlap else ())
    d = a.streams
    for mode in modes:
        runner = Runner(model, max_streams=d + max(n, 8), max_context=8192 if a.long else 1024,
                        allowed_ids=list(range(4377)), sampling=SamplingConfig(), dtype=torch.bfloat16,
                        cuda_graphs=True, prefill_graphs=mode != "eager", overlap_prefill=mode == "overlap")
        t0 = time.perf_counter()
        if runner.prefill_graphs is not None:
            runner.prefill_graphs.capture_all()
        capture_s = time.perf_counter() - t0
        runner.graphs.capture_all(d)
        g = torch.Generator().manual_seed(0)
        for b in a.sizes if mode != "overlap" else ():  # a prefill alone runs as in "graphs"
            for i in range(b):
                runner.open_request(f"r{i}", seed=i)

            def plan(start=0):
                ids = [tuple(torch.randint(0, 1000, (a.tokens,), generator=g).tolist()) for _ in range(b)]
                return StepPlan(resets=tuple(range(d, d + b)) if start == 0 else (), prefills=tuple(
                    PrefillChunk(f"r{i}", d + i, start, ids[i], True) for i in range(b)))

            times = []
            for k in range(1 + a.reps):
                p = plan()
                torch.cuda.synchronize()
                t = time.perf_counter()
                runner.execute(p)  # ends in the step's host sync
                times.append(time.perf_counter() - t)
            cont = []
            for k in range(a.reps):  # continuations: the same prompts later in the context
                p = plan(start=a.tokens * (k + 1))
                torch.cuda.synchronize()
                t = time.perf_counter()
                runner.execute(p)
                cont.append(time.perf_counter() - t)
            from torch.profiler import ProfilerActivity, profile
            p = plan()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                runner.execute(p)
                torch.cuda.synchronize()
            ka = prof.key_averages()
            gpu = sum(e.self_device_time_total for e in ka) / 1e3
            row = dict(mode=mode, seqs=b, tokens=a.tokens, first_ms=times[0] * 1e3,
                       median_ms=statistics.median(times[1:]) * 1e3, continuation_ms=statistics.median(cont) * 1e3,
                       gpu_ms=gpu, capture_all_s=capture_s)
            print(json.dumps(row), flush=True)
            rows.append(row)
        # decode steps of d streams, graphs, with and without a prefill of 8 in the same step
        for i in range(d):
            runner.open_request(f"d{i}", seed=i)
        for i in range(8):
            runner.open_request(f"r{i}", seed=i)
        dec = tuple(DecodeItem(f"d{i}", i, 50, 5) for i in range(d))
        for label, pre in ((f"decode {d}", ()), *((f"decode {d} + prefill {k}", tuple(
                PrefillChunk(f"r{i}", d + i, 0, tuple(range(a.tokens)), True) for i in range(k))) for k in (1, 8))):
            ts, hosts = [], []
            for _ in range(11):
                torch.cuda.synchronize()
                t = time.perf_counter()
                pending = runner.launch(StepPlan(prefills=pre, decodes=dec))
                hosts.append(time.perf_counter() - t)
                pending.result()
                ts.append(time.perf_counter() - t)
            row = dict(mode=mode, step=label, median_ms=statistics.median(ts[1:]) * 1e3,
                       host_ms=statistics.median(hosts[1:]) * 1e3)
            print(json.dumps(row), flush=True)
            rows.append(row)
        if a.kernels and mode == "graphs":
            rows += _kernels(runner, dec, a)
        del runner
        torch.cuda.empty_cache()
    if a.out:
        with open(f"{a.out}/profile_prefill.json", "w") as f:
            json.dump(rows, f, indent=1)


def _kernels(runner, dec, a) -> list[dict]:
    """The costliest kernels and host ops of a graph-mode decode step (alone and with one prefill), and the sampler's
    time."""
    from torch.profiler import ProfilerActivity, profile

    from model.sampling import sample
    from service.engine.scheduler import PrefillChunk, StepPlan

    rows = []
    d = len(dec)
    one = (PrefillChunk("r0", d, 0, tuple(range(a.tokens)), True),)
    for label, pre in ((f"decode {d}", ()), (f"decode {d} + prefill 1", one)):
        for _ in range(3):
            runner.execute(StepPlan(prefills=pre, decodes=dec))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            runner.execute(StepPlan(prefills=pre, decodes=dec))
            torch.cuda.synchronize()
        ka = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
        gpu = sum(e.self_device_time_total for e in ka) / 1e3
        top = [dict(name=e.key[:90], calls=e.count, gpu_ms=e.self_device_time_total / 1e3)
               for e in ka[:a.kernels] if e.self_device_time_total > 0]
        cpu = sorted(ka, key=lambda e: -e.self_cpu_time_total)
        host = [dict(name=e.key[:90], calls=e.count, cpu_ms=e.self_cpu_time_total / 1e3)
                for e in cpu[:a.kernels] if e.self_cpu_time_total > 0]
        row = dict(step=label, gpu_ms=gpu, top=top, host_top=host, sync_ms=runner.last_sync_s * 1e3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    eight = tuple(PrefillChunk(f"r{i}", d + i, 0, tuple(range(a.tokens)), True) for i in range(8))
    prof = cProfile.Profile()
    for _ in range(10):  # the Python of the launch (the profiler above sees only the ops)
        torch.cuda.synchronize()
        prof.enable()
        pending = runner.launch(StepPlan(prefills=eight, decodes=dec))
        prof.disable()
        pending.result()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(a.kernels)
    print(buf.getvalue(), flush=True)
    rows.append(dict(step=f"launch decode {d} + prefill 8, cProfile x10", text=buf.getvalue()))
    logits = torch.randn(d, runner.model.config.vocab_size, device=runner.device, dtype=torch.bfloat16)
    last = torch.zeros(d, dtype=torch.long, device=runner.device)
    runs = torch.ones(d, dtype=torch.long, device=runner.device)
    ts = []
    for _ in range(12):
        torch.cuda.synchronize()
        t = time.perf_counter()
        sample(logits, runner.sampling, allowed=runner.allowed, last_token=last, run_length=runs).tolist()
        ts.append(time.perf_counter() - t)
    row = dict(step=f"sample {d} rows", median_ms=statistics.median(ts[2:]) * 1e3)
    print(json.dumps(row), flush=True)
    rows.append(row)
    return rows


if __name__ == "__main__":
    main()
