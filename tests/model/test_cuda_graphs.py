"""GPU: a CUDA-graph decode step (bucketed, padded to a scratch slot) equals the eager step, and state advances the
same way."""

import pytest
import torch
from torch.testing import assert_close

from model.lm import SpeechLM
from model.state import Batch, StatePool
from tests.conftest import tiny_config

pytestmark = pytest.mark.gpu
TF32 = dict(atol=2e-3, rtol=2e-3)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["AMMA", "AAAA", "MMMM"])
def test_graphed_decode_equals_eager(layout):
    from model.cuda_graphs import GraphedDecoder

    cfg = tiny_config(layout, d_model=128, head_dim=32, max_context=256)
    model = SpeechLM(cfg, backend="auto").cuda().eval()
    lens = [17, 40, 5]
    ids = torch.randint(0, cfg.vocab_size, (3, 50), device="cuda")
    results = {}
    for mode in ("eager", "graph"):
        pool = StatePool(cfg, max_streams=5, device="cuda")
        slots = [3, 0, 1]  # slot 4 is the scratch slot
        model.prefill(ids[:, :max(lens)], states=pool.layers,
                      batch=Batch.make(slots, [0] * 3, lens, max_context=256, device="cuda"))
        graphs = GraphedDecoder(model, pool, scratch_slot=4, buckets=(1, 2, 4)) if mode == "graph" else None
        out = []
        for step in range(6):
            pos = [n + step for n in lens]
            tok = ids[:, step]
            if graphs is None:
                b = Batch.make(slots, pos, [1, 1, 1], max_context=256, device="cuda")
                out.append(model.decode_step(tok, states=pool.layers, batch=b).clone())
            else:  # batch 3 runs in bucket 4, one padding row on the scratch slot
                out.append(graphs(tok, torch.tensor(slots, device="cuda"), torch.tensor(pos, device="cuda")).clone())
        results[mode] = (torch.stack(out), [t.clone() for layer in pool.layers for t in vars(layer).values()])
    assert_close(results["graph"][0], results["eager"][0], **TF32)
    for g, e in zip(results["graph"][1], results["eager"][1]):
        assert_close(g[:4], e[:4], **TF32)  # every real slot's state; the scratch slot is free to differ


@torch.no_grad()
@pytest.mark.parametrize("layout", ["AMMA", "AAAA", "MMMM"])
def test_graphed_prefill_equals_eager(layout):
    """Prompts prefilled from a captured (sequences × tokens) bucket — fresh contexts and a continuation at a later
    start, padded rows on the scratch slot, padded columns — give the eager prefill's logits and leave every real
    slot's state as the eager prefill does; what the eager path cannot hold in a bucket is refused (None)."""
    from model.cuda_graphs import GraphedPrefill

    cfg = tiny_config(layout, d_model=128, head_dim=32, max_context=256)
    model = SpeechLM(cfg, backend="auto").cuda().eval()
    g = torch.Generator().manual_seed(0)
    first = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (17, 30, 5)]
    more = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (9, 21)]
    slots = [3, 0, 1]
    results = {}
    for mode in ("eager", "graph"):
        pool = StatePool(cfg, max_streams=5, device="cuda")
        graphs = GraphedPrefill(model, pool, scratch_slot=4, seq_buckets=(1, 4), len_buckets=(16, 32)) \
            if mode == "graph" else None
        outs = []
        for prompts, rows, starts in ((first, slots, [0, 0, 0]), (more, slots[:2], [17, 30])):
            if graphs is None:
                t = max(map(len, prompts))
                ids = torch.zeros(len(prompts), t, dtype=torch.long)
                for i, p in enumerate(prompts):
                    ids[i, :len(p)] = torch.tensor(p)
                batch = Batch.make(rows, starts, [len(p) for p in prompts], max_context=256, device="cuda")
                outs.append(model.prefill(ids.cuda(), states=pool.layers, batch=batch).clone())
            else:  # 3 prompts run in the 4-row bucket, 2 in it again; 17-30 tokens in the 32-token bucket
                outs.append(graphs([tuple(p) for p in prompts], rows, starts).clone())
        # one decode step after both prefills reads every real slot's state
        b = Batch.make(slots, [17 + 9, 30 + 21, 5], [1, 1, 1], max_context=256, device="cuda")
        outs.append(model.decode_step(torch.tensor([1, 2, 3], device="cuda"), states=pool.layers, batch=b).clone())
        results[mode] = outs
        if graphs is not None:
            assert graphs([tuple(range(33))], [2], [0]) is None  # more tokens than the largest bucket
            assert graphs([(1,)] * 5, [0, 1, 2, 3, 2], [0] * 5) is None  # more rows than the largest bucket
            assert graphs([(1, 2)], [2], [250]) is None  # the bucket's window would pass max_context
    for got, want in zip(results["graph"], results["eager"]):
        assert_close(got, want, **TF32)



@torch.no_grad()
def test_a_prefill_graph_replayed_beside_a_decode_graph_changes_neither():
    """Runner(overlap_prefill) replays a prefill graph on a second stream while a decode graph runs: both must give
    what each gives alone, replay after replay (each kind of graph captures on a stream of its own, so that their
    GEMMs do not share the cuBLAS workspace of torch.cuda.graph's default capture stream)."""
    from model.cuda_graphs import GraphedDecoder, GraphedPrefill

    cfg = tiny_config("AMMA", vocab_size=4096, d_model=1024, n_heads=16, n_kv_heads=2, head_dim=64, d_ff=4096,
                      max_context=256, ssd_chunk_size=64)
    model = SpeechLM(cfg, backend="auto").cuda().to(torch.bfloat16).eval()
    pool = StatePool(cfg, max_streams=9, dtype=torch.bfloat16, device="cuda")
    dec_slots = [0, 1, 2, 3, 4, 5]
    ids = torch.randint(0, cfg.vocab_size, (6, 20), device="cuda")
    model.prefill(ids, states=pool.layers, batch=Batch.make(dec_slots, [0] * 6, [20] * 6, max_context=256,
                                                            device="cuda"))
    decoder = GraphedDecoder(model, pool, scratch_slot=8, buckets=(8,))
    prefill = GraphedPrefill(model, pool, scratch_slot=8, seq_buckets=(2,), len_buckets=(32,))
    decoder.capture(8)
    prefill.capture(2, 32)
    saved = [t.clone() for layer in pool.layers for t in vars(layer).values()]

    def restore():
        for t, s in zip((t for layer in pool.layers for t in vars(layer).values()), saved):
            t.copy_(s)

    tok, slots = torch.randint(0, cfg.vocab_size, (6,), device="cuda"), torch.tensor(dec_slots, device="cuda")
    pos = torch.full((6,), 20, device="cuda")
    prompts, p_slots = [tuple(range(3, 30)), tuple(range(40, 52))], [6, 7]
    restore()
    want_dec = decoder(tok, slots, pos).clone()
    want_pre = prefill(prompts, p_slots, [0, 0]).clone()
    side = torch.cuda.Stream()
    for _ in range(30):
        restore()
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            got_pre = prefill(prompts, p_slots, [0, 0])
        got_dec = decoder(tok, slots, pos)
        main.wait_stream(side)
        assert torch.equal(got_dec, want_dec)
        assert torch.equal(got_pre, want_pre)
