"""Numbers to English words: cardinals, ordinals, years, decimals, digit strings.

Written here rather than taken from a library so that the output is fixed by this file alone (no locale, no
library-version drift between the machine that built the corpus and the one serving). American English, short
scale, no "and" inside numbers ("one hundred five"), hyphenated tens ("twenty-one"). Integers past the largest
named scale word (10**36) are read digit by digit, which is what a listener would want for such a string anyway.
"""

from __future__ import annotations

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion", "sextillion",
          "septillion", "octillion", "nonillion", "decillion")
MAX_NAMED = 10 ** (3 * len(SCALES))

_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}


def _under_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens] + (f"-{ONES[ones]}" if ones else ""))
    elif rest or not words:
        words.append(ONES[rest])
    return words


def cardinal(n: int) -> str:
    """``-1234`` → ``"minus one thousand two hundred thirty-four"``."""
    if n < 0:
        return "minus " + cardinal(-n)
    if n >= MAX_NAMED:
        return digits(str(n))
    if n == 0:
        return "zero"
    groups: list[str] = []
    scale = 0
    while n:
        n, group = divmod(n, 1000)
        if group:
            groups.append(" ".join(_under_thousand(group) + ([SCALES[scale]] if scale else [])))
        scale += 1
    return " ".join(reversed(groups))


def ordinal(n: int) -> str:
    """``22`` → ``"twenty-second"``; only the last word changes."""
    words = cardinal(n)
    head, sep, last = words.rpartition(" ")
    stem, hyphen, unit = last.rpartition("-")
    if unit in _ORDINAL_IRREGULAR:
        unit = _ORDINAL_IRREGULAR[unit]
    elif unit.endswith("y"):
        unit = unit[:-1] + "ieth"
    else:
        unit += "th"
    return head + sep + stem + hyphen + unit


def year(n: int) -> str:
    """Read as a year: 1999 → nineteen ninety-nine, 1905 → nineteen oh five, 2000 → two thousand,
    2007 → two thousand seven, 2026 → twenty twenty-six, 1900 → nineteen hundred."""
    if n < 0 or n >= 10000:
        return cardinal(n)
    if n < 1000 or 2000 <= n < 2010:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    if low < 10:
        return f"{cardinal(high)} oh {cardinal(low)}"
    return f"{cardinal(high)} {cardinal(low)}"


def digits(s: str) -> str:
    """Read each digit: ``"0451"`` → ``"zero four five one"``; non-digits are skipped."""
    return " ".join(ONES[int(c)] for c in s if c.isdigit())


def decimal(text: str) -> str:
    """A plain decimal string (no sign, no separators): ``"3.14"`` → ``"three point one four"``."""
    whole, _, frac = text.partition(".")
    head = cardinal(int(whole)) if whole else ""
    if not frac:
        return head or "zero"
    return f"{head} point {digits(frac)}".strip()


def plural(word: str) -> str:
    """Plural of a unit or fraction word (``"half"`` → ``"halves"``)."""
    if word == "half":
        return "halves"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"
