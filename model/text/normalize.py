"""Text normalisation: written English → words a speech model can read aloud.

``normalize(text)`` returns one line of words (ASCII letters, apostrophes, hyphens inside words, digits never) and
the pause punctuation ``. , ; : ? !``. It is deterministic, pure Python and fast (one pass of one compiled regex
per rule family), and it never raises on any ``str``.

Order of work, and why:

1. **Clean**: HTML entities are decoded (``&amp;`` → ``&``), then markup tags (``<b>``, ``</p>``, ``<br/>``) are
   removed — a ``<`` not followed by a tag name stays a symbol ("a < b" → "a less than b"). Unicode is folded with
   NFKC (full-width digits, ligatures, ``…``), typographic quotes and dashes become ASCII, control characters and
   any other whitespace become a space.
2. **Patterns**, most specific first so that one rule never eats another's input: e-mail addresses, URLs, dates
   (ISO ``2026-11-26``, US ``11/26/2026`` — day first when the first field is over 12 —, ``Nov 26, 2026`` and
   ``26 November 2026``), times (``3:45 pm``, ``15:45``, ``7am``), currency (``$ £ € ¥`` before the amount, with
   ``k``/``million``/``bn`` scales), percentages, temperatures (``25°C``), ordinals (``22nd``), decades (``1990s``),
   fractions (``3/4``), ranges (``5-10`` → "five to ten"), then any remaining number: a 4-digit integer from 1100 to
   2099 without separators is read as a year (1999 → nineteen ninety-nine), other integers as cardinals (commas as
   thousands separators, a leading ``-`` as "minus"), decimals as "three point one four". Abbreviations (Dr., St.,
   Mr., Mrs., etc., e.g., vs., No. 5, initialisms like U.S.) are expanded; ``St.``/``Dr.`` before a capitalised word
   read "saint"/"doctor", otherwise "street"/"drive".
3. **Characters**: symbols with a spoken name are read (``& + @ % ° = # < > ~ × ÷ © ® ™ §``, Greek letters by
   name); ``( ) [ ] { }`` and spaced dashes become commas (pauses); Latin letters with diacritics lose their marks
   (café → cafe); **letters of other scripts, emoji and every other symbol are dropped** (replaced by a space), so
   the result is always speakable by an English voice. An input with nothing speakable normalises to ``""``.

URLs and e-mail addresses are read the way people say them: the scheme is dropped, ``.`` is "dot", ``/`` "slash",
``@`` "at"; alphabetic parts with a vowel are read as words, others (and 2-letter top-level domains) are spelled.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

from model.text import numbers as nw

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_MONTH_BY_PREFIX = {m[:3].lower(): i + 1 for i, m in enumerate(MONTHS)} | {"sept": 9}
_MONTH_RE = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
             r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")

# Abbreviations that end in a period. Titles never end a sentence (the splitter uses this set).
TITLES = {"Mr": "mister", "Mrs": "missus", "Ms": "miz", "Dr": "doctor", "Prof": "professor", "St": "saint",
          "Mt": "mount", "Gen": "general", "Col": "colonel", "Capt": "captain", "Lt": "lieutenant",
          "Sgt": "sergeant", "Rev": "reverend", "Hon": "honorable", "Gov": "governor", "Sen": "senator",
          "Rep": "representative", "Fr": "father", "Sr": "senior", "Jr": "junior"}
OTHER_ABBREVIATIONS = {"etc": "et cetera", "vs": "versus", "approx": "approximately", "dept": "department",
                       "est": "established", "Inc": "incorporated", "Ltd": "limited", "Co": "company",
                       "Corp": "corporation", "Ave": "avenue", "Blvd": "boulevard", "Rd": "road", "Fig": "figure",
                       "fig": "figure", "min": "minutes", "max": "maximum", "no": "number", "No": "number",
                       "vol": "volume", "Vol": "volume", "ch": "chapter", "Ch": "chapter", "pp": "pages",
                       "p": "page"}
LATIN_ABBREVIATIONS = {"e.g.": "for example", "i.e.": "that is", "a.k.a.": "also known as", "cf.": "compare",
                       "et al.": "and others"}
# Read only when a number follows ("No. 5", "p. 12"): otherwise they are ordinary words.
_BEFORE_NUMBER_ONLY = {"no", "No", "p", "pp", "vol", "Vol", "ch", "Ch", "fig", "Fig", "min", "max"}

SYMBOLS = {"&": "and", "+": "plus", "@": "at", "%": "percent", "°": "degrees", "=": "equals", "<": "less than",
           ">": "greater than", "~": "about", "×": "times", "÷": "divided by", "©": "copyright",
           "®": "registered", "™": "trademark", "§": "section", "¶": "paragraph", "µ": "micro", "μ": "micro",
           "$": "dollars", "£": "pounds", "€": "euros", "¥": "yen", "¢": "cents", "±": "plus or minus",
           "√": "square root of", "∞": "infinity", "≈": "approximately", "≠": "not equal to", "≤": "at most",
           "≥": "at least", "→": "to", "½": "one half", "¼": "one quarter", "¾": "three quarters",
           "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "θ": "theta", "λ": "lambda",
           "π": "pi", "σ": "sigma", "τ": "tau", "φ": "phi", "ω": "omega", "Δ": "delta", "Σ": "sigma",
           "Ω": "omega"}
PAUSES = {"(": ",", ")": ",", "[": ",", "]": ",", "{": ",", "}": ","}

CURRENCIES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent"), "¥": ("yen", None)}
_SCALE_WORDS = {"k": "thousand", "thousand": "thousand", "m": "million", "mn": "million", "million": "million",
                "b": "billion", "bn": "billion", "billion": "billion", "t": "trillion", "tn": "trillion",
                "trillion": "trillion"}
_FRACTIONS = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters")}

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _pattern(*alternatives: tuple[str, str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in alternatives))


# One alternation, tried left to right at each position, so the earlier (more specific) rule wins.
_RULES = _pattern(
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    ("url", r"(?:(?:https?|ftp)://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]"
            r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|edu|gov|dev|ai|co|uk|de|fr)\b"
            r"(?:/[^\s<>\"']*[^\s<>\"'.,;:!?)\]])?"),
    ("iso_date", r"\b\d{4}-\d{1,2}-\d{1,2}\b"),
    ("num_date", r"\b\d{1,2}/\d{1,2}/(?:\d{4}|\d{2})\b"),
    ("month_date", rf"\b{_MONTH_RE}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?\s+\d{{4}}\b)?"),
    ("date_month", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}\b\.?(?:,?\s+\d{{4}}\b)?"),
    ("time", r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp]\.?[Mm]\b\.?)?"),
    ("hour_ampm", r"\b\d{1,2}\s*[AaPp]\.?[Mm]\b\.?"),
    ("money", rf"(?:(?<![\w.])-)?[$£€¥]\s?{_NUM}(?:\s*(?:thousand|million|billion|trillion|[kKmMbBtT]n?)\b)?"),
    ("percent", rf"(?:(?<![\w.])-)?{_NUM}\s?%"),
    ("temperature", rf"(?:(?<![\w.])-)?{_NUM}\s?°\s?[CFK]?\b"),
    ("ordinal", r"\b\d+(?:st|nd|rd|th)\b"),
    ("decade", r"\b(?:\d{2})?\d0s\b|'\d0s\b"),
    ("fraction", r"\b\d{1,3}/\d{1,3}\b"),
    ("phone", r"\b(?:\(?\d{3}\)?[-.\s])?\d{3}-\d{4}\b"),
    ("range", r"\b\d{1,4}\s?-\s?\d{1,4}\b"),
    ("number", rf"(?:(?<![\w.])-)?(?:{_NUM}|\.\d+)"),
    ("latin", r"(?<![\w.])(?:e\.g\.|i\.e\.|a\.k\.a\.|cf\.|et al\.)"),
    ("initialism", r"\b(?:[A-Z]\.){2,}"),
    ("abbrev", r"\b(?:" + "|".join(sorted(TITLES | OTHER_ABBREVIATIONS, key=len, reverse=True)) + r")\.(?!\w)"),
)

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<!--.*?-->", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_TYPOGRAPHY = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "«": '"',
                             "»": '"', "–": " - ", "—": " - ", "―": " - ", "−": "-", "‐": "-", "‑": "-",
                             "\u00a0": " "})
_SPACED_DASH = re.compile(r"\s+-+\s+|--+|\s+-+(?=[^\w$£€¥.])|(?<=\w)-+\s+")
_ELLIPSIS = re.compile(r"\.{2,}")
_PUNCT_SPACES = re.compile(r"\s+([.,;:?!])")
_REPEATED_PUNCT = re.compile(r"([.,;:?!])[\s.,;:?!]*")
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    """Step 1: entities, tags, Unicode folding, typography, control characters."""
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFKC", text.translate(_TYPOGRAPHY)).translate(_TYPOGRAPHY)
    text = text.replace("⁄", "/")  # NFKC turns ½ into 1⁄2 with a fraction slash
    return _CONTROL.sub(" ", text)


def _number_words(text: str) -> str:
    """``"1,234.5"`` / ``"-3"`` / ``".5"`` → words; integers 1100–2099 written plainly are read as years."""
    sign = "minus " if text.startswith("-") else ""
    body = text.lstrip("-").replace(",", "")
    whole, dot, frac = body.partition(".")
    if dot:
        return sign + nw.decimal(body)
    n = int(whole)
    if not sign and "," not in text and len(whole) == 4 and 1100 <= n <= 2099:
        return nw.year(n)
    if len(whole) > 1 and whole.startswith("0"):
        return sign + nw.digits(whole)  # "007", zip codes: read the digits
    return sign + nw.cardinal(n)


def _amount(text: str, unit: str, sub: str | None) -> str:
    """``"5.20", "dollar", "cent"`` → five dollars twenty cents."""
    body = text.replace(",", "")
    whole, _, frac = body.partition(".")
    n = int(whole) if whole else 0
    parts = []
    if n or not frac or sub is None or len(frac) != 2:
        if frac and (sub is None or len(frac) != 2):
            return f"{nw.decimal(body)} {nw.plural(unit)}"
        parts.append(f"{nw.cardinal(n)} {unit if n == 1 else nw.plural(unit)}")
    if frac and sub is not None and int(frac):
        cents = int(frac)
        sub_word = sub if cents == 1 else ("pence" if sub == "penny" else nw.plural(sub))
        parts.append(f"{nw.cardinal(cents)} {sub_word}")
    return " ".join(parts) if parts else f"zero {nw.plural(unit)}"


def _spell(token: str) -> str:
    return " ".join(nw.ONES[int(c)] if c.isdigit() else c for c in token if c.isalnum())


def _read_part(part: str, *, spell_short: bool = False) -> str:
    """A piece of a URL or address between separators: a word if it looks pronounceable, else spelled."""
    if not part:
        return ""
    if part.isdigit():
        return _number_words(part)
    if part.isalpha() and re.search(r"[aeiouyAEIOUY]", part) and not (spell_short and len(part) <= 2):
        return part.lower()
    return " ".join(_spell(chunk) if not (chunk.isalpha() and re.search(r"[aeiouy]", chunk, re.I) and len(chunk) > 2)
                    else chunk.lower() for chunk in re.findall(r"[A-Za-z]+|\d+", part))


_URL_SEPARATORS = {".": "dot", "/": "slash", "-": "dash", "_": "underscore", "?": "question mark", "=": "equals",
                   "&": "and", "#": "hash", ":": "colon", "~": "tilde", "+": "plus", "%": "percent", "@": "at"}


def _read_address(text: str) -> str:
    pieces = re.split(r"([./\-_?=&#:~+%@])", text)
    words: list[str] = []
    last_alnum = max((i for i, p in enumerate(pieces) if p and p not in _URL_SEPARATORS), default=-1)
    for i, piece in enumerate(pieces):
        if piece in _URL_SEPARATORS:
            if i < last_alnum:  # a trailing "/" is not read
                words.append(_URL_SEPARATORS[piece])
        elif piece:
            tld = i == last_alnum and i > 0 and pieces[i - 1] == "." and "/" not in text.split("@")[-1]
            words.append(_read_part(piece, spell_short=tld))
    return " ".join(w for w in words if w)


def _url(text: str) -> str:
    text = re.sub(r"^(?:https?|ftp)://", "", text)
    www = text.lower().startswith("www.")
    body = _read_address(text[4:] if www else text)
    return ("w w w dot " + body) if www else body


def _month(name: str) -> str:
    return MONTHS[_MONTH_BY_PREFIX[name.rstrip(".").lower()[:4] if name.lower().startswith("sept")
                                   else name.lower()[:3]] - 1]


def _date(month: int, day: int, year_: int | None) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    words = f"{MONTHS[month - 1]} {nw.ordinal(day)}"
    return f"{words}, {nw.year(year_)}" if year_ is not None else words


def _time(hours: int, minutes: int, seconds: int | None, ampm: str | None) -> str | None:
    if hours > 24 or minutes > 59 or (seconds is not None and seconds > 59) or (ampm and not 1 <= hours <= 12):
        return None
    if minutes == 0:
        words = nw.cardinal(hours) + (" hundred" if hours > 12 or (hours == 0 and not ampm) else
                                      "" if ampm else " o'clock")
    elif minutes < 10:
        words = f"{nw.cardinal(hours)} oh {nw.cardinal(minutes)}"
    else:
        words = f"{nw.cardinal(hours)} {nw.cardinal(minutes)}"
    if seconds:
        words += f" and {nw.cardinal(seconds)} second" + ("" if seconds == 1 else "s")
    if ampm:
        words += " a m" if ampm.lower().startswith("a") else " p m"
    return words


def _fraction(num: int, den: int) -> str:
    if den in _FRACTIONS and 0 < num < 10 * den:
        singular, many = _FRACTIONS[den]
        return f"{nw.cardinal(num)} {singular if num == 1 else many}"
    if 4 < den <= 12 and 0 < num < den:
        word = nw.ordinal(den)
        return f"{nw.cardinal(num)} {word if num == 1 else word + 's'}"
    return f"{nw.cardinal(num)} over {nw.cardinal(den)}"


def _rule(match: re.Match[str]) -> str:
    kind = match.lastgroup
    text = match.group(0)
    out = _RULE_HANDLERS[kind](text, match)
    if out is not None and kind in ("time", "hour_ampm") and text.endswith("."):
        out += _sentence_end(match)  # "at 3 p.m." ends the sentence too
    if out is None:  # the pattern matched something that is not valid for it: read its numbers plainly
        out = _NUMBER_RUN.sub(lambda m: f" {_number_words(m.group(0))} ", text)
    return f" {out} "


_NUMBER_RUN = re.compile(r"\d+")


def _iso_date(text: str, _m: re.Match[str]) -> str | None:
    y, mo, d = (int(x) for x in text.split("-"))
    return _date(mo, d, y)


def _num_date(text: str, _m: re.Match[str]) -> str | None:
    a, b, y = text.split("/")
    first, second, year_ = int(a), int(b), int(y)
    if len(y) == 2:
        year_ += 2000 if year_ < 50 else 1900
    month, day = (first, second) if first <= 12 else (second, first)
    return _date(month, day, year_)


def _month_date(text: str, _m: re.Match[str]) -> str | None:
    m = re.match(r"([A-Za-z]+)\.?\s+(\d+)\D*?(?:,?\s+(\d{4}))?$", text)
    return _date(MONTHS.index(_month(m.group(1))) + 1, int(m.group(2)), int(m.group(3)) if m.group(3) else None)


def _date_month(text: str, _m: re.Match[str]) -> str | None:
    m = re.match(r"(\d+)(?:st|nd|rd|th)?\s+(?:of\s+)?([A-Za-z]+)\.?(?:,?\s+(\d{4}))?$", text)
    day = int(m.group(1))
    if not 1 <= day <= 31:
        return None
    words = f"the {nw.ordinal(day)} of {_month(m.group(2))}"
    return f"{words}, {nw.year(int(m.group(3)))}" if m.group(3) else words


def _clock(text: str, _m: re.Match[str]) -> str | None:
    m = re.match(r"(\d+):(\d+)(?::(\d+))?\s*(?:([AaPp])\.?[Mm]\.?)?$", text)
    return _time(int(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else None, m.group(4))


def _hour_ampm(text: str, _m: re.Match[str]) -> str | None:
    m = re.match(r"(\d+)\s*([AaPp])", text)
    return _time(int(m.group(1)), 0, None, m.group(2))


def _money(text: str, _m: re.Match[str]) -> str:
    m = re.match(rf"(-?)([$£€¥])\s?({_NUM})\s*([A-Za-z]*)$", text)
    sign, symbol, amount, scale = m.groups()
    unit, sub = CURRENCIES[symbol]
    minus = "minus " if sign else ""
    if scale:
        scale_word = _SCALE_WORDS[scale.lower()]
        return f"{minus}{_number_words(amount)} {scale_word} {nw.plural(unit) if unit != 'yen' else unit}"
    if unit == "yen":
        return f"{minus}{_number_words(amount)} yen"
    return minus + _amount(amount, unit, sub)


def _percent(text: str, _m: re.Match[str]) -> str:
    body = text.rstrip("% ")
    return f"{'minus ' if body.startswith('-') else ''}{_plain_number(body.lstrip('-'))} percent"


def _plain_number(text: str) -> str:
    """A number that is never a year (amounts, percentages)."""
    body = text.replace(",", "")
    return nw.decimal(body) if "." in body else nw.cardinal(int(body))


def _temperature(text: str, _m: re.Match[str]) -> str:
    m = re.match(rf"(-?)({_NUM})\s?°\s?([CFK]?)$", text)
    sign, amount, scale = m.groups()
    unit = {"C": " Celsius", "F": " Fahrenheit", "K": " kelvin", "": ""}[scale]
    value = _plain_number(amount)
    return f"{'minus ' if sign else ''}{value} {'degree' if value == 'one' else 'degrees'}{unit}"


def _ordinal(text: str, _m: re.Match[str]) -> str:
    return nw.ordinal(int(text[:-2]))


def _decade(text: str, _m: re.Match[str]) -> str:
    digits = text.strip("'s")
    words = nw.year(int(digits)) if len(digits) == 4 else nw.cardinal(int(digits))
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}".strip()


def _fraction_rule(text: str, _m: re.Match[str]) -> str:
    num, den = (int(x) for x in text.split("/"))
    return _fraction(num, den) if den else f"{nw.cardinal(num)} slash zero"


def _range(text: str, _m: re.Match[str]) -> str:
    a, b = (x.strip() for x in text.split("-"))
    return f"{_number_words(a)} to {_number_words(b)}"


def _phone(text: str, _m: re.Match[str]) -> str:
    return ", ".join(nw.digits(group) for group in re.findall(r"\d+", text))


def _number(text: str, _m: re.Match[str]) -> str:
    return _number_words(text)


def _latin(text: str, _m: re.Match[str]) -> str:
    return LATIN_ABBREVIATIONS[text]


def _initialism(text: str, _m: re.Match[str]) -> str:
    words = " ".join(text.replace(".", ""))
    return words + _sentence_end(_m)


def _sentence_end(match: re.Match[str]) -> str:
    """An abbreviation's period that also ends the sentence is kept as a full stop."""
    rest = match.string[match.end():]
    return "." if not rest.strip() or re.match(r"\s+[A-Z\"']", rest) and match.group(0)[:-1] not in TITLES else ""


