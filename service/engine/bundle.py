"""Loading a model bundle: the LM checkpoint plus the pipeline (text front-end, voices, speech decoder).

A bundle directory::

    lm/config.json, lm/model.safetensors    the speech LM (model.checkpoint format)
    pipeline.json                           {"format": "mamtra-pipeline", "version": 1, "model_id", "eos_id",
                                             "speech_ids": [first, last], "tokens_per_second",
                                             "frontend": {"kind", ...}, "decoder": {"kind", ...},
                                             "voices": [{"id", "name", "language", "gender", "description",
                                                         "prompt_ids"}]}

Front-ends and decoders are looked up by ``kind`` in ``FRONTENDS`` / ``DECODERS``: factories that take the bundle
directory and their JSON section. The default bundle ships inside the package (``model/bundled``) once the default
voices are trained; until then ``mamtra serve`` says so and points at ``MAMTRA_MODEL_DIR``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_checkpoint
from model.lm import SpeechLM
from service.engine.pipeline import Pipeline, SpeechDecoder, TextFrontend, VoiceEntry
from service.engine.types import Voice

PIPELINE_FORMAT = "mamtra-pipeline"
PIPELINE_VERSION = 1
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "model" / "bundled"

FRONTENDS: dict[str, Callable[[Path, dict[str, Any]], TextFrontend]] = {}
DECODERS: dict[str, Callable[[Path, dict[str, Any]], SpeechDecoder]] = {}


class BundleError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {name!r} requested but CUDA is not available")
    return device


def load_bundle(model_dir: str | Path | None, *, device: torch.device, backend: str = "auto"
                ) -> tuple[SpeechLM, Pipeline]:
    root = Path(model_dir) if model_dir else DEFAULT_BUNDLE
    spec_path = root / "pipeline.json"
    if not spec_path.exists():
        if model_dir is None:
            raise BundleError(f"no bundled model at {root}: the default voices have not been trained into this "
                              "build yet; set MAMTRA_MODEL_DIR to a model bundle directory")
        raise BundleError(f"{root} is not a model bundle (no pipeline.json)")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != PIPELINE_FORMAT or spec.get("version") != PIPELINE_VERSION:
        raise BundleError(f"{spec_path}: unsupported format/version {spec.get('format')!r}/{spec.get('version')!r}")
    model = load_checkpoint(root / "lm", backend=backend, device=device)
    try:
        frontend = FRONTENDS[spec["frontend"]["kind"]](root, spec["frontend"])
        decoder = DECODERS[spec["decoder"]["kind"]](root, spec["decoder"])
    except KeyError as e:
        raise BundleError(f"{spec_path}: unknown front-end or decoder kind {e}") from None
    voices = {}
    for v in spec["voices"]:
        voice = Voice(id=v["id"], name=v.get("name", v["id"]), language=v.get("language", "en"),
                      description=v.get("description", ""), gender=v.get("gender"))
        voices[voice.id] = VoiceEntry(voice, tuple(v["prompt_ids"]))
    if not voices:
        raise BundleError(f"{spec_path}: no voices")
    first, last = spec["speech_ids"]
    pipeline = Pipeline(model_id=spec["model_id"], frontend=frontend, decoder=decoder, voices=voices,
                        eos_id=spec["eos_id"], speech_ids=tuple(range(first, last + 1)),
                        tokens_per_second=spec.get("tokens_per_second", 25.0))
    return model, pipeline
