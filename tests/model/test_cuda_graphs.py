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