def _abbrev(text: str, m: re.Match[str]) -> str:
    word = text[:-1]
    rest = m.string[m.end():]
    before = m.string[:m.start()].rstrip()
    next_capital = re.match(r"\s*[A-Z]", rest) is not None
    if word in _BEFORE_NUMBER_ONLY and not re.match(r"\s*\d", rest):
        return text  # "no." is the word "no" with a full stop
    if word == "St":
        return "saint" if next_capital else "street" + _sentence_end(m)
    if word == "Dr":
        return "doctor" if next_capital or not re.search(r"\b[A-Z][a-z]+$", before) else "drive" + _sentence_end(m)
    if word in TITLES:
        return TITLES[word]
    return OTHER_ABBREVIATIONS[word] + _sentence_end(m)


_RULE_HANDLERS = {
    "email": lambda t, m: _read_address(t),
    "url": lambda t, m: _url(t),
    "iso_date": _iso_date, "num_date": _num_date, "month_date": _month_date, "date_month": _date_month,
    "time": _clock, "hour_ampm": _hour_ampm, "money": _money, "percent": _percent, "temperature": _temperature,
    "ordinal": _ordinal, "decade": _decade, "fraction": _fraction_rule, "phone": _phone, "range": _range,
    "number": _number,
    "latin": _latin, "initialism": _initialism, "abbrev": _abbrev,
}


