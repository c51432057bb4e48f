"""Text normalization: numbers, currency, dates, units... written out as words, with exact offsets.

F5-TTS reads digits badly and the word aligner (ctc-forced-aligner) drops them, so what is spoken
must be words. ``normalize`` returns one ``Token`` per piece of the client's text, in order, never
overlapping, covering every non-whitespace character exactly once; ``text[t.start:t.end]`` is what
the client wrote for ``t.spoken``, so a spoken word's timing can point back at it.

What a token covers
    One token per whitespace-separated word, punctuation included: "$3.50." is one token spoken
    "three dollars fifty cents.", "Dec 25, 2026" is three tokens ("Dec" -> "December",
    "25," -> "twenty fifth,", "2026" -> "twenty twenty six"). Words that depend on each other are
    read with their neighbours in view instead of being merged ("10:30 am" -> "ten thirty" + "a m",
    "5 km" -> "five" + "kilometers", "$3 billion" -> "three" + "billion dollars"). The one exception
    is a lexicon match: it may span several words ("New York") or part of a word ('"GIF,"': the
    quote and comma next to the match join its token; other characters of that word, such as
    "x/" in "x/GIF", become tokens of their own). A token's spoken text is "" when nothing is
    spoken for it (a lone dash, a lone "...").

Lexicon
    Applied first and wins over every rule: case-sensitive, whole words (no letter, digit or "_"
    right before or after), longest grapheme first at each position, whitespace inside a grapheme
    matches any run of whitespace (Chinese text, where every character counts as a letter, has
    its own rules in ``pipeline.text.zh``). The alias is then normalized like any text ("version 2" ->
    "version two") and the punctuation around the match is kept.

English ("eng": every rule below)
    Numbers      cardinals without "and" or hyphens ("1,234" -> "one thousand two hundred thirty
                 four"), "-5"/"−5" -> "minus five", "3.14" -> "three point one four", "2nd",
                 "21st", "1990s", "'90s", "1/2" -> "one half", "2 3/4" -> "two and three quarters"
                 (a/b with a < b is a fraction; "24/7", "9/11", "50/50" are read as said; other
                 a/b is "a over b"), "5-10" -> "five to ten", "50-50" -> "fifty fifty", "3:1" ->
                 "three to one"; a dash between two numeric things reads "to" ("9am-5pm" -> "nine a m
                 to five p m", "$5-$10", "10-20km" -> "ten to twenty kilometers").
    Years        a bare four-digit number 1000-2099 (no sign, comma or decimals) is a year
                 ("nineteen ninety nine", "twenty twenty six", "two thousand five") unless the next
                 word is a unit, a currency or scale word, or an ordinary lowercase word such as a
                 noun ("1999 apples", "2000 people" -> cardinal); a year cue before it ("in", "since",
                 "by", "of", a month, a day of a date, "Q3", or "to"/"and"/"-" after a year...)
                 makes it a year whatever follows ("in 1999 we", "Dec 25, 2026", "from 2010 to 2020
                 sales"). "1,999" is always a cardinal. A range of such numbers ("1990-1995",
                 "1990-95") reads as years.
    Digit by digit: numbers written with a leading zero ("007"), bare digit strings of 7 or more
                 digits unless round ("5551234567" but "1000000" -> "one million"), phone-shaped
                 strings ("555-1234", "(555) 123-4567", "+1-555-123-4567", "1-800-555-0199"),
                 groups of 4+ digits in dotted numbers; "1.2.3" -> "one point two point three", an
                 IP address "192.168.0.1" -> "one hundred ninety two dot ...".
    Currency     "$", "€", "£", "¥", "₹" before the number (or "5€", "50¢" after):
                 "$3.50" -> "three dollars fifty cents" (never "and"), "$1" -> "one dollar",
                 "$0.99" -> "ninety nine cents", "£2.50" -> "two pounds fifty pence",
                 "$2.5M"/"$3bn" -> "two point five million dollars" / "three billion dollars",
                 "$3 billion" -> "three" + "billion dollars"; other decimals -> "point" reading.
    Percent      "5%" -> "five percent", "5-10%" -> "five to ten percent".
    Times        "10:30" -> "ten thirty", "10:05" -> "ten oh five", "10:00" -> "ten o'clock",
                 "14:00" -> "fourteen hundred", "3pm"/"3 p.m." -> "three p m", "10:05 am" -> "ten
                 oh five" + "a m" ("am" is only read "a m" right after a time or a number 1-12).
    Dates        "12/25/2026" (US order; "25/12/2026" when the first number cannot be a month),
                 "2026-12-25", "25.12.2026" -> "December twenty fifth twenty twenty six" or "the
                 twenty fifth of December twenty twenty six"; "Dec 25, 2026", "Dec. 25th",
                 "December 25" (day after a month -> ordinal), "25 December 2026" -> "the twenty
                 fifth of" + "December" + year. A month abbreviation ("Dec", "Jan.") is expanded
                 only next to a day or year number ("Jan" alone may be a name).
    Units        after a number, attached or not: "5 km", "10 km/h" -> "ten kilometers per hour",
                 "3kg", "20°C" -> "twenty degrees Celsius", "100 MB", "2 tbsp"; singular after "1" or
                 a lone proper fraction ("1 km", "1/4 tsp" -> "one quarter teaspoon"); "2x" -> "two
                 times". Ambiguous symbols such as "in" or "A" are not units.
    Abbreviations "Mr." mister, "Mrs." missus, "Ms." miz, "Dr." doctor (drive after a capitalised
                 word or number when no capitalised word follows), "St." street after a capitalised
                 word or a number ("12 Main St."), else saint before a capitalised word ("St.
                 Louis"), "etc.", "e.g.", "i.e.", "vs.", "No. 5" -> "number five" (only before a
                 number), "Inc.", "Ave."... An abbreviation that can end a sentence ("etc.",
                 "a.m.", "Inc.", street "St.") keeps a "." in spoken when it ends the text, a line,
                 or is followed by a capitalised word; titles ("Dr.", "Mr.") never do.
    Symbols      "&" and, "+" plus, "=" equals, "@" at, "%" percent, "±"... as words or inside a
                 word with digits or symbols ("AT&T" -> "AT and T", "COVID-19" -> "COVID nineteen",
                 "C++" -> "C plus plus"); a lone dash between numbers is "to" ("minus" in "5 - 3 =
                 2"), otherwise nothing.
    URLs, e-mail "example.com" -> "example dot com", "https://x.org/a" -> "h t t p s colon slash
                 slash x dot org slash a", "bob@mail.com" -> "bob at mail dot com"; a bare domain
                 needs a known top-level domain (".com", ".org", ".io"...).
    Other words  unchanged: letters-only words and acronyms ("NASA", "well-known", "U.S.",
                 "file.txt") are left for the model to read as it will. Sentence punctuation stays
                 attached to spoken; a word of punctuation only ("—", "...", a lone "?") is spoken "".

Other languages ("basic")
    For deu, fra, spa, ita, por and nld (``BASIC``) num2words reads plain numbers in the language's
    own format (decimal comma, "." or no thousands separator: "1.234,5"; a lone "3.14" is a decimal):
    cardinals, negatives, decimals digit by digit after the decimal word ("drei Komma eins vier"),
    ordinals written with the language's marker ("1er"/"1re"/"2e" fra, "1º"/"2ª"/"1.º" spa ita por,
    "1e"/"2de"/"8ste" nld, "3." before a word in deu, inflected "-n" after "am", "im", "zum"...),
    percentages and "€"; German and Dutch read bare 1100-1999 as years ("neunzehnhundert...").
    Digits inside other words are read as cardinals, a word of punctuation only is spoken "",
    everything else is left as written (basic rules have no dates, times, units or currencies but €).
    Chinese ("zho", "cmn", "zh", "chi": ``CHINESE``) has rules of its own in ``pipeline.text.zh``:
    word segmentation with rjieba instead of whitespace (one token per Chinese word, run of letters
    or number expression), numbers, dates, times, currency, units and phone numbers read in Mandarin
    characters, and a lexicon matched inside Chinese text (see that module). Every other language
    (num2words 0.5.14 has no Chinese) is left unchanged apart from the lexicon. ``SUPPORTED`` lists
    the languages with the full rules; two-letter codes ("en", "de"...) are accepted too.
    ``enabled=False`` keeps every word as written (spoken == source word) and still applies the
    lexicon, with aliases left as written.

Spoken text
    ``spoken_text`` joins the spoken forms with single spaces, except where the boundary is Chinese
    (or other CJK: kana, CJK and fullwidth punctuation) on either side, which joins with nothing:
    Chinese has no spaces, and F5-TTS reads "你好 世界" differently from "你好世界". Text without CJK
    characters is joined exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from num2words import num2words

from pipeline.text import lexicon, zh
from pipeline.text.matcher import Matcher
from pipeline.text.tokens import Token

__all__ = ["BASIC", "CHINESE", "SUPPORTED", "normalize", "spoken_text"]

SUPPORTED = frozenset({"eng", "zho"})
# Codes that get the Chinese rules (pipeline.text.zh), compared lowercased.
CHINESE = zh.LANGUAGES
# ISO 639-3 -> num2words language code, for the "basic" rules (numbers only).
BASIC: dict[str, str] = {"deu": "de", "fra": "fr", "spa": "es", "ita": "it", "por": "pt", "nld": "nl"}

# ---------------------------------------------------------------------------------------------
# Words and lexicon segmentation
# ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_LEAD = "\"'“‘’«„‚‹(\\[{¿¡"
_TRAIL = ".,;:!?…)\\]}\"'”’»›"
_LEAD_SET = frozenset(_LEAD.replace("\\", ""))
_TRAIL_SET = frozenset(_TRAIL.replace("\\", ""))
_LEAD_CHARS = "".join(sorted(_LEAD_SET))
_TRAIL_CHARS = "".join(sorted(_TRAIL_SET))


def _split(word: str) -> tuple[str, str, str]:
    """(lead, core, trail): the opening punctuation, the word, the closing punctuation.

    What ``re.fullmatch(rf"([{_LEAD}]*)(.*?)([{_TRAIL}]*)", word, re.S)`` gave: the longest run of
    lead characters, then the shortest core that leaves only trail characters after it. The regex
    took time quadratic in a word of trail characters that does not end in one (its lazy core
    retried the trail run from every position: 26 s for ``"." * 99999 + "a"``); two strips are
    linear. The backslash in ``_LEAD``/``_TRAIL`` only escapes a bracket in the character class.
    """
    rest = word.lstrip(_LEAD_CHARS)
    core = rest.rstrip(_TRAIL_CHARS)
    return word[: len(word) - len(rest)], core, rest[len(core) :]


def spoken_text(tokens: Sequence[Token]) -> str:
    """What is said: the non-empty spoken forms joined by single spaces, or by nothing where the
    boundary is Chinese (or other CJK) on either side ("你好，世界。", "用iPhone十五拍")."""
    return zh.join_spoken([t.spoken for t in tokens])


class _Unit:
    """A piece of the text: a plain word (``alias`` None) or a lexicon match with its punctuation."""

    __slots__ = ("alias", "end", "lead", "start", "trail")

    def __init__(self, start: int, end: int, alias: str | None = None, lead: str = "", trail: str = "") -> None:
        self.start, self.end, self.alias, self.lead, self.trail = start, end, alias, lead, trail


# Few entries: one automaton holds up to 200,000 characters of graphemes (MAX_ENTRIES x MAX_LENGTH).
@lru_cache(maxsize=8)
def _lexicon_matcher(items: tuple[tuple[str, str], ...]) -> tuple[Matcher, dict[str, str]] | None:
    table = lexicon.table(items)
    if not table:
        return None
    # Whole words: no letter, digit or "_" right before or after any grapheme.
    return Matcher(table, r"\w", always=True), table


def _segment(text: str, lexicon: Mapping[str, str] | None) -> list[_Unit]:
    compiled = _lexicon_matcher(tuple(sorted(lexicon.items()))) if lexicon else None
    if compiled is None:
        return [_Unit(m.start(), m.end()) for m in _WORD.finditer(text)]
    matcher, table = compiled
    units: list[_Unit] = []
    pos = 0
    for start, end, grapheme in matcher.find(text):
        if start < pos:  # a grapheme starting with punctuation already taken by the previous match
            continue
        lo = start
        while lo > pos and text[lo - 1] in _LEAD_SET:
            lo -= 1
        hi = end
        while hi < len(text) and text[hi] in _TRAIL_SET:
            hi += 1
        units.extend(_Unit(w.start() + pos, w.end() + pos) for w in _WORD.finditer(text[pos:lo]))
        alias = table[grapheme]
        units.append(_Unit(lo, hi, alias, text[lo:start], text[end:hi]))
        pos = hi
    units.extend(_Unit(w.start() + pos, w.end() + pos) for w in _WORD.finditer(text[pos:]))
    return units


def _language(language: str) -> str | None:
    code = (language or "").strip().lower()
    if code in ("eng", "en"):
        return "en"
    if code in BASIC:
        return BASIC[code]
    return code if code in BASIC.values() else None


# How often ``on_spoken`` hears about a text being expanded, in spoken characters.
REPORT_EVERY = zh.REPORT_EVERY


def normalize(
    text: str,
    language: str = "eng",
    lexicon: Mapping[str, str] | None = None,
    *,
    enabled: bool = True,
    on_spoken: Callable[[int], None] | None = None,
) -> list[Token]:
    """Tokens covering every non-whitespace character of ``text`` once, in order (see the module doc).

    ``on_spoken`` hears the spoken characters of the tokens made so far each time they grow by
    ``REPORT_EVERY``, and may raise to stop there: an alias of 200 characters for every one-letter
    word multiplies the text, and the job's budget stops it before the whole of it is built."""
    if (language or "").strip().lower() in CHINESE:
        return zh.normalize(text, lexicon, enabled=enabled, on_spoken=on_spoken)
    units = _segment(text, lexicon)
    lang = _language(language) if enabled else None
    words: list[str | None] = [None if u.alias is not None else text[u.start : u.end] for u in units]
    if lang == "en":
        breaks = [i > 0 and "\n" in text[units[i - 1].end : units[i].start] for i in range(len(units))]
        spoken = _English(words, breaks).run()
    elif lang is not None:
        spoken = _Basic(lang, words).run()
    else:
        spoken = [w or "" for w in words]
    tokens: list[Token] = []
    produced = 0
    report = REPORT_EVERY
    for unit, said in zip(units, spoken, strict=True):
        if unit.alias is not None:
            alias = _alias_spoken(unit.alias, language, enabled)
            said = f"{unit.lead}{alias}{unit.trail}" if alias else ""
        tokens.append(Token(unit.start, unit.end, said))
        produced += len(said)
        if on_spoken is not None and produced >= report:
            on_spoken(produced)
            report = produced + REPORT_EVERY
    return tokens


