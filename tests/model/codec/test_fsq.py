"""FSQ: ids cover the codebook exactly once, codes round-trip, gradients pass straight through."""

from __future__ import annotations

import itertools

import pytest
import torch

from model.codec.fsq import FSQ


@pytest.mark.parametrize("levels", [(7, 5, 5, 5, 5), (8, 6, 5), (5, 5, 3)])
def test_ids_cover_the_codebook_and_round_trip(levels):
    fsq = FSQ(levels)
    assert fsq.codebook_size == torch.tensor(levels).prod().item()
    ids = torch.arange(fsq.codebook_size)[None]
    codes = fsq.indices_to_codes(ids)
    assert codes.shape == (1, len(levels), fsq.codebook_size)
    assert float(codes.abs().max()) <= 1.0
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    grid = {tuple(c) for c in codes[0].T.tolist()}
    assert len(grid) == fsq.codebook_size  # all distinct
    per_dim = [sorted({c[d] for c in grid}) for d in range(len(levels))]
    assert [len(v) for v in per_dim] == list(levels)
    assert len(list(itertools.product(*per_dim))) == fsq.codebook_size


def test_quantise_matches_ids_and_passes_gradients():
    fsq = FSQ((7, 5, 5, 5, 5))
    z = (3 * torch.randn(2, 5, 40)).requires_grad_()
    codes, ids = fsq(z)
    assert ids.shape == (2, 40) and int(ids.min()) >= 0 and int(ids.max()) < fsq.codebook_size
    torch.testing.assert_close(fsq.indices_to_codes(ids), codes.detach())
    codes.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0  # straight-through, not zero
    # extreme inputs saturate at the outer levels instead of overflowing into another digit
    _, ids_hi = fsq(torch.full((1, 5, 1), 100.0))
    assert int(ids_hi) == fsq.codebook_size - 1
