"""Checkpoints: a safetensors file of weights beside a versioned JSON config.

Layout of a checkpoint directory::

    config.json        {"format": "mamtra-lm", "version": 1, "model": {...ModelConfig...}, "meta": {...}}
    model.safetensors  the state dict (fp16 for shipped weights, any float dtype otherwise)

Loading is strict: an unknown format or version, a missing or unexpected key, or a shape mismatch raises
``CheckpointError`` naming it, instead of silently leaving random weights in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.config import CONFIG_VERSION, ModelConfig
from model.lm import SpeechLM

FORMAT = "mamtra-lm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    pass


def save_checkpoint(model: SpeechLM, directory: str | Path, *, dtype: torch.dtype | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write config.json + model.safetensors. ``dtype`` casts floating tensors (e.g. fp16 for the repo)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_embeddings and name == "lm_head.weight":
            continue  # tied to embed_tokens.weight; safetensors refuses shared storage
        t = tensor.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE))
    doc = {"format": FORMAT, "version": CONFIG_VERSION, "model": model.config.to_dict(), "meta": meta or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return directory


def read_versioned_json(path: Path, *, fmt: str, version: int, error: type[Exception] = CheckpointError,
                        what: str = "a checkpoint") -> dict[str, Any]:
    """A checkpoint's JSON config, checked for its format name and version; ``error`` names what is wrong."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"no {path.name} in {path.parent}: not {what}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    if doc.get("format") != fmt:
        raise error(f"{path}: format {doc.get('format')!r} is not {fmt!r}")
    if doc.get("version") != version:
        raise error(f"{path}: config version {doc.get('version')!r} is not supported "
                    f"(this build reads version {version})")
    return doc


def read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    doc = read_versioned_json(path, fmt=FORMAT, version=CONFIG_VERSION, what="an LM checkpoint")
    try:
        config = ModelConfig.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from None
    return config, doc.get("meta", {})


def load_state_dict_strict(model: SpeechLM, tensors: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes exactly."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    copy_state_strict(expected, tensors, source=source)


def copy_state_strict(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], *, source: str,
                      error: type[Exception] = CheckpointError) -> None:
    """Copy ``tensors`` into the (state-dict) tensors ``expected``; a missing or unexpected key or a shape mismatch
    raises ``error`` naming it, before anything is copied."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise error(f"{source}: missing keys: {missing}")
    if unexpected:
        raise error(f"{source}: unexpected keys: {unexpected}")
    for name, param in expected.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise error(f"{source}: shape mismatch for {name}: checkpoint {tuple(tensors[name].shape)}, "
                        f"model {tuple(param.shape)}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name].to(param.dtype))


def load_checkpoint(directory: str | Path, *, backend: str = "auto", device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> SpeechLM:
    directory = Path(directory)
    config, _ = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {directory}")
    model = SpeechLM(config, backend=backend)
    load_state_dict_strict(model, load_file(str(weights)), source=str(weights))
    return model.to(device=device).cast_(dtype).eval()
