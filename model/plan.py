"""Memory plan of a model: weights and per-stream state, from the same specs the state pool allocates.

``mamtra plan`` prints this as JSON so ops teams can size pods: how many streams of a given context fit beside the
weights on a card.
"""

from __future__ import annotations

from typing import Any

import torch

from model.config import ModelConfig
from model.lm import FP32_PARAMETERS, SpeechLM
from model.state import layer_state_specs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def parameter_bytes(config: ModelConfig, dtype: torch.dtype) -> tuple[int, int]:
    """(parameter count, bytes of weights in ``dtype``, A_log/dt_bias/D kept in fp32 as ``SpeechLM.cast_`` does)."""
    with torch.device("meta"):
        model = SpeechLM(config, backend="ref")
    itemsize = torch.empty((), dtype=dtype).element_size()
    params = nbytes = 0
    for name, p in model.named_parameters():
        params += p.numel()
        nbytes += p.numel() * (4 if name.rsplit(".", 1)[-1] in FP32_PARAMETERS else itemsize)
    return params, nbytes


def memory_plan(config: ModelConfig, *, context: int, streams: int, dtype: torch.dtype = torch.bfloat16,
                ssm_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    if context < 1 or streams < 1:
        raise ValueError("context and streams must be >= 1")
    if context > config.max_context:
        raise ValueError(f"context {context} exceeds the model's max_context {config.max_context}")
    specs = layer_state_specs(config, max_context=context, dtype=dtype, ssm_dtype=ssm_dtype)
    kv = sum(s.bytes_per_stream for s in specs if s.kind == "A")
    mamba = sum(s.bytes_per_stream for s in specs if s.kind == "M")
    params, weight_bytes = parameter_bytes(config, dtype)
    per_stream = kv + mamba
    return {
        "layout": config.layout,
        "attention_layers": list(config.attention_layers),
        "mamba_layers": list(config.mamba_layers),
        "params": params,
        "dtype": _name(dtype),
        "ssm_dtype": _name(ssm_dtype),
        "context": context,
        "streams": streams,
        "weight_bytes": weight_bytes,
        "kv_bytes_per_stream": kv,
        "mamba_state_bytes_per_stream": mamba,
        "state_bytes_per_stream": per_stream,
        "total_state_bytes": per_stream * streams,
        "total_bytes": weight_bytes + per_stream * streams,
    }


def _name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)
