"""Sampling: the allowed-ids fast path draws from the same distribution as the masked full vocabulary."""

import torch

from model.sampling import SamplingConfig, sample


def _setup(b=4, v=50):
    torch.manual_seed(0)
    logits = torch.randn(b, v) * 2
    ids = torch.tensor([3, 7, 8, 20, 21, 22, 40])
    mask = torch.zeros(v, dtype=torch.bool)
    mask[ids] = True
    return logits, ids, mask


def test_greedy_and_guard_agree_between_mask_and_ids():
    logits, ids, mask = _setup()
    cfg = SamplingConfig(temperature=0.0, max_repeat=2)
    a = sample(logits, cfg, allowed=mask)
    b = sample(logits, cfg, allowed=ids)
    assert torch.equal(a, b) and all(int(t) in ids.tolist() for t in b)
    last, runs = a.clone(), torch.tensor([2, 1, 5, 0])  # rows 0 and 2 repeated too often: their best is blocked
    a2 = sample(logits, cfg, allowed=mask, last_token=last, run_length=runs)
    b2 = sample(logits, cfg, allowed=ids, last_token=last, run_length=runs)
    assert torch.equal(a2, b2)
    assert a2[0] != a[0] and a2[2] != a[2] and a2[1] == a[1] and a2[3] == a[3]
    # a last token outside the allowed ids (e.g. none yet) blocks nothing
    b3 = sample(logits, cfg, allowed=ids, last_token=torch.tensor([0, 49, 5, 1]), run_length=torch.full((4,), 9))
    assert torch.equal(b3, a)


def test_sampled_frequencies_match_between_mask_and_ids():
    logits, ids, mask = _setup(b=1)
    cfg = SamplingConfig(temperature=1.0, top_k=5, top_p=0.9)
    n = 4000
    big = logits.expand(n, -1).contiguous()
    a = sample(big, cfg, allowed=mask)
    b = sample(big, cfg, allowed=ids)
    fa = torch.bincount(a, minlength=50).float() / n
    fb = torch.bincount(b, minlength=50).float() / n
    assert set(b.unique().tolist()) <= set(ids.tolist())
    assert (fa - fb).abs().max() < 0.04, (fa[ids], fb[ids])
