"""GPU: the Triton decode-attention kernel equals SDPA over the gathered cache (ragged lengths, permuted slots)."""

import pytest
import torch
from torch.testing import assert_close

from model.layers import repeat_heads

pytestmark = pytest.mark.gpu

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
