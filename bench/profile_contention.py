"""What the LM loop in another process costs the audio stage on one GPU (GPU profiling aid).

python -m bench.profile_contention [--preset mamtra-1:3] [--streams 64] [--duties 0 0.45 1] [--channels-last]
    [--first-chunk-graphs] [--out DIR]

The server runs the LM loop and the audio stage in two processes (two CUDA contexts, ``MAMTRA_AUDIO_PROCESS``).
This measures the audio stage's rounds alone and while a background process runs the engine's decode step
(``Runner.execute``, CUDA graphs, 64 streams) at a given duty cycle (busy fraction; it sleeps between steps): a
steady round of ``--streams`` streams at mixed phases (each first pushed 12 tokens, then 8..31, as the engine's
chunking leaves them), a ragged round (8..23 tokens each), fresh streams' first chunks (16, 4 and 1 of them;
``--first-chunk-graphs``: replayed from the decoder's CUDA graphs, ``model.codec.graphs``). Medians of host wall
time.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch


def _lm_loop(preset_name: str, duty: float, ready, stop, result) -> None:
    from bench.lm import Device, build_model
    from model.config import preset
    from model.sampling import SamplingConfig
    from service.engine.runner import Runner
    from service.engine.scheduler import DecodeItem, StepPlan

    dev = Device(torch.device("cuda"))
    model = build_model(preset(preset_name), dev, dtype=torch.bfloat16)
    runner = Runner(model, max_streams=72, max_context=8192, allowed_ids=list(range(1000)),
                    sampling=SamplingConfig(), dtype=torch.bfloat16, cuda_graphs=True, prefill_graphs=False)
    runner.graphs.capture_all(64)
    for i in range(64):
        runner.open_request(f"d{i}", seed=None)
    plan = StepPlan(decodes=tuple(DecodeItem(f"d{i}", i, 300, 5) for i in range(64)))
    for _ in range(5):
        runner.execute(plan)
    ready.set()
    steps, busy, t0 = 0, 0.0, time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        runner.execute(plan)  # ends in the step's host sync
        dt = time.perf_counter() - t
        busy += dt
        steps += 1
        if duty < 1:
            time.sleep(dt * (1 / duty - 1))
    wall = time.perf_counter() - t0
    result.put(dict(steps=steps, step_ms=busy / max(steps, 1) * 1e3, busy=busy / wall))


def _audio_rounds(dec, streams: int, reps: int) -> dict:
    """Median ms of: a steady round (16 tokens each, mixed phases), a ragged round (8..23 tokens, as the engine's
    second chunks and paused clients give), 16 fresh streams' first chunks together, one fresh stream's alone."""
    sync = torch.cuda.synchronize

    def timed(fn, n):
        ts = []
        for _ in range(n):
            sync()
            t = time.perf_counter()
            fn()  # ends in the device -> host copy
            ts.append(time.perf_counter() - t)
        return statistics.median(ts[2:]) * 1e3

    ss = [dec.open("random") for _ in range(streams)]
    dec.push_many(ss, [list(range(12))] * streams, [False] * streams)
    for i, s in enumerate(ss):  # the engine's second chunks: 8..31 tokens, so phases differ
        s.push(list(range(8 + i % 24)), flush=False)
    row = dict(steady_ms=timed(lambda: dec.push_many(ss, [list(range(16))] * streams, [False] * streams), 2 + reps))
    row["ragged_ms"] = timed(lambda: dec.push_many(ss, [list(range(8 + i % 16)) for i in range(streams)],
                                                   [False] * streams), 2 + reps)
    for k in (16, 4):
        row[f"first_chunks_{k}_ms"] = timed(lambda: dec.push_many([dec.open("random") for _ in range(k)],
                                                                  [list(range(12))] * k, [False] * k), 2 + reps)
    row["first_chunk_ms"] = timed(lambda: dec.open("random").push(list(range(12)), flush=False), 2 + reps)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamtra-1:3")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--duties", type=float, nargs="+", default=[0.0, 0.45, 1.0])
    ap.add_argument("--label", default="")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--channels-last", action="store_true", help="the vocoder's channels-last layout")
    ap.add_argument("--first-chunk-graphs", action="store_true", help="fresh streams' first chunks from CUDA graphs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from model.codec.codec import SpeechCodec
    from model.codec.config import CodecConfig
    from model.codec.stream import CodecSpeechDecoder
    from model.codec.vocoder import Vocoder

    torch.manual_seed(0)
    dec = CodecSpeechDecoder(SpeechCodec(CodecConfig()).to("cuda").eval(),
                             Vocoder.random(device="cuda", dtype=torch.bfloat16), channels_last=a.channels_last,
                             first_chunk_graphs=a.first_chunk_graphs)
    t = time.perf_counter()
    dec.warm_up(32, first_chunk=12, chunk=16)
    warm_s = time.perf_counter() - t
    _audio_rounds(dec, a.streams, 2)  # warm-up
    ctx = mp.get_context("spawn")
    rows = []
    for duty in a.duties:
        proc = None
        if duty > 0:
            ready, stop, result = ctx.Event(), ctx.Event(), ctx.Queue()
            proc = ctx.Process(target=_lm_loop, args=(a.preset, duty, ready, stop, result), daemon=True)
            proc.start()
            ready.wait(600)
        row = dict(label=a.label, streams=a.streams, lm_duty=duty, channels_last=a.channels_last,
                   first_chunk_graphs=a.first_chunk_graphs, warm_up_s=warm_s,
                   gpu_memory_peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                   **_audio_rounds(dec, a.streams, a.reps))
        if proc is not None:
            stop.set()
            row["lm"] = result.get(timeout=60)
            proc.join(30)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        with open(Path(a.out) / "profile_contention.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
