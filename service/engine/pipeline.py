"""What the engine needs around the speech LM: text in as prompt tokens, speech tokens out as audio.

``Pipeline`` bundles the three pieces with the LM's token layout:

- a ``TextFrontend`` that splits text into sentences (with their words, for timestamps) and turns a sentence into
  the LM's prompt ids (text tokens followed by start-of-speech);
- voices: each a ``Voice`` (id, name, ...) and the prompt ids that condition the LM on it;
- a ``SpeechDecoder`` whose per-request ``DecoderStream`` turns speech tokens into 24 kHz PCM chunk by chunk;
- optionally a ``WordAligner`` that places a finished sentence's words on its speech tokens (word timestamps).

The engine treats all ids as opaque, except ``eos_id`` (end of speech, which also separates sentences in the
context) and ``speech_ids`` (what sampling may emit besides EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.engine.types import Voice


@dataclass(frozen=True)
class SentenceText:
    text: str
    words: tuple[str, ...]
    token_ids: tuple[int, ...] = ()  # the front-end's encoding, when it computes one while splitting
    spans: tuple[tuple[int, int], ...] = ()  # per word, its [start, end) range in token_ids (when token_ids is set)


class TextFrontend(Protocol):
    def sentences(self, text: str) -> list[SentenceText]:
        """Normalise and split; empty list when nothing is speakable."""

    def prompt_ids(self, sentence: SentenceText) -> list[int]:
        """Text tokens of one sentence followed by start-of-speech, in the LM's vocabulary."""


class DecoderStream(Protocol):
    def push(self, tokens: Sequence[int], *, flush: bool) -> np.ndarray:
        """Speech tokens in, float32 PCM at 24 kHz out (possibly empty while look-ahead fills). ``flush`` emits
        everything held back (sentence end)."""


class SpeechDecoder(Protocol):
    def open(self, voice_id: str, *, speed: float) -> DecoderStream: ...


class WordAligner(Protocol):
    def align(self, text_ids: Sequence[int], spans: Sequence[tuple[int, int]], speech_tokens: Sequence[int]
              ) -> list[tuple[float, float]] | None:
        """A sentence's text ids, its words' spans in them and the speech tokens generated for it → each word's
        ``(start, end)`` as fractions of the sentence's audio, or None where no alignment can be made."""


@dataclass(frozen=True)
class VoiceEntry:
    voice: Voice
    prompt_ids: tuple[int, ...]


@dataclass(frozen=True)
class Pipeline:
    model_id: str
    frontend: TextFrontend
    decoder: SpeechDecoder
    voices: dict[str, VoiceEntry]  # best (lowest WER) first
    eos_id: int
    speech_ids: tuple[int, ...]
    tokens_per_second: float = 25.0
    # Cap on speech tokens per sentence: generous for slow speech, but bounded so a model that never says EOS
    # cannot run on (Generation that behaves: a hard cap derived from the text length).
    max_seconds_per_char: float = 0.2
    min_cap_seconds: float = 2.0
    aligner: WordAligner | None = None  # None: word timings are proportional estimates, labelled as such
    # A second decoder (another audio process, as a rule) for requests' first chunks only, beside the main one:
    # the engine's urgent lane (service.engine.audio_worker.UrgentLane). None: no lane.
    urgent_decoder: SpeechDecoder | None = None
    # A third decoder for requests' first chunks only, beside the urgent lane (which then waits for none of its
    # first chunks behind its second chunks): the engine's first-chunk lane. None: no such lane.
    first_decoder: SpeechDecoder | None = None

    def max_tokens(self, sentence: SentenceText) -> int:
        seconds = max(self.min_cap_seconds, self.max_seconds_per_char * len(sentence.text))
        return int(seconds * self.tokens_per_second)