@lru_cache(maxsize=1024)
def _alias_spoken(alias: str, language: str, enabled: bool) -> str:
    return spoken_text(normalize(alias, language, None, enabled=enabled))


# ---------------------------------------------------------------------------------------------
# English number words
# ---------------------------------------------------------------------------------------------

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_AND = re.compile(r"\s+and\s+")


def _clean(words: str) -> str:
    words = _AND.sub(" ", words.replace("-", " ").replace(",", ""))
    return " ".join(words.split())


def _digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in s if c.isdecimal())


_MAX_DIGITS = 30  # longer numbers are read digit by digit (and int() refuses 4300+ digits)


def _card_s(s: str) -> str:
    """A string of ASCII digits as a cardinal."""
    return _digits(s) if len(s.lstrip("0")) > _MAX_DIGITS else _card(int(s))


def _ordinal_s(s: str) -> str:
    return _card_s(s) if len(s.lstrip("0")) > _MAX_DIGITS else _ordinal(int(s))


@lru_cache(maxsize=8192)
def _card(n: int) -> str:
    if n < 0:
        return "minus " + _card(-n)
    try:
        return _clean(num2words(n, lang="en"))
    except (OverflowError, ValueError, TypeError, IndexError):
        return _digits(str(n))


@lru_cache(maxsize=4096)
def _ordinal(n: int) -> str:
    try:
        return _clean(num2words(n, lang="en", to="ordinal"))
    except (OverflowError, ValueError, TypeError, IndexError):
        return _card(n)


