"""CUDA-graph capture of ``SpeechLM.decode_step`` for batch-size buckets, and of ``SpeechLM.prefill`` for
(sequences, tokens) buckets.

A decode step at serving batch sizes is hundreds of small kernels; replaying a captured graph removes their launch
gaps. Shapes must be static, so each bucket (1, 2, 4, … 256) gets its own graph over static input buffers; a step of
``b`` streams runs the smallest bucket >= b with the extra rows pointed at a scratch slot (position 0), whose state
nobody reads. The attention window is the pool's whole ``max_context`` (static), but the fused decode kernel reads
only each row's own length, so a long window costs nothing at short positions.

A prefill is the same model run on a few right-padded prompts: eager, it is ~1,700 kernel launches from Python
(~42 ms of CPU for one to eight 40-token prompts of the paper-scale hybrid on an H100, ~9 ms of GPU work), and every
step that prefills a request stalls every running stream's decode by that much. ``GraphedPrefill`` replays it:
buckets of sequences × tokens, padding rows on the scratch slot, padding columns masked as in the eager path (dt = 0
for the SSM, causal mask for attention), the attention window the pool's whole ``max_context`` so that any start
position fits one graph (on CUDA the fused prefill attention reads each row's keys up to its own position only, so
the window costs nothing there either), and KV writes of every column (``Batch.dense_writes``: no host sync).

The graphs and their buffers belong to these objects (owned by the runner or a benchmark), never to the model.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from model.lm import SpeechLM
from model.state import Batch, StatePool

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@contextlib.contextmanager
def capturing(collect: bool = True) -> Iterator[None]:
    """Around a capture: collect garbage first (``collect``; a few tens of ms with a server's heap, so a run of
    captures collects once) and keep Python's cyclic collector off until the capture ends. A collection during
    capture that frees CUDA objects (another graph and its memory pool, pinned host memory, whose release records an
    event on the legacy default stream) invalidates the capture in CUDA's global capture mode."""
    if collect:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Graphs:
    """Graphs of one model over one state pool, padding rows on a scratch slot, in a memory pool of their own."""

    def __init__(self, model: SpeechLM, pool: StatePool, scratch_slot: int) -> None:
        if not 0 <= scratch_slot < pool.max_streams:
            raise ValueError("scratch_slot must be a slot of the pool that no request uses")
        self.model = model
        self.pool = pool
        self.scratch_slot = scratch_slot
        self._mempool = torch.cuda.graph_pool_handle()
        # A capture stream of its own: PyTorch keys cuBLAS workspaces by (handle, stream), and a captured GEMM keeps
        # the workspace address it was captured with. Graphs captured on torch.cuda.graph's shared default stream
        # may all hold one workspace, and a prefill graph replayed beside a decode graph (Runner(overlap_prefill))
        # could then race the decode's GEMMs on it (a precaution: the GPU test that replays the two side by side
        # has not failed without it). Graphs of one object never replay concurrently.
        self._capture_stream = torch.cuda.Stream()

    def _record(self, run: Callable[[], Tensor], collect: bool) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """``run`` twice on a side stream (Triton compiles and autotunes there, outside the capture), then captured
        into a graph in this object's memory pool (inside ``capturing``): the graph and ``run``'s static output."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with capturing(collect), torch.cuda.graph(graph, pool=self._mempool, stream=self._capture_stream):
            out = run()
        return graph, out


class GraphedDecoder(_Graphs):
    """Decode steps replayed per batch bucket. With a ``sampler`` (``(logits, slots, keys) -> token ids``, no host
    sync, static shapes) the graph also samples, and a call returns the token ids instead of the logits: the
    sampler's ~30 small kernels then cost no launches either."""

    def __init__(self, model: SpeechLM, pool: StatePool, *, scratch_slot: int,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS,
                 sampler: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(model, pool, scratch_slot)
        self.buckets = tuple(sorted(buckets))
        self.sampler = sampler
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def bucket_for(self, b: int) -> int | None:
        return next((k for k in self.buckets if k >= b), None)

    @torch.inference_mode()
    def capture(self, bucket: int, *, collect: bool = True) -> None:
        dev = next(self.model.parameters()).device
        # static inputs, one row each: tokens, slots, positions, noise keys
        inputs = torch.zeros(4, bucket, dtype=torch.long, device=dev)
        inputs[1] = self.scratch_slot
        tokens, slots, positions, keys = inputs
        batch = Batch(slots=slots, positions=positions[:, None],
                      valid=torch.ones(bucket, 1, dtype=torch.bool, device=dev),
                      lengths=torch.ones(bucket, dtype=torch.long, device=dev), kv_len=self.pool.max_context)

        def run() -> Tensor:
            logits = self.model.decode_step(tokens, states=self.pool.layers, batch=batch)
            return logits if self.sampler is None else self.sampler(logits, slots, keys)

        graph, out = self._record(run, collect)
        self._graphs[bucket] = (graph, inputs, out)

    def capture_all(self, max_batch: int) -> None:
        gc.collect()
        for bucket in self.buckets:
            if bucket <= max(max_batch, 1) or bucket == self.bucket_for(max_batch):
                self.capture(bucket, collect=False)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, slots: Tensor, positions: Tensor, keys: Tensor | None = None) -> Tensor:
        """tokens, slots, positions (b,) on the device (and the rows' noise keys, with a sampler) -> logits (b,
        vocab), or with a sampler the sampled token ids (b,): a view into the graph's output."""
        b = tokens.shape[0]
        bucket = self.bucket_for(b)
        if bucket is None:
            raise ValueError(f"batch {b} exceeds the largest captured bucket {self.buckets[-1]}")
        if bucket not in self._graphs:
            self.capture(bucket)
        graph, inputs, out = self._graphs[bucket]
        inputs[0, :b].copy_(tokens)
        inputs[1, :b].copy_(slots)
        inputs[2, :b].copy_(positions)
        if keys is not None:
            inputs[3, :b].copy_(keys)
        if b < bucket:
            inputs[:, b:].zero_()
            inputs[1, b:].fill_(self.scratch_slot)
        graph.replay()
        return out[:b]


