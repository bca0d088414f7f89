"""MamTra: a hybrid Mamba-2 / Transformer speech language model (network, decode state, knowledge transfer)."""

from model.config import PRESETS, ModelConfig, preset
from model.lm import SpeechLM
from model.state import AttentionState, Batch, MambaState, StatePool

__all__ = ["PRESETS", "AttentionState", "Batch", "MambaState", "ModelConfig", "SpeechLM", "StatePool", "preset"]
