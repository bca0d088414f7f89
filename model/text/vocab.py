"""The text token vocabulary: a frozen, versioned table of phoneme symbols → integer ids.

The table is written out below, not derived from data or from espeak at run time, so a checkpoint's text ids mean
the same thing on every machine. ``VOCAB_VERSION`` names this table; changing or reordering a symbol requires a new
version (and new checkpoints) — append-only changes would still break the pinned-id test on purpose.

Layout: 0–4 specials (``<pad> <unk> <bos> <eos>`` and the word boundary ``" "``), then punctuation (pauses), the two
stress marks, then espeak-ng's IPA phones for English (American and British voices, measured on WordNet's glosses),
then single IPA characters. A symbol missing from the table is split into the longest known symbols from the left
(``"aɪʊ"`` → ``aɪ ʊ``); what is left after that maps to ``<unk>``. So encoding never fails, and the rule is
predictable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from model.text.g2p import WordPhonemes

VOCAB_VERSION = 1

PAD, UNK, BOS, EOS, WORD_BOUNDARY = "<pad>", "<unk>", "<bos>", "<eos>", " "
SPECIALS = (PAD, UNK, BOS, EOS, WORD_BOUNDARY)
PUNCTUATION = (".", ",", ";", ":", "?", "!")
STRESS = ("ˈ", "ˌ")
CONSONANTS = ("p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "tʃ", "dʒ", "m", "n", "ŋ",
              "l", "ɹ", "w", "j", "ɾ", "ʔ", "n̩", "l̩", "m̩", "x", "r", "ç", "ɬ", "ʁ", "nʲ", "ʍ")
VOWELS = ("ɪ", "ɛ", "æ", "ʌ", "ʊ", "ə", "ɐ", "ᵻ", "ɚ", "i", "iː", "u", "uː", "ɑ", "ɑː", "ɔ", "ɔː", "ɜ", "ɜː", "ɒ",
          "e", "a", "o", "eɪ", "aɪ", "ɔɪ", "aʊ", "oʊ", "əʊ", "iə", "eə", "ʊə", "ɪə", "ɛɹ", "ɪɹ", "ʊɹ", "ɔːɹ",
          "ɑːɹ", "ɜːɹ", "aɪɚ", "aɪə", "aʊɚ", "əl", "oː", "ɑ̃", "ɔ̃", "ɛ̃", "ɐ̃")
SINGLE_CHARACTERS = ("ː", "̃", "̩", "ʲ", "y", "ø", "œ", "ɯ", "ɨ", "ʉ", "ɤ", "ɞ", "ɘ", "ɵ", "ɶ", "ʏ", "c", "ɟ",
                     "q", "ɢ", "ɣ", "χ", "ħ", "ʕ", "ɦ", "ɲ", "ɳ", "ɴ", "ʎ", "ʟ", "ʀ", "ɽ", "ɻ", "ɭ", "β", "ɸ",
                     "ʂ", "ʐ", "ɕ", "ʑ", "ɱ", "ʋ", "ɰ", "ɥ")
SYMBOLS: tuple[str, ...] = SPECIALS + PUNCTUATION + STRESS + CONSONANTS + VOWELS + SINGLE_CHARACTERS


@dataclass(frozen=True)
class EncodedText:
    """Token ids of a piece of text and, for each word, the ``[start, end)`` range of its ids."""

    ids: tuple[int, ...]
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Vocabulary:
    """The symbol table. ``Vocabulary()`` is the current version; ids are positions in ``symbols``."""

    version: int = VOCAB_VERSION
    symbols: tuple[str, ...] = SYMBOLS

    def __post_init__(self):
        if self.version != VOCAB_VERSION:
            raise ValueError(f"unknown vocabulary version {self.version} (this code has {VOCAB_VERSION})")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("duplicate symbols in the vocabulary")

    @cached_property
    def _ids(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    @cached_property
    def _max_len(self) -> int:
        return max(len(s) for s in self.symbols if s not in SPECIALS)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def bos_id(self) -> int:
        return self._ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def word_boundary_id(self) -> int:
        return self._ids[WORD_BOUNDARY]

    def symbol_ids(self, symbol: str) -> list[int]:
        """One symbol → its id, or the ids of its longest known pieces (``<unk>`` for what matches nothing)."""
        if symbol in self._ids:
            return [self._ids[symbol]]
        out: list[int] = []
        i = 0
        while i < len(symbol):
            for n in range(min(self._max_len, len(symbol) - i), 0, -1):
                piece = symbol[i:i + n]
                if piece in self._ids and piece not in SPECIALS:
                    out.append(self._ids[piece])
                    i += n
                    break
            else:
                out.append(self.unk_id)
                i += 1
        return out

    def encode(self, symbols: Iterable[str], *, add_bos_eos: bool = False) -> list[int]:
        ids = [i for s in symbols for i in self.symbol_ids(s)]
        return [self.bos_id, *ids, self.eos_id] if add_bos_eos else ids

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Ids → symbols; an id outside the table decodes to ``<unk>``."""
        return [self.symbols[i] if 0 <= i < len(self.symbols) else UNK for i in ids]

    def encode_words(self, words: Sequence[WordPhonemes], *, add_bos_eos: bool = False) -> EncodedText:
        """Words with phonemes → ids with a word boundary between words, and each item's span of ids."""
        ids: list[int] = [self.bos_id] if add_bos_eos else []
        spans: list[tuple[int, int]] = []
        for n, item in enumerate(words):
            if n and not item.is_punctuation:
                ids.append(self.word_boundary_id)
            start = len(ids)
            ids += self.encode(item.phonemes)
            spans.append((start, len(ids)))
        if add_bos_eos:
            ids.append(self.eos_id)
        return EncodedText(tuple(ids), tuple(w.word for w in words), tuple(spans))
