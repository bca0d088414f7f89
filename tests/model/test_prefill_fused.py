"""The fused prefill of short prompts (``model.ssd_fused.conv_prefill_inplace``, ``ssd_prefill_inplace``) against the
reference: the conv of each row's new inputs after its pooled window, the window replaced in place by the row's last
real inputs, the scan from and back into the pooled state with dt's softplus, right padding that leaves the state
unchanged and the D skip; and a Mamba layer's prefill through them. On CPU through Triton's interpreter (a
subprocess), on the GPU as the server runs it."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model.ssd_ref import causal_conv1d_ref, ssd_chunked_ref
from tests.conftest import check_in_triton_interpreter
from tests.model.test_conv_step_fused import check_mixer_steps


def _check_kernels(device: str) -> None:
    from model import ssd_fused
    from model.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    b, t, d, k, slots_total = 3, 11, 300, 4, 7
    # strided columns of one packed input, as a prefill graph's; right padding after each row's length
    packed = torch.tensor([[5, 9, 11], [0, 9, 2], [3, 9, 6]], device=device)
    slots, lengths = packed[:, 0], packed[:, 2]
    for dtype, pool_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)):
        proj = torch.randn(b, t, 40 + d, dtype=dtype, device=device)
        xbc = proj[..., 40:]  # a strided view, as the input projection's slice
        pool = torch.randn(slots_total, k - 1, d, device=device).to(dtype).to(pool_dtype)
        ref_pool = pool.clone()
        weight = torch.randn(d, k, dtype=dtype, device=device) * 0.5
        bias = torch.randn(d, dtype=dtype, device=device)
        act = ssd_fused.conv_prefill_inplace(pool, slots, xbc, lengths, weight, bias)
        prev = ref_pool[slots]
        want = F.silu(causal_conv1d_ref(xbc.float(), weight.float(), bias.float(), conv_state=prev.float()))
        ref_pool[slots] = Mamba2Mixer._last_inputs(xbc, prev, lengths).to(pool_dtype)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1 / 64, atol=1 / 64)
        assert act.dtype == dtype
        assert_close(act, want.to(dtype), **tol)
        assert torch.equal(pool, ref_pool)  # the last real inputs exactly; other slots untouched

    h, kv, p, n = 6, 2, 32, 16
    x = torch.randn(b, t, kv, p, device=device)
    B = torch.randn(b, t, kv, n, device=device)
    C = torch.randn(b, t, h, n, device=device)
    dt_raw = torch.randn(b, t, h, device=device) - 1
    dt_bias = torch.linspace(-14, 3, h, device=device)  # dt from ~1e-6 up
    A = -torch.linspace(0.5, 8, h, device=device)
    D = torch.linspace(0.5, 1.5, h, device=device)
    state = torch.randn(slots_total, h, p, n, device=device) * 0.1
    ref_state = state.clone()
    y = ssd_fused.ssd_prefill_inplace(state, slots, lengths, x, dt_raw, dt_bias, A, B, C, D)
    valid = torch.arange(t, device=device)[None, :] < lengths[:, None]
    dt = F.softplus(dt_raw + dt_bias) * valid[..., None]
    xh, Bh = x.repeat_interleave(h // kv, dim=2), B.repeat_interleave(h // kv, dim=2)
    want, final = ssd_chunked_ref(xh, dt, A, Bh, C, chunk_size=4, initial_state=ref_state[slots])
    ref_state[slots] = final
    assert_close(y, want.float() + D[:, None] * xh, rtol=1e-4, atol=1e-4)
    assert_close(state, ref_state, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        ssd_fused.conv_prefill_inplace(pool, slots, xbc, lengths, torch.zeros(d, 3, device=device), None)


def test_prefill_kernels_equal_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_prefill_fused import _check_kernels; _check_kernels('cpu')")


@pytest.mark.gpu
def test_prefill_kernels_equal_the_reference_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_kernels("cuda")


def _check_mixer_prefill() -> None:
    """A Mamba layer's prefill of right-padded prompts (then a decode step) through the fused kernels equals the
    reference path: outputs at every position and the pooled states."""
    check_mixer_steps([(9, [9, 3, 5], [0, 0, 0]), (1, [1, 1, 1], [9, 3, 5])], out_tol=dict(rtol=1e-4, atol=1e-4),
                      ssm_tol=dict(rtol=1e-4, atol=1e-5))


def test_a_mamba_layers_fused_prefill_equals_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_prefill_fused import _check_mixer_prefill; "
                                "_check_mixer_prefill()")


@pytest.mark.gpu
def test_a_mamba_layers_fused_prefill_equals_the_reference_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_mixer_prefill()