@lru_cache(maxsize=4096)
def _year(n: int) -> str:
    return _clean(num2words(n, lang="en", to="year"))


def _plural(phrase: str) -> str:
    head, _, last = phrase.rpartition(" ")
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith("x"):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _int_words(s: str) -> str:
    """A digit string without separators, outside any context."""
    if len(s) > 1 and s[0] == "0":
        return _digits(s)
    if len(s) >= 7 and not _ROUND.fullmatch(s):
        return _digits(s)
    return _card_s(s)


def _num_words(s: str) -> str:
    """'1,234.5', '3.14', '.5', '42' (no sign)."""
    whole, dot, frac = s.partition(".")
    whole = whole.replace(",", "")
    if not dot:
        return _card_s(whole) if "," in s else _int_words(whole)
    head = _card_s(whole) if whole else ""
    return f"{head} point {_digits(frac)}".strip()


def _is_one(s: str) -> bool:
    return s.lstrip("+-−") == "1"


_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+"
_ROUND = re.compile(r"[1-9]0+")
_INT = re.compile(r"[0-9]+")
_PLAIN = re.compile(rf"(?P<sign>[-−+]?)(?P<num>{_NUM})")
_ORDINAL = re.compile(r"(?P<num>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?P<suf>st|nd|rd|th|ST|ND|RD|TH)")
_DECADE = re.compile(r"['’]?(?P<num>[0-9]{1,3}0)(?P<s>s|'s|’s)")
_FRACTION = re.compile(r"(?P<a>[0-9]{1,3})/(?P<b>[0-9]{1,3})")
_RANGE = re.compile(rf"(?P<a>{_NUM})[-–—](?P<b>{_NUM})")
_RATIO = re.compile(r"(?P<a>[0-9]+):(?P<b>[0-9]+)")
_TIME = re.compile(r"(?P<h>[0-9]{1,2}):(?P<m>[0-5][0-9])")
_AMPM_ATTACHED = re.compile(r"(?P<h>[0-9]{1,2})(?::(?P<m>[0-5][0-9]))?(?P<ap>[AaPp])\.?[Mm]\.?")
_AMPM_WORD = re.compile(r"(?P<ap>[AaPp])(?:\.[Mm]\.?|[Mm])")
_ISO_DATE = re.compile(r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})")
_SLASH_DATE = re.compile(r"(?P<a>[0-9]{1,2})/(?P<b>[0-9]{1,2})/(?P<y>[0-9]{4}|[0-9]{2})")
_DOT_DATE = re.compile(r"(?P<d>[0-9]{1,2})\.(?P<m>[0-9]{1,2})\.(?P<y>[0-9]{4})")
_PHONE = re.compile(
    r"(?:\+[0-9]{1,3}[-.])?(?:\([0-9]{3}\)|[0-9]{3})[-.][0-9]{3}[-.][0-9]{4}"
    r"|[2-9][0-9]{2}[-.][0-9]{4}|\+[0-9]{7,15}|\+?[0-9]+(?:-[0-9]+){2,}"
)
_PHONE_TAIL = re.compile(r"[0-9]{3}[-.][0-9]{4}")
_DOTTED = re.compile(r"[0-9]+(?:\.[0-9]+){2,}")
_HASH_NUM = re.compile(r"#(?P<num>[0-9]+)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_TLDS = (
    "com|org|net|edu|gov|mil|int|io|co|ai|app|dev|info|biz|me|tv|ly|gg|xyz|eu|us|uk|de|fr|es|it|nl|ca|au"
    "|jp|cn|in|ru|br|ch|se|no|fi|dk|pl|be|at|nz|ie|pt|mx|kr|tech|site|online|store|blog|news|cloud|so"
)
_URL = re.compile(
    rf"(?i:https?|ftp)://\S+|(?i:www)\.\S+|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:{_TLDS})(?::[0-9]+)?(?:/\S*)?"
)
_URL_PIECE = re.compile(r"[^\W\d_]+|[0-9]+|://|.")
_URL_SYMBOLS = {
    ".": "dot",
    "/": "slash",
    ":": "colon",
    "://": "colon slash slash",
    "-": "dash",
    "_": "underscore",
    "?": "question mark",
    "=": "equals",
    "&": "and",
    "#": "hash",
    "@": "at",
    "~": "tilde",
    "%": "percent",
    "+": "plus",
}
_SPELLED = {"http", "https", "ftp", "www"}

_CURRENCIES: dict[str, tuple[str, str, str | None, str | None]] = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", None, None),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
_CUR = "$€£¥₹"
_SCALE_SUFFIX = {
    "K": "thousand",
    "k": "thousand",
    "M": "million",
    "m": "million",
    "mn": "million",
    "mln": "million",
    "B": "billion",
    "b": "billion",
    "bn": "billion",
    "T": "trillion",
    "tn": "trillion",
}
_SCALE_WORDS = {"thousand", "million", "billion", "trillion", "Thousand", "Million", "Billion", "Trillion"}
_CURRENCY = re.compile(
    rf"(?P<sign>[-−+]?)(?P<sym>[{_CUR}])(?P<num>{_NUM})(?P<scale>mln|mn|bn|tn|[KkMmBbT])?"
    rf"|(?P<sign2>[-−+]?)(?P<num2>{_NUM})(?P<sym2>[{_CUR}¢])"
)
_PERCENT = re.compile(rf"(?P<sign>[-−+]?)(?P<num>{_NUM})(?:[-–](?P<num2>{_NUM}))?%")

