"""Sentence and clause splitting, so text of any length is synthesised piece by piece.

``split_sentences`` works on the raw text (before normalisation, because abbreviations and decimals still look like
themselves there): a sentence ends at ``. ! ?`` (and closing quotes/brackets) followed by whitespace, or at a blank
line. It does not end after a title (``Dr. Smith``), an initial (``J. R. R. Tolkien``), an initialism (``U.S.``),
a Latin abbreviation (``e.g.``), or when the next word starts in lower case. A single newline is only a space
(wrapped lines of a book), a blank line always ends a sentence (paragraphs, headings).

``split_long`` works on one *normalised* sentence, because its length in characters is what the model reads: a
sentence over ``max_chars`` is cut at clause boundaries — semicolons and colons first, then commas (the normaliser
has already turned dashes and brackets into commas) — packing neighbouring clauses back together greedily while
they fit; a clause still too long is cut between words, and a single word longer than ``max_chars`` (not speech,
but possible input) is cut hard. Every step is one regex pass or a linear scan, so a 100k-character chapter takes
milliseconds to split; normalising it dominates and stays well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model.text.normalize import LATIN_ABBREVIATIONS, MONTHS, OTHER_ABBREVIATIONS, TITLES, normalize


@dataclass(frozen=True)
class SplitConfig:
    """How long one synthesised piece may be (characters of normalised text)."""

    max_chars: int = 250

    def __post_init__(self):
        if self.max_chars < 16:
            raise ValueError(f"max_chars must be at least 16, got {self.max_chars}")


_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n[ \t\r\f\v]*\n\s*")
_WORD_BEFORE = re.compile(r"(\S+)$")
_NO_SPLIT_AFTER = set(TITLES) | {a.rstrip(".") for a in LATIN_ABBREVIATIONS}
_SPLIT_IF_CAPITAL = set(OTHER_ABBREVIATIONS)
_BEFORE_NUMBER = {"No", "no", "p", "pp", "vol", "Vol", "ch", "Ch", "fig", "Fig"}
_MONTHS = {m[:3] for m in MONTHS} | {"Sept"}


def _ends_sentence(text: str, start: int, end: int) -> bool:
    mark = text[start:end]
    if "\n" in mark:
        return True
    rest = text[end:end + 3].lstrip()
    if rest[:1].islower():
        return False
    if not mark.startswith(".") or mark.startswith(".."):
        return True
    word = _WORD_BEFORE.search(text, max(0, start - 40), start)
    token = word.group(1).lstrip("\"'([") if word else ""
    if token in _NO_SPLIT_AFTER or token.lower() in ("e.g", "i.e", "a.k.a", "cf", "al"):
        return False
    if len(token) == 1 and token.isupper():
        return False  # an initial
    if re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", token):
        return False  # U.S. / a.m.
    if rest[:1].isdigit() and (token in _BEFORE_NUMBER or token.rstrip(".").capitalize() in _MONTHS):
        return False  # "Jan. 5", "No. 7"
    if token in _SPLIT_IF_CAPITAL:
        return rest[:1].isupper()
    return True


def split_sentences(text: str) -> list[str]:
    """Raw text → sentences (stripped, in order, none empty)."""
    sentences: list[str] = []
    begin = 0
    for m in _BOUNDARY.finditer(text):
        if _ends_sentence(text, m.start(), m.end()):
            piece = text[begin:m.end()].strip()
            if piece:
                sentences.append(" ".join(piece.split()))
            begin = m.end()
    tail = text[begin:].strip()
    if tail:
        sentences.append(" ".join(tail.split()))
    return sentences


_CLAUSE_LEVELS = (re.compile(r"(?<=[;:])\s+"), re.compile(r"(?<=,)\s+"), re.compile(r"\s+"))


def _pack(parts: list[str], max_chars: int) -> list[str]:
    out: list[str] = []
    for part in parts:
        if out and len(out[-1]) + 1 + len(part) <= max_chars:
            out[-1] = f"{out[-1]} {part}"
        else:
            out.append(part)
    return out


def split_long(sentence: str, max_chars: int = SplitConfig.max_chars) -> list[str]:
    """One normalised sentence → pieces of at most ``max_chars`` characters, cut at the weakest boundary needed."""
    return _split(sentence.strip(), max_chars, 0)


def _split(text: str, max_chars: int, level: int) -> list[str]:
    if len(text) <= max_chars:
        return [text] if text else []
    if level == len(_CLAUSE_LEVELS):
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    parts = [p for p in _CLAUSE_LEVELS[level].split(text) if p]
    if len(parts) == 1:
        return _split(text, max_chars, level + 1)
    pieces: list[str] = []
    for part in parts:
        pieces += _split(part, max_chars, level + 1) if len(part) > max_chars else [part]
    return _pack(pieces, max_chars)


def chunk_text(text: str, config: SplitConfig = SplitConfig()) -> list[str]:
    """Raw text → normalised pieces, each at most ``config.max_chars`` long, in reading order."""
    chunks: list[str] = []
    for sentence in split_sentences(text):
        normalised = normalize(sentence)
        if normalised:
            chunks += split_long(normalised, config.max_chars)
    return chunks
