"""Grapheme-to-phoneme conversion through espeak-ng, keeping each word's phonemes apart.

espeak-ng comes from the ``espeakng-loader`` wheel (the shared library and its data inside the package), driven by
``phonemizer``: no system install, nothing downloaded. The backend is created on first use and cached per language
(creating it loads the library and its dictionaries, ~0.1 s); importing this module does no work. espeak-ng is not
thread-safe, so calls are serialised with a lock.

Word alignment: the words of a normalised clause are phonemized together (so that espeak sees the context it uses
for weak forms and stress) with phonemizer's word separator, and zipped back to the words. When the counts differ
(espeak occasionally merges or splits a word) the clause falls back to one word at a time, so every word keeps
exactly its own phonemes — what word timestamps need later. Punctuation marks are their own items with the mark
itself as the only "phoneme" (the model hears a pause there).

Phoneme symbols: espeak's IPA phones as phonemizer separates them, with the stress marks ``ˈ ˌ`` split off into
their own symbols placed before the phone they stress, so the vocabulary stays small and regular.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from model.text.normalize import normalize

PUNCTUATION = ".,;:?!"
STRESS = "ˈˌ"
_ITEM = re.compile(r"[A-Za-z][A-Za-z'-]*|[.,;:?!]")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class WordPhonemes:
    """One word (or punctuation mark) of the normalised text and its phoneme symbols."""

    word: str
    phonemes: tuple[str, ...]

    @property
    def is_punctuation(self) -> bool:
        return self.word in PUNCTUATION


@lru_cache(maxsize=4)
def _backend(language: str):
    import espeakng_loader
    from phonemizer.backend import EspeakBackend
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    # phonemizer warns on every call whose word count differs from its input's ("words count mismatch"): a server
    # log line per such sentence. Phonemizer.words handles that case itself, so only its errors are logged.
    quiet = logging.getLogger("mamtra.text.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(language, preserve_punctuation=False, with_stress=True, language_switch="remove-flags",
                         words_mismatch="ignore", logger=quiet)


@lru_cache(maxsize=1)
def _separator():
    from phonemizer.separator import Separator

    return Separator(phone="|", word=" ", syllable=None)


def _phones(word_ipa: str) -> tuple[str, ...]:
    """``"h|ə|l|ˈoʊ"`` → ``("h", "ə", "l", "ˈ", "oʊ")``."""
    out: list[str] = []
    for phone in word_ipa.split("|"):
        while phone and phone[0] in STRESS:
            out.append(phone[0])
            phone = phone[1:]
        if phone:
            out.append(phone)
    return tuple(out)


def espeak_version() -> str:
    from phonemizer.backend import EspeakBackend

    _backend("en-us")
    return ".".join(map(str, EspeakBackend.version()))


class Phonemizer:
    """Normalised text → ``[WordPhonemes]``; ``language`` is an espeak-ng voice (``en-us``, ``en-gb``)."""

    def __init__(self, language: str = "en-us"):
        self.language = language

    def _run(self, lines: list[str]) -> list[str]:
        with _LOCK:
            return _backend(self.language).phonemize(lines, separator=_separator(), strip=True, njobs=1)

    def words(self, text: str) -> list[WordPhonemes]:
        """One clause of *normalised* text (see ``normalize``) → its words and marks, in order."""
        items = _ITEM.findall(text)
        words = [w for w in items if w not in PUNCTUATION]
        if not words:
            return [WordPhonemes(p, (p,)) for p in items]
        ipa = self._run([" ".join(words)])[0].split(" ")
        if len(ipa) != len(words):
            ipa = ["|".join(s.replace(" ", "|").split("|")) for s in self._run(words)]
        by_word = iter(ipa)
        return [WordPhonemes(item, (item,)) if item in PUNCTUATION else WordPhonemes(item, _phones(next(by_word)))
                for item in items]

    def phonemes(self, text: str) -> list[str]:
        """Flat phoneme symbols of normalised text, with ``" "`` between words (what ``mamtra phonemize`` prints)."""
        out: list[str] = []
        for item in self.words(text):
            if out and not item.is_punctuation:
                out.append(" ")
            out += item.phonemes
        return out


def phonemize(text: str, *, language: str = "en-us", normalise: bool = True) -> list[WordPhonemes]:
    """Raw (or already normalised) text → ``[WordPhonemes]``."""
    return Phonemizer(language).words(normalize(text) if normalise else text)
