"""Our pure-attention model given a Qwen2 state dict computes the same logits as transformers' Qwen2.

A tiny random Qwen2ForCausalLM is built locally: nothing is downloaded.
"""

import pytest
import torch
from torch.testing import assert_close

from model.lm import SpeechLM
from model.qwen2 import config_from_qwen2, load_qwen2_state_dict
from model.state import Batch, StatePool

transformers = pytest.importorskip("transformers")
FP32 = dict(atol=1e-4, rtol=1e-4)


def _tiny_qwen2(tie: bool):
    cfg = transformers.Qwen2Config(
        vocab_size=101, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases, so that their mapping is exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.5)
    return model


@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_qwen2_parity(tie):
    hf = _tiny_qwen2(tie)
    cfg = config_from_qwen2(hf.config)
    assert cfg.rope_theta == 1_000_000.0 and cfg.tie_embeddings == tie
    ours = load_qwen2_state_dict(SpeechLM(cfg, backend="ref"), hf.state_dict()).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 19))
    expected = hf(input_ids=ids).logits
    assert_close(ours(ids), expected, **FP32)

    # and through the cached path: prefill + decode
    pool = StatePool(cfg, max_streams=2)
    slots = [pool.allocate(), pool.allocate()]
    first = ours.prefill(ids[:, :10], states=pool.layers, batch=Batch.make(slots, [0, 0], [10, 10], max_context=128))
    assert_close(first, expected[:, 9], **FP32)
    step = ours.decode_step(ids[:, 10], states=pool.layers, batch=Batch.make(slots, [10, 10], [1, 1], max_context=128))
    assert_close(step, expected[:, 10], **FP32)


def test_qwen2_missing_key_is_named():
    from model.checkpoint import CheckpointError

    hf = _tiny_qwen2(False)
    sd = dict(hf.state_dict())
    del sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match="layers.1.mlp.up_proj.weight"):
        load_qwen2_state_dict(SpeechLM(config_from_qwen2(hf.config), backend="ref"), sd)
