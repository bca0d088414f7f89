"""Loading a model bundle: the LM checkpoint plus the pipeline (text front-end, voices, speech decoder).

A bundle directory::

    lm/config.json, lm/model.safetensors    the speech LM (model.checkpoint format)
    pipeline.json                           {"format": "mamtra-pipeline", "version": 1, "model_id", "eos_id",
                                             "speech_ids": [first, last], "tokens_per_second",
                                             "max_seconds_per_char"?, "min_cap_seconds"? (the length guard,
                                             default ``Pipeline``'s),
                                             "frontend": {"kind", ...}, "decoder": {"kind", ...},
                                             "aligner"?: {"path", "token_offset"} (word timestamps),
                                             "voices": [{"id", "name", "language", "gender", "description",
                                                         "prompt_ids"}]}

Front-ends and decoders are looked up by ``kind`` in ``FRONTENDS`` / ``DECODERS``: factories (or "module:function"
paths, imported on use) that take the bundle directory and their JSON section. Built in: the ``mamtra-text``
front-end (``model.text`` through the LM's ``model.tokens`` layout) and the ``mamtra-codec`` decoder
(``model.codec``: token decoder + HiFi-GAN, streaming). A decoder section without a ``device`` gets the engine's
(on a GPU server the token -> audio path runs on the GPU, not on the host's few cores). ``assemble_bundle`` writes a bundle from a trained LM
checkpoint and codec (and, optionally, a word aligner: ``model.align``; without one, word timestamps are
proportional estimates, labelled). The default bundle ships inside the package (``model/bundled``) once the default voices are
trained; until then ``mamtra serve`` says so and points at ``MAMTRA_MODEL_DIR``.
"""

from __future__ import annotations

import importlib
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

Factory = Callable[[Path, dict[str, Any]], Any] | str
FRONTENDS: dict[str, Factory] = {"mamtra-text": "service.engine.frontend:bundle_frontend"}
DECODERS: dict[str, Factory] = {"mamtra-codec": "model.codec.stream:bundle_decoder"}


def _factory(table: dict[str, Factory], kind: str) -> Callable[[Path, dict[str, Any]], Any]:
    factory = table[kind]
    if isinstance(factory, str):
        module, name = factory.split(":")
        factory = getattr(importlib.import_module(module), name)
    return factory


class BundleError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {name!r} requested but CUDA is not available")
    return device


def load_bundle(model_dir: str | Path | None, *, device: torch.device, backend: str = "auto",
                audio_process: bool = False, decoder_options: dict[str, Any] | None = None,
                urgent_lane: bool = False, first_lane: bool = False,
                audio_env: dict[str, str] | None = None) -> tuple[SpeechLM, Pipeline]:
    """``audio_process``: the decoder runs in a child process (``service.engine.audio_process``);
    ``decoder_options``: keys of the decoder section that override the bundle's (e.g. ``vocoder_channels_last``);
    ``urgent_lane``: a second decoder for the requests' first chunks (``Pipeline.urgent_decoder``; another child
    process with ``audio_process``, the two loading at once); ``first_lane`` (with ``urgent_lane``): a third, for
    first chunks only (``Pipeline.first_decoder``); ``audio_env``: environment variables of the audio processes
    only."""
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
        frontend: TextFrontend = _factory(FRONTENDS, spec["frontend"]["kind"])(root, spec["frontend"])
        decoder_spec = {"device": str(device), **spec["decoder"], **(decoder_options or {})}
        make_decoder = _factory(DECODERS, spec["decoder"]["kind"])
        urgent_decoder: SpeechDecoder | None = None
        first_decoder: SpeechDecoder | None = None
        first_lane = first_lane and urgent_lane
        if audio_process:
            from service.engine.audio_process import AudioProcessError, ProcessDecoder

            started: list[ProcessDecoder] = []
            try:  # the same factory, called in the child(ren)
                for _ in range(1 + urgent_lane + first_lane):
                    started.append(ProcessDecoder(make_decoder, root, decoder_spec, wait=False, env=audio_env))
                for process in started:
                    process.wait_ready()
            except AudioProcessError as e:
                for process in started:
                    process.shutdown()
                raise BundleError(f"{root}: {e}") from None
            decoder: SpeechDecoder = started[0]
            urgent_decoder = started[1] if urgent_lane else None
            first_decoder = started[2] if first_lane else None
        else:
            decoder = make_decoder(root, decoder_spec)
            urgent_decoder = make_decoder(root, decoder_spec) if urgent_lane else None
            first_decoder = make_decoder(root, decoder_spec) if first_lane else None
    except KeyError as e:
        raise BundleError(f"{spec_path}: unknown front-end or decoder kind {e}") from None
    voices = {}
    for v in spec["voices"]:
        voice = Voice(id=v["id"], name=v.get("name", v["id"]), language=v.get("language", "en"),
                      description=v.get("description", ""), gender=v.get("gender"))
        voices[voice.id] = VoiceEntry(voice, tuple(v["prompt_ids"]))
    if not voices:
        raise BundleError(f"{spec_path}: no voices")
    aligner = None
    if spec.get("aligner"):
        from model.align.aligner import AlignerError, WordAligner, load_aligner

        try:  # on the CPU: a sentence's alignment is a few ms there and needs no device sync in the audio thread
            aligner = WordAligner(load_aligner(root / spec["aligner"].get("path", "aligner")),
                                  token_offset=int(spec["aligner"].get("token_offset", 0)))
        except AlignerError as e:
            raise BundleError(str(e)) from None
    first, last = spec["speech_ids"]
    guard = {k: float(spec[k]) for k in ("max_seconds_per_char", "min_cap_seconds") if k in spec}
    pipeline = Pipeline(model_id=spec["model_id"], frontend=frontend, decoder=decoder, voices=voices,
                        eos_id=spec["eos_id"], speech_ids=tuple(range(first, last + 1)),
                        tokens_per_second=spec.get("tokens_per_second", 25.0), aligner=aligner,
                        urgent_decoder=urgent_decoder, first_decoder=first_decoder, **guard)
    return model, pipeline