@lru_cache(maxsize=4096)
def _char(c: str) -> str:
    """Step 3 for one character outside ``[A-Za-z0-9' .,;:?!-]``."""
    if c in SYMBOLS:
        return f" {SYMBOLS[c]} "
    if c in PAUSES:
        return f" {PAUSES[c]} "
    if c.isspace() or c in "\"*_|^`\\/#":
        if c == "#":
            return " hash "
        if c == "/":
            return " slash "
        return " "
    base = unicodedata.normalize("NFKD", c)
    stripped = "".join(ch for ch in base if not unicodedata.combining(ch))
    if stripped and all(ch.isascii() and ch.isalpha() for ch in stripped):
        return stripped
    special = {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "đ": "d", "ł": "l",
               "Ł": "L", "ð": "th", "þ": "th", "ı": "i"}
    if c in special:
        return special[c]
    return " "  # other scripts, emoji, unnamed symbols: dropped


_KEEP = re.compile(r"[^A-Za-z0-9' .,;:?!-]")


def _symbols(text: str) -> str:
    return _KEEP.sub(lambda m: _char(m.group(0)), text)


def _tidy(text: str) -> str:
    text = _SPACED_DASH.sub(" , ", text)
    text = _ELLIPSIS.sub(".", text)
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)  # quotes, not apostrophes
    text = re.sub(r"(?<![A-Za-z])-|-(?![A-Za-z])", " ", text)  # stray hyphens
    text = _SPACES.sub(" ", text).strip()
    text = _PUNCT_SPACES.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(lambda m: _strongest(m.group(0)) + " ", text).strip()
    return re.sub(r"^[\s.,;:?!]+", "", text)


def _strongest(run: str) -> str:
    for mark in "?!.;:,":
        if mark in run:
            return mark
    return run.strip()[:1]


def normalize(text: str) -> str:
    """Written text → one line of speakable words with pause punctuation. Never raises for a ``str``."""
    if not isinstance(text, str):
        raise TypeError(f"normalize() takes a str, not {type(text).__name__}")
    text = clean(text)
    text = re.sub(r"(?<=[A-Za-z])-(?=\d)", " ", text)  # "COVID-19": a name and a number, not a range
    text = re.sub(r"#(?=\d)", " number ", text)  # "#1"
    text = _RULES.sub(_rule, text)
    text = _NUMBER_RUN.sub(lambda m: f" {_number_words(m.group(0))} ", text)  # digits glued to letters: "mp3"
    return _tidy(_symbols(text))


def words(text: str) -> list[str]:
    """The words of ``normalize(text)``, punctuation removed."""
    return re.findall(r"[A-Za-z][A-Za-z'-]*", normalize(text))
