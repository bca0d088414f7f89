"""Streaming conv twins against the offline ops, on random chunkings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.codec.streaming import AlignedSum, StreamConv1d, StreamConvTranspose1d

STREAM_TOL = dict(rtol=1e-5, atol=1e-5)


def chunks(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, i = [], 0
    for n in sizes:
        out.append(x[..., i:i + n])
        i += n
    out.append(x[..., i:])
    return out


def run(op, pieces):
    outs = [op.step(p, final=False) for p in pieces[:-1]]
    outs.append(op.step(pieces[-1], final=True))
    return torch.cat(outs, dim=-1), outs


@pytest.mark.parametrize("kernel,dilation,left,right,groups", [
    (7, 1, 3, 3, 1), (3, 5, 5, 5, 1), (5, 1, 4, 0, 4), (5, 1, 3, 1, 4), (1, 1, 0, 0, 1)])
@pytest.mark.parametrize("sizes", [[1, 0, 2, 5, 3], [17], [0, 0, 1]])
def test_stream_conv_equals_offline(kernel, dilation, left, right, groups, sizes):
    w, b = torch.randn(4, 4 // groups, kernel), torch.randn(4)
    x = torch.randn(2, 4, 20)
    ref = F.conv1d(F.pad(x, (left, right)), w, b, dilation=dilation, groups=groups)
    got, outs = run(StreamConv1d(w, b, left=left, right=right, dilation=dilation, groups=groups), chunks(x, sizes))
    torch.testing.assert_close(got, ref, **STREAM_TOL)
    # causal convs emit every frame as soon as it arrives; look-ahead holds back exactly `right` frames
    assert sum(o.shape[-1] for o in outs[:-1]) == max(0, sum(sizes) - right)


def test_stream_conv_rejects_wrong_padding():
    with pytest.raises(ValueError):
        StreamConv1d(torch.randn(2, 2, 3), None, left=1, right=0)


@pytest.mark.parametrize("kernel,stride,padding", [(16, 8, 4), (4, 2, 1), (6, 3, 0), (8, 4, 2)])
@pytest.mark.parametrize("sizes", [[1, 1, 3, 0, 2], [9], [0, 4]])
def test_stream_conv_transpose_equals_offline(kernel, stride, padding, sizes):
    w, b = torch.randn(3, 5, kernel), torch.randn(5)
    x = torch.randn(2, 3, 11)
    ref = F.conv_transpose1d(x, w, b, stride=stride, padding=padding)
    got, _ = run(StreamConvTranspose1d(w, b, stride=stride, padding=padding), chunks(x, sizes))
    torch.testing.assert_close(got, ref, **STREAM_TOL)


def test_aligned_sum_waits_for_the_slower_branch():
    add = AlignedSum(2)
    a = add.step([torch.ones(1, 1, 5), torch.ones(1, 1, 2)])
    b = add.step([torch.ones(1, 1, 0), torch.ones(1, 1, 3)])
    assert a.shape[-1] == 2 and b.shape[-1] == 3 and float(torch.cat([a, b], -1).min()) == 2.0


class _Tree:
    """A two-conv streaming tree with a tally: what ``StreamState`` batches (state, counters, tallies)."""

    CHILDREN = ("a", "b")
    TALLIES = ("frames",)

    def __init__(self, w1, w2):
        self.a = StreamConv1d(w1, None, left=2, right=2)
        self.b = StreamConvTranspose1d(w2, None, stride=2, padding=1)
        self.frames = 0

    def step(self, x, final=False):
        self.frames += x.shape[-1]
        return self.b.step(self.a.step(x, final), final)


def test_run_batched_keeps_batches_stacked_and_each_stream_exact():
    """Streams batched in changing company and order (the same batch again, a subset, a reversed order, one stream
    alone, a stream joining late after its first step) each get exactly what they get alone; a batch that runs again in the same order
    reuses its stacked state without copying it; a failing batch leaves every stream as it was."""
    from model.codec.streaming import StreamState, _gather, run_batched

    torch.manual_seed(0)
    w1, w2 = torch.randn(4, 3, 5), torch.randn(4, 3, 4)
    xs = [torch.randn(1, 3, 40) for _ in range(4)]
    rounds = [[0, 1, 2], [0, 1, 2], [2, 0], [1], [3], [3, 2, 1, 0], [0, 1, 2, 3], [0, 1, 2, 3], [3]]
    alone = []
    for k, x in enumerate(xs):
        t, i, outs = _Tree(w1, w2), 0, []
        for r in rounds:
            if k in r:
                outs.append(t.step(x[..., i:i + 5]))
                i += 5
        alone.append((torch.cat(outs, -1), t.frames))
    trees = [_Tree(w1, w2) for _ in xs]
    states = [StreamState(t) for t in trees]
    got, pos = [[] for _ in xs], [0] * len(xs)
    for k, r in enumerate(rounds):
        members = [states[i] for i in r]
        if k == 1:  # the batch of round 0 again, in its order: its stacked state is taken as it is
            assert all(a is b for a, b in zip(_gather(members), states[0].pack.values))
        if len(r) == 1:
            members[0].unpack()  # a stream stepped on its own, as ``CodecDecoderStream.push`` does
            y = trees[r[0]].step(xs[r[0]][..., pos[r[0]]:pos[r[0]] + 5])
        else:
            assert len({st.signature() for st in members}) == 1
            x = torch.cat([xs[i][..., pos[i]:pos[i] + 5] for i in r])
            y = run_batched(members, lambda root: root.step(x))
        for row, i in enumerate(r):
            got[i].append(y[row:row + 1])
            pos[i] += 5
    for i, (ref, frames) in enumerate(alone):
        torch.testing.assert_close(torch.cat(got[i], -1), ref, rtol=1e-5, atol=1e-5)
        assert trees[i].frames == frames
    sig = [st.signature() for st in states]
    before = [st.snapshot() for st in states]

    def boom(root):
        root.step(torch.zeros(4, 3, 5))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_batched(states, boom)
    assert [st.signature() for st in states] == sig
    assert all(a[:2] == b[:2] for a, b in zip(before, [st.snapshot() for st in states]))
    assert [t.frames for t in trees] == [f for _, f in alone]


def test_streams_left_behind_do_not_keep_their_old_batch_alive():
    """Eight streams run as one batch; six of them run on without the other two (e.g. paused clients): the old
    batch's stacked state is freed, the two stragglers share a pack of their own rows, and they go on exactly."""
    import gc
    import weakref

    from model.codec.streaming import StreamState, run_batched

    torch.manual_seed(1)
    w1, w2 = torch.randn(4, 3, 5), torch.randn(4, 3, 4)
    xs = [torch.randn(1, 3, 20) for _ in range(8)]
    trees = [_Tree(w1, w2) for _ in xs]
    states = [StreamState(t) for t in trees]
    refs = [_Tree(w1, w2) for _ in xs]
    want = [[] for _ in xs]
    got = [[] for _ in xs]
    for k, members in enumerate([list(range(8)), list(range(6)), list(range(8))]):
        if k == 2:  # the stragglers rejoin from their own 2-row pack, the others from the 6-stream batch
            assert states[6].pack is states[7].pack and states[6].pack.rows == 2
        x = torch.cat([xs[i][..., 5 * k:5 * k + 5] for i in members])
        y = run_batched([states[i] for i in members], lambda root: root.step(x))
        for r, i in enumerate(members):
            got[i].append(y[r:r + 1])
            want[i].append(refs[i].step(xs[i][..., 5 * k:5 * k + 5]))
        if k == 0:
            first = weakref.ref(states[0].pack)
        if k == 1:
            gc.collect()
            assert first() is None  # six of eight moved on: the 8-row batch is gone
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.cat(g, -1), torch.cat(w, -1), rtol=1e-5, atol=1e-5)


