"""Model configuration: one frozen dataclass and the named presets.

The layer layout is explicit, one letter per layer: ``A`` = grouped-query attention, ``M`` = Mamba-2 mixer in the
"Mamba in the Llama" form. Everything else (norms, SwiGLU MLP, embeddings, head) is shared by both layer kinds, which
is what lets a hybrid student be initialised from a Transformer teacher.

A versioned JSON form of the config sits beside every checkpoint (see ``model.checkpoint``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CONFIG_VERSION = 1
LAYER_KINDS = ("A", "M")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one speech LM. Derived sizes are computed in ``__post_init__``."""

    layout: str
    vocab_size: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_context: int = 8192
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    qkv_bias: bool = True  # Qwen2 (and so CosyVoice 2's LM) has biases on q/k/v, none on o
    tie_embeddings: bool = False
    conv_kernel: int = 4  # Mamba depthwise causal conv width
    ssd_chunk_size: int = 64  # chunk length of the parallel SSD scan (a numerics/speed knob, not a weight)
    # Derived (not constructor arguments).
    n_layers: int = field(init=False)
    attention_layers: tuple[int, ...] = field(init=False)
    mamba_layers: tuple[int, ...] = field(init=False)
    d_inner: int = field(init=False)  # query width = Mamba inner width (expand 1 over the attention's heads)
    d_kv: int = field(init=False)  # key/value width = Mamba x and B width before repeating to the heads
    d_state: int = field(init=False)
    conv_dim: int = field(init=False)  # channels of the Mamba conv: x ‖ B ‖ C

    def __post_init__(self) -> None:
        if not self.layout or any(c not in LAYER_KINDS for c in self.layout):
            raise ValueError(f"layout must be a non-empty string of 'A'/'M' letters, got {self.layout!r}")
        for name in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_context",
                     "conv_kernel", "ssd_chunk_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.conv_kernel < 2:
            raise ValueError(f"conv_kernel must be at least 2, got {self.conv_kernel}")
        if self.rms_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_eps and rope_theta must be positive")
        set_ = object.__setattr__  # frozen: derived fields are written once, here
        set_(self, "n_layers", len(self.layout))
        set_(self, "attention_layers", tuple(i for i, c in enumerate(self.layout) if c == "A"))
        set_(self, "mamba_layers", tuple(i for i, c in enumerate(self.layout) if c == "M"))
        set_(self, "d_inner", self.n_heads * self.head_dim)
        set_(self, "d_kv", self.n_kv_heads * self.head_dim)
        set_(self, "d_state", self.head_dim)
        set_(self, "conv_dim", 2 * self.n_kv_heads * self.head_dim + self.n_heads * self.head_dim)

    @property
    def kv_group(self) -> int:
        """Query heads per KV head (GQA); x and B are repeated by this factor in the Mamba mixer."""
        return self.n_heads // self.n_kv_heads

    def with_layout(self, layout: str) -> "ModelConfig":
        return replace(self, layout=layout)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)


def replace(config: ModelConfig, **changes: Any) -> ModelConfig:
    """``dataclasses.replace`` that only passes constructor fields (derived ones are recomputed)."""
    data = config.to_dict()
    data.update(changes)
    return ModelConfig(**data)


def layout_from_attention(n_layers: int, attention_layers: tuple[int, ...] | list[int]) -> str:
    bad = [i for i in attention_layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"attention layer indices {bad} out of range for {n_layers} layers")
    keep = set(attention_layers)
    return "".join("A" if i in keep else "M" for i in range(n_layers))


# Paper scale: CosyVoice 2's LM (Qwen2.5-0.5B dims). Used with random weights for memory/speed work.
# vocab = Qwen2.5's 151,936 text tokens + 6,561 FSQ speech codes + 3 speech specials, in one table.
_PAPER = dict(vocab_size=158_500, d_model=896, n_heads=14, n_kv_heads=2, head_dim=64, d_ff=4864,
              rope_theta=1_000_000.0, rms_eps=1e-6, max_context=8192, qkv_bias=True)
_PAPER_ATTENTION = {
    "transformer": tuple(range(24)),
    "mamtra-1:1": tuple(range(0, 24, 2)),
    "mamtra-1:3": (0, 4, 8, 12, 16, 20),
    "mamtra-1:5": (0, 8, 11, 16),  # the paper's WER-importance placement
    "mamtra-1:11": (0, 16),
    "mamba": (),
}

# Small family for the trained default voices: 12 layers, sized to decode faster than real time on 2 CPU cores.
# Attention positions are the paper's, scaled to half the depth.
_SMALL = dict(vocab_size=4096, d_model=384, n_heads=6, n_kv_heads=2, head_dim=64, d_ff=1536,
              rope_theta=1_000_000.0, rms_eps=1e-6, max_context=4096, qkv_bias=True)
_SMALL_ATTENTION = {
    "small-transformer": tuple(range(12)),
    "small-1:1": tuple(range(0, 12, 2)),
    "small-1:3": (0, 4, 8),
    "small-1:5": (0, 8),
    "small-mamba": (),
}


# Mini family: the shipped default model. 12 layers like the small family (the same scaled attention positions),
# narrower and with tied embeddings so that the LM (~10.6 M params, ~21 MB fp16) plus the codec decoder (~9 MB)
# fit the 32 MiB in-repo budget; at 25 tokens/s it decodes far faster than real time on 2 CPU cores.
_MINI = dict(vocab_size=4096, d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=768,
             rope_theta=1_000_000.0, rms_eps=1e-6, max_context=2048, qkv_bias=True, tie_embeddings=True)
_MINI_ATTENTION = {
    "mini-transformer": tuple(range(12)),
    "mini-1:1": tuple(range(0, 12, 2)),
    "mini-1:3": (0, 4, 8),
    "mini-1:5": (0, 8),
    "mini-1:11": (0,),
    "mini-mamba": (),
}


def _build_presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for name, attn in _PAPER_ATTENTION.items():
        presets[name] = ModelConfig(layout=layout_from_attention(24, attn), **_PAPER)
    for name, attn in _SMALL_ATTENTION.items():
        presets[name] = ModelConfig(layout=layout_from_attention(12, attn), **_SMALL)
    for name, attn in _MINI_ATTENTION.items():
        presets[name] = ModelConfig(layout=layout_from_attention(12, attn), **_MINI)
    return presets


PRESETS: dict[str, ModelConfig] = _build_presets()


def preset(name: str, **overrides: Any) -> ModelConfig:
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
    return replace(config, **overrides) if overrides else config
