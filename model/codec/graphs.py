"""CUDA graphs of the vocoder's steady ragged pass (``VocoderStream.push_ragged``), one per batch shape.

A pass of HiFi-GAN V1 over a batch of streams is ~90 convolutions and ~1,000 other small ops launched from Python;
on a GPU that launch work, not the arithmetic, is most of its cost. Once a stream's look-back is full its state
tensors have fixed shapes, and with the batch padded to a row bucket and a width bucket (``shape_buckets``) the
whole pass has fixed shapes too, so it can be captured once and replayed: the replay copies the batch's stacked
state and its mel into the graph's input buffers, runs, and hands back copies of the new state and the audio (the
graph's own outputs are overwritten by its next replay and may be shared with other graphs' memory).

Each row's ragged gathers read their indices from a device tensor computed inside the graph from the row lengths
(``Lens.t``), so one graph serves every mix of chunk lengths up to its width. The output lengths of a steady pass
are ``HOP·n + c`` per row (every layer keeps its length, the upsamplers multiply it): ``c`` is read off at capture
and checked on every row of the capture batch. A stream not yet steady (a fresh one, or before its transposed
convs' offsets settled) runs eagerly.
"""

from __future__ import annotations

from typing import Any

import torch

from model.codec.streaming import Lens, StreamState, _shape
from model.codec.vocoder import HOP, VocoderStream


def _clone(value: Any) -> Any:
    return [v.clone() for v in value] if isinstance(value, list) else value.clone()


def _copy_into(dst: Any, src: Any) -> None:
    if isinstance(dst, list):
        for d, s in zip(dst, src):
            d.copy_(s)
    else:
        dst.copy_(src)


class _Graph:
    __slots__ = ("graph", "mel", "lens", "inputs", "audio", "state", "offset")


class GraphedVocoderPass:
    """``fn(root, mel, lens)`` = ``root.push_ragged(mel, lens)``, replayed from a CUDA graph per (batch shape, state
    shapes) where the stream tree is steady, eager otherwise. One instance per vocoder (graphs share one memory
    pool; the input buffers of one row count and state signature are shared by its widths)."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, _Graph | None] = {}  # None: this shape cannot be graphed (ran eagerly)
        self._inputs: dict[tuple, list[Any]] = {}
        self._pool = None

    @property
    def captured(self) -> int:
        return sum(g is not None for g in self._graphs.values())

    @staticmethod
    def _steady(root: VocoderStream) -> list | None:
        """The tree's state cells if every one holds a tensor and every transposed conv's offset has settled."""
        if any(up.kept is None or up.skip != up.keep * up.stride for up in root.ups):
            return None
        cells = StreamState(root).state
        for o, n in cells:
            v = getattr(o, n)
            if v is None or (isinstance(v, list) and any(x is None for x in v)):
                return None
        return cells

    @torch.inference_mode()
    def __call__(self, root: VocoderStream, mel: torch.Tensor, lens: Lens) -> tuple[torch.Tensor, Lens]:
        cells = self._steady(root) if mel.device.type == "cuda" else None
        if cells is None:
            return root.push_ragged(mel, lens)
        values = [getattr(o, n) for o, n in cells]
        shapes = tuple(_shape(v) for v in values)
        key = (tuple(mel.shape), mel.dtype, shapes)
        if key not in self._graphs:
            self._graphs[key] = self._capture(root, cells, values, mel, lens, shapes)
        g = self._graphs[key]
        if g is None:
            return root.push_ragged(mel, lens)
        for buf, v in zip(g.inputs, values):
            _copy_into(buf, v)
        g.mel.copy_(mel)
        g.lens.copy_(torch.tensor(lens.values).pin_memory(), non_blocking=True)
        g.graph.replay()
        for (o, n), v in zip(cells, g.state):
            setattr(o, n, _clone(v))
        return g.audio.clone(), Lens((HOP * n + g.offset for n in lens.values), mel.device)

    def _capture(self, root, cells, values, mel, lens, shapes) -> _Graph | None:
        g = _Graph()
        inputs = self._inputs.get((mel.shape[0], shapes))
        if inputs is None:
            inputs = self._inputs[(mel.shape[0], shapes)] = [_clone(v) for v in values]
        g.inputs = inputs
        for buf, v in zip(inputs, values):
            _copy_into(buf, v)
        g.mel, g.lens = mel.clone(), torch.tensor(lens.values, device=mel.device)

        def run():
            for (o, n), v in zip(cells, g.inputs):
                setattr(o, n, v)
            audio, out = root.push_ragged(g.mel, Lens(lens.values, mel.device, g.lens))
            return audio, out, [getattr(o, n) for o, n in cells]

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # outside the capture: cuDNN plans, the allocator's first blocks
            _, out, _ = run()
        torch.cuda.current_stream().wait_stream(side)
        offsets = {o - HOP * n for o, n in zip(out.values, lens.values)}
        if len(offsets) != 1:
            for (o, n), v in zip(cells, values):
                setattr(o, n, v)
            return None
        g.offset = offsets.pop()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        g.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g.graph, pool=self._pool):
            g.audio, _, g.state = run()
        for (o, n), v in zip(cells, values):  # the caller replays it on these values next
            setattr(o, n, v)
        return g