RAGGED_ROUNDS = [[6, 9, 7], [3, 0, 5], [8, 4, 4], [1, 7, 2]]  # per round, each row's input length


def _ragged_vs_alone(make, channels, rounds=RAGGED_ROUNDS):
    """``step_ragged`` of one object on padded rows vs one object per row stepping its real input alone."""
    from model.codec.streaming import Lens

    torch.manual_seed(0)
    rows = len(rounds[0])
    xs = [torch.randn(1, channels, sum(r[i] for r in rounds)) for i in range(rows)]
    alone = [make() for _ in range(rows)]
    batch = make()
    got, want, pos = [[] for _ in range(rows)], [[] for _ in range(rows)], [0] * rows
    for lens in rounds:
        width = max(lens) + 2  # padding past every row's end: its content must not matter
        x = torch.randn(rows, channels, width) * 100
        for i, n in enumerate(lens):
            x[i, :, :n] = xs[i][0, :, pos[i]:pos[i] + n]
            want[i].append(alone[i].step(xs[i][..., pos[i]:pos[i] + n], final=False))
            pos[i] += n
        y, out = batch.step_ragged(x, Lens(lens, "cpu"))
        for i in range(rows):
            got[i].append(y[i:i + 1, :, :out.values[i]])
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.cat(g, -1), torch.cat(w, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,dilation,left,right", [(7, 1, 3, 3), (3, 5, 5, 5), (5, 1, 4, 0), (5, 1, 3, 1)])
def test_stream_conv_ragged_is_each_row_alone(kernel, dilation, left, right):
    w, b = torch.randn(4, 4, kernel), torch.randn(4)
    _ragged_vs_alone(lambda: StreamConv1d(w, b, left=left, right=right, dilation=dilation), 4)


class _Activated:
    """``op.step(leaky_relu(x))`` alone vs ``op.step_ragged(x, lens, slope)`` (the activation fused into the join)."""

    def __init__(self, op, slope=0.1):
        self.op, self.slope = op, slope

    def step(self, x, final=False):
        return self.op.step(F.leaky_relu(x, self.slope), final)

    def step_ragged(self, x, lens):
        return self.op.step_ragged(x, lens, self.slope)


def test_ragged_steps_with_a_fused_activation_are_each_row_alone():
    w, b = torch.randn(4, 4, 5), torch.randn(4)
    _ragged_vs_alone(lambda: _Activated(StreamConv1d(w, b, left=2, right=2)), 4)
    _ragged_vs_alone(lambda: _Activated(StreamConv1d(w, b, left=4, right=0)), 4)
    wt = torch.randn(4, 3, 16)
    _ragged_vs_alone(lambda: _Activated(StreamConvTranspose1d(wt, None, stride=8, padding=4)), 4)


@pytest.mark.parametrize("kernel,stride,padding", [(16, 8, 4), (4, 2, 1), (6, 3, 0)])
def test_stream_conv_transpose_ragged_is_each_row_alone(kernel, stride, padding):
    w, b = torch.randn(3, 5, kernel), torch.randn(5)
    _ragged_vs_alone(lambda: StreamConvTranspose1d(w, b, stride=stride, padding=padding), 3)


def test_aligned_sum_ragged_is_each_row_alone():
    """Two branches whose outputs lag by different amounts (a look-ahead conv vs the identity): each row emits what
    it emits alone; rows that would hold back different amounts refuse to run ragged."""
    from model.codec.streaming import Lens, RaggedUnsupported

    class Res:  # x + conv(x) with one frame of look-ahead
        def __init__(self, w):
            self.conv, self.add = StreamConv1d(w, None, left=1, right=1), AlignedSum(2)

        def step(self, x, final=False):
            return self.add.step([self.conv.step(x, final), x])

        def step_ragged(self, x, lens):
            y, n = self.conv.step_ragged(x, lens)
            return self.add.step_ragged([y, x], [n, lens])

    w = torch.randn(2, 2, 3)
    _ragged_vs_alone(lambda: Res(w), 2)
    add = AlignedSum(2)
    with pytest.raises(RaggedUnsupported):
        add.step_ragged([torch.zeros(2, 1, 4), torch.zeros(2, 1, 4)],
                        [Lens([2, 4], "cpu"), Lens([4, 4], "cpu")])


def test_ragged_refuses_inputs_shorter_than_the_look_ahead():
    from model.codec.streaming import Lens, RaggedUnsupported

    conv = StreamConv1d(torch.randn(2, 2, 5), None, left=2, right=2)
    with pytest.raises(RaggedUnsupported):
        conv.step_ragged(torch.zeros(2, 2, 4), Lens([4, 1], "cpu"))  # a fresh row of 1 frame: 2 held back
