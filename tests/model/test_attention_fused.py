"""The Triton decode- and prefill-attention kernels equal SDPA over the gathered cache (ragged lengths, permuted
slots, strided inputs): on the GPU, and the prefill kernel also in Triton's interpreter (CPU, CI)."""

import pytest
import torch
from torch.testing import assert_close

from model.layers import repeat_heads
from tests.conftest import check_in_triton_interpreter

TF32 = dict(atol=2e-3, rtol=2e-3)
BF16 = dict(atol=2e-2, rtol=2e-2)


def _reference(q, k_cache, v_cache, slots, lengths):
    b, h, d = q.shape
    group = h // k_cache.shape[2]
    n = int(lengths.max())
    keys = repeat_heads(k_cache[slots, :n].float(), group).transpose(1, 2)  # (b, h, n, d)
    values = repeat_heads(v_cache[slots, :n].float(), group).transpose(1, 2)
    mask = torch.arange(n, device=q.device)[None, None, None, :] < lengths[:, None, None, None]
    out = torch.nn.functional.scaled_dot_product_attention(q.float()[:, :, None], keys, values, attn_mask=mask)
    return out[:, :, 0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads", [(14, 2), (4, 2), (8, 8)])
def test_decode_attention_matches_reference(dtype, heads, kv_heads):
    from model.attention_fused import decode_attention

    slots_total, ctx, d, b = 12, 700, 64, 9
    k_cache = torch.randn(slots_total, ctx, kv_heads, d, device="cuda").to(dtype)
    v_cache = torch.randn(slots_total, ctx, kv_heads, d, device="cuda").to(dtype)
    q = torch.randn(b, heads, d, device="cuda").to(dtype)
    slots = torch.randperm(slots_total, device="cuda")[:b]
    lengths = torch.tensor([1, 2, 63, 64, 65, 129, 300, 699, 700], device="cuda")
    out = decode_attention(q, k_cache, v_cache, slots, lengths)
    ref = _reference(q, k_cache, v_cache, slots, lengths)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    print(f"\ndecode attention {dtype} h={heads} kvh={kv_heads}: rel err {rel:.2e}")
    assert out.dtype == dtype
    assert_close(out.float(), ref, **(TF32 if dtype == torch.float32 else BF16))


@pytest.mark.gpu
def test_decode_attention_is_graph_capturable():
    from model.attention_fused import decode_attention

    k_cache = torch.randn(4, 256, 2, 64, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(4, 14, 64, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor([3, 1, 0, 2], device="cuda")
    lengths = torch.tensor([5, 100, 256, 1], device="cuda")
    decode_attention(q, k_cache, v_cache, slots, lengths)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, slots, lengths)
    lengths.copy_(torch.tensor([256, 7, 9, 200], device="cuda"))  # new lengths, same graph
    graph.replay()
    assert_close(out.float(), _reference(q, k_cache, v_cache, slots, lengths), **BF16)


def _prefill_reference(q, k_cache, v_cache, slots, starts):
    """SDPA in fp32 over each request's gathered cache, key j visible to the query at position p iff j <= p."""
    b, t, h, d = q.shape
    group = h // k_cache.shape[2]
    n = int(starts.max()) + t
    keys = repeat_heads(k_cache[slots, :n].float(), group).transpose(1, 2)  # (b, h, n, d)
    values = repeat_heads(v_cache[slots, :n].float(), group).transpose(1, 2)
    pos = starts[:, None] + torch.arange(t, device=q.device)[None, :]  # (b, t)
    mask = torch.arange(n, device=q.device)[None, None, :] <= pos[:, :, None]
    out = torch.nn.functional.scaled_dot_product_attention(q.float().transpose(1, 2), keys, values,
                                                           attn_mask=mask[:, None])
    return out.transpose(1, 2)  # (b, t, h, d)


def _check_prefill(device: str, dtypes=(torch.float32, torch.bfloat16),
                   heads=((14, 2), (4, 2), (8, 8))) -> None:
    from model.attention_fused import prefill_attention

    torch.manual_seed(0)
    for dtype in dtypes:
        for h, kv_heads in heads:
            slots_total, ctx, d = 7, 300, 64
            k_cache = torch.randn(slots_total, ctx, kv_heads, d, device=device).to(dtype)
            v_cache = torch.randn(slots_total, ctx, kv_heads, d, device=device).to(dtype)
            for t, starts in ((1, [0, 5, 299]), (9, [0, 3, 200]), (40, [0, 64, 130]), (70, [0, 1, 229])):
                # slots and starts as columns of one packed buffer, as a CUDA-graph prefill holds them
                packed = torch.tensor([[4, s, 0] for s in starts], device=device)
                slots, st = packed[:, 0], packed[:, 1]
                q = torch.randn(len(starts), t, h, d, device=device).to(dtype)
                out = prefill_attention(q, k_cache, v_cache, slots, st)
                ref = _prefill_reference(q, k_cache, v_cache, torch.tensor([4, 4, 4], device=device), st)
                assert out.dtype == dtype and out.shape == q.shape
                assert_close(out.float(), ref, **(TF32 if dtype == torch.float32 else BF16))
            # distinct slots, permuted, and queries that are a strided view (q of a fused projection)
            slots = torch.tensor([6, 0, 3], device=device)
            starts = torch.tensor([17, 0, 250], device=device)
            wide = torch.randn(3, 20, h + 1, d, device=device).to(dtype)
            q = wide[:, :, 1:]
            out = prefill_attention(q, k_cache, v_cache, slots, starts)
            assert_close(out.float(), _prefill_reference(q, k_cache, v_cache, slots, starts),
                         **(TF32 if dtype == torch.float32 else BF16))


def test_prefill_attention_matches_reference_in_tritons_interpreter():
    check_in_triton_interpreter("import torch; from tests.model.test_attention_fused import _check_prefill; "
                                "_check_prefill('cpu', dtypes=(torch.float32,))")


@pytest.mark.gpu
def test_prefill_attention_matches_reference():
    _check_prefill("cuda")


@pytest.mark.gpu
def test_prefill_attention_is_graph_capturable():
    from model.attention_fused import prefill_attention

    k_cache = torch.randn(4, 256, 2, 64, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(2, 32, 14, 64, device="cuda", dtype=torch.bfloat16)
    packed = torch.tensor([[3, 0], [1, 100]], device="cuda")
    prefill_attention(q, k_cache, v_cache, packed[:, 0], packed[:, 1])  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = prefill_attention(q, k_cache, v_cache, packed[:, 0], packed[:, 1])
    packed.copy_(torch.tensor([[0, 224], [2, 7]], device="cuda"))  # new slots and starts, same graph
    graph.replay()
    assert_close(out.float(), _prefill_reference(q, k_cache, v_cache, packed[:, 0], packed[:, 1]), **BF16)


def _check_model_prefill(device: str) -> None:
    """A model's prefill (fresh prompts of ragged lengths, then a continuation at later starts, then on the GPU a
    decode step) through the fused attention equals the reference path's logits; the interpreter forces the fused
    path on CPU."""
    from unittest import mock

    from model.layers import Attention
    from model.lm import SpeechLM
    from model.state import Batch, StatePool
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config("AMAA", d_model=128, n_heads=8, n_kv_heads=2, head_dim=32, max_context=256)
    model = SpeechLM(cfg, backend="ref").to(device).eval()
    slots = [3, 0, 1]
    steps = ((torch.randint(0, cfg.vocab_size, (3, 30), device=device), [0, 0, 0], [17, 30, 5]),
             (torch.randint(0, cfg.vocab_size, (3, 21), device=device), [17, 30, 5], [9, 21, 1]))
    results = {}
    for fused in (False, True):
        pool = StatePool(cfg, max_streams=5, device=device)
        outs = []
        with torch.no_grad(), mock.patch.object(Attention, "_fused", return_value=fused):
            for ids, starts, lens in steps:
                batch = Batch.make(slots, starts, lens, max_context=256, device=device)
                outs.append(model.prefill(ids, states=pool.layers, batch=batch))
            if device == "cuda":  # the decode kernel's loop has a runtime bound, which the interpreter cannot run
                b = Batch.make(slots, [26, 51, 6], [1, 1, 1], max_context=256, device=device)
                outs.append(model.decode_step(torch.tensor([1, 2, 3], device=device), states=pool.layers,
                                              batch=b))
        results[fused] = outs
    for got, want in zip(results[True], results[False]):
        assert_close(got, want, **TF32)


def test_a_models_prefill_through_the_fused_attention_equals_the_reference_in_tritons_interpreter():
    check_in_triton_interpreter("from tests.model.test_attention_fused import _check_model_prefill; "
                                "_check_model_prefill('cpu')")


@pytest.mark.gpu
def test_a_models_prefill_through_the_fused_attention_equals_the_reference():
    _check_model_prefill("cuda")
