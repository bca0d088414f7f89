"""The fused RMSNorm and gated RMSNorm kernels (``model.norm_fused``) against the PyTorch reference: on CPU through
Triton's interpreter (a subprocess, since the interpreter is chosen when the kernels are built), on the GPU as they
run in the server, and a whole model's decode with and without them."""

import pytest
import torch
from torch.testing import assert_close

from model import norm_fused
from model.layers import RMSNorm
from tests.conftest import check_in_triton_interpreter

BF16 = dict(rtol=1 / 64, atol=1e-6)  # a rounding step of bf16 either way (the mean's additions differ in order)


def _reference_gated(y, z, w, eps, dtype):
    b, t, h, p = y.shape
    g = y.float() * torch.nn.functional.silu(z.float()).reshape(b, t, h, p)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (g.reshape(b, t, h * p) * w.float()).to(dtype)


def _check(device: str) -> None:
    torch.manual_seed(0)
    for dt, wdt in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)):
        x = torch.randn(3, 5, 96, dtype=dt, device=device) * 3
        norm = RMSNorm(96, 1e-6).to(device=device, dtype=wdt)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(96) + 0.5)
        xf = x.float()
        ref = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dt)
        out = norm_fused.rms_norm(x, norm.weight, 1e-6)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        assert_close(out, ref, **(BF16 if torch.bfloat16 in (dt, wdt) else dict(rtol=1e-5, atol=1e-5)))
    # a strided z (a slice of the input projection), fp32 and bf16 out
    y = torch.randn(2, 3, 4, 16, device=device)
    z = torch.randn(2, 3, 100, dtype=torch.bfloat16, device=device)[..., 10:74]
    w = torch.rand(64, device=device) + 0.5
    for out_dtype in (torch.float32, torch.bfloat16):
        out = norm_fused.gated_rms_norm(y, z, w, 1e-5, out_dtype)
        ref = _reference_gated(y, z, w, 1e-5, out_dtype)
        assert out.dtype == out_dtype and out.shape == (2, 3, 64)
        assert_close(out, ref, **(BF16 if out_dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)))
    with pytest.raises(ValueError):
        norm_fused.gated_rms_norm(torch.zeros(1, 1, 2, 12, device=device), torch.zeros(1, 1, 24, device=device),
                                  torch.ones(24, device=device), 1e-5, torch.float32)


def test_kernels_equal_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_norm_fused import _check; _check('cpu')")


def test_fused_only_for_cuda_inference():
    x = torch.zeros(2, 4)
    assert not norm_fused.usable(x)  # CPU: the reference ops


@pytest.mark.gpu
def test_kernels_equal_the_reference_on_the_gpu():
    _check("cuda")
    x = torch.zeros(2, 4, device="cuda")
    with torch.inference_mode():
        assert norm_fused.usable(x)
    assert not norm_fused.usable(x.requires_grad_())  # training keeps autograd's ops


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["AMMA", "MMMM"])
def test_model_decode_with_fused_norms_equals_the_reference(layout, monkeypatch):
    from model.lm import SpeechLM
    from model.state import Batch, StatePool
    from tests.conftest import tiny_config

    cfg = tiny_config(layout, d_model=128, head_dim=32, max_context=256)
    model = SpeechLM(cfg, backend="auto").cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 20), device="cuda")
    outs = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(norm_fused, "usable", lambda x: False)
        pool = StatePool(cfg, max_streams=3, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            first = model.prefill(ids, states=pool.layers, batch=Batch.make([0, 1, 2], [0] * 3, [20] * 3,
                                                                          max_context=256, device="cuda"))
            step = model.decode_step(ids[:, 0], states=pool.layers,
                                     batch=Batch.make([0, 1, 2], [20] * 3, [1] * 3, max_context=256, device="cuda"))
        outs[fused] = (first.float(), step.float())
    for a, b in zip(outs[True], outs[False]):
        assert (a - b).abs().max() <= 0.05 * b.abs().max()  # bf16 through a few layers: rounding, not a wrong norm


def test_the_setting_turns_the_kernels_off(monkeypatch):
    """MAMTRA_FUSED_NORMS=false reaches the model's norms through build_engine (before the model is cast)."""
    from types import SimpleNamespace

    import service.engine.bundle as bundle
    import service.engine.mps as mps
    from service.engine.engine import build_engine
    from service.metrics import Metrics
    from service.settings import Settings

    cuda_like = SimpleNamespace(is_cuda=True)
    seen = []

    class Stop(Exception):
        pass

    class Model:
        def cast_(self, dtype):
            seen.append(norm_fused.usable(cuda_like))
            raise Stop

    monkeypatch.setattr(mps, "start_mps", lambda mode, **kw: None)
    monkeypatch.setattr(bundle, "resolve_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(bundle, "load_bundle", lambda model_dir, **kw: (Model(), None))
    try:
        with torch.no_grad():
            for flag in (False, True):
                with pytest.raises(Stop):
                    build_engine(Settings(fused_norms=flag), Metrics())
    finally:
        norm_fused.set_enabled(True)
    assert seen == [False, norm_fused._triton_importable()]
