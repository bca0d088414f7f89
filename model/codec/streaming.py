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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class StreamConv1d:
    """``F.conv1d(F.pad(x, (left, right)), weight, bias, dilation=dilation, groups=groups)`` streamed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, left: int, right: int,
                 dilation: int = 1, groups: int = 1):
        span = (weight.shape[-1] - 1) * dilation
        if left + right != span or left < 0 or right < 0:
            raise ValueError(f"padding ({left}, {right}) does not match the receptive span {span}")
        self.weight, self.bias = weight, bias
        self.left, self.right, self.span = left, right, span
        self.dilation, self.groups = dilation, groups
        self.buf: torch.Tensor | None = None

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        x = F.pad(x, (self.left, 0)) if self.buf is None else torch.cat([self.buf, x], dim=-1)
        if final:
            x = F.pad(x, (0, self.right))
        n_out = x.shape[-1] - self.span
        if n_out <= 0:
            self.buf = x
            return x.new_zeros(x.shape[0], self.weight.shape[0], 0)
        self.buf = x[..., n_out:].clone()  # a copy: a view would keep this call's whole input alive
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation, groups=self.groups)


class StreamConvTranspose1d:
    """``F.conv_transpose1d(x, weight, bias, stride=stride, padding=padding)`` streamed, for kernel = k·stride.

    In uncropped output coordinates q, input frame i writes q ∈ [i·s, i·s + k). After m inputs every q < m·s is
    complete, so each call keeps the last k/s − 1 inputs and emits s outputs per new input; the first ``padding``
    and (at the end) the last ``padding`` positions are cropped as the offline op crops them.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int, padding: int):
        k = weight.shape[-1]
        if k % stride or padding < 0 or padding > k - stride:
            raise ValueError(f"unsupported transposed conv: kernel {k}, stride {stride}, padding {padding}")
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.keep = k // stride - 1
        self.kept: torch.Tensor | None = None
        self.n_in = 0  # inputs received
        self.q_done = 0  # uncropped output positions already emitted (or cropped)

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        s, k = self.stride, self.weight.shape[-1]
        buf = x if self.kept is None else torch.cat([self.kept, x], dim=-1)
        a = self.n_in - (0 if self.kept is None else self.kept.shape[-1])  # absolute index of buf[..., 0]
        self.n_in += x.shape[-1]
        self.kept = buf[..., max(0, buf.shape[-1] - self.keep):].clone()  # not a view of this call's input
        limit = (self.n_in - 1) * s + k - self.padding if final else self.n_in * s
        lo = max(self.q_done, self.padding)
        if buf.shape[-1] == 0 or limit <= lo:
            self.q_done = max(self.q_done, limit)
            return x.new_zeros(x.shape[0], self.weight.shape[1], 0)
        y = F.conv_transpose1d(buf, self.weight, self.bias, stride=s)  # q from a·s
        out = y[..., lo - a * s: limit - a * s]
        self.q_done = limit
        return out


class AlignedSum:
    """Sum of branches whose outputs arrive with different delays: emits only the frames every branch has."""

    def __init__(self, n: int):
        self.pending: list[torch.Tensor | None] = [None] * n

    def step(self, parts: list[torch.Tensor]) -> torch.Tensor:
        parts = [p if q is None else torch.cat([q, p], dim=-1) for p, q in zip(parts, self.pending)]
        m = min(p.shape[-1] for p in parts)
        self.pending = [p[..., m:].clone() for p in parts]  # not views: they would keep whole branch outputs alive
        out = parts[0][..., :m]
        for p in parts[1:]:
            out = out + p[..., :m]
        return out
