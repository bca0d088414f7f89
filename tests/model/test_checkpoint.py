"""Checkpoints: safetensors + versioned JSON round-trip; clear errors naming what is wrong."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from model.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from model.lm import SpeechLM
from tests.conftest import tiny_config


@pytest.mark.parametrize("tie", [False, True])
def test_roundtrip(tmp_path, tie):
    model = SpeechLM(tiny_config("AMMA", tie_embeddings=tie), backend="ref").eval()
    save_checkpoint(model, tmp_path, meta={"note": "test"})
    loaded = load_checkpoint(tmp_path, backend="ref")
    assert loaded.config == model.config
    assert read_config(tmp_path)[1] == {"note": "test"}
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert_close(loaded(ids), model(ids))
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()


def test_fp16_checkpoint_is_half_the_size(tmp_path):
    model = SpeechLM(tiny_config("AMAM"), backend="ref")
    save_checkpoint(model, tmp_path / "a")
    save_checkpoint(model, tmp_path / "b", dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in load_file(str(tmp_path / "b" / "model.safetensors")).values())
    a = (tmp_path / "a" / "model.safetensors").stat().st_size
    b = (tmp_path / "b" / "model.safetensors").stat().st_size
    assert b < 0.55 * a
    load_checkpoint(tmp_path / "b", backend="ref")


def test_missing_key_is_named(tmp_path):
    save_checkpoint(SpeechLM(tiny_config("AMAM"), backend="ref"), tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["layers.1.mixer.A_log"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: \['layers.1.mixer.A_log'\]"):
        load_checkpoint(tmp_path)


def test_shape_mismatch_is_named(tmp_path):
    save_checkpoint(SpeechLM(tiny_config("AMAM"), backend="ref"), tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch for layers.0.mlp.up_proj.weight"):
        load_checkpoint(tmp_path)


def test_unexpected_key_is_named(tmp_path):
    save_checkpoint(SpeechLM(tiny_config("AMAM"), backend="ref"), tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys: \\['extra.weight'\\]"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"version": 99}, "version 99 is not supported"),
    ({"format": "other"}, "format 'other'"),
])
def test_unknown_version_or_format(tmp_path, change, match):
    save_checkpoint(SpeechLM(tiny_config("AMAM"), backend="ref"), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc.update(change)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path)


def test_bad_config_values(tmp_path):
    save_checkpoint(SpeechLM(tiny_config("AMAM"), backend="ref"), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["model"]["layout"] = "AQ"
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="layout"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "nowhere")
