"""GPU: the fused (Triton, fla-core) SSD kernels equal the reference, outputs and final states; and the whole model
gives the same logits on either backend. Run on a CUDA machine with ``pytest -m gpu -s`` (prints the errors)."""

import pytest
import torch
from torch.testing import assert_close

from model.ssd_ref import ssd_chunked_ref, ssd_step_ref

pytestmark = pytest.mark.gpu

# Triton's float32 dot runs in tf32 (~3e-4 relative); bf16 operands land between 1e-3 and 1e-2.
TF32 = dict(atol=2e-3, rtol=2e-3)
BF16 = dict(atol=3e-2, rtol=3e-2)


def _fused():
    from model import ssd_fused

    if not ssd_fused.available():
        pytest.skip("fla-core (Triton kernels) not importable")
    return ssd_fused


def _inputs(b, t, h=14, p=64, n=64, dtype=torch.float32):
    dev = "cuda"
    x = torch.randn(b, t, h, p, device=dev)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h, device=dev) - 3.0)
    A = -torch.empty(h, device=dev).uniform_(1, 16)
    B = torch.randn(b, t, h, n, device=dev) / n**0.5
    C = torch.randn(b, t, h, n, device=dev) / n**0.5
    return x.to(dtype), dt, A, B.to(dtype), C.to(dtype)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("t", [1, 37, 64, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_fused_equals_reference(t, dtype):
    fused = _fused()
    x, dt, A, B, C = _inputs(3, t, dtype=dtype)
    init = torch.randn(3, 14, 64, 64, device="cuda") * 0.1
    dt[1, t // 2:] = 0.0  # a right-padded request
    y_ref, s_ref = ssd_chunked_ref(x.double(), dt.double(), A.double(), B.double(), C.double(),
                                   initial_state=init.double())
    y, s = fused.ssd_chunked_fused(x, dt, A, B, C, initial_state=init)
    print(f"\nchunked t={t} {dtype}: y rel err {_rel(y, y_ref):.2e}, state rel err {_rel(s, s_ref):.2e}")
    assert y.dtype == dtype and s.dtype == torch.float32
    tol = TF32 if dtype == torch.float32 else BF16
    assert_close(y.double(), y_ref.to(torch.float64), **tol)
    assert_close(s.double(), s_ref.to(torch.float64), **tol)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_step_fused_equals_reference(state_dtype):
    fused = _fused()
    x, dt, A, B, C = _inputs(256, 1)
    state = (torch.randn(256, 14, 64, 64, device="cuda") * 0.1).to(state_dtype)
    y_ref, s_ref = ssd_step_ref(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    y, s = fused.ssd_step_fused(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    print(f"\nstep state {state_dtype}: y rel err {_rel(y, y_ref):.2e}, state rel err {_rel(s, s_ref):.2e}")
    assert s.dtype == state_dtype
    assert_close(y, y_ref, **TF32)
    assert_close(s.float(), s_ref.float(), **(TF32 if state_dtype == torch.float32 else BF16))


@torch.no_grad()
def test_model_fused_backend_equals_reference():
    _fused()
    from model.lm import SpeechLM
    from model.state import Batch, StatePool
    from tests.conftest import tiny_config

    cfg = tiny_config("AMMA", n_heads=4, n_kv_heads=2, head_dim=32, d_model=128, max_context=256)
    ref = SpeechLM(cfg, backend="ref").cuda().eval()
    fused = SpeechLM(cfg, backend="triton").cuda().eval()
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (3, 40), device="cuda")
    assert_close(fused(ids), ref(ids), **TF32)

    outs = {}
    for name, model in (("ref", ref), ("fused", fused)):
        pool = StatePool(cfg, max_streams=3, device="cuda")
        slots = [pool.allocate() for _ in range(3)]
        lens = [40, 17, 29]
        logits = [model.prefill(ids, states=pool.layers, batch=Batch.make(slots, [0, 0, 0], lens,
                                                                          max_context=256, device="cuda"))]
        for step in range(5):
            b = Batch.make(slots, [n + step for n in lens], [1, 1, 1], max_context=256, device="cuda")
            logits.append(model.decode_step(ids[:, step], states=pool.layers, batch=b))
        outs[name] = torch.stack(logits, 1)
        outs[name + "_state"] = pool.layers[1].ssm.clone()
    print(f"\nmodel: logits rel err {_rel(outs['fused'], outs['ref']):.2e}, "
          f"state rel err {_rel(outs['fused_state'], outs['ref_state']):.2e}")
    assert_close(outs["fused"], outs["ref"], **TF32)
    assert_close(outs["fused_state"], outs["ref_state"], **TF32)


def check_inplace_step(device: str, state_dtype: torch.dtype) -> None:
    """``ssd_step_inplace`` equals gathering the slots' states, the reference step, the D skip and the scatter back
    (also run in Triton's interpreter: tests/model/test_conv_step_fused.py)."""
    from model import ssd_fused

    b, h, kvh, p, n, slots_total = 37, 14, 2, 64, 64, 50
    pool = (torch.randn(slots_total, h, p, n, device=device) * 0.1).to(state_dtype)
    ref_pool = pool.clone()
    slots = torch.randperm(slots_total, device=device)[:b]
    x_kv = torch.randn(b, kvh, p, device=device)
    B_kv = torch.randn(b, kvh, n, device=device) / n**0.5
    C = torch.randn(b, h, n, device=device) / n**0.5
    dt = torch.nn.functional.softplus(torch.randn(b, h, device=device) - 3.0)
    A = -torch.empty(h, device=device).uniform_(1, 16)
    D = torch.randn(h, device=device)
    y = ssd_fused.ssd_step_inplace(pool, slots, x_kv, dt, A, B_kv, C, D)
    x, B = x_kv.repeat_interleave(h // kvh, 1), B_kv.repeat_interleave(h // kvh, 1)
    y_ref, new = ssd_step_ref(ref_pool[slots], x, dt, A, B, C)
    ref_pool[slots] = new
    y_ref = y_ref + D[:, None] * x
    print(f"\nin-place step state {state_dtype}: y rel err {_rel(y, y_ref):.2e}, pool rel err {_rel(pool, ref_pool):.2e}")
    assert_close(y, y_ref, **TF32)
    assert_close(pool.float(), ref_pool.float(), **(TF32 if state_dtype == torch.float32 else BF16))


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_inplace_step_equals_gather_step_scatter(state_dtype):
    _fused()
    check_inplace_step("cuda", state_dtype)
