"""The fused decode conv step (``model.ssd_fused.conv_step_inplace``) against the reference: the conv of each
stream's new input with its pooled window, SiLU, the window shifted in place by slot (other slots untouched) and
dt's softplus. On CPU through Triton's interpreter (a subprocess: the interpreter is chosen when the kernel is built),
on the GPU as the server runs it."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model.ssd_ref import causal_conv1d_step_ref
from tests.conftest import check_in_triton_interpreter


def _check(device: str) -> None:
    from model import ssd_fused

    torch.manual_seed(0)
    for dtype, pool_dtype, with_bias in ((torch.float32, torch.float32, True), (torch.bfloat16, torch.bfloat16, True),
                                         (torch.bfloat16, torch.float32, False)):
        b, d, k, h, slots_total = 5, 300, 4, 14, 9
        proj = torch.randn(b, 40 + d + h, dtype=dtype, device=device)  # xbc and dt_raw: slices of a projection
        xbc, dt_raw = proj[:, 40:40 + d], proj[:, 40 + d:]
        # a window holds earlier inputs, so its values are of the input dtype whatever the pool's dtype
        pool = torch.randn(slots_total, k - 1, d, device=device).to(dtype).to(pool_dtype)
        ref_pool = pool.clone()
        weight = torch.randn(d, k, dtype=dtype, device=device) * 0.5
        bias = torch.randn(d, dtype=dtype, device=device) if with_bias else None
        dt_bias = torch.linspace(-14, 24, h, device=device)  # dt from ~1e-6 to past softplus's threshold
        slots = torch.tensor([3, 0, 7, 8, 2], device=device)
        act, dt = ssd_fused.conv_step_inplace(pool, slots, xbc, weight, bias, dt_raw, dt_bias)
        out, new = causal_conv1d_step_ref(xbc.float(), weight.float(), None if bias is None else bias.float(),
                                          ref_pool[slots].float())
        ref_pool[slots] = new.to(pool_dtype)
        assert act.dtype == dtype and dt.dtype == torch.float32
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1 / 64, atol=1 / 64)
        assert_close(act, F.silu(out).to(dtype), **tol)
        assert_close(dt, F.softplus(dt_raw.float() + dt_bias), rtol=1e-5, atol=0)  # relative, even for tiny dt
        assert torch.equal(pool, ref_pool)  # shifted exactly; slots not in the batch untouched
    with pytest.raises(ValueError):
        ssd_fused.conv_step_inplace(torch.zeros(2, 2, 8, device=device), torch.zeros(1, dtype=torch.long,
                                    device=device), torch.zeros(1, 8, device=device), torch.zeros(8, 4, device=device),
                                    None, torch.zeros(1, 2, device=device), torch.zeros(2, device=device))


def test_conv_step_equals_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_conv_step_fused import _check; _check('cpu')")


def test_the_in_place_scan_step_equals_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("import torch; from tests.model.test_ssd_fused import check_inplace_step; "
                                "check_inplace_step('cpu', torch.float32); check_inplace_step('cpu', torch.bfloat16)")


@pytest.mark.gpu
def test_conv_step_equals_the_reference_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check("cuda")


def check_mixer_steps(steps, *, out_tol: dict, ssm_tol: dict) -> None:
    """A Mamba layer's steps ``(tokens, lengths, starts)`` of three requests (right padding past each length) through
    the fused kernels against the reference path on a copy of the pool: outputs at every position and the pooled
    states, for slots out of order, in fp32 (the interpreter's) or on the GPU."""
    from unittest import mock

    from model import mamba2, ssd_fused
    from model.config import preset
    from model.state import Batch, MambaState

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = preset("mini-1:3")
    mixer = mamba2.Mamba2Mixer(config, backend="ref").to(device)
    slots_total, slots = 6, [4, 1, 3]
    pool = MambaState(conv=torch.randn(slots_total, config.conv_kernel - 1, config.conv_dim, device=device),
                      ssm=torch.randn(slots_total, config.n_heads, config.head_dim, config.d_state, device=device) * .1)
    ref_pool = MambaState(conv=pool.conv.clone(), ssm=pool.ssm.clone())
    with torch.no_grad():
        for t, lengths, starts in steps:
            hidden = torch.randn(len(slots), t, config.d_model, device=device)
            batch = Batch.make(slots, starts, lengths, max_context=64, device=device)
            want = mixer(hidden, ref_pool, batch)
            mixer.backend = "auto"
            with mock.patch.object(mamba2, "_fused_ops", return_value=ssd_fused), \
                    mock.patch.object(mixer, "_ops", return_value=(None, ssd_fused.ssd_step_fused)):
                got = mixer(hidden, pool, batch)
            mixer.backend = "ref"
            assert_close(got, want, **out_tol)
    assert_close(pool.conv, ref_pool.conv, rtol=0, atol=0)
    assert_close(pool.ssm, ref_pool.ssm, **ssm_tol)


def _check_mixer_decode() -> None:
    """A Mamba layer's decode steps through the fused kernels (conv step, in-place scan) equal the reference path."""
    check_mixer_steps([(1, [1, 1, 1], [5 + step] * 3) for step in range(3)], out_tol=dict(rtol=1e-4, atol=1e-5),
                      ssm_tol=dict(rtol=1e-5, atol=1e-6))


def test_a_mamba_layers_fused_decode_equals_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_conv_step_fused import _check_mixer_decode; "
                                "_check_mixer_decode()")


@pytest.mark.gpu
def test_a_mamba_layers_fused_decode_equals_the_reference_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_mixer_decode()
