"""Corpus → LM training data: each utterance's text through the text front-end, its audio's codec codes, its voice.

Inputs: the corpus manifest (``model.data``) and the codes ``.npz`` that ``mamtra encode-manifest`` writes (utterance
``ids``, flat ``codes`` with ``offsets``, ``codebook_size``). Output: the tokens ``.npz`` of ``model.train.data``.
The conditioning "speaker" is the manifest's ``voice`` by default (one timbre per engine voice, and the name the
codec's voice embedding uses), or its ``speaker`` field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.data.manifest import read_manifest
from model.text.frontend import TextFrontend
from model.train.data import Utterance, save_utterances


def build_token_data(manifest: str | Path, codes: str | Path, out: str | Path, *, speaker_key: str = "voice",
                     frontend: TextFrontend | None = None, progress: bool = True) -> dict:
    if speaker_key not in ("voice", "speaker"):
        raise ValueError("speaker_key must be 'voice' or 'speaker'")
    frontend = frontend or TextFrontend()
    with np.load(codes, allow_pickle=False) as z:
        ids, flat, offsets, codebook = z["ids"], z["codes"].astype(np.int64), z["offsets"], int(z["codebook_size"])
    code_of = {str(u): flat[offsets[i]:offsets[i + 1]] for i, u in enumerate(ids)}
    entries = read_manifest(manifest)
    speakers = sorted({getattr(e, speaker_key) for e in entries})
    index = {s: i for i, s in enumerate(speakers)}
    utterances, skipped = [], 0
    for e in tqdm(entries, desc="tokenize", disable=not progress):
        speech = code_of.get(e.id)
        text_ids = [i for piece in frontend.iter_pieces(e.text) for i in piece.encoded.ids]
        if speech is None or len(speech) == 0 or not text_ids:
            skipped += 1
            continue
        utterances.append(Utterance(index[getattr(e, speaker_key)], np.array(text_ids, dtype=np.int64), speech,
                                    e.split))
    save_utterances(out, utterances, speakers=speakers, text_vocab=len(frontend.vocab), speech_codes=codebook)
    return {"utterances": len(utterances), "skipped": skipped, "speakers": len(speakers),
            "train": sum(u.split == "train" for u in utterances), "test": sum(u.split == "test" for u in utterances)}
