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


def test_counter_noise_is_a_function_of_key_and_column_and_looks_uniform():
    from model.sampling import counter_uniform

    keys = torch.arange(2000, dtype=torch.long) * 7919 + 3
    cols = torch.arange(64, dtype=torch.long).expand(2000, -1)
    u = counter_uniform(keys, cols)
    assert u.shape == (2000, 64) and u.dtype == torch.float32
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert torch.equal(u, counter_uniform(keys, cols))  # no hidden state
    assert torch.equal(u[5:6], counter_uniform(keys[5:6], cols[5:6]))  # a row's noise ignores the other rows
    # the same key over another set of columns gives each column the same number
    assert torch.equal(counter_uniform(keys[:1], torch.tensor([[63, 2]])), u[:1, [63, 2]])
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1) / u.numel()
    assert (counts - 0.1).abs().max() < 0.005, counts
    # neighbouring keys and neighbouring columns are not correlated
    assert abs(float(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1])) < 0.02


def test_keyed_draws_follow_the_same_distribution_and_repeat_with_their_keys():
    logits, ids, mask = _setup(b=1)
    cfg = SamplingConfig(temperature=1.0, top_k=5, top_p=0.9)
    n = 4000
    big = logits.expand(n, -1).contiguous()
    keys = torch.randint(0, 2**32, (n,), generator=torch.Generator().manual_seed(1))
    a = sample(big, cfg, allowed=mask)  # the global RNG
    b = sample(big, cfg, allowed=ids, keys=keys)
    fa = torch.bincount(a, minlength=50).float() / n
    fb = torch.bincount(b, minlength=50).float() / n
    assert (fa - fb).abs().max() < 0.04, (fa[ids], fb[ids])
    assert torch.equal(b, sample(big, cfg, allowed=ids, keys=keys))
    # a row's draw depends on its key and logits only, not on the rows beside it
    assert torch.equal(b[7:8], sample(big[7:8], cfg, allowed=ids, keys=keys[7:8]))
    # the mask and the ids paths key the noise by token id: the same keys give the same draws
    assert torch.equal(b, sample(big, cfg, allowed=mask, keys=keys))
