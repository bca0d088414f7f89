"""The whole text front-end in one call: raw text → pieces ready for the speech LM.

``TextFrontend.prepare(text)`` splits into sentences, normalises, cuts over-long sentences at clause/word
boundaries, phonemizes each piece with its word alignment, and encodes it with the fixed vocabulary. A piece keeps
its normalised text, its words with their phonemes and the id span of every word (for word timestamps), so
nothing downstream has to redo this work. Pieces are produced lazily (``iter_pieces``) so a long text can start
synthesising before the rest is phonemized.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from model.text.g2p import Phonemizer, WordPhonemes
from model.text.split import SplitConfig, chunk_text
from model.text.vocab import EncodedText, Vocabulary


@dataclass(frozen=True)
class FrontendConfig:
    language: str = "en-us"
    split: SplitConfig = field(default_factory=SplitConfig)
    add_bos_eos: bool = False


@dataclass(frozen=True)
class TextPiece:
    text: str
    words: tuple[WordPhonemes, ...]
    encoded: EncodedText


class TextFrontend:
    def __init__(self, config: FrontendConfig = FrontendConfig(), vocab: Vocabulary | None = None):
        self.config = config
        self.vocab = vocab or Vocabulary()
        self.phonemizer = Phonemizer(config.language)

    def iter_pieces(self, text: str) -> Iterator[TextPiece]:
        for chunk in chunk_text(text, self.config.split):
            words = tuple(self.phonemizer.words(chunk))
            yield TextPiece(chunk, words, self.vocab.encode_words(words, add_bos_eos=self.config.add_bos_eos))

    def prepare(self, text: str) -> list[TextPiece]:
        return list(self.iter_pieces(text))
