"""Stateful streaming twins of the convolutions the decoder and the vocoder are made of.

Each object holds one stream's state and maps an input stream to an output stream: ``step(x, final)`` takes the
next input frames ``(B, C, n)`` and returns every output frame that is now fully determined; ``final=True`` marks
the end of the input and returns the rest. Zero padding is applied where the offline op applies it (before the first
and after the last frame of the stream), so the concatenated outputs equal the offline op on the whole input up to
float rounding — no overlap, recomputation or crossfade is needed. The cost of a stream is the offline cost plus
the few frames each conv keeps from its previous call. What is kept is copied out of the call's tensors: a view
would keep the whole chunk's activations of every layer alive between calls (~225 MB per HiFi-GAN stream).

The price is latency: an op that looks ``right`` frames ahead holds back its last ``right`` outputs until they
arrive (for HiFi-GAN V1 the chain adds up to ~12 mel frames, 0.14 s, released at once by ``final``). Branches with
different look-ahead (residual connections, HiFi-GAN's parallel resblocks) are re-aligned by ``AlignedSum``.

Batching streams (``StreamState``): every streaming class names its per-stream tensors (``STATE``, leading batch
dimension, replaced and never modified in place), the Python numbers its computation reads (``COUNTERS``), the
bookkeeping numbers it only adds to (``TALLIES``) and its nested streaming objects (``CHILDREN``). Streams of the
same model whose states have the same *signature* (tensor shapes and counters) compute exactly the same ops on
their own rows, so they can run as one batch: ``StreamState`` stacks their state tensors along the batch
dimension into one of them, runs the ordinary ``step``/``push`` on the stacked input, and hands each stream its
row back. Only offsets relative to the kept frames are counters (``StreamConvTranspose1d.skip``), never absolute
positions, so streams at different points of their utterances share a signature once their look-back is full.
Their inputs need not have equal lengths: ``step_ragged`` runs a padded batch whose rows end at different frames
(``Lens``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class RaggedUnsupported(ValueError):
    """These rows cannot run as one ragged batch (e.g. an input shorter than a conv's look-ahead on a fresh stream);
    run them grouped by input length instead."""


class Lens:
    """Ragged batches: the valid length of each row of a ``(B, C, T)`` batch whose rows end at different frames.

    ``step_ragged(x, lens)`` of a streaming op is ``step(x[r:r+1, :, :lens[r]], final=False)`` for every row r at
    once: the op runs on the whole padded batch (what lies past a row's end only reaches that row's outputs past its
    own end, since every op here reads its input in order), and each row's kept frames are gathered from where its
    real input ends. It returns the output and its ``Lens``. Streams of one state signature whose chunks have
    different lengths (the engine's chunks do: first chunks, sentence ends, paused clients) thus share one run
    instead of one run per length. Values live on the host; the device copy, made once per distinct value tuple,
    feeds the gathers."""

    __slots__ = ("values", "device")

    def __init__(self, values, device: torch.device | str):
        self.values = tuple(int(v) for v in values)
        self.device = torch.device(device)

    @classmethod
    def minimum(cls, lens: Sequence[Lens]) -> Lens:
        return cls(map(min, zip(*(x.values for x in lens))), lens[0].device)

    @property
    def min(self) -> int:
        return min(self.values)

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def uniform(self) -> bool:
        return self.min == self.max

    def __add__(self, other: int | Lens) -> Lens:
        if isinstance(other, Lens):
            return Lens((a + b for a, b in zip(self.values, other.values)), self.device)
        return Lens((v + other for v in self.values), self.device)

    def __sub__(self, other: Lens) -> Lens:
        return Lens((a - b for a, b in zip(self.values, other.values)), self.device)

    def __mul__(self, k: int) -> Lens:
        return Lens((v * k for v in self.values), self.device)

    def __len__(self) -> int:
        return len(self.values)


class _HostInputs(threading.local):
    """Per thread: while a pass is recorded for a CUDA graph (``model.codec.graphs``), ``to_device`` keeps every
    host array it copies in ``table`` (by value); while it is captured, ``to_device`` hands out those copies instead
    of copying (a capture cannot copy from the host). The graph keeps the table, so the copies live as long as it."""

    table: dict | None = None
    capturing = False


_host_inputs = _HostInputs()


@contextlib.contextmanager
def graph_inputs(table: dict, *, capturing: bool):
    """``to_device`` records its copies into ``table`` (``capturing=False``), or serves them from it (a host array
    not recorded is a ``KeyError``: the pass is not the one recorded)."""
    saved = _host_inputs.table, _host_inputs.capturing
    _host_inputs.table, _host_inputs.capturing = table, capturing
    try:
        yield
    finally:
        _host_inputs.table, _host_inputs.capturing = saved


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on the device without waiting for the GPU (pinned and non-blocking on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    table = _host_inputs.table
    if table is None:
        return _copy(t, device)
    key = (t.dtype, tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), str(device))
    if _host_inputs.capturing:
        return table[key]
    if key not in table:
        table[key] = _copy(t, device)
    return table[key]


def _copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


@functools.lru_cache(maxsize=512)
def _window_index(starts: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    """``(B, width)`` frame indices ``starts[r] + 0 .. width − 1`` on the device; cached, since a chunk's lengths
    repeat across the layers of a stage."""
    return to_device(torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(width), device)


def take_rows(x: torch.Tensor, starts: Lens, width: int) -> torch.Tensor:
    """``x[r, ..., starts[r] : starts[r] + width]`` for every row, as a new tensor (not a view) in ``x``'s layout."""
    if starts.uniform:
        return x[..., starts.min:starts.min + width].clone()
    # a graph's pass takes its indices from its own table, not the cache (which may drop them while it replays)
    window = _window_index.__wrapped__ if _host_inputs.table is not None else _window_index
    idx = window(starts.values, width, x.device)
    idx = idx.view(idx.shape[0], *([1] * (x.dim() - 2)), width).expand(*x.shape[:-1], width)
    return torch.gather(x, -1, idx, out=frames_like(x, width))


def frames_like(x: torch.Tensor, width: int, channels: int | None = None) -> torch.Tensor:
    """An uninitialised tensor shaped like ``x`` with ``width`` frames (and ``channels`` channels), in ``x``'s
    layout: a 4-D ``(B, C, 1, T)`` activation is channels-last (see ``StreamConv1d``)."""
    shape = (x.shape[0], x.shape[1] if channels is None else channels, *x.shape[2:-1], width)
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T)`` → the 4-D channels-last ``(B, C, 1, T)`` the channels-last streaming convs take."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)
WIDTH_BUCKETS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ≥ n (past the last: the next multiple of it). On CUDA every new input shape of a conv
    costs cuDNN ~4 ms of host time to plan (measured on an H100, docs/BENCHMARKS.md §4); padding batches to a few
    shapes makes the plans repeat."""
    for b in buckets:
        if b >= n:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


class StreamConv1d:
    """``F.conv1d(F.pad(x, (left, right)), weight, bias, dilation=dilation, groups=groups)`` streamed.

    A 4-D ``(out, in, 1, k)`` weight (``channels_last(weight)``) takes 4-D channels-last activations ``(B, C, 1, T)``
    and runs as a 2-D conv: cuDNN's fast half-precision kernels work channels-last, and on ``(B, C, T)`` tensors
    they transpose the input in and the output back on every conv (~33 of ~150 ms of GPU time in a 256-stream
    HiFi-GAN pass on an H100, docs/BENCHMARKS.md §4); kept channels-last from layer to layer, nothing is transposed.
    A 3-D weight given 4-D channels-last activations runs that one conv on ``(B, C, T)`` and returns channels-last
    (its input and output transposed): for the few convs cuDNN runs slowly channels-last (``model.codec.vocoder``).
    """

    STATE = ("buf",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, left: int, right: int,
                 dilation: int = 1, groups: int = 1):
        span = (weight.shape[-1] - 1) * dilation
        if left + right != span or left < 0 or right < 0:
            raise ValueError(f"padding ({left}, {right}) does not match the receptive span {span}")
        self.weight, self.bias = weight, bias
        self.left, self.right, self.span = left, right, span
        self.dilation, self.groups = dilation, groups
        self.buf: torch.Tensor | None = None

    def _conv(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        bias = self.bias if with_bias else None
        if x.dim() == 4 and self.weight.dim() == 4:
            return F.conv2d(x, self.weight, bias, dilation=(1, self.dilation), groups=self.groups)
        if x.dim() == 4:  # a 3-D weight in a channels-last chain: this conv runs on (B, C, T), its output goes back
            y = F.conv1d(x.squeeze(2).contiguous(), self.weight, bias, dilation=self.dilation, groups=self.groups)
            return channels_last(y)
        return F.conv1d(x, self.weight, bias, dilation=self.dilation, groups=self.groups)

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        x = _act_after(self.buf, x, self.left, None)
        if final:
            x = F.pad(x, (0, self.right))
        n_out = x.shape[-1] - self.span
        if n_out <= 0:
            self.buf = x
            return frames_like(x, 0, self.weight.shape[0])
        self.buf = x[..., n_out:].clone()  # a copy: a view would keep this call's whole input alive
        return self._conv(x)

    def step_ragged(self, x: torch.Tensor, lens: Lens, slope: float | None = None, *,
                    in_bias: torch.Tensor | None = None, with_bias: bool = True) -> tuple[torch.Tensor, Lens]:
        """``step(x, final=False)`` for rows whose inputs end at ``lens`` (see ``Lens``); with ``slope``,
        ``step(leaky_relu(x, slope))`` (the activation fused into the join with the kept frames). With the fused
        kernels (``model.codec.fused``): ``in_bias``, the bias the conv before left out, added in the join before the
        activation; ``with_bias=False``, this conv's output without its bias (the next step adds it)."""
        have = self.left if self.buf is None else self.buf.shape[-1]
        x = _act_after(self.buf, x, self.left, slope, in_bias)
        n_out = lens + (have - self.span)
        if n_out.min < 0:
            raise RaggedUnsupported("a row's input is shorter than the conv's look-ahead")
        self.buf = take_rows(x, n_out, self.span)
        if n_out.max == 0:
            return frames_like(x, 0, self.weight.shape[0]), n_out
        return self._conv(x, with_bias), n_out


class StreamConvTranspose1d:
    """``F.conv_transpose1d(x, weight, bias, stride=stride, padding=padding)`` streamed, for kernel = k·stride.

    Input frame i writes uncropped output positions [i·s, i·s + k). Each call runs the transposed conv on the kept
    inputs (the last k/s − 1) followed by the new ones; with L frames in that buffer, every position below L·s
    (relative to the buffer's first frame) is complete, and at the end everything up to (L − 1)·s + k − padding.
    ``skip`` counts the positions at the start of the next call's output that were already emitted or cropped
    (``padding`` at first, the offline op's crop): relative to the kept frames, so it settles at (k/s − 1)·s.
    """

    STATE = ("kept",)
    COUNTERS = ("skip",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int, padding: int):
        k = weight.shape[-1]
        if k % stride or padding < 0 or padding > k - stride:
            raise ValueError(f"unsupported transposed conv: kernel {k}, stride {stride}, padding {padding}")
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.keep = k // stride - 1
        self.kept: torch.Tensor | None = None
        self.skip = padding

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.conv_transpose2d(x, self.weight, self.bias, stride=(1, self.stride))
        return F.conv_transpose1d(x, self.weight, self.bias, stride=self.stride)

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        s, k = self.stride, self.weight.shape[-1]
        buf = x if self.kept is None else _act_after(self.kept, x, 0, None)
        n = buf.shape[-1]
        limit = (n - 1) * s + k - self.padding if final else n * s
        kept = buf[..., max(0, n - self.keep):].clone()  # not a view of this call's input
        if n == 0 or limit <= self.skip:
            out = frames_like(x, 0, self.weight.shape[1])
        else:
            out = self._conv(buf)[..., self.skip:limit]
        self.skip = max(self.skip, limit) - (n - kept.shape[-1]) * s
        self.kept = kept
        return out

    def step_ragged(self, x: torch.Tensor, lens: Lens, slope: float | None = None) -> tuple[torch.Tensor, Lens]:
        """``step(x, final=False)`` for rows whose inputs end at ``lens`` (see ``Lens``); with ``slope``, of
        ``leaky_relu(x, slope)``. Outputs below L·s (L a row's buffered frames) read only that row's real frames;
        every row keeps its last ``keep`` and the same ``skip``."""
        s = self.stride
        have = 0 if self.kept is None else self.kept.shape[-1]
        buf = _act_after(self.kept, x, 0, slope)
        n = lens + have
        if n.min < self.keep or n.min * s < self.skip:
            raise RaggedUnsupported("a row's input is shorter than the transposed conv's look-back")
        out_lens = n * s + (-self.skip)
        if buf.shape[-1] * s > self.skip:
            out = self._conv(buf)[..., self.skip:buf.shape[-1] * s]
        else:
            out = frames_like(x, 0, self.weight.shape[1])
        self.kept = take_rows(buf, n + (-self.keep), self.keep)
        self.skip = self.keep * s  # what every row's max(skip, limit) − (n − keep)·s comes to when limit ≥ skip
        return out, out_lens


def _after(kept: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``kept`` followed by ``x`` along time (``x`` itself when nothing is kept: no copy)."""
    return x if kept is None or kept.shape[-1] == 0 else _act_after(kept, x, 0, None)


def _act_after(kept: torch.Tensor | None, x: torch.Tensor, left: int, slope: float | None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``kept`` (or ``left`` zeros when None) followed by ``leaky_relu(x, slope)`` (``x`` when ``slope`` is None),
    the activation written straight into the joined buffer (one pass over ``x`` instead of two), in ``x``'s
    layout. ``bias``: ``leaky_relu(x + bias, slope)``, by the fused kernel (``model.codec.fused.bias_act``)."""
    if bias is None and slope is None and x.dim() == 3:  # one op (a pad or a concatenation): the usual layout
        return F.pad(x, (left, 0)) if kept is None else torch.cat([kept, x], dim=-1)
    have = left if kept is None else kept.shape[-1]
    out = frames_like(x, have + x.shape[-1])
    if kept is None:
        out[..., :have].zero_()
    else:
        out[..., :have].copy_(kept)
    if bias is not None:
        from model.codec.fused import bias_act

        bias_act(x, out[..., have:], bias, slope)
    elif slope is None:
        out[..., have:].copy_(x)
    else:
        torch.ops.aten.leaky_relu.out(x, slope, out=out[..., have:])
    return out


class AlignedSum:
    """Sum of branches whose outputs arrive with different delays: emits only the frames every branch has."""

    STATE = ("pending",)

    def __init__(self, n: int):
        self.pending: list[torch.Tensor | None] = [None] * n

    def step(self, parts: list[torch.Tensor]) -> torch.Tensor:
        parts = [_after(q, p) for p, q in zip(parts, self.pending)]
        m = min(p.shape[-1] for p in parts)
        self.pending = [p[..., m:].clone() for p in parts]  # not views: they would keep whole branch outputs alive
        out = parts[0][..., :m]
        for p in parts[1:]:
            out = out + p[..., :m]
        return out

    def step_ragged(self, parts: list[torch.Tensor], lens: list[Lens], *, bias: torch.Tensor | None = None,
                    fused: bool = False) -> tuple[torch.Tensor, Lens]:
        """``step(parts)`` for rows whose branch outputs end at ``lens[i]`` (see ``Lens``): each row emits the frames
        all its branches have; what each branch holds back must be equally long on every row (it is, once a
        stream's look-back is full: the branches' delays are fixed). ``fused`` (2 or 3 branches): the sum in one
        kernel that reads each branch's held-back and new frames where they are (``model.codec.fused``), plus
        ``bias`` per channel (a conv's bias that its conv left out)."""
        if not fused:
            full = [_after(q, p) for p, q in zip(parts, self.pending)]
        held_w = [0 if q is None else q.shape[-1] for q in self.pending]
        ends = [n + h for n, h in zip(lens, held_w)]
        m = Lens.minimum(ends)
        held = [e - m for e in ends]
        if not all(h.uniform for h in held):
            raise RaggedUnsupported("rows hold back different numbers of frames")
        w = min(p.shape[-1] + h for p, h in zip(parts, held_w))
        if fused:
            from model.codec.fused import aligned_sum

            pending = [self._held_back(q, p, hw, m, h.min) for p, q, hw, h in zip(parts, self.pending, held_w, held)]
            out = aligned_sum(list(zip(self.pending, parts)), w, bias, frames_like(parts[0], w))
            self.pending = pending
            return out, m
        self.pending = [take_rows(f, m, h.min) for f, h in zip(full, held)]
        out = full[0][..., :w]
        for f in full[1:]:
            out = out + f[..., :w]
        if bias is not None:
            out = out + bias.view(-1, *([1] * (out.dim() - 2)))
        return out, m

    @staticmethod
    def _held_back(pending: torch.Tensor | None, part: torch.Tensor, have: int, starts: Lens,
                   width: int) -> torch.Tensor:
        """``take_rows(_after(pending, part), starts, width)`` (``have``: ``pending``'s frames) without joining the
        two where the window lies in ``part`` on every row."""
        if starts.min >= have:
            return take_rows(part, starts + (-have), width)
        return take_rows(_after(pending, part), starts, width)


# --- batching streams -----------------------------------------------------------------------------------------

Cell = tuple[Any, str]  # (object, attribute name)


def _cells(obj: Any, state: list[Cell], counters: list[Cell], tallies: list[Cell]) -> None:
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _cells(item, state, counters, tallies)
        return
    cls = type(obj)
    state += [(obj, name) for name in getattr(cls, "STATE", ())]
    counters += [(obj, name) for name in getattr(cls, "COUNTERS", ())]
    tallies += [(obj, name) for name in getattr(cls, "TALLIES", ())]
    for name in getattr(cls, "CHILDREN", ()):
        _cells(getattr(obj, name), state, counters, tallies)


class _Pack:
    """The state tensors of the streams that last ran as one batch, kept stacked (row r = the batch's r-th stream):
    the next round that batches the same streams in the same order reuses them as they are, and one that mixes
    streams gathers their rows (a slice or an ``index_select`` per source and cell), never a split into rows.
    Never modified in place, like every state tensor.

    A pack lives while any of its streams still points into it. So that a few streams left behind (a paused client,
    a stream that skipped rounds) do not keep a whole batch's state alive, a pack that lost streams to a new batch
    gives its stragglers a pack of their own once they are at most a quarter of it (``_release_stragglers``)."""

    __slots__ = ("values", "rows", "shapes", "members", "__weakref__")

    def __init__(self, values: list[Any], members: Sequence[StreamState]):
        self.values, self.rows = values, len(members)
        self.shapes = tuple(_shape(v, rows=1) for v in values)
        self.members = [weakref.ref(st) for st in members]

    def stragglers(self) -> list[StreamState]:
        """The streams that still point into this pack."""
        return [st for ref in self.members if (st := ref()) is not None and st.pack is self]


class StreamState:
    """The per-stream state of one streaming object tree (e.g. a ``VocoderStream``), found once from the classes'
    declarations: read it, compare it, stack several trees' states into one and split them back.

    After ``run_batched`` a stream's state tensors live in the batch's ``_Pack`` (``pack``, ``row``) and the
    tree's own state attributes are None; ``unpack`` puts its rows back (views of the pack) before anything reads
    the tree directly. Counters and tallies are always the tree's own."""

    def __init__(self, root: Any):
        self.root = root
        self.state: list[Cell] = []
        self.counters: list[Cell] = []
        self.tallies: list[Cell] = []
        _cells(root, self.state, self.counters, self.tallies)
        self.pack: _Pack | None = None
        self.row = 0

    def unpack(self) -> None:
        """Make the tree's own attributes hold this stream's state again (before ``step``/``push`` on the tree)."""
        if self.pack is None:
            return
        pack, row = self.pack, self.row
        self.pack = None
        for (o, n), v in zip(self.state, pack.values):
            setattr(o, n, _take(v, slice(row, row + 1)))

    def values(self) -> list[Any]:
        self.unpack()
        return [getattr(o, n) for o, n in self.state]

    def signature(self, extra: Any = None) -> tuple:
        """Equal signatures (and equal ``extra``, e.g. the input's shape) = the same ops on every row."""
        shapes = self.pack.shapes if self.pack is not None else tuple(_shape(getattr(o, n)) for o, n in self.state)
        return shapes, tuple(getattr(o, n) for o, n in self.counters), extra

    def snapshot(self) -> tuple:
        own = None if self.pack is not None else [getattr(o, n) for o, n in self.state]
        return (self.pack, self.row, own, [getattr(o, n) for o, n in self.counters],
                [getattr(o, n) for o, n in self.tallies])

    def restore(self, snap: tuple) -> None:
        self.pack, self.row, own, counters, tallies = snap
        for (o, n), v in zip(self.state, own if own is not None else [None] * len(self.state)):
            setattr(o, n, v)
        for cells, vals in ((self.counters, counters), (self.tallies, tallies)):
            for (o, n), v in zip(cells, vals):
                setattr(o, n, v)


def _shape(v: Any, rows: int | None = None) -> Any:
    if v is None:
        return None
    if isinstance(v, list):
        return tuple(_shape(x, rows) for x in v)
    return (tuple(v.shape[1:]), v.shape[0] if rows is None else rows)


def _take(value: Any, rows: slice | torch.Tensor) -> Any:
    """Rows of a (possibly nested) state value: a view for a slice, a gather (a copy) for an index tensor."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_take(v, rows) for v in value]
    return value[rows] if isinstance(rows, slice) else value.index_select(0, rows)


def _release_stragglers(packs: Sequence[_Pack]) -> None:
    """Packs whose streams moved to a new batch: the few left behind get a pack of their own, their rows gathered
    in one copy per cell (see ``_Pack``); run together next, as they often are, they reuse it as it is."""
    for pack in packs:
        left = pack.stragglers()
        if left and 4 * len(left) <= pack.rows:
            rows = to_device(torch.tensor([st.row for st in left]), _device(pack.values))
            own = _Pack([_take(v, rows) for v in pack.values], left)
            for r, st in enumerate(left):
                st.pack, st.row = own, r


def _stack(values: Sequence[Any]) -> Any:
    first = values[0]
    if first is None:
        return None
    if isinstance(first, list):
        return [_stack([v[i] for v in values]) for i in range(len(first))]
    return values[0] if len(values) == 1 else torch.cat(values, dim=0)


def _gather(states: Sequence[StreamState]) -> list[Any]:
    """The stacked state (one value per cell, row r = ``states[r]``'s) of streams with one signature."""
    segments: list[tuple[_Pack | None, list]] = []  # runs of streams from one pack, or one unpacked stream
    for st in states:
        if st.pack is not None and segments and segments[-1][0] is st.pack:
            segments[-1][1].append(st.row)
        else:
            segments.append((st.pack, [st.row] if st.pack is not None else [st]))
    parts = []  # per segment: its cells' values
    for pack, members in segments:
        if pack is None:
            parts.append([getattr(o, n) for o, n in members[0].state])
            continue
        r0 = members[0]
        if members == list(range(r0, r0 + len(members))):
            if r0 == 0 and len(members) == pack.rows and len(segments) == 1:
                parts.append(pack.values)  # the same batch as last time: nothing to copy (padding included)
                continue
            rows: slice | torch.Tensor = slice(r0, r0 + len(members))
        else:
            rows = to_device(torch.tensor(members), _device(pack.values))
        parts.append([_take(v, rows) for v in pack.values])
    return [_stack(cell) for cell in zip(*parts)]


def _device(values: list[Any]) -> torch.device:
    for v in values:
        if isinstance(v, list):
            v = next((x for x in v if x is not None), None)
        if v is not None:
            return v.device
    return torch.device("cpu")


def _with_rows(value: Any, rows: int) -> Any:
    """A stacked state value with exactly ``rows`` rows: padded with copies of row 0, or a pack's padding cut."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_with_rows(v, rows) for v in value]
    if value.shape[0] == rows:
        return value
    if value.shape[0] > rows:
        return value[:rows]
    return torch.cat([value, value[:1].expand(rows - value.shape[0], *value.shape[1:])])


def run_batched(states: Sequence[StreamState], fn: Callable[[Any], torch.Tensor], *, rows: int = 0
                ) -> torch.Tensor:
    """Run ``fn(root)`` once for several streams of one signature (``StreamState.signature`` equal; each with a
    batch of 1): their state tensors are stacked into the first stream's tree (``_gather``: nothing to copy when
    they ran together last time, in this order), ``fn`` runs on it (its input must be the streams' inputs stacked
    in the same order), and the new state stays stacked in a ``_Pack`` that every stream points into, with the
    same counters and tally increments. Returns ``fn``'s output (row r is stream r's). On an exception every
    stream is left as it was. ``rows`` > len(states): the stacked state gets that many rows (padding rows copy the
    first stream's; ``fn``'s input must be padded alike, its extra output rows are garbage), so that a few batch
    sizes recur (``bucket``); a pack keeps its padding, so the same batch next round pads nothing."""
    lead = states[0]
    if len(states) == 1 and rows <= 1:
        lead.unpack()
        snap = lead.snapshot()
        try:
            return fn(lead.root)
        except BaseException:
            lead.restore(snap)
            raise
    snaps = [st.snapshot() for st in states]
    stacked = [_with_rows(v, max(rows, len(states))) for v in _gather(states)]
    for (o, n), v in zip(lead.state, stacked):
        setattr(o, n, v)
    try:
        out = fn(lead.root)
    except BaseException:
        for st, snap in zip(states, snaps):
            st.restore(snap)
        raise
    sources = {id(snap[0]): snap[0] for snap in snaps if snap[0] is not None}
    pack = _Pack([getattr(o, n) for o, n in lead.state], states)
    counters = [getattr(o, n) for o, n in lead.counters]
    increments = [getattr(o, n) - b for (o, n), b in zip(lead.tallies, snaps[0][4])]
    for r, (st, snap) in enumerate(zip(states, snaps)):
        if snap[2] is not None or r == 0:  # its attributes held tensors: the pack holds them now
            for o, n in st.state:
                setattr(o, n, None)
        st.pack, st.row = pack, r
        if r:
            for (o, n), v in zip(st.counters, counters):
                setattr(o, n, v)
            for (o, n), d in zip(st.tallies, increments):
                setattr(o, n, getattr(o, n) + d)
    _release_stragglers(list(sources.values()))
    return out
