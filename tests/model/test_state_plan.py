"""State pool slots and sizes; the memory plan reports exactly what the pool allocates."""

import pytest
import torch

from model.config import PRESETS, preset
from model.plan import memory_plan
from model.state import Batch, StatePool
from tests.conftest import tiny_config


@pytest.mark.parametrize("name", ["small-transformer", "small-1:3", "small-mamba"])
@pytest.mark.parametrize("dtype,ssm_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_plan_matches_pool_allocation(name, dtype, ssm_dtype):
    cfg = preset(name)
    context, streams = 96, 3
    plan = memory_plan(cfg, context=context, streams=streams, dtype=dtype, ssm_dtype=ssm_dtype)
    pool = StatePool(cfg, max_streams=streams, max_context=context, dtype=dtype, ssm_dtype=ssm_dtype)
    real = pool.allocated_bytes()
    assert plan["kv_bytes_per_stream"] * streams == real["kv"]
    assert plan["mamba_state_bytes_per_stream"] * streams == real["mamba"]
    assert plan["total_state_bytes"] == real["total"]
    assert plan["layout"] == cfg.layout and plan["attention_layers"] == list(cfg.attention_layers)


def test_plan_params_match_a_real_model():
    from model.lm import SpeechLM

    cfg = tiny_config("AMMA")
    model = SpeechLM(cfg, backend="ref")
    plan = memory_plan(cfg, context=16, streams=1, dtype=torch.bfloat16)
    assert plan["params"] == model.num_parameters()
    model.cast_(torch.bfloat16)
    assert plan["weight_bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())


def test_paper_presets_and_crossover():
    assert PRESETS["mamtra-1:3"].attention_layers == (0, 4, 8, 12, 16, 20)
    assert PRESETS["mamtra-1:5"].attention_layers == (0, 8, 11, 16)
    assert PRESETS["mamtra-1:11"].attention_layers == (0, 16)
    assert PRESETS["mamba"].attention_layers == ()
    assert PRESETS["mamtra-1:1"].attention_layers == tuple(range(0, 24, 2))
    cfg = PRESETS["transformer"]
    # One Mamba layer's fp32 SSM state (224 KiB) weighs as much as ~450 tokens of one layer's bf16 KV cache.
    ssm = cfg.n_heads * cfg.head_dim * cfg.d_state * 4
    kv_per_token = 2 * cfg.n_kv_heads * cfg.head_dim * 2
    assert ssm == 224 * 1024 and 440 < ssm / kv_per_token < 460
    t = memory_plan(cfg, context=4096, streams=256)
    h = memory_plan(PRESETS["mamtra-1:3"], context=4096, streams=256)
    assert h["total_state_bytes"] < 0.5 * t["total_state_bytes"]
    short_t = memory_plan(cfg, context=256, streams=1)
    short_h = memory_plan(PRESETS["mamtra-1:1"], context=256, streams=1)
    assert short_h["state_bytes_per_stream"] > short_t["state_bytes_per_stream"]  # below the crossover


def test_pool_slots_allocate_free_reuse_and_reset():
    cfg = tiny_config("AMAM")
    pool = StatePool(cfg, max_streams=2)
    a, b = pool.allocate(), pool.allocate()
    assert {a, b} == {0, 1} and pool.num_free == 0
    with pytest.raises(RuntimeError, match="full"):
        pool.allocate()
    pool.layers[1].ssm[a].fill_(3.0)
    pool.layers[1].conv[a].fill_(3.0)
    pool.free(a)
    with pytest.raises(KeyError):
        pool.free(a)
    again = pool.allocate()
    assert again == a
    assert pool.layers[1].ssm[a].abs().sum() == 0 and pool.layers[1].conv[a].abs().sum() == 0


def test_pool_rejects_context_beyond_model():
    with pytest.raises(ValueError, match="max_context"):
        StatePool(tiny_config(), max_streams=1, max_context=10_000)


def test_batch_make_validation():
    with pytest.raises(ValueError, match="exceeds"):
        Batch.make([0], [120], [9], max_context=128)
    with pytest.raises(ValueError, match="twice"):
        Batch.make([0, 0], [0, 0], [1, 1], max_context=128)
    with pytest.raises(ValueError):
        Batch.make([0], [0], [0], max_context=128)
    b = Batch.make([3, 1], [5, 0], [2, 4], max_context=128)
    assert b.kv_len == 7 and b.positions.tolist() == [[5, 6, 7, 8], [0, 1, 2, 3]]
    assert b.valid.tolist() == [[True, True, False, False], [True, True, True, True]]
