"""The torch side of the engine: executes a ``StepPlan`` on the model and the state pool, returns sampled tokens.

The runner owns the state pool and the per-request sampling state (generator, repetition guard); the model owns
neither. One step = slot resets, one batched prefill of this step's prompt chunks (right-padded; on GPU replayed from a
CUDA graph per sequences × tokens bucket when one holds them), one batched decode step of every running stream
(replayed from a CUDA graph per batch bucket on GPU), then sampling — all under
``torch.inference_mode``. The only host syncs are reading
the sampled token ids back, once per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from model.lm import SpeechLM
from model.sampling import SamplingConfig, sample
from model.cuda_graphs import GraphedDecoder, GraphedPrefill
from model.state import Batch, StatePool
from service.engine.scheduler import StepPlan, StepResult


@dataclass
class _SamplerState:
    generator: torch.Generator | None
    last_token: int = -1
    run_length: int = 0


class Runner:
    def __init__(self, model: SpeechLM, *, max_streams: int, max_context: int, allowed_ids: list[int],
                 sampling: SamplingConfig, dtype: torch.dtype = torch.float32,
                 ssm_dtype: torch.dtype = torch.float32, cuda_graphs: bool = True, prefill_graphs: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        # With CUDA graphs one extra slot is scratch space for the padding rows of a batch bucket.
        self.pool = StatePool(model.config, max_streams=max_streams + int(self.use_graphs), max_context=max_context,
                              dtype=dtype, ssm_dtype=ssm_dtype, device=self.device)
        self.graphs = GraphedDecoder(model, self.pool, scratch_slot=max_streams) if self.use_graphs else None
        self.prefill_graphs = (GraphedPrefill(model, self.pool, scratch_slot=max_streams)
                               if self.use_graphs and prefill_graphs else None)
        self.max_context = self.pool.max_context
        self.sampling = sampling
        # The ids sampling may pick, ascending: it samples over those columns only (see model.sampling.sample)
        self.allowed = torch.tensor(sorted(set(allowed_ids)), dtype=torch.long, device=self.device)
        if self.allowed.numel() == 0 or int(self.allowed[-1]) >= model.config.vocab_size or int(self.allowed[0]) < 0:
            raise ValueError("allowed ids must be non-empty and inside the vocabulary")
        self._samplers: dict[str, _SamplerState] = {}
        self.last_sync_s = 0.0  # the last step's wait for its sampled tokens (the engine's loop-phase metric)

    # --- per-request sampling state ------------------------------------------------------------------------------
    def open_request(self, request_id: str, *, seed: int | None) -> None:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
        self._samplers[request_id] = _SamplerState(gen)

    def close_request(self, request_id: str) -> None:
        self._samplers.pop(request_id, None)

    # --- the step ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        for slot in plan.resets:
            self.pool.reset(slot)
        rows: list[str] = []
        logits = []
        if plan.prefills:
            chunks = plan.prefills
            out = None
            if self.prefill_graphs is not None:  # None when no captured bucket holds this step's prompts
                out = self.prefill_graphs([c.token_ids for c in chunks], [c.slot for c in chunks],
                                          [c.start for c in chunks])
            if out is None:
                t = max(len(c.token_ids) for c in chunks)
                ids = torch.zeros(len(chunks), t, dtype=torch.long)
                for i, c in enumerate(chunks):
                    ids[i, : len(c.token_ids)] = torch.tensor(c.token_ids)
                batch = Batch.make([c.slot for c in chunks], [c.start for c in chunks],
                                   [len(c.token_ids) for c in chunks], max_context=self.max_context,
                                   device=self.device)
                out = self.model.prefill(ids.to(self.device), states=self.pool.layers, batch=batch)
            keep = [i for i, c in enumerate(chunks) if c.sample]
            if keep:
                logits.append(out[keep])
                rows += [chunks[i].request_id for i in keep]
        if plan.decodes:
            items = plan.decodes
            tokens = torch.tensor([d.token_id for d in items], dtype=torch.long).to(self.device, non_blocking=True)
            if self.graphs is not None and self.graphs.bucket_for(len(items)) is not None:
                slots = torch.tensor([d.slot for d in items], dtype=torch.long).to(self.device, non_blocking=True)
                pos = torch.tensor([d.position for d in items], dtype=torch.long).to(self.device, non_blocking=True)
                logits.append(self.graphs(tokens, slots, pos))
            else:
                batch = Batch.make([d.slot for d in items], [d.position for d in items], [1] * len(items),
                                   max_context=self.max_context, device=self.device)
                logits.append(self.model.decode_step(tokens, states=self.pool.layers, batch=batch))
            rows += [d.request_id for d in items]
        if not rows:
            return StepResult({})
        states = [self._samplers.setdefault(r, _SamplerState(None)) for r in rows]
        last = torch.tensor([s.last_token for s in states], device=self.device).clamp(min=0)
        runs = torch.tensor([s.run_length for s in states], device=self.device)
        picked = sample(torch.cat(logits), self.sampling, allowed=self.allowed, last_token=last, run_length=runs,
                        generators=[s.generator for s in states])
        t0 = time.perf_counter()
        sampled = picked.tolist()  # the step's one host sync
        self.last_sync_s = time.perf_counter() - t0
        for s, tok in zip(states, sampled):
            s.run_length = s.run_length + 1 if tok == s.last_token else 1
            s.last_token = tok
        return StepResult(dict(zip(rows, sampled)))
