"""The torch side of the engine: executes a ``StepPlan`` on the model and the state pool, returns sampled tokens.

The runner owns the state pool and the per-request sampling state (noise keys, repetition guard); the model owns
neither. One step = slot resets, one batched prefill of this step's prompt chunks (right-padded; on GPU replayed from a
CUDA graph per sequences × tokens bucket when one holds them), one batched decode step of every running stream, then
sampling — all under ``torch.inference_mode``. On GPU the decode step and its sampling are one CUDA graph per batch
bucket: the repetition guard's state lives on the device by slot, and each row's noise is a hash of a key the host
draws (``model.sampling.counter_uniform``). A step's inputs reach the device in one pinned copy that never waits for
the GPU; the only host sync is reading the sampled token ids back, once per step.

``overlap_prefill`` (CUDA graphs): a step that both prefills and decodes replays the prefill's captured graph on a
second CUDA stream beside the decode's graph instead of before it. Each is a chain of small kernels that leaves most
of the GPU idle, and the two touch disjoint state (a request that prefills does not decode in the same step; the
padding rows of both write the scratch slot, which nothing reads), so such a step takes about the longer of the two
rather than their sum. The prefill's logits are sampled after the two streams join. Only a bucket captured already
runs beside the decode (the server captures every bucket at start-up): a capture is never made while the decode
runs.

``launch`` queues a step and returns at once; its ``result()`` waits for the sampled ids (``execute`` = both). No
call in ``launch`` waits for the GPU, so the engine can queue step N+1 before it reads step N's tokens: a decode
item without a token (``DecodeItem.token_id`` None) is fed the token its slot sampled last, read on the device from
the repetition guard's state, and such a row whose slot's last token is ``stop_id`` (the sentence ended in the step
before, which the scheduler did not know yet when it planned this one) runs on the scratch slot instead, leaving its
request's state as it was. Noise keys come from each sample's ``draw`` index in its request (a hash with the
request's key), so a seeded request samples the same tokens whatever steps it shares and whether they overlap.
"""

from __future__ import annotations

import os
import random
import time

import torch

from model.lm import SpeechLM
from model.sampling import SamplingConfig, sample
from model.cuda_graphs import PREFILL_SEQ_BUCKETS, GraphedDecoder, GraphedPrefill, prefill_seq_buckets
from model.state import Batch, StatePool
from service.engine.scheduler import StepPlan, StepResult

_M32 = 0xFFFFFFFF


