"""Sentences to read, from text that Debian packages install, with a seeded held-out split.

Sources (OFFLINE.md): the World English Bible through ``diatheke`` (``sword-text-web``), WordNet glosses and
example sentences (``wordnet-base``), GCIDE definitions (``dict-gcide``), fortunes (``fortunes``; the offensive
``off/`` folder is never read) and the Python documentation (``python3.11-doc``). A source whose files are absent
is skipped, so the set depends on what is installed — which is why the builder writes the sentences it used into
the corpus folder and reuses them on every later run.

Filters, in order: typography folded to ASCII; split into sentences; keep those of ``min_words``–``max_words``
words made only of letters, spaces and ``' , . ; : ! ? -``, starting with a capital and ending with ``. ! ?``,
with no word over 20 letters and no all-caps word over 4 letters (headings, shouting); deduplicated
case-insensitively. The held-out split is a keyed hash of the lower-cased sentence, so it depends on the seed and
the sentence alone — not on the source order, the other sentences, or the machine.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from model.text.normalize import clean
from model.text.split import split_sentences

from model.data.engines import EngineEnv


@dataclass(frozen=True)
class SentenceFilter:
    min_words: int = 4
    max_words: int = 30


@dataclass(frozen=True)
class Sentence:
    text: str
    source: str
    split: str  # "train" or "test"


_ALLOWED = re.compile(r"[A-Z][A-Za-z ,.;:!?'-]*[.!?]")
_TAGS = re.compile(r"<[^>]*>")


def is_clean(sentence: str, filt: SentenceFilter = SentenceFilter()) -> bool:
    if not _ALLOWED.fullmatch(sentence) or "  " in sentence or "--" in sentence or ".." in sentence:
        return False
    words = sentence.split()
    if not filt.min_words <= len(words) <= filt.max_words:
        return False
    for w in words:
        core = w.strip(",.;:!?'-")
        if not core or len(core) > 20 or (core.isupper() and len(core) > 4) or not re.fullmatch(r"[A-Za-z'-]+", core):
            return False
    return True


def is_heldout(sentence: str, *, seed: int, fraction: float) -> bool:
    """Deterministic: the same sentence and seed are held out on every machine."""
    digest = hashlib.blake2b(f"{seed}\x00{sentence.lower()}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64 < fraction


def extract(passages: Iterable[tuple[str, str]], *, seed: int, heldout_fraction: float,
            filt: SentenceFilter = SentenceFilter()) -> list[Sentence]:
    """``(source, passage)`` pairs → clean unique sentences, in first-seen order, each with its split."""
    seen: set[str] = set()
    out: list[Sentence] = []
    for source, passage in passages:
        folded = clean(passage).replace('"', "")
        for s in split_sentences(folded):
            key = s.lower()
            if key in seen or not is_clean(s, filt):
                continue
            seen.add(key)
            split = "test" if is_heldout(s, seed=seed, fraction=heldout_fraction) else "train"
            out.append(Sentence(s, source, split))
    return out


# --- sources -----------------------------------------------------------------------------------------------------

def bible(env: EngineEnv = EngineEnv()) -> Iterator[str]:
    """World English Bible, one verse per passage. The ``internal`` format keeps word boundaries that ``plain``
    loses between adjacent tagged words ("Godcreated")."""
    if not env.which("diatheke"):
        return
    proc = subprocess.run(["diatheke", "-b", "engWEB2015eb", "-f", "internal", "-k", "Gen 1:1-Rev 22:21"],
                          capture_output=True, text=True, env=env.environ(), timeout=600)
    for line in proc.stdout.splitlines():
        _, sep, verse = line.partition(": ")
        if not sep or verse.startswith("(engWEB"):
            continue
        verse = re.sub(r"<note.*?</note>", " ", verse.replace("</w><w", "</w> <w"))
        yield html.unescape(_TAGS.sub("", verse))


def wordnet(root: Path = Path("/usr/share/wordnet")) -> Iterator[str]:
    """Glosses (made into sentences) and quoted example sentences."""
    for part in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{part}"
        if not path.exists():
            continue
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                for piece in line.split("|", 1)[1].split(";"):
                    piece = piece.strip()
                    if piece.startswith('"'):
                        yield piece.strip('"')
                    elif piece and not piece.startswith("("):
                        yield piece[0].upper() + piece[1:] + "."


def gcide(path: Path = Path("/usr/share/dictd/gcide.dict.dz")) -> Iterator[str]:
    """Definition paragraphs with GCIDE's markup, citations and bracketed notes removed."""
    if not path.exists():
        return
    with gzip.open(path, "rt", encoding="utf-8", errors="ignore") as f:
        paragraph: list[str] = []
        for line in f:
            if line.strip():
                paragraph.append(line.strip())
                continue
            if paragraph:
                text = " ".join(paragraph)
                text = re.sub(r"\[[^\]]*\]|--[A-Z][^.]*\.|\([A-Z][a-z]*\.\)|[{}]", " ", text)
                yield re.sub(r"^\d+\.\s*|^\([a-z]\)\s*", "", text)
                paragraph = []


def fortunes(root: Path = Path("/usr/share/games/fortunes")) -> Iterator[str]:
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for cookie in text.split("\n%\n"):
            lines = [ln for ln in cookie.splitlines() if not ln.strip().startswith("--")]
            yield " ".join(lines)


def python_docs(root: Path = Path("/usr/share/doc/python3.11/html")) -> Iterator[str]:
    """Paragraphs of the HTML documentation; code and markup are removed, and the filters drop what is left."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.html")):
        page = path.read_text(encoding="utf-8", errors="ignore")
        for para in re.findall(r"<p>(.*?)</p>", page, flags=re.S):
            if "<code" in para or "<span class=\"pre\"" in para:
                continue
            yield html.unescape(_TAGS.sub("", para))


SOURCES = ("bible", "wordnet", "gcide", "fortunes", "pydocs")


def passages(sources: Iterable[str] = SOURCES, env: EngineEnv = EngineEnv()) -> Iterator[tuple[str, str]]:
    readers = {"bible": lambda: bible(env), "wordnet": wordnet, "gcide": gcide, "fortunes": fortunes,
               "pydocs": python_docs}
    for name in sources:
        if name not in readers:
            raise ValueError(f"unknown sentence source {name!r}; known: {SOURCES}")
        for passage in readers[name]():
            yield name, passage
