"""CUDA graphs of fresh streams' first chunks (``CodecSpeechDecoder(first_chunk_graphs=True)``).

A request's time to first audio ends with the decode of its first chunk: ~950 small ops launched from Python
(codec decoder, frame interpolation, HiFi-GAN V1, resampler) for a few streams at once, so on a GPU the launches,
not the arithmetic, are its cost (a fresh chunk of one stream: ~20 ms alone on an H100, 40–55 ms in a loaded server;
replayed from a graph ~4 ms, docs/BENCHMARKS.md §4 S). What a
fresh stream computes is fixed by its chunk's length, its speed and the batch's row count: every stage starts from
the same state, and the only inputs that differ between requests are the tokens and the voice. So the whole pass
of a batch of fresh streams (``CodecSpeechDecoder._push_eager``) is captured once per row bucket and replayed: the
tokens and voices are copied into the graph's input buffer, the graph runs, and each stream gets a copy of its row
of the state the pass left (the graph's own tensors are overwritten by its next replay) and its audio.

A capture needs the pass's host → device copies (gather indices, interpolation weights) made beforehand: the pass
is run once eagerly while ``to_device`` records them (``model.codec.streaming.graph_inputs``), then captured while
it hands out the recorded copies. The recorded pass also plans cuDNN's convs outside the capture.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from model.codec.streaming import ROW_BUCKETS, _Pack, bucket, graph_inputs
from model.cuda_graphs import capturing

if TYPE_CHECKING:
    from model.codec.stream import CodecDecoderStream, CodecSpeechDecoder

MAX_ROWS = 32  # the largest batch of first chunks a graph takes (more run as several replays)
# one capture at a time in a process (two decoders warm up in two threads where the audio stage runs in-process)
_CAPTURE_LOCK = threading.Lock()


def _clone(value: Any) -> Any:
    if value is None:
        return None
    return [_clone(v) for v in value] if isinstance(value, list) else value.clone()


class _Graph:
    """One captured pass: ``rows`` template streams, their input buffer (``inputs[:, :n]`` codebook ids, ``inputs[:,
    n]`` voice indices), their states before (fresh) and after the pass, its audio rows."""

    def __init__(self, dec: CodecSpeechDecoder, rows: int, n: int, speed: float, pool: Any,
                 stream: torch.cuda.Stream | None = None):
        """``pool``: the CUDA graph memory pool to capture into, ``stream`` the stream to capture on; None: no
        capture (no CUDA)."""
        from model.codec.stream import CodecDecoderStream

        self.rows, self.n = rows, n
        self.inputs = torch.zeros(rows, n + 1, dtype=torch.long, device=dec.device)
        self.templates = [CodecDecoderStream(dec, 0, speed) for _ in range(rows)]
        for r, t in enumerate(self.templates):
            t.net.voice = self.inputs[r, n:n + 1]  # a view: the voice is an input of the graph
        self.before = [[st.snapshot() for st in t.states] for t in self.templates]  # keeps the fresh state alive
        self.table: dict = {}  # the pass's host → device copies (see model.codec.streaming.graph_inputs)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.pcm: list[torch.Tensor] = []
        with graph_inputs(self.table, capturing=False):
            self.pcm = self._pass(dec)  # eager: records the copies, plans the convs
        if pool is not None:
            torch.cuda.synchronize(dec.device)
            self.graph = torch.cuda.CUDAGraph()
            # thread-local errors: another thread's CUDA work (the LM's start-up) does not spoil the capture;
            # Python's collector stays off during it, as for the LM's graphs (torch.cuda.graph collects first)
            with (graph_inputs(self.table, capturing=True), capturing(collect=False),
                  torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local")):
                self.pcm = self._pass(dec)
        self.after = [[st.snapshot() for st in t.states] for t in self.templates]

    def _pass(self, dec: CodecSpeechDecoder) -> list[torch.Tensor]:
        for t, snaps in zip(self.templates, self.before):
            for st, snap in zip(t.states, snaps):
                st.restore(snap)
        return dec._push_eager(self.templates, [[0] * self.n] * self.rows, [False] * self.rows,
                               ids=self.inputs[:, :self.n])

    def replay(self, dec: CodecSpeechDecoder) -> list[torch.Tensor]:
        """The pass on whatever ``inputs`` holds now → the audio rows (overwritten by the next replay)."""
        if self.graph is None:  # no CUDA: the pass itself (tests run the same bookkeeping on the CPU)
            self.pcm = self._pass(dec)
            self.after = [[st.snapshot() for st in t.states] for t in self.templates]
        else:
            self.graph.replay()
        return self.pcm


class FirstChunkGraphs:
    """A decoder's graphs of fresh streams' first chunks, one per (row bucket, chunk length, speed); made by
    ``capture`` (the decoder's ``warm_up``), replayed by ``run``."""

    def __init__(self, dec: CodecSpeechDecoder, *, max_rows: int = MAX_ROWS):
        self.dec = dec
        self.max_rows = max_rows
        self.cuda = dec.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
        # captured on a stream of their own, hence with a cuBLAS workspace of their own (as the LM's graphs:
        # model.cuda_graphs._Graphs), since they replay beside other graphs of the process
        self.stream = torch.cuda.Stream(dec.device) if self.cuda else None
        self._graphs: dict[tuple[int, int, float], _Graph] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    @torch.inference_mode()
    def capture(self, max_batch: int, n: int, speed: float = 1.0) -> None:
        """Graphs for first chunks of ``n`` tokens at ``speed``, for every row bucket up to ``max_batch`` (at most
        ``max_rows``). Without CUDA the pass runs eagerly on replay (same results, no speed-up)."""
        top = bucket(max(1, min(max_batch, self.max_rows)), ROW_BUCKETS)
        for rows in (b for b in ROW_BUCKETS if b <= top):
            if (rows, n, speed) not in self._graphs:
                with _CAPTURE_LOCK:
                    self._graphs[(rows, n, speed)] = _Graph(self.dec, rows, n, speed, self.pool, self.stream)

    def parts(self, streams: Sequence[CodecDecoderStream], tokens: Sequence[Sequence[int]],
              flush: Sequence[bool]) -> list[list[int]]:
        """The streams a graph can take, as lists of indices (one replay each): fresh ones, not ending their
        sentence, with a chunk length and speed that were captured."""
        groups: dict[tuple[int, float], list[int]] = {}
        for i, (s, t, f) in enumerate(zip(streams, tokens, flush)):
            if s.fresh and not f:
                groups.setdefault((len(t), s.speed), []).append(i)
        out = []
        for (n, speed), idx in groups.items():
            for k in range(0, len(idx), self.max_rows):
                part = idx[k:k + self.max_rows]
                if (bucket(len(part), ROW_BUCKETS), n, speed) in self._graphs:
                    out.append(part)
        return out

    def run(self, streams: Sequence[CodecDecoderStream], tokens: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``_push_eager(streams, tokens, [False] * len(streams))`` for fresh streams of one speed and chunk length
        that ``parts`` grouped, from the graph: each stream's audio and its state after the chunk."""
        dec, k = self.dec, len(streams)
        g = self._graphs[(bucket(k, ROW_BUCKETS), len(tokens[0]), streams[0].speed)]
        voices = torch.tensor([[s.voice_index] for s in streams], dtype=torch.long)
        src = torch.cat([dec.host_token_ids(tokens), voices], dim=1)  # (k, n + 1): one copy to the device
        g.inputs[:k].copy_(src.pin_memory() if self.cuda else src, non_blocking=self.cuda)
        pcm = g.replay(dec)
        for stage in range(len(streams[0].states)):
            self._hand_over([s.states[stage] for s in streams], [a[stage] for a in g.after],
                            [b[stage] for b in g.before])
        return [p.clone() for p in pcm[:k]]

    @staticmethod
    def _hand_over(states, after, before) -> None:
        """Give each stream (``StreamState``) a copy of its template row's state after the pass: a stacked stage's
        pack copied once for all (its padding rows too, as ``run_batched`` keeps them), a per-stream state one copy
        each; counters as the template's, tallies grown as the template's."""
        pack = after[0][0]
        if pack is not None:
            shared = _Pack([_clone(v) for v in pack.values], states)
        for r, st in enumerate(states):
            _, row, own, counters, tallies = after[r]
            if pack is not None:
                for o, name in st.state:
                    setattr(o, name, None)
                st.pack, st.row = shared, row
            else:
                st.pack = None
                for (o, name), v in zip(st.state, own):
                    setattr(o, name, _clone(v))
            for (o, name), v in zip(st.counters, counters):
                setattr(o, name, v)
            for (o, name), v, b in zip(st.tallies, tallies, before[r][4]):
                setattr(o, name, getattr(o, name) + v - b)
