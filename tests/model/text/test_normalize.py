import pytest

from model.text.normalize import normalize, words
from model.text.numbers import cardinal, ordinal, year


@pytest.mark.parametrize("text, expected", [
    ("7", "seven"),
    ("-5", "minus five"),
    ("It fell to -12 today.", "It fell to minus twelve today."),
    ("1,234,567", "one million two hundred thirty-four thousand five hundred sixty-seven"),
    ("1000000000000", "one trillion"),
    ("1000000", "one million"),
    ("105", "one hundred five"),
    ("3.14", "three point one four"),
    ("0.5", "zero point five"),
    ("007", "zero zero seven"),
])
def test_numbers(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("$5.20", "five dollars twenty cents"),
    ("$1", "one dollar"),
    ("$0.01", "one cent"),
    ("$1,000", "one thousand dollars"),
    ("£3.50", "three pounds fifty pence"),
    ("€2.99", "two euros ninety-nine cents"),
    ("$5 million", "five million dollars"),
    ("$2.5bn", "two point five billion dollars"),
    ("¥100", "one hundred yen"),
    ("-$4", "minus four dollars"),
])
def test_currency(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("50%", "fifty percent"),
    ("3.5%", "three point five percent"),
    ("down -2%", "down minus two percent"),
    ("2026-11-26", "November twenty-sixth, twenty twenty-six"),
    ("11/26/2026", "November twenty-sixth, twenty twenty-six"),
    ("26/11/2026", "November twenty-sixth, twenty twenty-six"),
    ("Nov 26, 2026", "November twenty-sixth, twenty twenty-six"),
    ("Nov. 26", "November twenty-sixth"),
    ("26 November 2026", "the twenty-sixth of November, twenty twenty-six"),
    ("3:45 pm", "three forty-five p m"),
    ("15:45", "fifteen forty-five"),
    ("3:05", "three oh five"),
    ("7am", "seven a m"),
    ("Meet at 3 p.m. Then leave.", "Meet at three p m. Then leave."),
    ("1st", "first"), ("22nd", "twenty-second"), ("103rd", "one hundred third"), ("11th", "eleventh"),
    ("1999", "nineteen ninety-nine"), ("2000", "two thousand"), ("2007", "two thousand seven"),
    ("2026", "twenty twenty-six"), ("1905", "nineteen oh five"), ("the 1990s", "the nineteen nineties"),
    ("3/4", "three quarters"), ("5-10", "five to ten"),
])
def test_percent_dates_times_ordinals_years(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Dr. Smith", "doctor Smith"),
    ("Mr. and Mrs. Jones", "mister and missus Jones"),
    ("St. Paul lives on Elm St.", "saint Paul lives on Elm street."),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("fruit, e.g. apples", "fruit, for example apples"),
    ("i.e. none", "that is none"),
    ("cats vs. dogs", "cats versus dogs"),
    ("No. 5", "number five"),
    ("the U.S. army", "the U S army"),
])
def test_abbreviations(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Tom & Jerry", "Tom and Jerry"),
    ("2 + 2 = 4", "two plus two equals four"),
    ("me @ home", "me at home"),
    ("25°C", "twenty-five degrees Celsius"),
    ("#1 fan", "number one fan"),
])
def test_symbols(text, expected):
    assert normalize(text) == expected


def test_urls_and_emails_are_spelled_sensibly():
    assert normalize("https://www.example.com/docs") == "w w w dot example dot com slash docs"
    assert normalize("see github.io") == "see github dot i o"
    assert normalize("mail john.doe@example.com.") == "mail john dot doe at example dot com."


@pytest.mark.parametrize("text, expected", [
    ("hi 😀 there", "hi there"),            # emoji dropped
    ("😀😀", ""),                            # nothing speakable
    ("a\x00b\x07c", "a b c"),               # control characters become spaces
    ("Привет world 日本", "world"),          # other scripts dropped
    ("café naïve", "cafe naive"),           # Latin diacritics stripped
    ("<b>Bold</b> text<br/>", "Bold text"),  # markup removed
    ("&amp; &lt;3", "and less than three"),  # entities decoded, then read
    ("a < b", "a less than b"),             # a bare < is a symbol, not a tag
    ("Wait — what?!", "Wait, what?"),        # dashes are pauses, repeated marks collapse
    ("He said \"hi\" (quietly).", "He said hi, quietly."),
])
def test_odd_input_rules(text, expected):
    assert normalize(text) == expected


def test_never_crashes_on_any_character():
    junk = "".join(chr(c) for c in range(0, 0x3000, 7)) + "\ud800" + "$$$ %%% ::: 1/0 99:99 13/45/2020 ...."
    out = normalize(junk)
    assert isinstance(out, str)
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'- .,;:?!")
    assert not any(c.isdigit() for c in normalize("a1b22c 3.3.3 4,5,6 1e10 0x1F"))


def test_words_drops_punctuation():
    assert words("Hello, world! It's 5.") == ["Hello", "world", "It's", "five"]


def test_number_words_direct():
    assert cardinal(0) == "zero"
    assert cardinal(10**36) == "one " + " ".join(["zero"] * 36)  # past decillion: digit by digit
    assert ordinal(12) == "twelfth" and ordinal(40) == "fortieth" and ordinal(101) == "one hundred first"
    assert year(1900) == "nineteen hundred"
