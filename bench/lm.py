"""Speech-LM benchmarks: memory vs context and concurrency, decode step time, long-form growth.

Speed and memory do not depend on trained weights, so every model here has random weights of the right shapes.
Each function returns a list of JSON-able rows; ``bench.cli`` saves them (and plots) under ``--out``.

- ``memory``: for every preset, SSM-state dtype, context and concurrency: the state bytes per stream (from the
  pool), and the measured peak device memory of a pool of that size running one decode step at full context.
  Also the crossover length below which a hybrid holds more state than the transformer, and the most streams at a
  given context that fit in a memory budget, verified by allocating them and running a step.
- ``decode``: decode step time vs batch and context, CUDA graphs vs eager.
- ``longform``: step time at token 100 vs token 8,000 at one batch size, per preset.

On CPU (``--quick``) the small presets run with short contexts: a smoke test of the code paths, not a measurement.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from model.config import ModelConfig, preset, replace
from model.lm import SpeechLM
from model.plan import memory_plan
from model.state import Batch, StatePool

PAPER_PRESETS = ("transformer", "mamtra-1:1", "mamtra-1:3", "mamtra-1:5", "mamtra-1:11", "mamba")
QUICK_PRESETS = ("small-transformer", "small-1:1", "small-1:3", "small-mamba")


@dataclass(frozen=True)
class Device:
    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else 0

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.cuda else 0


def build_model(config: ModelConfig, dev: Device, *, dtype: torch.dtype) -> SpeechLM:
    with torch.device(dev.device):  # initialise on the device: fast, and no host copy of 0.6 B parameters
        model = SpeechLM(config, backend="auto")
    return model.cast_(dtype).eval()


def _time(fn: Callable[[], object], dev: Device, *, warmup: int = 3, reps: int = 20) -> float:
    """Median seconds of fn(), timed with CUDA events on GPU (host clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if dev.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _decode_inputs(config: ModelConfig, batch: int, position: int, dev: Device):
    tokens = torch.randint(0, config.vocab_size, (batch,), device=dev.device)
    slots = torch.arange(batch, device=dev.device)
    positions = torch.full((batch,), position, device=dev.device)
    return tokens, slots, positions


def _eager_step(model: SpeechLM, pool: StatePool, tokens, slots, positions):
    b = Batch(slots=slots, positions=positions[:, None], valid=torch.ones_like(positions[:, None], dtype=torch.bool),
              lengths=torch.ones_like(positions), kv_len=int(positions.max()) + 1)
    return model.decode_step(tokens, states=pool.layers, batch=b)


@torch.inference_mode()
def memory(*, presets=PAPER_PRESETS, contexts=(256, 512, 1024, 2048, 4096, 8192), streams=(1, 8, 64, 256),
           ssm_dtypes=(torch.float32, torch.bfloat16), dtype=torch.bfloat16, device="cuda",
           fit_budget_bytes: int | None = 70 * 10**9, fit_context: int = 4096) -> dict:
    dev = Device(torch.device(device))
    rows, fits = [], []
    for name in presets:
        config = replace(preset(name), max_context=max(max(contexts), fit_context))
        dev.reset_peak()
        model = build_model(config, dev, dtype=dtype)
        weight_bytes = dev.allocated()
        grid = [(s, c, n) for s in ssm_dtypes for c in contexts for n in streams]
        for ssm_dtype, context, n in tqdm(grid, desc=f"memory {name}", leave=False):
            dev.reset_peak()
            pool = StatePool(config, max_streams=n, max_context=context, dtype=dtype, ssm_dtype=ssm_dtype,
                             device=dev.device)
            _eager_step(model, pool, *_decode_inputs(config, n, context - 1, dev))
            dev.sync()
            plan = memory_plan(config, context=context, streams=n, dtype=dtype, ssm_dtype=ssm_dtype)
            rows.append(dict(preset=name, layout=config.layout, ssm_dtype=str(ssm_dtype).replace("torch.", ""),
                             context=context, streams=n, weight_bytes=weight_bytes,
                             state_bytes_per_stream=pool.bytes_per_stream,
                             state_bytes=pool.allocated_bytes()["total"], plan_state_bytes=plan["total_state_bytes"],
                             peak_bytes=dev.peak()))
            del pool
        if fit_budget_bytes and dev.cuda:
            fits.append(_max_streams(model, config, dev, dtype=dtype, context=fit_context, budget=fit_budget_bytes,
                                     name=name))
        del model
    return {"rows": rows, "crossover": crossover(dtype=dtype), "fit": fits}


def _max_streams(model, config, dev, *, dtype, context, budget, name) -> dict:
    """The most streams of ``context`` tokens whose peak memory (weights + state + one decode step) stays under
    ``budget``: estimated from the per-stream state and a measured overhead, then verified by allocating it."""
    per_stream = memory_plan(config, context=context, streams=1, dtype=dtype)["state_bytes_per_stream"]
    dev.reset_peak()
    probe = StatePool(config, max_streams=64, max_context=context, dtype=dtype, device=dev.device)
    _eager_step(model, probe, *_decode_inputs(config, 64, context - 1, dev))
    dev.sync()
    overhead_per_stream = (dev.peak() - dev.allocated()) / 64  # activations and logits of the step
    base = dev.allocated() - probe.allocated_bytes()["total"]
    del probe
    n = int((budget - base) / (per_stream + overhead_per_stream))
    while n > 0:
        dev.reset_peak()
        try:
            pool = StatePool(config, max_streams=n, max_context=context, dtype=dtype, device=dev.device)
            _eager_step(model, pool, *_decode_inputs(config, n, context - 1, dev))
            dev.sync()
            peak = dev.peak()
            del pool
            if peak <= budget:
                return dict(preset=name, context=context, budget_bytes=budget, streams=n, peak_bytes=peak)
        except torch.OutOfMemoryError:
            pass
        n = int(n * 0.97)
    return dict(preset=name, context=context, budget_bytes=budget, streams=0, peak_bytes=None)


def crossover(*, dtype=torch.bfloat16) -> list[dict]:
    """Context length below which one Mamba layer's state outweighs one attention layer's KV cache (paper dims)."""
    cfg = preset("transformer")
    kv_per_token = memory_plan(cfg, context=1, streams=1, dtype=dtype)["kv_bytes_per_stream"] / cfg.n_layers
    out = []
    for ssm in (torch.float32, torch.bfloat16):
        m = memory_plan(preset("mamba"), context=1, streams=1, dtype=dtype, ssm_dtype=ssm)
        per_layer = m["mamba_state_bytes_per_stream"] / cfg.n_layers
        out.append(dict(ssm_dtype=str(ssm).replace("torch.", ""), mamba_layer_bytes=per_layer,
                        kv_bytes_per_token_per_layer=kv_per_token, crossover_tokens=per_layer / kv_per_token))
    return out


@torch.inference_mode()
def decode(*, presets=PAPER_PRESETS, batches=(1, 8, 32, 64, 128, 256), positions=(512, 2048, 8000),
           dtype=torch.bfloat16, device="cuda", graphs=(False, True), reps: int = 20) -> list[dict]:
    dev = Device(torch.device(device))
    rows = []
    for name in presets:
        rows += _decode_preset(name, dev, batches=batches, positions=positions, dtype=dtype, graphs=graphs,
                               reps=reps)
        if dev.cuda:  # the preset's model, pool and graphs went out of scope with the call
            torch.cuda.empty_cache()
    return rows


def _decode_preset(name: str, dev: Device, *, batches, positions, dtype, graphs, reps) -> list[dict]:
    from model.cuda_graphs import GraphedDecoder

    config = replace(preset(name), max_context=max(max(positions) + 1, 256))
    model = build_model(config, dev, dtype=dtype)
    pool = StatePool(config, max_streams=max(batches) + 1, max_context=config.max_context, dtype=dtype,
                     device=dev.device)
    decoder = GraphedDecoder(model, pool, scratch_slot=max(batches), buckets=tuple(batches)) \
        if dev.cuda and True in graphs else None
    rows = []
    for b, pos in tqdm([(b, p) for b in batches for p in positions], desc=f"decode {name}", leave=False):
        tokens, slots, positions_t = _decode_inputs(config, b, pos, dev)
        for use_graph in graphs:
            if use_graph and decoder is None:
                continue
            fn = (lambda: decoder(tokens, slots, positions_t)) if use_graph else \
                (lambda: _eager_step(model, pool, tokens, slots, positions_t))
            rows.append(dict(preset=name, batch=b, position=pos, cuda_graph=use_graph,
                             step_seconds=_time(fn, dev, reps=reps)))
    return rows


def longform(*, presets=PAPER_PRESETS, batch: int = 64, positions=(100, 8000), dtype=torch.bfloat16,
             device="cuda") -> dict:
    rows = decode(presets=presets, batches=(batch,), positions=positions, dtype=dtype, device=device,
                  graphs=(Device(torch.device(device)).cuda,))
    return {"rows": rows, "growth": growth(rows, positions=positions)}


def growth(rows: list[dict], *, positions=(100, 8000)) -> list[dict]:
    """Per preset and batch: step time at the long position minus at the short one, and its ratio to the
    transformer's growth (measured in the same run)."""
    lo, hi = positions
    by = {(r["preset"], r["batch"], r["cuda_graph"], r["position"]): r["step_seconds"] for r in rows}
    out = []
    for (name, b, g, pos), t in by.items():
        if pos != lo or (name, b, g, hi) not in by:
            continue
        out.append(dict(preset=name, batch=b, cuda_graph=g, short_seconds=t, long_seconds=by[(name, b, g, hi)],
                        growth_seconds=by[(name, b, g, hi)] - t))
    for r in out:
        base = next((x for x in out if x["preset"] in ("transformer", "small-transformer")
                     and x["batch"] == r["batch"] and x["cuda_graph"] == r["cuda_graph"]), None)
        r["growth_vs_transformer"] = (r["growth_seconds"] / base["growth_seconds"]
                                      if base and base["growth_seconds"] > 0 else None)
    return out
