"""The speech LM's token layout: one vocabulary for specials, phoneme-text tokens, speech codes and voices.

    0 pad · 1 bos (start of a context) · 2 sos (start of speech) · 3 eos (end of speech)
    4 …                       text tokens (``model.text.vocab``: phonemes, stress, punctuation, word boundary)
    4 + text_vocab …          speech codes (the codec's codebook)
    … + speech_codes …        voice tokens (one per trained speaker)

A context is ``[bos][voice][text₁][sos][speech₁][eos][text₂][sos][speech₂][eos]…``: the model is trained on
multi-utterance sequences of one speaker in exactly this form, and the engine builds the same form at inference
(the voice prompt once, then each sentence's text + ``sos``, then sampling until ``eos``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

LAYOUT_VERSION = 1


@dataclass(frozen=True)
class TokenLayout:
    text_vocab: int
    speech_codes: int
    num_voices: int
    version: int = LAYOUT_VERSION
    pad: int = field(default=0, init=False)
    bos: int = field(default=1, init=False)
    sos: int = field(default=2, init=False)
    eos: int = field(default=3, init=False)

    def __post_init__(self) -> None:
        if self.version != LAYOUT_VERSION:
            raise ValueError(f"unknown token layout version {self.version}")
        if min(self.text_vocab, self.speech_codes, self.num_voices) < 1:
            raise ValueError(f"invalid token layout {self}")

    @property
    def text_offset(self) -> int:
        return 4

    @property
    def speech_offset(self) -> int:
        return self.text_offset + self.text_vocab

    @property
    def voice_offset(self) -> int:
        return self.speech_offset + self.speech_codes

    @property
    def vocab_size(self) -> int:
        return self.voice_offset + self.num_voices

    @property
    def speech_ids(self) -> range:
        return range(self.speech_offset, self.voice_offset)

    def text_ids(self, ids: Sequence[int]) -> list[int]:
        bad = [i for i in ids if not 0 <= i < self.text_vocab]
        if bad:
            raise ValueError(f"text ids out of range: {bad[:5]}")
        return [self.text_offset + i for i in ids]

    def speech_token(self, code: int) -> int:
        if not 0 <= code < self.speech_codes:
            raise ValueError(f"speech code {code} out of range")
        return self.speech_offset + code

    def speech_code(self, token: int) -> int:
        if token not in self.speech_ids:
            raise ValueError(f"token {token} is not a speech token")
        return token - self.speech_offset

    def voice_prompt(self, voice_index: int) -> list[int]:
        if not 0 <= voice_index < self.num_voices:
            raise ValueError(f"voice index {voice_index} out of range")
        return [self.bos, self.voice_offset + voice_index]

    def sentence_prompt(self, text_ids: Sequence[int]) -> list[int]:
        return self.text_ids(text_ids) + [self.sos]

    def to_dict(self) -> dict:
        return {"version": self.version, "text_vocab": self.text_vocab, "speech_codes": self.speech_codes,
                "num_voices": self.num_voices}