class _Sampler:
    """Sampling by slot on the device: the repetition guard's state (each slot's previous token, -1 for none yet,
    and its run) and the draw that reads and advances it, with no host sync (inside the decode graph on GPU).

    An object of its own rather than a method of the runner: the decode graphs hold the sampler, and a sampler that
    referred back to the runner would make a cycle, leaving a dropped runner's CUDA graphs and state pool to Python's
    cyclic collector — which can run in the middle of another graph's capture and invalidate it."""

    def __init__(self, slots: int, sampling: SamplingConfig, allowed: torch.Tensor) -> None:
        self.sampling = sampling
        self.allowed = allowed
        self.last = torch.full((slots,), -1, dtype=torch.long, device=allowed.device)
        self.run = torch.zeros(slots, dtype=torch.long, device=allowed.device)

    def reset(self, slot: int) -> None:
        self.last[slot] = -1
        self.run[slot] = 0

    def __call__(self, logits: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """One token per row; advances the rows' guard (by slot)."""
        last = self.last.index_select(0, slots)
        run = self.run.index_select(0, slots)
        tok = sample(logits, self.sampling, allowed=self.allowed, last_token=last.clamp(min=0), run_length=run,
                     keys=keys)
        self.run.index_copy_(0, slots, torch.where(tok == last, run + 1, torch.ones_like(run)))
        self.last.index_copy_(0, slots, tok)
        return tok


class Runner:
    def __init__(self, model: SpeechLM, *, max_streams: int, max_context: int, allowed_ids: list[int],
                 sampling: SamplingConfig, dtype: torch.dtype = torch.float32,
                 ssm_dtype: torch.dtype = torch.float32, cuda_graphs: bool = True, prefill_graphs: bool = True,
                 overlap_prefill: bool = False, prefill_seqs: int = 8, stop_id: int | None = None) -> None:
        """``prefill_seqs``: the most prompts a step prefills (the scheduler's ``max_prefill_seqs``); the prefill
        graphs hold 1, 2, 4 … and that many (0, no cap: 1, 2, 4, 8; a step of more prompts runs eagerly).
        ``stop_id``: the token that ends a sentence (a decode fed it is void; None: every decode runs)."""
        self.model = model
        self.device = next(model.parameters()).device
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.stop_id = stop_id
        # One extra slot is scratch space: for the padding rows of a graph's batch bucket and void decodes.
        self.scratch_slot = max_streams
        self.pool = StatePool(model.config, max_streams=max_streams + 1, max_context=max_context,
                              dtype=dtype, ssm_dtype=ssm_dtype, device=self.device)
        self.max_context = self.pool.max_context
        self.sampling = sampling
        # The ids sampling may pick, ascending: it samples over those columns only (see model.sampling.sample)
        self.allowed = torch.tensor(sorted(set(allowed_ids)), dtype=torch.long, device=self.device)
        if self.allowed.numel() == 0 or int(self.allowed[-1]) >= model.config.vocab_size or int(self.allowed[0]) < 0:
            raise ValueError("allowed ids must be non-empty and inside the vocabulary")
        self._sampler = _Sampler(self.pool.max_streams, sampling, self.allowed)
        self._fresh: set[str] = set()  # opened requests not yet prefilled: their slot's guard starts empty
        self.graphs = (GraphedDecoder(model, self.pool, scratch_slot=max_streams, sampler=self._sampler)
                       if self.use_graphs else None)
        self.prefill_graphs = (GraphedPrefill(model, self.pool, scratch_slot=max_streams,
                                              seq_buckets=prefill_seq_buckets(prefill_seqs) if prefill_seqs
                                              else PREFILL_SEQ_BUCKETS)
                               if self.use_graphs and prefill_graphs else None)
        # the second stream of a prefill beside the decode (the module docstring)
        self._side = torch.cuda.Stream(self.device) if self.prefill_graphs is not None and overlap_prefill else None
        self._keys: dict[str, list[int]] = {}  # per request: [its key, draws counted here (items without one)]
        self._rng = random.Random(os.urandom(16))  # the keys of unseeded requests
        self.last_sync_s = 0.0  # the last step's wait for its sampled tokens (the engine's loop-phase metric)
        # how the last step's prefill ran: "beside" (a captured graph on the side stream, beside the decode), "graph"
        # (a graph, before the decode), "eager" (no bucket holds its prompts); None: no prefill
        self.last_prefill_path: str | None = None

    # --- per-request sampling state ------------------------------------------------------------------------------
    def open_request(self, request_id: str, *, seed: int | None) -> None:
        key = random.Random(seed).getrandbits(32) if seed is not None else self._rng.getrandbits(32)
        self._keys[request_id] = [key, 0]
        self._fresh.add(request_id)

    def close_request(self, request_id: str) -> None:
        self._keys.pop(request_id, None)
        self._fresh.discard(request_id)

    def _key(self, request_id: str, draw: int | None) -> int:
        """The noise key of a request's sample number ``draw`` (None: the next after those counted here): a hash of
        the request's key (from its seed) and the index, the same whatever shares the step."""
        entry = self._keys.get(request_id)
        if entry is None:  # not opened (a void item of a request closed since): any key
            return self._rng.getrandbits(32)
        if draw is None:
            draw = entry[1]
            entry[1] += 1
        h = (entry[0] ^ (draw * 0x9E3779B9)) & _M32
        h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _M32
        return ((h ^ (h >> 13)) * 0xC2B2AE35) & _M32

    def _upload(self, rows: list[list[int]]) -> torch.Tensor:
        """Small int64 host rows -> one device tensor, without waiting for the GPU (a pinned, non-blocking copy;
        the pinned block is not reused before the copy ran)."""
        t = torch.tensor(rows, dtype=torch.long)
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _sample_rows(self, logits: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor,
                     index: torch.Tensor | None) -> torch.Tensor:
        """Sampled ids of ``logits``' rows ``index`` (all: None), taken by a device index (indexing by a host list
        would wait for the GPU)."""
        return self._sampler(logits if index is None else logits.index_select(0, index), slots, keys)

    # --- the step ------------------------------------------------------------------------------------------------
    def execute(self, plan: StepPlan) -> StepResult:
        """Run a step and wait for its sampled tokens."""
        return self.launch(plan).result()

    @torch.inference_mode()
    def launch(self, plan: StepPlan) -> "PendingStep":
        """Queue a step on the device without waiting for it (and for the steps queued before it)."""
        for slot in plan.resets:
            self.pool.reset(slot)
        rows: list[str] = []
        picked: list[torch.Tensor] = []
        side = None  # the stream the prefill runs on beside the decode, if it does
        deferred = None  # beside the decode: the prefill's sampling, run after the join
        self.last_prefill_path = None
        if plan.prefills:
            chunks = plan.prefills
            for c in chunks:
                if c.request_id in self._fresh:  # a request's first prefill: its guard starts empty (not so at a
                    self._fresh.discard(c.request_id)  # context restart, which re-prefills the same request)
                    self._sampler.reset(c.slot)
            out = None
            if self.prefill_graphs is not None:  # None when no captured bucket holds this step's prompts
                args = [c.token_ids for c in chunks], [c.slot for c in chunks], [c.start for c in chunks]
                if self._side is not None and plan.decodes and self.prefill_graphs.captured(args[0], args[2]):
                    side = self._side
                    side.wait_stream(torch.cuda.current_stream(self.device))  # after the resets above
                    with torch.cuda.stream(side):
                        out = self.prefill_graphs(*args)
                else:
                    out = self.prefill_graphs(*args)
            self.last_prefill_path = "eager" if out is None else ("beside" if side is not None else "graph")
            if out is None:
                t = max(len(c.token_ids) for c in chunks)
                ids = [list(c.token_ids) + [0] * (t - len(c.token_ids)) for c in chunks]
                batch = Batch.make([c.slot for c in chunks], [c.start for c in chunks],
                                   [len(c.token_ids) for c in chunks], max_context=self.max_context,
                                   device=self.device)
                out = self.model.prefill(self._upload(ids), states=self.pool.layers, batch=batch)
            keep = [i for i, c in enumerate(chunks) if c.sample]
            if keep:
                slots, keys, index = self._upload([[chunks[i].slot for i in keep],
                                                   [self._key(chunks[i].request_id, chunks[i].draw) for i in keep],
                                                   keep])
                sampling = (out, slots, keys, None if len(keep) == len(chunks) else index)
                if side is None:
                    picked.append(self._sample_rows(*sampling))
                else:
                    deferred = sampling
                rows += [chunks[i].request_id for i in keep]
        if plan.decodes:
            picked.append(self._decode(plan.decodes))
            rows += [d.request_id for d in plan.decodes]
        if side is not None:  # the join: the prefill's logits are complete on the current stream from here
            torch.cuda.current_stream(self.device).wait_stream(side)
        if deferred is not None:
            picked.insert(0, self._sample_rows(*deferred))  # the prefill's rows come first
        if not rows:
            return PendingStep(self, [], None)
        out = picked[0] if len(picked) == 1 else torch.cat(picked)
        return PendingStep(self, rows, out)

    def _decode(self, items) -> torch.Tensor:
        """One decode step of ``items`` and its sampling -> the sampled ids (device)."""
        given = [-1 if d.token_id is None else d.token_id for d in items]
        tokens, slots, pos, keys = self._upload([given, [d.slot for d in items], [d.position for d in items],
                                                 [self._key(d.request_id, d.draw) for d in items]])
        explicit = all(t >= 0 for t in given)
        if not explicit:  # the slot's last sampled token; void rows (it ended the sentence) on the scratch slot
            last = self._sampler.last.index_select(0, slots)
            fed = tokens < 0
            tokens = torch.where(fed, last, tokens)
            if self.stop_id is not None:
                slots = torch.where(fed & (last == self.stop_id), self.scratch_slot, slots)
        if self.graphs is not None and self.graphs.bucket_for(len(items)) is not None:
            return self.graphs(tokens, slots, pos, keys)  # decode and sampling: one graph
        if explicit:
            batch = Batch.make([d.slot for d in items], [d.position for d in items], [1] * len(items),
                               max_context=self.max_context, device=self.device)
        else:  # device slots (void rows may share the scratch slot): unchecked, as in a graph
            batch = Batch.of(slots, pos, torch.ones_like(pos), 1, kv_len=max(d.position for d in items) + 1)
        logits = self.model.decode_step(tokens, states=self.pool.layers, batch=batch)
        return self._sampler(logits, slots, keys)


class PendingStep:
    """A launched step: ``result()`` waits for its sampled ids (the step's one host sync) and maps them to rows."""

    def __init__(self, runner: Runner, rows: list[str], sampled: torch.Tensor | None) -> None:
        self._runner = runner
        self._rows = rows
        self._event = None
        if sampled is not None and sampled.device.type == "cuda":
            # copied out now, in stream order: a later step's replay of the same graph overwrites its output buffer
            host = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            host.copy_(sampled, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            sampled = host
        self._sampled = sampled

    def result(self) -> StepResult:
        if self._sampled is None:  # nothing sampled (a step of prompt chunks that sample nothing): no wait
            self._runner.last_sync_s = 0.0
            return StepResult({})
        t0 = time.perf_counter()
        if self._event is not None:
            self._event.synchronize()
        sampled = self._sampled.tolist()
        self._runner.last_sync_s = time.perf_counter() - t0
        return StepResult(dict(zip(self._rows, sampled)))
