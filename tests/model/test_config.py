import pytest

from model.config import ModelConfig, layout_from_attention, preset, replace
from tests.conftest import tiny_config


def test_layout_is_validated():
    with pytest.raises(ValueError, match="layout"):
        tiny_config("AXM")
    with pytest.raises(ValueError, match="layout"):
        tiny_config("")


def test_impossible_shapes_rejected():
    with pytest.raises(ValueError, match="multiple"):
        tiny_config(n_heads=3, n_kv_heads=2)
    with pytest.raises(ValueError, match="even"):
        tiny_config(head_dim=15)
    with pytest.raises(ValueError, match="positive"):
        tiny_config(d_ff=0)


def test_derived_fields_and_roundtrip():
    cfg = tiny_config("AMMA")
    assert cfg.n_layers == 4 and cfg.attention_layers == (0, 3) and cfg.mamba_layers == (1, 2)
    assert cfg.d_inner == 64 and cfg.d_kv == 32 and cfg.d_state == 16 and cfg.conv_dim == 2 * 32 + 64
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 4})
    assert replace(cfg, layout="MMMM").mamba_layers == (0, 1, 2, 3)


def test_frozen():
    cfg = tiny_config()
    with pytest.raises(Exception):
        cfg.d_model = 3


def test_layout_helpers_and_presets():
    assert layout_from_attention(6, [0, 4]) == "AMMMAM"
    with pytest.raises(ValueError):
        layout_from_attention(4, [5])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
    p = preset("transformer")
    assert (p.n_layers, p.d_model, p.n_heads, p.n_kv_heads, p.head_dim, p.d_ff) == (24, 896, 14, 2, 64, 4864)
    assert p.rope_theta == 1e6
    assert preset("small-1:3").attention_layers == (0, 4, 8)
