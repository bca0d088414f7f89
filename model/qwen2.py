"""Load a Qwen2 (``transformers`` Qwen2ForCausalLM) state dict into a pure-attention ``SpeechLM``.

CosyVoice 2's LM is a Qwen2 decoder, so the teacher family must be able to take its weights. Our module names follow
Qwen2's except ``self_attn`` -> ``mixer`` and the missing ``model.`` prefix; nothing else is renamed or reshaped.
``transformers`` is not imported here: the caller hands over a plain state dict and config values.
"""

from __future__ import annotations

from typing import Any

import torch

from model.checkpoint import load_state_dict_strict
from model.config import ModelConfig
from model.lm import SpeechLM


def config_from_qwen2(hf: Any, *, max_context: int | None = None) -> ModelConfig:
    """Our config from a ``transformers`` Qwen2Config (or any object with the same attributes)."""
    n_heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // n_heads
    rope_theta = getattr(hf, "rope_theta", None)
    if rope_theta is None:  # transformers >= 5 keeps it in rope_parameters
        rope_theta = (getattr(hf, "rope_parameters", None) or {}).get("rope_theta", 10_000.0)
    return ModelConfig(
        layout="A" * hf.num_hidden_layers, vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_heads=n_heads,
        n_kv_heads=hf.num_key_value_heads, head_dim=head_dim, d_ff=hf.intermediate_size,
        max_context=max_context or hf.max_position_embeddings, rope_theta=float(rope_theta),
        rms_eps=hf.rms_norm_eps, qkv_bias=True, tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)))


def qwen2_key(name: str) -> str:
    if name.startswith("model."):
        name = name[len("model."):]
    return name.replace(".self_attn.", ".mixer.")


def load_qwen2_state_dict(model: SpeechLM, state_dict: dict[str, torch.Tensor]) -> SpeechLM:
    if set(model.config.layout) != {"A"}:
        raise ValueError("Qwen2 weights load into a pure-attention layout only; build students with model.transfer")
    tensors = {qwen2_key(k): v for k, v in state_dict.items() if "rotary_emb" not in k}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    load_state_dict_strict(model, tensors, source="qwen2 state dict")
    return model