def assemble_bundle(out: str | Path, *, lm_dir: str | Path, codec_dir: str | Path, model_id: str,
                    voices: list[dict[str, Any]] | None = None, dtype: torch.dtype = torch.float16,
                    aligner_dir: str | Path | None = None, blank_penalty: float | None = None) -> Path:
    """Write a bundle from a trained LM checkpoint (its meta holds the token layout and speaker list, as
    ``mamtra train``/``distill`` write them), a trained codec and, optionally, a trained word aligner
    (``mamtra train-aligner``) for the same codec and text vocabulary, with ``blank_penalty`` (its alignment
    setting, chosen by ``python -m model.align.eval``) if given. ``voices``: optional [{"id", "name", "speaker",
    "gender", "description"}] in the order to list them (best first); default: every LM speaker, named as is."""
    from model.checkpoint import read_config, save_checkpoint
    from model.codec.codec import load_codec, save_codec
    from model.tokens import TokenLayout

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, meta = read_config(lm_dir)
    try:
        layout = TokenLayout(**meta["layout_tokens"])
        speakers: list[str] = list(meta["speakers"])
    except KeyError as e:
        raise BundleError(f"{lm_dir}: checkpoint meta lacks {e} (train it with mamtra train/distill)") from None
    save_checkpoint(load_checkpoint(lm_dir, backend="ref"), out / "lm", dtype=dtype, meta=meta)
    save_codec(load_codec(codec_dir, parts=("decoder",)), out / "codec", dtype=dtype, parts=("decoder",))
    voices = voices or [{"id": name, "name": name, "speaker": name} for name in speakers]
    entries, mapping = [], {}
    for v in voices:
        if v["speaker"] not in speakers:
            raise BundleError(f"voice {v['id']!r}: speaker {v['speaker']!r} is not one the LM was trained on")
        entries.append({"id": v["id"], "name": v.get("name", v["id"]), "language": v.get("language", "en"),
                        "gender": v.get("gender"), "description": v.get("description", ""),
                        "prompt_ids": layout.voice_prompt(speakers.index(v["speaker"]))})
        mapping[v["id"]] = v["speaker"]
    spec = {"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "model_id": model_id, "eos_id": layout.eos,
            "speech_ids": [layout.speech_ids[0], layout.speech_ids[-1]], "tokens_per_second": 25.0,
            "frontend": {"kind": "mamtra-text", "layout": layout.to_dict()},
            "decoder": {"kind": "mamtra-codec", "path": "codec", "token_offset": layout.speech_offset,
                        "voices": mapping},
            "voices": entries}
    if aligner_dir is not None:
        from model.align.aligner import load_aligner, save_aligner

        aligner = load_aligner(aligner_dir)
        if blank_penalty is not None:
            import dataclasses

            aligner.config = dataclasses.replace(aligner.config, blank_penalty=float(blank_penalty))
        if aligner.config.codes != layout.speech_codes or aligner.config.symbols < layout.text_vocab:
            raise BundleError(f"{aligner_dir}: the aligner's {aligner.config.codes} codes / "
                              f"{aligner.config.symbols} symbols do not fit the LM's {layout.speech_codes} / "
                              f"{layout.text_vocab}")
        save_aligner(aligner, out / "aligner", dtype=dtype, meta=json.loads(
            (Path(aligner_dir) / "aligner.json").read_text()).get("meta", {}))
        spec["aligner"] = {"path": "aligner", "token_offset": layout.speech_offset}
    (out / "pipeline.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out