PREFILL_SEQ_BUCKETS = (1, 2, 4, 8)
PREFILL_LEN_BUCKETS = (32, 64, 128, 256)


def prefill_seq_buckets(most: int) -> tuple[int, ...]:
    """Prefill graphs' prompt-count buckets for steps of at most ``most`` prompts: powers of two below it, and it."""
    if most < 1:
        raise ValueError("a step prefills at least one prompt")
    return tuple(b for b in (1 << k for k in range(most.bit_length())) if b < most) + (most,)


class GraphedPrefill(_Graphs):
    def __init__(self, model: SpeechLM, pool: StatePool, *, scratch_slot: int,
                 seq_buckets: tuple[int, ...] = PREFILL_SEQ_BUCKETS,
                 len_buckets: tuple[int, ...] = PREFILL_LEN_BUCKETS) -> None:
        super().__init__(model, pool, scratch_slot)  # its own memory pool: decode and prefill outputs share a step
        self.seq_buckets = tuple(sorted(seq_buckets))
        self.len_buckets = tuple(k for k in sorted(len_buckets) if k <= pool.max_context)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def bucket_for(self, seqs: int, tokens: int, max_start: int) -> tuple[int, int] | None:
        b = next((k for k in self.seq_buckets if k >= seqs), None)
        t = next((k for k in self.len_buckets if k >= tokens), None)
        if b is None or t is None or max_start + t > self.pool.max_context:
            return None
        return b, t

    @torch.inference_mode()
    def capture(self, b: int, t: int, *, collect: bool = True) -> None:
        dev = next(self.model.parameters()).device
        # one static host->device buffer per graph: per row [slot, start, length, ids...]
        packed = torch.zeros(b, 3 + t, dtype=torch.long, device=dev)
        packed[:, 0] = self.scratch_slot
        packed[:, 2] = 1

        def run() -> Tensor:
            batch = Batch.of(packed[:, 0], packed[:, 1], packed[:, 2], t, kv_len=self.pool.max_context,
                             dense_writes=True)
            return self.model.prefill(packed[:, 3:], states=self.pool.layers, batch=batch)

        graph, logits = self._record(run, collect)
        self._graphs[(b, t)] = (graph, packed, logits)

    def capture_all(self) -> None:
        gc.collect()
        for b in self.seq_buckets:
            for t in self.len_buckets:
                self.capture(b, t, collect=False)

    def _key(self, token_ids: list[tuple[int, ...]], starts: list[int]) -> tuple[int, int] | None:
        return self.bucket_for(len(token_ids), max(len(ids) for ids in token_ids), max(starts))

    def captured(self, token_ids: list[tuple[int, ...]], starts: list[int]) -> bool:
        """Whether a call with these prompts would replay a graph captured already (no capture, no eager run)."""
        return self._key(token_ids, starts) in self._graphs

    @torch.inference_mode()
    def __call__(self, token_ids: list[tuple[int, ...]], slots: list[int], starts: list[int]) -> Tensor | None:
        """Prompts (each at least one token) of distinct slots, each continuing its slot's context at ``start``
        -> logits (n, vocab) at each prompt's last token (a view into the graph's output), or None when no bucket
        holds them (more sequences or tokens than the largest bucket, or a window past ``max_context``): the caller
        runs the eager prefill instead."""
        n = len(token_ids)
        key = self._key(token_ids, starts)
        if key is None:
            return None
        if key not in self._graphs:
            self.capture(*key)
        graph, packed, logits = self._graphs[key]
        b, t = key
        host = torch.zeros(b, 3 + t, dtype=torch.long)
        host[:, 0] = self.scratch_slot
        host[:, 2] = 1
        for i, (ids, slot, start) in enumerate(zip(token_ids, slots, starts)):
            host[i, 0], host[i, 1], host[i, 2] = slot, start, len(ids)
            host[i, 3:3 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        # pinned and non-blocking: a pageable copy would wait for the GPU to finish what is queued before it (the
        # engine queues a step before it reads the last one's tokens)
        packed.copy_(host.pin_memory() if packed.is_cuda else host, non_blocking=True)
        graph.replay()
        return logits[:n]
