"""Training data for the speech LM: tokenised utterances packed into multi-utterance sequences of one speaker.

An utterance is (speaker index, text ids from ``model.text``, speech codes from the codec, split). Sequences are
built exactly as the engine builds a context (``model.tokens``)::

    [bos][voice][text₁][sos][speech₁][eos][text₂][sos][speech₂][eos] …   up to max_len tokens

so prosody and voice carry across sentences and the model learns to continue a context, as it is used in serving.
The loss covers what the model must *generate*: every speech token and every ``eos``; text and voice tokens are
given, never predicted.

Storage: one ``.npz`` with flat int arrays and offsets (a few MB for tens of hours: small enough to carry to a GPU
machine).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.tokens import TokenLayout

IGNORE = -100


@dataclass(frozen=True)
class Utterance:
    speaker: int
    text_ids: np.ndarray  # int, model.text vocabulary
    speech_codes: np.ndarray  # int, codec codebook
    split: str = "train"


@dataclass(frozen=True)
class TokenData:
    utterances: list[Utterance]
    speakers: list[str]  # voice index -> speaker id
    layout: TokenLayout


def save_utterances(path: str | Path, utterances: list[Utterance], *, speakers: list[str], text_vocab: int,
                    speech_codes: int) -> None:
    text_off = np.cumsum([0] + [len(u.text_ids) for u in utterances])
    speech_off = np.cumsum([0] + [len(u.speech_codes) for u in utterances])
    np.savez_compressed(
        path,
        speaker=np.array([u.speaker for u in utterances], dtype=np.int32),
        split=np.array([u.split == "test" for u in utterances], dtype=np.bool_),
        text=np.concatenate([u.text_ids for u in utterances]).astype(np.int16) if utterances else np.zeros(0, np.int16),
        speech=np.concatenate([u.speech_codes for u in utterances]).astype(np.int16)
        if utterances else np.zeros(0, np.int16),
        text_offsets=text_off.astype(np.int64), speech_offsets=speech_off.astype(np.int64),
        speakers=np.array(speakers), text_vocab=np.int64(text_vocab), speech_codes=np.int64(speech_codes))


def load_utterances(path: str | Path) -> TokenData:
    with np.load(path, allow_pickle=False) as npz:
        z = {k: npz[k] for k in npz.files}  # each npz[k] access decompresses the array again: read once
    t_off, s_off = z["text_offsets"], z["speech_offsets"]
    text, speech, speaker, split = z["text"].astype(np.int64), z["speech"].astype(np.int64), z["speaker"], z["split"]
    out = [Utterance(int(speaker[i]), text[t_off[i]:t_off[i + 1]], speech[s_off[i]:s_off[i + 1]],
                     "test" if split[i] else "train")
           for i in range(len(speaker))]
    speakers = [str(s) for s in z["speakers"]]
    layout = TokenLayout(text_vocab=int(z["text_vocab"]), speech_codes=int(z["speech_codes"]),
                         num_voices=len(speakers))
    return TokenData(out, speakers, layout)


def utterance_tokens(layout: TokenLayout, u: Utterance) -> tuple[list[int], list[int]]:
    """(tokens, loss mask) of one utterance in context form: text + sos + speech + eos."""
    tokens = layout.sentence_prompt(u.text_ids.tolist()) + [layout.speech_token(int(c)) for c in u.speech_codes]
    tokens.append(layout.eos)
    n_prompt = len(u.text_ids) + 1
    mask = [0] * n_prompt + [1] * (len(u.speech_codes) + 1)
    return tokens, mask


def pack_sequences(layout: TokenLayout, utterances: list[Utterance], *, max_len: int, seed: int = 0,
                   split: str = "train") -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy packing per speaker in a seeded random order. Returns (input ids, targets) pairs where targets are
    next tokens with IGNORE on positions that are not generated. Utterances longer than a sequence are dropped."""
    rng = np.random.default_rng(seed)
    by_speaker: dict[int, list[Utterance]] = defaultdict(list)
    for u in utterances:
        if u.split == split:
            by_speaker[u.speaker].append(u)
    sequences = []
    for speaker in sorted(by_speaker):
        items = by_speaker[speaker]
        order = rng.permutation(len(items))
        prefix = layout.voice_prompt(speaker)
        tokens, mask = list(prefix), [0] * len(prefix)
        for idx in order:
            t, m = utterance_tokens(layout, items[idx])
            if len(prefix) + len(t) > max_len:
                continue
            if len(tokens) + len(t) > max_len:
                sequences.append(_to_example(tokens, mask))
                tokens, mask = list(prefix), [0] * len(prefix)
            tokens += t
            mask += m
        if len(tokens) > len(prefix):
            sequences.append(_to_example(tokens, mask))
    order = rng.permutation(len(sequences))
    return [sequences[i] for i in order]


def _to_example(tokens: list[int], mask: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array(tokens, dtype=np.int64)
    targets = np.full(len(tokens), IGNORE, dtype=np.int64)
    m = np.array(mask, dtype=bool)
    # the token at position i+1 is predicted from position i; only generated tokens are targets
    targets[:-1] = np.where(m[1:], ids[1:], IGNORE)
    return ids, targets


def collate(batch: list[tuple[np.ndarray, np.ndarray]], *, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence; padding is never a target."""
    t = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.from_numpy(x)
        targets[i, : len(y)] = torch.from_numpy(y)
    return ids, targets


def subset(utterances: list[Utterance], fraction: float, *, seed: int = 0) -> list[Utterance]:
    """A fixed, seeded share of the training utterances (per speaker, so every voice is kept) plus all test ones:
    the students' "~2 % of the teacher's data"."""
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    rng = np.random.default_rng(seed)
    by_speaker: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        if u.split == "train":
            by_speaker[u.speaker].append(i)
    keep = {i for i, u in enumerate(utterances) if u.split != "train"}
    for idx in by_speaker.values():
        n = max(1, round(fraction * len(idx)))
        keep.update(rng.choice(idx, size=n, replace=False).tolist())
    return [utterances[i] for i in sorted(keep)]
