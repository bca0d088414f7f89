"""SSD reference ops: chunked scan == naive recurrence == repeated single steps; causal conv step == full conv."""

import pytest
import torch
from torch.testing import assert_close

from model.ssd_ref import (causal_conv1d_ref, causal_conv1d_step_ref, segsum, ssd_chunked_ref, ssd_naive_ref,
                           ssd_step_ref)

FP32 = dict(atol=1e-4, rtol=1e-4)


def _inputs(b=2, t=37, h=3, p=8, n=6):
    x = torch.randn(b, t, h, p)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h) - 1.0)
    A = -torch.rand(h) * 4 - 0.5
    B = torch.randn(b, t, h, n)
    C = torch.randn(b, t, h, n)
    return x, dt, A, B, C


def test_segsum_matches_definition():
    a = torch.randn(2, 5)
    out = segsum(a)
    for i in range(5):
        for j in range(5):
            if j > i:
                assert out[0, i, j] == float("-inf")
            else:
                assert_close(out[:, i, j], a[:, j + 1:i + 1].sum(-1), **FP32)


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 64])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_equals_naive(chunk_size, with_initial_state):
    x, dt, A, B, C = _inputs()
    init = torch.randn(2, 3, 8, 6) if with_initial_state else None
    y_ref, s_ref = ssd_naive_ref(x, dt, A, B, C, initial_state=init)
    y, s = ssd_chunked_ref(x, dt, A, B, C, chunk_size=chunk_size, initial_state=init)
    assert_close(y, y_ref, **FP32)
    assert_close(s, s_ref, **FP32)


def test_zero_dt_leaves_state_untouched():
    x, dt, A, B, C = _inputs(t=12)
    dt_padded = dt.clone()
    dt_padded[:, 7:] = 0.0
    _, s_short = ssd_naive_ref(x[:, :7], dt[:, :7], A, B[:, :7], C[:, :7])
    _, s_padded = ssd_chunked_ref(x, dt_padded, A, B, C, chunk_size=4)
    assert_close(s_padded, s_short, **FP32)


def test_step_state_dtype_is_kept():
    x, dt, A, B, C = _inputs(t=1)
    state = torch.randn(2, 3, 8, 6).to(torch.bfloat16)
    y, new = ssd_step_ref(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    assert new.dtype == torch.bfloat16 and y.dtype == torch.float32


def test_conv_step_equals_full_conv():
    b, t, d, k = 2, 9, 5, 4
    x = torch.randn(b, t, d)
    w, bias = torch.randn(d, k), torch.randn(d)
    full = causal_conv1d_ref(x, w, bias)
    state = torch.zeros(b, k - 1, d)
    outs = []
    for i in range(t):
        o, state = causal_conv1d_step_ref(x[:, i], w, bias, state)
        outs.append(o)
    assert_close(torch.stack(outs, 1), full, **FP32)
    # and the state after t steps is the last k-1 inputs
    assert_close(state, x[:, -(k - 1):])


def test_conv_with_state_equals_concatenation():
    b, d, k = 2, 5, 4
    x = torch.randn(b, 11, d)
    w, bias = torch.randn(d, k), torch.randn(d)
    full = causal_conv1d_ref(x, w, bias)
    tail = causal_conv1d_ref(x[:, 6:], w, bias, conv_state=x[:, 6 - (k - 1):6])
    assert_close(tail, full[:, 6:], **FP32)


def test_a_mixers_decay_is_kept_between_calls_without_autograd_and_follows_A_log():
    from model.config import preset
    from model.mamba2 import Mamba2Mixer

    mixer = Mamba2Mixer(preset("mini-1:3"), backend="ref")
    with torch.no_grad():
        first = mixer._A()
        assert mixer._A() is first  # the same tensor: no kernels per call
        assert_close(first, -torch.exp(mixer.A_log))
        mixer.A_log.add_(0.5)  # a new version (e.g. loaded weights): recomputed
        assert_close(mixer._A(), -torch.exp(mixer.A_log))
    with_grad = mixer._A()
    assert with_grad.requires_grad and with_grad is not mixer._A()  # training: always recomputed, differentiable
