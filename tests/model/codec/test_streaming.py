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
