"""Shared fixtures: tiny random configs for CPU tests, and the GPU skip."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig


def tiny_config(layout: str = "AMAM", **overrides) -> ModelConfig:
    base = dict(layout=layout, vocab_size=97, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
                max_context=128, rope_theta=10_000.0, ssd_chunk_size=8)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
