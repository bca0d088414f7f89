"""The speech language model: a Qwen2-family decoder whose layers are attention (``A``) or Mamba-2 (``M``).

Three entry points, one set of weights:

- ``forward(input_ids)``: whole sequences from position 0, no cache (training, distillation, scoring).
- ``prefill(input_ids, states=..., batch=...)``: a variable-length batch of requests appends new tokens to the
  contexts held in their state slots (right-padded; ``batch.valid`` marks real tokens). A fresh request starts at
  position 0; a request that continues (the next sentence of a long text) starts where it stopped.
- ``decode_step(input_ids, states=..., batch=...)``: one new token per running request.

``prefill`` and ``decode_step`` are the compile / CUDA-graph boundaries: the runner owns graphs and the state pool;
the model holds neither.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.layers import MLP, Attention, RMSNorm, RotaryEmbedding
from model.mamba2 import Mamba2Mixer
from model.state import Batch, LayerState, StateSpec, layer_state_specs


FP32_PARAMETERS = frozenset({"A_log", "dt_bias", "D"})


class Block(nn.Module):
    """RMSNorm -> mixer (attention or Mamba) -> residual -> RMSNorm -> SwiGLU -> residual."""

    def __init__(self, config: ModelConfig, kind: str, *, backend: str) -> None:
        super().__init__()
        self.kind = kind
        self.input_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.mixer: Attention | Mamba2Mixer = (Attention(config, backend=backend) if kind == "A"
                                               else Mamba2Mixer(config, backend=backend))
        self.post_attention_layernorm = RMSNorm(config.d_model, config.rms_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], state: LayerState | None,
                batch: Batch | None) -> Tensor:
        h = self.input_layernorm(x)
        if self.kind == "A":
            h = self.mixer(h, rope, state, batch)
        else:
            h = self.mixer(h, state, batch)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class SpeechLM(nn.Module):
    def __init__(self, config: ModelConfig, *, backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, kind, backend=backend) for kind in config.layout)
        self.norm = RMSNorm(config.d_model, config.rms_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(config.head_dim, config.max_context, config.rope_theta)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)

    # --- state -------------------------------------------------------------------------------------------------
    def state_specs(self, *, max_context: int | None = None, dtype: torch.dtype = torch.float32,
                    ssm_dtype: torch.dtype = torch.float32) -> list[StateSpec]:
        return layer_state_specs(self.config, max_context=max_context or self.config.max_context, dtype=dtype,
                                 ssm_dtype=ssm_dtype)

    # --- entry points ------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, *, return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """input_ids (b, t) -> logits (b, t, vocab); with return_hidden also every block's output (b, t, d_model),
        the last one after the final norm."""
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        hidden = self._backbone(input_ids, positions, None, None, collect=return_hidden)
        logits = self.lm_head(hidden[-1])
        return (logits, hidden) if return_hidden else logits

    def prefill(self, input_ids: Tensor, *, states: list[LayerState], batch: Batch) -> Tensor:
        """input_ids (b, t) right-padded -> logits (b, vocab) at each request's last new token."""
        hidden = self._backbone(input_ids, batch.positions, states, batch)[-1]
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.lengths - 1]  # (b, d)
        return self.lm_head(last)

    def decode_step(self, input_ids: Tensor, *, states: list[LayerState], batch: Batch) -> Tensor:
        """input_ids (b,) -> logits (b, vocab)."""
        hidden = self._backbone(input_ids[:, None], batch.positions, states, batch)[-1]
        return self.lm_head(hidden[:, 0])

    def _backbone(self, input_ids: Tensor, positions: Tensor, states: list[LayerState] | None,
                  batch: Batch | None, *, collect: bool = False) -> list[Tensor]:
        x = self.embed_tokens(input_ids)
        rope = self.rotary(positions)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, None if states is None else states[i], batch)
            if collect:
                outs.append(x)
        x = self.norm(x)
        return [*outs[:-1], x] if collect else [x]

    def cast_(self, dtype: torch.dtype) -> "SpeechLM":
        """Cast weights to ``dtype`` in place, keeping the SSM's per-head A_log, dt_bias and D in float32: they enter
        exp/softplus every step and cost nothing to keep exact."""
        for name, param in self.named_parameters():
            if name.rsplit(".", 1)[-1] not in FP32_PARAMETERS:
                param.data = param.data.to(dtype)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() already counts a tied weight once