# symbol -> (singular, plural); read after a number.
_UNITS: dict[str, tuple[str, str]] = {
    "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "µm": ("micrometer", "micrometers"),
    "km²": ("square kilometer", "square kilometers"),
    "m²": ("square meter", "square meters"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "yd": ("yard", "yards"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"),
    "L": ("liter", "liters"),
    "l": ("liter", "liters"),
    "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "gal": ("gallon", "gallons"),
    "h": ("hour", "hours"),
    "hr": ("hour", "hours"),
    "hrs": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "mins": ("minute", "minutes"),
    "s": ("second", "seconds"),
    "sec": ("second", "seconds"),
    "secs": ("second", "seconds"),
    "ms": ("millisecond", "milliseconds"),
    "µs": ("microsecond", "microseconds"),
    "mph": ("mile per hour", "miles per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "m/s": ("meter per second", "meters per second"),
    "KB": ("kilobyte", "kilobytes"),
    "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "kbps": ("kilobit per second", "kilobits per second"),
    "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"),
    "Hz": ("hertz", "hertz"),
    "kHz": ("kilohertz", "kilohertz"),
    "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "W": ("watt", "watts"),
    "kW": ("kilowatt", "kilowatts"),
    "MW": ("megawatt", "megawatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"),
    "mAh": ("milliamp hour", "milliamp hours"),
    "dB": ("decibel", "decibels"),
    "kcal": ("kilocalorie", "kilocalories"),
    "px": ("pixel", "pixels"),
    "fps": ("frame per second", "frames per second"),
    "bpm": ("beat per minute", "beats per minute"),
    "rpm": ("revolution per minute", "revolutions per minute"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "ºC": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "ºF": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
}
_PER: dict[str, str] = {
    "h": "hour",
    "hr": "hour",
    "s": "second",
    "sec": "second",
    "min": "minute",
    "ms": "millisecond",
    "day": "day",
    "d": "day",
    "wk": "week",
    "yr": "year",
    "m": "meter",
    "km": "kilometer",
    "kg": "kilogram",
    "g": "gram",
    "L": "liter",
    "l": "liter",
    "mi": "mile",
    "gal": "gallon",
    "m²": "square meter",
}
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=lambda u: (-len(u), u)))
_PER_ALT = "|".join(re.escape(u) for u in sorted(_PER, key=lambda u: (-len(u), u)))
_UNIT_WORD = re.compile(rf"(?P<unit>{_UNIT_ALT})(?:/(?P<per>{_PER_ALT}))?")
_WITH_UNIT = re.compile(
    rf"(?P<sign>[-−+]?)(?P<num>{_NUM})(?:(?P<unit>{_UNIT_ALT})(?:/(?P<per>{_PER_ALT}))?|(?P<x>[x×]))"
)

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTH_FULL = frozenset(_MONTHS)
_MONTH_ABBR = {m[:3]: m for m in _MONTHS if m != "May"} | {"Sept": "September"}
_FRACTION_NAMES = {2: ("half", "halves"), 4: ("quarter", "quarters")}
_FRACTION_SPECIAL = {"24/7": "twenty four seven", "9/11": "nine eleven", "50/50": "fifty fifty"}

# "Dr." and "St." and "No." depend on their neighbours; see _abbreviation.
_ABBREVIATIONS = {
    "Mr.": "mister",
    "Mrs.": "missus",
    "Ms.": "miz",
    "Prof.": "professor",
    "Sr.": "senior",
    "Jr.": "junior",
    "Ave.": "avenue",
    "Blvd.": "boulevard",
    "Rd.": "road",
    "Mt.": "mount",
    "Ft.": "fort",
    "Inc.": "incorporated",
    "Ltd.": "limited",
    "Co.": "company",
    "Corp.": "corporation",
    "etc.": "et cetera",
    "Etc.": "et cetera",
    "e.g.": "for example",
    "E.g.": "for example",
    "i.e.": "that is",
    "I.e.": "that is",
    "vs.": "versus",
    "vs": "versus",
    "approx.": "approximately",
    "Approx.": "approximately",
    "dept.": "department",
    "Dept.": "department",
    "Fig.": "figure",
    "fig.": "figure",
    "Capt.": "captain",
    "Lt.": "lieutenant",
    "Sgt.": "sergeant",
    "Gov.": "governor",
    "Sen.": "senator",
}
_TITLES_NO_DOT = {"Mr": "mister", "Mrs": "missus", "Ms": "miz", "Dr": "doctor"}
_ENDS_SENTENCE = frozenset(
    {"Sr.", "Jr.", "Ave.", "Blvd.", "Rd.", "Inc.", "Ltd.", "Co.", "Corp.", "etc.", "Etc.", "dept.", "Dept."}
)
_RANGE_WORDS = frozenset({"to", "and", "or", "through", "until", "till", "-", "–", "—"})
_YEAR_CUES = frozenset(
    {
        *("in", "since", "of", "by", "from", "until", "till", "through", "circa", "around", "before", "after"),
        *("during", "year", "early", "late", "mid", "spring", "summer", "fall", "autumn", "winter", "born"),
    }
) | {m.lower() for m in _MONTHS}
# A lowercase word after a four-digit number that still lets it be a year ("2026 was", "1999 and").
_FUNCTION_WORDS = frozenset(
    {
        *("a", "an", "the", "and", "or", "but", "nor", "so", "yet", "if", "as", "at", "in", "on", "of", "to"),
        *("by", "for", "from", "with", "was", "were", "is", "are", "be", "been", "will", "would", "could"),
        *("should", "may", "might", "can", "did", "do", "does", "had", "has", "have", "i", "we", "you", "he"),
        *("she", "it", "they", "there", "this", "that", "these", "those", "when", "while", "where", "which"),
        *("who", "what", "then", "than", "also", "still", "saw", "marked", "brought", "now", "again", "too"),
        *("only", "just", "onward", "onwards", "alone", "ago"),
    }
)
_SYMBOL_WORDS = {
    "&": "and",
    "+": "plus",
    "=": "equals",
    "@": "at",
    "%": "percent",
    "#": "number",
    "×": "times",
    "÷": "divided by",
    "±": "plus or minus",
    "+/-": "plus or minus",
    "<": "less than",
    ">": "greater than",
    "≤": "less than or equal to",
    "≥": "greater than or equal to",
    "≈": "approximately",
    "°": "degrees",
}
_INNER_SYMBOLS = {"&": "and", "+": "plus", "=": "equals", "@": "at", "%": "percent", "×": "times", "°": "degrees"}
_CLOSERS = frozenset("\"'”’»›)]}")
_QUARTER = re.compile(r"Q[1-4]|H[12]|FY|FY[0-9]{2}")
_DASHES = frozenset({"-", "–", "—", "--", "―", "−"})
_PIECE = re.compile(r"[0-9]+(?:[.,][0-9]+)*|\d+|[^\W\d_]+(?:['’][^\W\d_]+)*|\S")
_SLOW = re.compile(r"[\d&+=@%#$€£¥₹¢°º×÷<>±≤≥≈/:—–―−]|\.\w")
_CONTEXT_WORDS = (
    frozenset(_ABBREVIATIONS)
    | frozenset(_TITLES_NO_DOT)
    | frozenset(_UNITS)
    | frozenset(_MONTH_ABBR)
    | _MONTH_FULL
    | _SCALE_WORDS
    | frozenset(_SCALE_SUFFIX)
    | frozenset(k.rstrip(".") for k in _ABBREVIATIONS)
    | _DASHES
    | frozenset({"Dr", "St", "No", "no", "am", "pm", "AM", "PM"})
)


def _sign_word(sign: str) -> str:
    return "minus " if sign in ("-", "−") else "plus " if sign == "+" else ""


def _read_url(s: str) -> str:
    out: list[str] = []
    for piece in _URL_PIECE.findall(s):
        if piece.isdecimal():
            short = len(piece) <= 3 and not (len(piece) > 1 and piece[0] == "0")
            out.append(_card(int(piece)) if short else _digits(piece))
        elif piece[0].isalpha():
            out.append(" ".join(piece) if piece.lower() in _SPELLED else piece)
        elif piece in _URL_SYMBOLS:
            out.append(_URL_SYMBOLS[piece])
    return " ".join(out)


def _date(month: int, day: int, year: str, day_first: bool) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    name = _MONTHS[month - 1]
    if len(year) == 4:
        said_year = _year(int(year))
    elif year == "00":
        said_year = "two thousand"
    elif year[0] == "0":
        said_year = "oh " + _DIGIT_WORDS[int(year[1])]
    else:
        said_year = _card(int(year))
    if day_first:
        return f"the {_ordinal(day)} of {name} {said_year}"
    return f"{name} {_ordinal(day)} {said_year}"


def _fraction(a: int, b: int, after_whole: bool) -> str:
    if b in _FRACTION_NAMES:
        one, many = _FRACTION_NAMES[b]
    else:
        one = _ordinal(b)
        many = _plural(one)
    if after_whole:
        return f"and a {one}" if a == 1 else f"and {_card(a)} {many}"
    return f"{_card(a)} {one if a == 1 else many}"


class _English:
    """Reads each word with its neighbours in view; ``run`` returns one spoken string per word."""

    def __init__(self, words: list[str | None], breaks: list[bool]) -> None:
        self.words = words
        self.breaks = breaks
        self.n = len(words)
        self.leads: list[str] = []
        self.cores: list[str | None] = []
        self.trails: list[str] = []
        for w in words:
            if w is None:
                self.leads.append("")
                self.cores.append(None)
                self.trails.append("")
                continue
            lead, core, trail = _split(w)
            self.leads.append(lead)
            self.cores.append(core)
            self.trails.append(trail)
        self.kinds: list[str] = [""] * self.n
        self.etrails: list[str] = list(self.trails)  # trail after an abbreviation took its period

    # -- neighbours ----------------------------------------------------------------------------

    def core(self, i: int) -> str | None:
        return self.cores[i] if 0 <= i < self.n else None

    def kind(self, i: int) -> str:
        return self.kinds[i] if 0 <= i < self.n else ""

    def joined(self, i: int, j: int) -> bool:
        """Words i and j=i+1 are not separated by punctuation or a line break."""
        if not (0 <= i < self.n and 0 <= j < self.n) or self.cores[i] is None or self.cores[j] is None:
            return False
        return not self.etrails[i] and not self.leads[j] and not self.breaks[j]

    def capitalised(self, i: int) -> bool:
        if not 0 <= i < self.n:
            return False
        w = self.words[i]
        if w is None:
            return False
        w = w.lstrip(_LEAD)
        return bool(w) and w[0].isupper()

    def sentence_end_after(self, i: int) -> bool:
        return i + 1 >= self.n or self.breaks[i + 1] or self.capitalised(i + 1)

    def number_like(self, i: int) -> bool:
        c = self.core(i)
        return bool(c) and (c[0].isdecimal() or (len(c) > 1 and c[0] in _CUR + "-−+." and c[1].isdecimal()))

    def is_day(self, i: int) -> bool:
        c = self.core(i)
        if not c:
            return False
        m = _ORDINAL.fullmatch(c)
        num = m.group("num") if m else c
        return len(num) <= 2 and num.isdecimal() and 1 <= int(num) <= 31

    def is_year_number(self, i: int) -> bool:
        c = self.core(i)
        return bool(c) and len(c) == 4 and c.isdecimal() and 1000 <= int(c) <= 2099

    def is_month(self, i: int) -> bool:
        c = self.core(i)
        if not c:
            return False
        if c in _MONTH_FULL or c in _MONTH_ABBR:
            return True
        return self.trails[i].startswith(".") and c in _MONTH_ABBR

    def unit_follows(self, i: int) -> bool:
        c = self.core(i + 1)
        if not c or not self.joined(i, i + 1):
            return False
        return bool(_UNIT_WORD.fullmatch(c)) or c in _SCALE_WORDS or c in _CUR or c in ("%", "¢")

    def ampm_follows(self, i: int) -> bool:
        c = self.core(i + 1)
        if not c or not self.joined(i, i + 1):
            return False
        full = c + ("." if self.trails[i + 1].startswith(".") else "")
        return bool(_AMPM_WORD.fullmatch(c) or _AMPM_WORD.fullmatch(full))

    # -- the pass ------------------------------------------------------------------------------

    def run(self) -> list[str]:
        out: list[str] = []
        for i in range(self.n):
            w = self.words[i]
            if w is None:
                self.kinds[i] = "lex"
                out.append("")
                continue
            core = self.cores[i]
            assert core is not None
            if not core:  # punctuation only: nothing is spoken
                out.append("")
                continue
            if not _SLOW.search(w) and core not in _CONTEXT_WORDS:
                out.append(w)
                continue
            said = self.word(i, core)
            if said is None:
                out.append(w)
            elif not said:
                out.append("")
            else:
                out.append(f"{self.leads[i]}{said}{self.etrails[i]}")
        return out

    def word(self, i: int, core: str) -> str | None:
        """The spoken form of word i's core ("" for nothing, None for unchanged)."""
        trail = self.trails[i]
        if not core:
            return ""
        if trail.startswith("."):
            said = self.abbreviation(i, core + ".", absorbed=True)
            if said is not None:
                return said
        said = self.abbreviation(i, core, absorbed=False)
        if said is not None:
            return said
        for rule in (self.context_word, self.email_or_url, self.currency, self.time, self.date_like, self.number):
            said = rule(i, core)
            if said is not None:
                return said
        return self.fallback(core)

    # -- rules, in order -----------------------------------------------------------------------

    def abbreviation(self, i: int, key: str, absorbed: bool) -> str | None:
        said: str | None = None
        ends = False
        prev_joined = i > 0 and self.cores[i - 1] is not None and not self.etrails[i - 1] and not self.breaks[i]
        prev_name = prev_joined and (self.capitalised(i - 1) or self.number_like(i - 1))
        if key in _ABBREVIATIONS:
            said, ends = _ABBREVIATIONS[key], key in _ENDS_SENTENCE
        elif key == "St.":
            if prev_name or not self.capitalised(i + 1):
                said, ends = "street", True
            else:
                said = "saint"
        elif key == "Dr.":
            if prev_name and not self.capitalised(i + 1):
                said, ends = "drive", True
            else:
                said = "doctor"
        elif key in _TITLES_NO_DOT and self.capitalised(i + 1):
            said = _TITLES_NO_DOT[key]
        elif key in ("No.", "no.", "No") and self.number_like(i + 1):
            said = "number"
        elif _AMPM_WORD.fullmatch(key) and (
            "." in key
            or (i > 0 and self.joined(i - 1, i) and (self.kind(i - 1) == "time" or (self.kind(i - 1) == "hour")))
        ):
            said, ends = ("a m" if key[0] in "Aa" else "p m"), True
        elif key.rstrip(".") in _MONTH_ABBR and (
            ((self.joined(i, i + 1) or absorbed) and (self.is_day(i + 1) or self.is_year_number(i + 1)))
            or (i > 0 and self.kind(i - 1) == "day_first")
        ):
            said, ends = _MONTH_ABBR[key.rstrip(".")], True
            self.kinds[i] = "month"
        if said is None:
            return None
        if absorbed:
            rest = self.trails[i][1:]
            if ends and all(c in _CLOSERS for c in rest) and self.sentence_end_after(i):
                rest = "." + rest
            self.etrails[i] = rest
        return said

    def context_word(self, i: int, core: str) -> str | None:
        prev = i - 1
        after_number = i > 0 and self.joined(prev, i)
        if core in _MONTH_FULL:
            self.kinds[i] = "month"
            return None
        if not after_number:
            return self.symbols(i, core)
        pk = self.kind(prev)
        if pk == "currency_open" and (core in _SCALE_WORDS or core in _SCALE_SUFFIX):
            scale = _SCALE_SUFFIX.get(core, core.lower())
            return f"{scale} {self.currency_name}"
        if pk in ("number", "hour", "fraction"):
            unit = _UNIT_WORD.fullmatch(core)
            if unit:
                return self.unit(unit, self.number_text)
            if core in _CURRENCIES:
                one, many, _, _ = _CURRENCIES[core]
                return one if _is_one(self.number_text) else many
            if core == "¢":
                return "cent" if _is_one(self.number_text) else "cents"
            if core == "%":
                return "percent"
        return self.symbols(i, core)

    def symbols(self, i: int, core: str) -> str | None:
        if core in _DASHES:
            if self.number_like(i - 1) and self.number_like(i + 1):
                return "minus" if self.core(i + 2) == "=" else "to"
            return ""
        if core in _SYMBOL_WORDS:
            return _SYMBOL_WORDS[core]
        if core in _CURRENCIES:
            return _CURRENCIES[core][1]
        return None

    @staticmethod
    def unit(m: re.Match[str], number: str) -> str:
        one, many = _UNITS[m.group("unit")]
        said = one if _is_one(number) and not m.group("per") else many
        if m.group("per"):
            said = f"{many} per {_PER[m.group('per')]}"
        return said

    def email_or_url(self, i: int, core: str) -> str | None:
        if "@" in core and _EMAIL.fullmatch(core):
            return _read_url(core)
        if "." in core and _URL.fullmatch(core):
            return _read_url(core)
        return None

    def currency(self, i: int, core: str) -> str | None:
        m = _CURRENCY.fullmatch(core)
        if not m:
            return None
        if m.group("sym"):
            sign, sym, num, scale = m.group("sign"), m.group("sym"), m.group("num"), m.group("scale")
        else:
            sign, sym, num, scale = m.group("sign2"), m.group("sym2"), m.group("num2"), None
        prefix = _sign_word(sign)
        if sym == "¢":
            return f"{prefix}{_num_words(num)} {'cent' if _is_one(num) else 'cents'}"
        one, many, sub_one, sub_many = _CURRENCIES[sym]
        if scale:
            return f"{prefix}{_num_words(num)} {_SCALE_SUFFIX[scale]} {many}"
        nxt = self.core(i + 1)
        if nxt and self.joined(i, i + 1) and (nxt in _SCALE_WORDS or nxt in _SCALE_SUFFIX):
            self.kinds[i] = "currency_open"
            self.currency_name = many
            return prefix + _num_words(num)
        whole, _, frac = num.partition(".")
        whole = whole.replace(",", "") or "0"
        if len(frac) == 2 and sub_one and sub_many:
            major, minor = whole.lstrip("0"), int(frac)
            parts = []
            if major or not minor:
                parts.append(f"{_card_s(major or '0')} {one if major == '1' else many}")
            if minor:
                parts.append(f"{_card(minor)} {sub_one if minor == 1 else sub_many}")
            return prefix + " ".join(parts)
        return f"{prefix}{_num_words(num)} {one if _is_one(num) else many}"

    def time(self, i: int, core: str) -> str | None:
        trail = self.trails[i]
        candidates = [(core, False)]
        if trail.startswith("."):
            candidates.insert(0, (core + ".", True))
        for text, absorbed in candidates:
            m = _AMPM_ATTACHED.fullmatch(text)
            if m and int(m.group("h")) <= 12:
                said = f"{self.clock(int(m.group('h')), m.group('m'), bare=True)} {m.group('ap').lower()} m"
                if absorbed:
                    rest = trail[1:]
                    if all(c in _CLOSERS for c in rest) and self.sentence_end_after(i):
                        rest = "." + rest
                    self.etrails[i] = rest
                self.kinds[i] = "time_done"
                return said
        m = _TIME.fullmatch(core)
        if m and int(m.group("h")) <= 24:
            self.kinds[i] = "time"
            return self.clock(int(m.group("h")), m.group("m"), bare=self.ampm_follows(i))
        return None

    @staticmethod
    def clock(h: int, minutes: str | None, bare: bool) -> str:
        hour = _card(h)
        if not minutes or minutes == "00":
            if bare:
                return hour
            return f"{hour} o'clock" if h <= 12 else f"{hour} hundred"
        m = int(minutes)
        return f"{hour} oh {_card(m)}" if m < 10 else f"{hour} {_card(m)}"

    def date_like(self, i: int, core: str) -> str | None:
        m = _ISO_DATE.fullmatch(core)
        if m:
            said = _date(int(m.group("m")), int(m.group("d")), m.group("y"), day_first=False)
            if said:
                return said
        m = _SLASH_DATE.fullmatch(core)
        if m:
            a, b = int(m.group("a")), int(m.group("b"))
            said = _date(a, b, m.group("y"), day_first=False) if a <= 12 else _date(b, a, m.group("y"), day_first=True)
            if said:
                return said
        m = _DOT_DATE.fullmatch(core)
        if m:
            said = _date(int(m.group("m")), int(m.group("d")), m.group("y"), day_first=True)
            if said:
                return said
        after_area_code = i > 0 and self.leads[i - 1] == "(" and self.trails[i - 1] == ")" and not self.breaks[i]
        if _PHONE.fullmatch(core) or (
            after_area_code and _PHONE_TAIL.fullmatch(core) and _INT.fullmatch(self.core(i - 1) or "")
        ):
            return " ".join(_digits(g) if g[0].isdecimal() else "plus" for g in re.findall(r"\+|[0-9]+", core))
        if _DOTTED.fullmatch(core):
            groups = core.split(".")
            if any(len(g) >= 4 for g in groups):
                return " ".join(_digits(g) for g in groups)
            if len(groups) == 4:  # an IP address
                return " dot ".join(_int_words(g) for g in groups)
            return " point ".join(_int_words(g) for g in groups)
        return None

    def number(self, i: int, core: str) -> str | None:
        m = _PLAIN.fullmatch(core)
        if m:
            return self.plain(i, m.group("sign"), m.group("num"))
        m = _PERCENT.fullmatch(core)
        if m:
            said = _sign_word(m.group("sign")) + _num_words(m.group("num"))
            if m.group("num2"):
                said += " to " + _num_words(m.group("num2"))
            return said + " percent"
        m = _ORDINAL.fullmatch(core)
        if m:
            said = _ordinal_s(m.group("num").replace(",", ""))
            return self.day(i, said)
        m = _RANGE.fullmatch(core)
        if m:
            a, b = m.group("a"), m.group("b")
            if _INT.fullmatch(a) and len(a) == 4 and 1000 <= int(a) <= 2099:
                if _INT.fullmatch(b) and len(b) == 4 and 1000 <= int(b) <= 2099:
                    return f"{_year(int(a))} to {_year(int(b))}"
                if _INT.fullmatch(b) and len(b) == 2:
                    tail = f"oh {_DIGIT_WORDS[int(b[1])]}" if b[0] == "0" else _card(int(b))
                    return f"{_year(int(a))} to {tail}"
            if a == b:  # "50-50"
                return f"{_num_words(a)} {_num_words(b)}"
            return f"{_num_words(a)} to {_num_words(b)}"
        said = _dash_range(core)
        if said:
            return said
        m = _FRACTION.fullmatch(core)
        if m:
            if core in _FRACTION_SPECIAL:
                return _FRACTION_SPECIAL[core]
            a, b = int(m.group("a")), int(m.group("b"))
            if 0 < a < b:
                after_whole = i > 0 and self.kind(i - 1) == "number" and self.joined(i - 1, i)
                after_whole = after_whole and bool(_INT.fullmatch(self.number_text))
                self.kinds[i] = "fraction"
                self.number_text = "2" if after_whole else "1"  # "1 1/2 cups", "1/4 tsp": for the unit's number
                return _fraction(a, b, after_whole)
            if b:
                return f"{_card(a)} over {_card(b)}"
        m = _DECADE.fullmatch(core)
        if m:
            num = m.group("num")
            self.leads[i] = self.leads[i].rstrip("'’")
            if len(num) == 4 and 1000 <= int(num) <= 2099:
                return _plural(_year(int(num)))
            if len(num) == 2:
                return _plural(_card(int(num)))
        m = _WITH_UNIT.fullmatch(core)
        if m:
            said = _sign_word(m.group("sign")) + _num_words(m.group("num"))
            if m.group("x"):
                return said + " times"
            return f"{said} {self.unit(m, m.group('sign') + m.group('num'))}"
        m = _RATIO.fullmatch(core)
        if m:
            return f"{_card_s(m.group('a'))} to {_card_s(m.group('b'))}"
        m = _HASH_NUM.fullmatch(core)
        if m:
            return "number " + _int_words(m.group("num"))
        return None

    def plain(self, i: int, sign: str, num: str) -> str:
        self.kinds[i] = "number"
        self.number_text = sign + num
        if sign:
            return _sign_word(sign) + _num_words(num)
        if not _INT.fullmatch(num):
            return _num_words(num)
        value = int(num) if len(num) <= 4 else 10**5
        nxt = i + 1
        if len(num) <= 2 and 1 <= value <= 12 and self.ampm_follows(i):
            self.kinds[i] = "hour"
            return _card(value)
        if self.is_day(i):
            said = self.day(i, None)
            if said is not None:
                return said
        # "(555) 123-4567"
        area_code = len(num) == 3 and self.leads[i] == "(" and self.trails[i] == ")"
        if area_code and _PHONE_TAIL.fullmatch(self.core(nxt) or ""):
            return _digits(num)
        if len(num) == 4 and 1000 <= value <= 2099 and self.year_here(i):
            self.kinds[i] = "year"
            return _year(value)
        return _int_words(num)

    def day(self, i: int, ordinal: str | None) -> str | None:
        """An ordinal or 1-31 next to a month: "Dec 25" -> twenty fifth, "25 December" -> the ... of."""
        if not self.is_day(i):
            return ordinal
        c = self.cores[i] or ""
        m = _ORDINAL.fullmatch(c)
        num = int(m.group("num") if m else c)
        prev_month = i > 0 and self.kind(i - 1) == "month" and self.joined(i - 1, i)
        next_month = self.is_month(i + 1) and self.joined(i, i + 1) and self.is_day(i)
        if (prev_month or next_month) and self.is_day(i):
            self.kinds[i] = "day_first" if next_month and not prev_month else "day"
            said = _ordinal(num)
            return f"the {said} of" if next_month and not prev_month else said
        return ordinal

    def year_here(self, i: int) -> bool:
        if self.unit_follows(i) or self.ampm_follows(i):
            return False
        prev = self.core(i - 1)
        if prev is not None and (self.kind(i - 1) in ("month", "day", "year") or prev.lower() in _YEAR_CUES):
            return True
        if prev is not None and (_QUARTER.fullmatch(prev) or (prev in _RANGE_WORDS and self.kind(i - 2) == "year")):
            return True  # "Q3 2024", "from 2010 to 2020"
        if self.trails[i] or i + 1 >= self.n or self.breaks[i + 1]:
            return True
        nxt = self.core(i + 1)
        if not nxt or self.leads[i + 1]:
            return True
        return not (nxt[0].islower() and nxt.isalpha() and nxt.lower() not in _FUNCTION_WORDS)

    def fallback(self, core: str) -> str | None:
        if not any(c.isdecimal() or c in _INNER_SYMBOLS for c in core):
            return None
        out: list[str] = []
        for piece in _PIECE.findall(core):
            if piece[0].isdecimal():
                out.append(_loose_number(piece))
            elif piece[0].isalpha():
                out.append(piece)
            elif piece in _INNER_SYMBOLS:
                out.append(_INNER_SYMBOLS[piece])
        return " ".join(p for p in out if p) or ""

    currency_name = "dollars"
    number_text = ""


_RANGE_PARTS = (_AMPM_ATTACHED, _TIME, _CURRENCY, _WITH_UNIT, _PERCENT, _ORDINAL, _INT)


def _dash_range(core: str) -> str | None:
    """ "9am-5pm", "$5-$10", "10-20km": two things a dash apart, each read on its own."""
    parts = re.split(r"[-–]", core, maxsplit=1)
    if len(parts) != 2 or not all(p and p[0] in "0123456789" + _CUR for p in parts):
        return None
    if not all(any(r.fullmatch(p) for r in _RANGE_PARTS) for p in parts):
        return None
    a, b = (_English([p], [False]).run()[0] for p in parts)
    return f"{a} to {b}"


def _loose_number(piece: str) -> str:
    """Digits found inside another word ("COVID-19", "v1.2", "2026"): a year, a number or parts."""
    if not piece.isascii():
        try:
            return _card(int(piece)) if len(piece) <= _MAX_DIGITS else _digits(piece)
        except ValueError:
            return ""
    if len(piece) == 4 and piece.isdecimal() and 1000 <= int(piece) <= 2099:
        return _year(int(piece))
    if re.fullmatch(_NUM, piece):
        return _num_words(piece)
    return " ".join(_int_words(p) for p in re.split(r"[.,]", piece) if p)


# ---------------------------------------------------------------------------------------------
# Other languages: numbers only
# ---------------------------------------------------------------------------------------------

_POINT = {"de": "Komma", "fr": "virgule", "es": "coma", "it": "virgola", "pt": "vírgula", "nl": "komma"}
_MINUS = {"de": "minus", "fr": "moins", "es": "menos", "it": "meno", "pt": "menos", "nl": "min"}
_PERCENT_WORD = {
    "de": "Prozent",
    "fr": "pour cent",
    "es": "por ciento",
    "it": "per cento",
    "pt": "por cento",
    "nl": "procent",
}
_EURO = {
    "de": ("Euro", "Euro"),
    "fr": ("euro", "euros"),
    "es": ("euro", "euros"),
    "it": ("euro", "euro"),
    "pt": ("euro", "euros"),
    "nl": ("euro", "euro"),
}
_ORDINAL_MARK = {
    "fr": re.compile(r"(?P<num>[0-9]+)(?P<suf>er|re|ère|e|ème|è|eme|es|èmes)"),
    "es": re.compile(r"(?P<num>[0-9]+)\.?(?P<suf>[ºª]|er)"),
    "it": re.compile(r"(?P<num>[0-9]+)\.?(?P<suf>[ºª])"),
    "pt": re.compile(r"(?P<num>[0-9]+)\.?(?P<suf>[ºª])"),
    "nl": re.compile(r"(?P<num>[0-9]+)(?P<suf>e|ste|de)"),
}
_DE_DATIVE = frozenset(["am", "im", "vom", "zum", "beim", "dem", "den", "des", "zur", "ihrem", "seinem"])
_EU_NUM = re.compile(r"(?P<sign>[-−+]?)(?P<num>[0-9]{1,3}(?:\.[0-9]{3})+(?:,[0-9]+)?|[0-9]+(?:[,.][0-9]+)?|,[0-9]+)")
_EU_PERCENT = re.compile(r"(?P<sign>[-−+]?)(?P<num>[0-9][0-9.,]*)\s?%")
_EU_EURO = re.compile(r"(?P<sign>[-−+]?)(?:€(?P<a>[0-9][0-9.,]*)|(?P<b>[0-9][0-9.,]*)€)")
_BASIC_PIECE = re.compile(r"[0-9]+(?:[.,][0-9]+)*|\d+|\D+")


@lru_cache(maxsize=8192)
def _n2w(n: int, lang: str, to: str = "cardinal") -> str:
    try:
        return num2words(n, lang=lang, to=to)
    except (OverflowError, ValueError, TypeError, IndexError, NotImplementedError, AttributeError):
        return " ".join(num2words(int(d), lang=lang) for d in str(n))


def _n2w_s(s: str, lang: str, to: str = "cardinal") -> str:
    if len(s.lstrip("0")) > _MAX_DIGITS:
        return " ".join(_n2w(int(c), lang) for c in s if c.isdecimal())
    return _n2w(int(s), lang, to)


class _Basic:
    def __init__(self, lang: str, words: list[str | None]) -> None:
        self.lang = lang
        self.words = words

    def digits(self, s: str) -> str:
        return " ".join(_n2w(int(c), self.lang) for c in s if c.isdecimal())

    def integer(self, s: str, year_ok: bool = False) -> str:
        if (len(s) > 1 and s[0] == "0") or (len(s) >= 7 and not _ROUND.fullmatch(s)):
            return self.digits(s)
        if year_ok and self.lang in ("de", "nl") and len(s) == 4 and 1100 <= int(s) <= 1999:
            return _n2w(int(s), self.lang, "year")
        return _n2w_s(s, self.lang)

    def number(self, num: str, year_ok: bool = False) -> str | None:
        """'1.234,5', '3,14', '3.14', '42' in the language's own format."""
        if re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{3})+(?:,[0-9]+)?", num):
            whole, _, frac = num.replace(".", "").partition(",")
            head = _n2w_s(whole, self.lang)
        elif re.fullmatch(r"[0-9]*[,.][0-9]+", num):
            whole, frac = re.split(r"[,.]", num)
            head = _n2w_s(whole, self.lang) if whole else ""
        elif num.isdecimal():
            return self.integer(num, year_ok)
        else:
            return None
        if not frac:
            return head
        return f"{head} {_POINT[self.lang]} {self.digits(frac)}".strip()

    def signed(self, sign: str, num: str, year_ok: bool = False) -> str | None:
        said = self.number(num, year_ok and not sign)
        if said is None:
            return None
        return f"{_MINUS[self.lang]} {said}" if sign in ("-", "−") else said

    def ordinal(self, i: int, core: str, trail: str) -> tuple[str, str] | None:
        lang = self.lang
        if lang == "de":
            nxt = self.words[i + 1] if i + 1 < len(self.words) else None
            if core.isdecimal() and len(core) <= 3 and trail.startswith(".") and nxt and nxt[0].isalpha():
                said = _n2w(int(core), "de", "ordinal")
                prev = self.words[i - 1] if i > 0 else None
                if prev and prev.lower() in _DE_DATIVE:
                    said += "n"
                return said, trail[1:]
            return None
        pattern = _ORDINAL_MARK.get(lang)
        m = pattern.fullmatch(core) if pattern else None
        if not m:
            return None
        num, suf = m.group("num"), m.group("suf")
        said = _n2w_s(num, lang, "ordinal")
        n = int(num) if len(num) <= 3 else 1000
        if lang == "fr" and n == 1 and suf in ("re", "ère"):
            said = "première"
        elif suf == "ª":
            said = " ".join(w[:-1] + "a" if w.endswith("o") else w for w in said.split())
        elif lang == "es" and suf == "er" and said.endswith("o"):
            said = said[:-1]
        return said, trail

    def run(self) -> list[str]:
        out: list[str] = []
        for i, w in enumerate(self.words):
            if w is None:
                out.append("")
                continue
            lead, core, trail = _split(w)
            if not core or core in _DASHES:  # punctuation only: nothing is spoken
                out.append("")
                continue
            if not any(c.isdecimal() for c in w):
                out.append(w)
                continue
            said = self.word(i, core, trail)
            if said is None:
                out.append(w)
            else:
                text, trail = said
                out.append(f"{lead}{text}{trail}" if text else "")
        return out

    def word(self, i: int, core: str, trail: str) -> tuple[str, str] | None:
        said = self.ordinal(i, core, trail)
        if said is not None:
            return said
        m = _EU_NUM.fullmatch(core)
        if m:
            text = self.signed(m.group("sign"), m.group("num"), year_ok=True)
            if text is not None:
                return text, trail
        m = _EU_PERCENT.fullmatch(core)
        if m:
            text = self.signed(m.group("sign"), m.group("num"))
            if text is not None:
                return f"{text} {_PERCENT_WORD[self.lang]}", trail
        m = _EU_EURO.fullmatch(core)
        if m:
            num = m.group("a") or m.group("b")
            text = self.signed(m.group("sign"), num)
            if text is not None:
                one, many = _EURO[self.lang]
                return f"{text} {one if num == '1' else many}", trail
        pieces: list[str] = []
        for piece in _BASIC_PIECE.findall(core):
            if piece[0].isdecimal():
                pieces.append(self.loose(piece))
            else:
                pieces.append(piece.strip("-–"))
        return " ".join(p.strip() for p in pieces if p.strip()), trail

    def loose(self, piece: str) -> str:
        if not piece.isascii():
            try:
                return _n2w_s(piece, self.lang)
            except ValueError:
                return ""
        said = self.number(piece)
        if said is not None:
            return said
        return " ".join(self.integer(p) for p in re.split(r"[.,]", piece) if p)
