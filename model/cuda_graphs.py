"""CUDA-graph capture of ``SpeechLM.decode_step`` for batch-size buckets.

A decode step at serving batch sizes is hundreds of small kernels; replaying a captured graph removes their launch
gaps. Shapes must be static, so each bucket (1, 2, 4, … 256) gets its own graph over static input buffers; a step of
``b`` streams runs the smallest bucket >= b with the extra rows pointed at a scratch slot (position 0), whose state
nobody reads. The attention window is the pool's whole ``max_context`` (static), but the fused decode kernel reads
only each row's own length, so a long window costs nothing at short positions.

The graphs and their buffers belong to this object (owned by the runner or a benchmark), never to the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.lm import SpeechLM
from model.state import Batch, StatePool

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GraphedDecoder:
    def __init__(self, model: SpeechLM, pool: StatePool, *, scratch_slot: int,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> None:
        if not 0 <= scratch_slot < pool.max_streams:
            raise ValueError("scratch_slot must be a slot of the pool that no request uses")
        self.model = model
        self.pool = pool
        self.scratch_slot = scratch_slot
        self.buckets = tuple(sorted(buckets))
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]] = {}
        self._mempool = torch.cuda.graph_pool_handle()

    def bucket_for(self, b: int) -> int | None:
        return next((k for k in self.buckets if k >= b), None)

    @torch.inference_mode()
    def capture(self, bucket: int) -> None:
        dev = next(self.model.parameters()).device
        tokens = torch.zeros(bucket, dtype=torch.long, device=dev)
        slots = torch.full((bucket,), self.scratch_slot, dtype=torch.long, device=dev)
        positions = torch.zeros(bucket, 1, dtype=torch.long, device=dev)
        batch = Batch(slots=slots, positions=positions, valid=torch.ones(bucket, 1, dtype=torch.bool, device=dev),
                      lengths=torch.ones(bucket, dtype=torch.long, device=dev), kv_len=self.pool.max_context)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture: Triton compiles and autotunes here
            for _ in range(2):
                self.model.decode_step(tokens, states=self.pool.layers, batch=batch)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            logits = self.model.decode_step(tokens, states=self.pool.layers, batch=batch)
        self._graphs[bucket] = (graph, tokens, slots, positions, logits)

    def capture_all(self, max_batch: int) -> None:
        for bucket in self.buckets:
            if bucket <= max(max_batch, 1) or bucket == self.bucket_for(max_batch):
                self.capture(bucket)

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, slots: Tensor, positions: Tensor) -> Tensor:
        """tokens, slots, positions (b,) on the device -> logits (b, vocab) (a view into the graph's output)."""
        b = tokens.shape[0]
        bucket = self.bucket_for(b)
        if bucket is None:
            raise ValueError(f"batch {b} exceeds the largest captured bucket {self.buckets[-1]}")
        if bucket not in self._graphs:
            self.capture(bucket)
        graph, t_buf, s_buf, p_buf, logits = self._graphs[bucket]
        t_buf[:b].copy_(tokens)
        s_buf[:b].copy_(slots)
        p_buf[:b, 0].copy_(positions)
        if b < bucket:
            t_buf[b:].zero_()
            s_buf[b:].fill_(self.scratch_slot)
            p_buf[b:].zero_()
        graph.replay()
        return logits[:b]
