"""Chinese (Mandarin, and mixed Chinese-English) text: word segmentation and numbers read in Mandarin.

Called by ``pipeline.text.normalize.normalize`` for "zho", "cmn", "zh" and "chi" (any case); the
contract is the same as for English: tokens in order, never overlapping, covering every
non-whitespace character once, ``text[t.start:t.end]`` what the client wrote for ``t.spoken``. A
token's ``spoken`` is one word for the aligner (``Token.words``), written in Chinese characters
where the text had digits, so no ASCII digit is left in a zho job's spoken text (pinyin aliases
and ``enabled=False`` aside).

What a token covers
    One token per Chinese word (rjieba's dictionary segmentation without its HMM guesser, so
    "我用" is 我 + 用 and an unknown name falls into single characters rather than a guessed
    word), one per run of other letters ("iPhone", "Pro", "café", "don't"), one per number
    expression ("2026", "3.14", "¥3.50", "15%", "10:30", "3kg", "100km/h", "2026-12-01",
    "010-12345678"; a metric unit may follow after one space: "5 km"), one per lexicon match.
    Punctuation and symbols attach to the token before them ("你好，" "世界。"); opening
    quotes and brackets (“ 「 『 （ 《 【 ( [ {, and " ' after a space) to the token after them;
    punctuation with no word to attach to is a token of its own, spoken "". Attached punctuation is
    kept in ``spoken`` as written (F5-TTS and the sentence splitter use it), except ASCII hyphens,
    which join and are not read ("COVID-19" -> "COVID-" spoken "COVID" + "十九"). Digits inside a run of
    letters split it: "iPhone15" -> "iPhone" + "十五", "MP3" -> "MP" + "三". Fullwidth digits and
    number signs (１２．５％, ：, ／, －, ～, ￥) are read like their ASCII forms.

Numbers (in Chinese characters; the characters after a number are looked at, never merged)
    Cardinals   "123" 一百二十三, "10000" 一万, "10500" 一万零五百, "15" 十五 (一十 only inside:
                "110" 一百一十), "1,234" with ASCII thousands commas; a 2 in the thousands place or
                alone before 万/亿 reads 两 ("2000" 两千, "12000" 一万两千, "20000" 两万) and a
                lone "2" before a measure word or unit reads 两 ("2个" 两个, "2点" 两点, "2公里",
                "2kg" 两千克, "$2" 两美元) but not after 第 or before 月 日 号 楼 层 页 路...
    Ordinals    "第3名" is 第 + 三 + 名: 第 stays, the number reads as a cardinal (never 两).
    Signs       "-5" 负五 (a "-" right after a letter or digit is not a sign), "+5" 正五.
    Decimals    "3.14" 三点一四, "0.5" 零点五, "1.2.3" 一点二点三; before a currency word (元 块
                角 美元 欧元 英镑 日元...) trailing zeros go: "3.50元" 三点五元.
    Fractions   "3/4" 四分之三, "1/1000" 一千分之一 (numerator and denominator of up to 6 digits).
    Percent     "15%" 百分之十五, "3.5%" 百分之三点五, "-5%" 负百分之五, "5-10%" 百分之五到百分之十,
                "5‰" 千分之五.
    Ranges      "5-10", "5~10" 五到十; "2-3个" 两到三个; "2020-2026年" 二零二零到二零二六年;
                "10:30-11:30" 十点三十分到十一点三十分.
    Dates       "2026年12月1日" is 二零二六 + 年 + 十二 + 月 + 一 + 日 (a four-digit number right
                before 年 or 年代 is a year, read digit by digit; "90年代" 九十年代, "3年" 三年; a
                four-digit number anywhere else is a cardinal: "2026赛季" 两千零二十六赛季);
                "2026-12-01", "2026/12/01", "2026.12.01" 二零二六年十二月一日; "2026-12" 二零二六年十二月;
                "12/25/2026" 二零二六年十二月二十五日 (day first when the first number is over 12).
    Times       "10:30" 十点三十分, "10:05" 十点零五分, "10:00" 十点, "2:30" 两点三十分,
                "10:30:15" 十点三十分十五秒, "10:30am"/"3pm" 上午十点三十分/下午三点; hours 0-24 and
                minutes 00-59, anything else with a colon is a ratio: "3:1" 三比一.
    Currency    symbol before the number: ¥/￥ 元 (yuan: in Chinese text ¥ is the renminbi), $ 美元,
                € 欧元, £ 英镑, ₹ 卢比, ₩ 韩元, read as a decimal with trailing zeros dropped:
                "¥3.50" 三点五元 (the one reading chosen: not 三元五角 or 三块五), "$5" 五美元,
                "¥3.5亿" 三点五亿元. "3.50元" keeps 元 as its own token: 三点五 + 元.
    Units       after a number, attached or one space apart: km 公里, m 米, cm 厘米, mm 毫米, kg
                千克, g 克, mg 毫克, L/l 升, ml 毫升, m²/㎡/m2 平方米, km² 平方公里, m³ 立方米, h 小时,
                min 分钟, ms 毫秒, Hz 赫兹, kW 千瓦, kWh 千瓦时, W 瓦, V 伏, mAh 毫安时, °C/℃ 摄氏度,
                °F/℉ 华氏度, ° 度; "100km/h" 每小时一百公里, "3m/s" 每秒三米; a negative temperature
                reads 零下 ("-5°C" 零下五摄氏度). "s", "t", "A", "GB" and other letters are not units
                ("iPhone 5s", "5G", "4K", "100GB" stay letters after the number: 五G, 一百GB).
    Digit by digit: a leading zero ("007" 零零七), 11 or more digits unless round, 7-10 digits
                unless they end in 000 ("13800138000" 一三八零零一三八零零零, "1500000" 一百五十万),
                17 or more digits always, phone-shaped dash groups ("010-12345678",
                "400-820-8820"), a country code before a phone number ("+86 138..." 加八六 + ...);
                one is 一, never 幺.

Lexicon
    Applied first and wins over every rule, case-sensitive, longest grapheme first at each position,
    whitespace inside a grapheme matching any run of whitespace. Chinese has no spaces, so a
    grapheme matches as a substring ("银行" inside "中国银行"); only an end of the grapheme that is a
    letter or digit needs a boundary: no letter or digit of a non-Chinese script right next to it
    ("AI" matches in "我们AI的", not in "MAIL"; "5G" not in "15G"). The alias is spoken: normalized
    with these rules ("第2版" 第二版), except an alias that is pinyin with tone numbers, ASCII only and
    matching ``[a-zA-Z]+[1-5]( [a-zA-Z]+[1-5])*`` ("yin2 hang2"): that is how a client says which
    reading of a polyphone (银行 yin2 hang2, 行 xing2) the model is to use, and it is spoken as
    marked pinyin, "{yin2 hang2}" (``pinyin_marked``), even with ``enabled=False``.

``enabled=False`` keeps every token's text as written (still segmented, the lexicon still applied,
aliases as written). ``join_spoken`` (``normalize.spoken_text``) joins spoken forms without a space
when the boundary is Chinese on either side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import rjieba

from pipeline.text import lexicon
from pipeline.text.matcher import Matcher
from pipeline.text.tokens import Token

__all__ = ["LANGUAGES", "PINYIN_MARKED", "join_spoken", "normalize", "pinyin_marked"]

LANGUAGES = frozenset({"zho", "cmn", "zh", "chi"})

# Characters jieba segments: CJK ideographs (with extensions and compatibility forms), radicals,
# 々 〇 and the ideographic numerals, bopomofo and kana.
_HAN = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
# Characters that want no space next to them when spoken forms are joined: the above plus CJK
# punctuation (。、「」《》), fullwidth forms (，！？：；（）) and the CJK compatibility forms.
_CJK_JOIN = re.compile(f"[{_HAN}\u3000-\u303f\ufe30-\ufe4f\uff00-\uffef]")


def joins_tight(left: str, right: str) -> bool:
    """Whether two non-empty spoken forms join with no space (CJK on either side of the boundary)."""
    return bool(_CJK_JOIN.match(left[-1]) or _CJK_JOIN.match(right[0]))


def join_spoken(parts: Sequence[str]) -> str:
    """The non-empty spoken forms, joined by one space, or by nothing where either side is CJK."""
    said = [p for p in parts if p]
    joined = " ".join(said)
    if joined.isascii():
        return joined
    out: list[str] = []
    prev = ""
    for p in said:
        if prev and not joins_tight(prev, p):
            out.append(" ")
        out.append(p)
        prev = p
    return "".join(out)


def for_aligner(word: str) -> str:
    """A spoken word as the CTC aligner (Latin letters only) is to read it: Chinese characters as
    toneless pinyin (pypinyin, the reading F5-TTS's own front-end gives them: "银行" -> "yinhang"),
    marked pinyin without braces and tones ("{yin2" -> "yin"), anything else as it is (the aligner
    romanizes and filters it). One word in, one word out: timings stay one per spoken word."""
    if "{" in word or "}" in word:
        bare = _SYLLABLE.fullmatch(re.sub(r"[^a-z0-9]", "", word))
        if bare:
            return bare.group(1)
    if not _HAN_RE.search(word):
        return word
    from pypinyin import Style, lazy_pinyin

    out = "".join(lazy_pinyin(word, style=Style.NORMAL, errors=lambda chars: [c for c in chars if c.isalnum()]))
    return out or word


_SYLLABLE = re.compile(r"([a-z]+)[1-5]")
_HAN_RE = re.compile(f"[{_HAN}]")


# ---------------------------------------------------------------------------------------------
# Reading numbers
# ---------------------------------------------------------------------------------------------

_DIGITS = "零一二三四五六七八九"
_PLACES = ("千", "百", "十", "")
_GROUPS = ("", "万", "亿", "万亿")
_MAX_CARDINAL = 16  # digits; longer is read digit by digit


def _digits(s: str) -> str:
    return "".join(_DIGITS[ord(c) - 48] for c in s if "0" <= c <= "9")


def _small(v: int) -> str:
    """1-9999, with 零 for inner zeros and 两 in the thousands place."""
    out: list[str] = []
    zero = False
    for d, place in zip(f"{v:04d}", _PLACES, strict=True):
        if d == "0":
            zero = zero or bool(out)
            continue
        if zero:
            out.append("零")
            zero = False
        out.append("两" if d == "2" and place == "千" else _DIGITS[ord(d) - 48])
        out.append(place)
    return "".join(out)


@lru_cache(maxsize=8192)
def _cardinal(s: str) -> str:
    """A string of ASCII digits as a Mandarin cardinal."""
    s = s.lstrip("0")
    if not s:
        return "零"
    if len(s) > _MAX_CARDINAL:
        return _digits(s)
    n = len(s)
    groups = [s[max(0, k - 4) : k] for k in range(n, 0, -4)][::-1]
    out: list[str] = []
    zero = False
    for i, g in enumerate(groups):
        v = int(g)
        unit = _GROUPS[len(groups) - 1 - i]
        if unit == "万亿" and int(groups[i + 1]):  # 1234 5678 0000 0000: 一千二百三十四万五千六百七十八亿
            unit = "万"
        if v == 0:
            zero = zero or bool(out)
            continue
        if out and (zero or v < 1000):
            out.append("零")
        out.append("两" if v == 2 and unit else _small(v))
        out.append(unit)
        zero = False
    said = "".join(out)
    return said[1:] if said.startswith("一十") else said


def _decimal(whole: str, frac: str, *, money: bool = False) -> str:
    head = _cardinal(whole.replace(",", "")) if whole else "零"
    if money:
        frac = frac.rstrip("0")
    return f"{head}点{_digits(frac)}" if frac else head


_ROUND = re.compile(r"[1-9]0+")


def _integer(s: str) -> str:
    """Digits without sign or separators, outside any context."""
    if len(s) > 1 and s[0] == "0":
        return _digits(s)
    if len(s) > _MAX_CARDINAL or (len(s) >= 7 and not _ROUND.fullmatch(s) and (len(s) >= 11 or s[-3:] != "000")):
        return _digits(s)
    return _cardinal(s)


def _number(num: str, *, money: bool = False) -> str:
    """'1,234.5', '3.14', '.5', '42'."""
    whole, dot, frac = num.partition(".")
    if dot:
        return _decimal(whole, frac, money=money)
    if "," in whole:
        return _cardinal(whole.replace(",", ""))
    return _integer(whole)


# Words after a lone "2" that make it 两 (a measure word, a unit, a scale).
_LIANG_1 = frozenset(
    "个位名只本件条张把辆台份瓶杯碗块元斤两次遍回趟天年岁周倍种家间双对点口头匹棵朵套部首篇封颗粒盒包箱袋桶片"
    "支枝根架艘座栋所项场顿声步句人万千百亿米克升吨里亩秒"
)
_LIANG_2 = (
    "公里",
    "公斤",
    "公分",
    "公升",
    "小时",
    "分钟",
    "星期",
    "个月",
    "千克",
    "千米",
    "毫升",
    "美元",
    "欧元",
    "英镑",
)
_MONEY_WORDS = ("元", "块", "角", "毛", "圆", "美元", "欧元", "英镑", "日元", "港元", "港币", "韩元", "卢布", "人民币")
_MONEY_RE = re.compile("|".join(_MONEY_WORDS))
_LIANG_2_RE = re.compile("|".join(_LIANG_2))
_CURRENCY = {"¥": "元", "$": "美元", "€": "欧元", "£": "英镑", "₹": "卢比", "₩": "韩元"}
# Unit symbol after a number -> its reading.
_UNITS: dict[str, str] = {
    "km": "公里",
    "m": "米",
    "cm": "厘米",
    "mm": "毫米",
    "µm": "微米",
    "μm": "微米",
    "nm": "纳米",
    "km²": "平方公里",
    "km2": "平方公里",
    "m²": "平方米",
    "m2": "平方米",
    "㎡": "平方米",
    "m³": "立方米",
    "m3": "立方米",
    "kg": "千克",
    "g": "克",
    "mg": "毫克",
    "L": "升",
    "l": "升",
    "ml": "毫升",
    "mL": "毫升",
    "h": "小时",
    "min": "分钟",
    "ms": "毫秒",
    "Hz": "赫兹",
    "kHz": "千赫",
    "MHz": "兆赫",
    "GHz": "吉赫",
    "W": "瓦",
    "kW": "千瓦",
    "kWh": "千瓦时",
    "V": "伏",
    "mAh": "毫安时",
    "°C": "摄氏度",
    "℃": "摄氏度",
    "°F": "华氏度",
    "℉": "华氏度",
    "°": "度",
}
_TEMPERATURE = frozenset({"°C", "℃", "°F", "℉", "°"})
_PER = {"h": "每小时", "s": "每秒", "min": "每分钟"}  # "/h" after a unit
_PER_UNITS = frozenset({"km", "m", "cm", "mm", "kg", "g", "L", "l", "ml", "mL"})

# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

# Fullwidth digits and number signs read like ASCII ones (one character for one: offsets hold).
_ASCII = str.maketrans(
    {**{chr(0xFF10 + i): str(i) for i in range(10)}, "．": ".", "：": ":", "／": "/", "－": "-", "％": "%"}
    | {"～": "~", "＋": "+", "￥": "¥", "＄": "$", "〜": "~"}
)
_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_SIGN = r"(?:(?<![0-9A-Za-z.])[-−+])"
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=lambda u: (-len(u), u)))
_AFTER = r"(?![0-9A-Za-z])"
_NUMBER = (
    rf"(?P<iso>(?P<dy>[0-9]{{4}})(?P<ds>[-/.])(?P<dm>0?[1-9]|1[0-2])(?P=ds)(?P<dd>0?[1-9]|[12][0-9]|3[01]){_AFTER})"
    rf"|(?P<us>(?P<ua>[0-9]{{1,2}})/(?P<ub>[0-9]{{1,2}})/(?P<uy>[0-9]{{4}}){_AFTER})"
    rf"|(?P<ym>(?P<ymy>[12][0-9]{{3}})[-/](?P<ymm>0?[1-9]|1[0-2])(?![0-9A-Za-z./:-]))"
    r"|(?P<trange>(?P<t1h>[01]?[0-9]|2[0-4]):(?P<t1m>[0-5][0-9])[-~–—](?P<t2h>[01]?[0-9]|2[0-4]):(?P<t2m>[0-5][0-9])"
    r"(?![0-9:]))"
    rf"|(?P<time>(?P<th>[01]?[0-9]|2[0-4]):(?P<tm>[0-5][0-9])(?::(?P<ts>[0-5][0-9]))?(?![0-9:])"
    rf"(?:[ \u00a0]?(?P<tap>[AaPp])\.?[Mm]\.?(?![A-Za-z]))?)"
    rf"|(?P<hap>(?P<hh>1[0-2]|0?[1-9])[ \u00a0]?(?P<hapm>[AaPp])\.?[Mm]\.?(?![A-Za-z]))"
    r"|(?P<phone>\+?[0-9]+(?:-[0-9]+){2,}(?![0-9])|0[0-9]{2,3}-[0-9]{7,8}(?![0-9])|\+[0-9]{1,3}(?=[ \u00a0-]?[0-9]{6}))"
    rf"|(?P<cur>(?P<cs>{_SIGN}?)(?P<csym>[¥$€£₹₩])(?P<cn>{_NUM})(?P<cscale>万亿|千万|百万|万|亿)?(?![0-9]))"
    rf"|(?P<pct>(?P<ps>{_SIGN}?)(?P<pa>{_NUM})(?:[-~–](?P<pb>{_NUM}))?(?P<pm>[%‰]))"
    rf"|(?P<unit>(?P<us_>{_SIGN}?)(?P<un>{_NUM})[ \u00a0]?(?P<uu>{_UNIT_ALT})(?:/(?P<per>h|s|min))?{_AFTER})"
    r"|(?P<frac>(?P<fa>[0-9]{1,6})/(?P<fb>[0-9]{1,6})(?![0-9/]))"
    r"|(?P<dotted>[0-9]+(?:\.[0-9]+){2,}(?![0-9]))"
    rf"|(?P<range>(?P<ra>{_NUM})[-~–—](?P<rb>{_NUM})(?![0-9]))"
    r"|(?P<ratio>(?P<xa>[0-9]+):(?P<xb>[0-9]+)(?![0-9]))"
    rf"|(?P<plain>(?P<sign>{_SIGN}?)(?P<num>{_NUM}|(?<![0-9A-Za-z])\.[0-9]+))"
)
_OPEN = "“‘「『（《【〈〔〖([{"
_PIECE = re.compile(
    rf"(?P<han>[{_HAN}]+)|(?P<ws>\s+)|(?=[-−+.0-9¥$€£₹₩])(?P<number>{_NUMBER})"
    rf"|(?P<lat>[^\W0-9_{_HAN}]+(?:['’][^\W0-9_{_HAN}]+)*)|(?P<open>[{re.escape(_OPEN)}])|(?P<punct>.)",
    re.S,
)
_PINYIN = re.compile(r"[a-zA-Z]+[1-5](?: [a-zA-Z]+[1-5])*")
PINYIN_MARKED = re.compile(r"\{([a-z]+[1-5](?: [a-z]+[1-5])*)\}")  # pinyin_marked's output

_NUMBER_RE = re.compile(_NUMBER)
_WORD, _PUNCT, _OPENER = 0, 1, 2
# An atom: (kind, start, end, spoken) for a word (number, Chinese word, letters, lexicon match),
# or one punctuation character or opener (spoken "").
_Atoms = list[tuple[int, int, int, str]]


# Few entries: one automaton holds up to 200,000 characters of graphemes (MAX_ENTRIES x MAX_LENGTH).
@lru_cache(maxsize=8)
def _lexicon_matcher(items: tuple[tuple[str, str], ...]) -> tuple[Matcher, dict[str, str]] | None:
    table = lexicon.table(items)
    if not table:
        return None
    # A letter or digit of a non-Chinese script at an end of a grapheme needs a boundary there.
    return Matcher(table, rf"[^\W{_HAN}]", always=False), table


@lru_cache(maxsize=4096)
def _cut(run: str) -> tuple[str, ...]:
    words = tuple(rjieba.cut(run, False))
    return words if "".join(words) == run else tuple(run)


@lru_cache(maxsize=16384)
def _reading(before: str, piece: str, after: str) -> str:
    """A number expression's reading from the character before it and the eight after it: all the
    context its pattern and rules look at, so the reading can be cached on these three strings."""
    s = before + piece + after
    start, end = len(before), len(before) + len(piece)
    m = _NUMBER_RE.match(s, start)
    if m is None or m.end() != end:  # pragma: no cover - the same pattern matched it in the text
        return _loose(piece)
    return _read(m, s, start, end)


def _atoms(text: str, ascii_text: str, lo: int, hi: int, enabled: bool, out: _Atoms) -> None:
    append = out.append
    for m in _PIECE.finditer(ascii_text, lo, hi):
        kind = m.lastgroup
        if kind == "ws":
            continue
        start, end = m.span()
        if kind == "han":
            if end - start == 1:
                append((_WORD, start, end, text[start]))
                continue
            for w in _cut(text[start:end]):
                append((_WORD, start, start + len(w), w))
                start += len(w)
        elif kind == "number":
            said = text[start:end]
            if enabled:
                piece = ascii_text[start:end]
                said = _reading(ascii_text[start - 1 : start], piece, ascii_text[end : end + 8])
            append((_WORD, start, end, said))
        elif kind == "lat":
            append((_WORD, start, end, text[start:end]))
        elif kind == "open" or (
            text[start] in "\"'"
            and (start == 0 or text[start - 1].isspace())
            and end < len(text)
            and not text[end].isspace()
        ):
            append((_OPENER, start, end, ""))
        else:
            append((_PUNCT, start, end, ""))


# How often ``on_spoken`` hears about a text being expanded, in spoken characters.
REPORT_EVERY = 4096


def normalize(
    text: str,
    lexicon: Mapping[str, str] | None = None,
    *,
    enabled: bool = True,
    on_spoken: Callable[[int], None] | None = None,
) -> list[Token]:
    """Tokens covering every non-whitespace character of ``text`` once, in order (see the module doc).
    ``on_spoken``: as for ``pipeline.text.normalize.normalize``, counting the lexicon's aliases (the
    rules here read a number in about as many characters as it is written with)."""
    ascii_text = text.translate(_ASCII)
    atoms: _Atoms = []
    compiled = _lexicon_matcher(tuple(sorted(lexicon.items()))) if lexicon else None
    pos = 0
    if compiled is not None:
        matcher, table = compiled
        produced = 0
        report = REPORT_EVERY
        for start, end, grapheme in matcher.find(text):
            _atoms(text, ascii_text, pos, start, enabled, atoms)
            alias = table[grapheme]
            said = _alias(alias) if enabled or _PINYIN.fullmatch(alias) else alias
            atoms.append((_WORD, start, end, said))
            pos = end
            # What its token will say at least (``_token`` folds whitespace when not ``enabled``).
            produced += len(said) if enabled else len(" ".join(said.split()))
            if on_spoken is not None and produced >= report:
                on_spoken(produced)
                report = produced + REPORT_EVERY
    _atoms(text, ascii_text, pos, len(text), enabled, atoms)
    return _tokens(text, atoms, enabled)


def _tokens(text: str, atoms: _Atoms, enabled: bool) -> list[Token]:
    """Atoms -> tokens: openers join the word after them, punctuation the word before it."""
    tokens: list[Token] = []
    append = tokens.append
    start = end = lead_end = trail = -1  # the token being built; trail: where its punctuation starts
    said: str | None = None  # its word's spoken form; None while it has no word
    for kind, a_start, a_end, a_said in atoms:
        joined = end == a_start
        if kind == _PUNCT:
            if joined:
                if trail < 0:
                    trail = a_start
                end = a_end
                continue
        elif joined and said is None and trail < 0:  # openers waiting for their word (or more openers)
            end = a_end
            if kind == _WORD:
                lead_end, said = a_start, a_said
            continue
        if start >= 0:
            append(_token(text, start, end, lead_end, said, trail, enabled))
        start, end, lead_end, trail = a_start, a_end, a_start, (a_start if kind == _PUNCT else -1)
        said = a_said if kind == _WORD else None
    if start >= 0:
        append(_token(text, start, end, lead_end, said, trail, enabled))
    return tokens


def _token(text: str, start: int, end: int, lead_end: int, said: str | None, trail: int, enabled: bool) -> Token:
    if said is None:  # punctuation only
        return Token(start, end, " ".join(text[start:end].split()) if not enabled else "")
    if not said:  # an empty alias
        return Token(start, end, "")
    punct = text[trail:end] if trail >= 0 else ""
    if enabled and "-" in punct:  # "COVID-19": the hyphen is not read
        punct = punct.replace("-", "")
    spoken = text[start:lead_end] + said + punct if lead_end > start or punct else said
    return Token(start, end, spoken if enabled else " ".join(spoken.split()))


@lru_cache(maxsize=1024)
def _alias(alias: str) -> str:
    if _PINYIN.fullmatch(alias):
        return pinyin_marked(alias)
    return join_spoken([t.spoken for t in normalize(alias)])


def pinyin_marked(syllables: str) -> str:
    """Pinyin with tone numbers as the model is to read it, marked off from ordinary Latin text:
    "yin2 hang2" -> "{yin2 hang2}". F5-TTS reads Chinese as pinyin tokens ("yin2"); the sampler
    (``pipeline.tts.sampler.model_tokens``) turns a marked run into those tokens directly, where
    f5-tts's own conversion would spell unmarked ASCII letter by letter. The aligner reads it
    without braces and tones ("yin" "hang")."""
    return "{" + " ".join(syllables.lower().split()) + "}"


# ---------------------------------------------------------------------------------------------
# Reading a number expression in its context
# ---------------------------------------------------------------------------------------------


def _money(s: str, at: int) -> bool:
    return _MONEY_RE.match(s, at) is not None


def _liang(s: str, at: int) -> bool:
    """A lone 2 at this position (followed by s[at:]) reads 两."""
    return at < len(s) and (s[at] in _LIANG_1 or _LIANG_2_RE.match(s, at) is not None)


def _signed(sign: str | None, said: str) -> str:
    if sign in ("-", "−"):
        return "负" + said
    if sign == "+":
        return "正" + said
    return said


def _read(m: re.Match[str], s: str, start: int, end: int) -> str:
    """The reading of a number expression ``s[start:end]``; ``s`` is the ASCII-fied text."""
    g = m.group
    after = end
    ordinal = start > 0 and s[start - 1] == "第"
    if g("plain"):
        num = g("num")
        money = _money(s, after)
        if num == "2" and not ordinal and not g("sign") and _liang(s, after):
            return "两"
        if len(num) == 4 and num.isdecimal() and s.startswith("年", after):
            return _signed(g("sign"), _digits(num))
        return _signed(g("sign"), _number(num, money=money))
    if g("iso"):
        return f"{_digits(g('dy'))}年{_cardinal(g('dm'))}月{_cardinal(g('dd'))}" + (
            "" if s.startswith(("日", "号"), after) else "日"
        )
    if g("us"):
        a, b = int(g("ua")), int(g("ub"))
        month, day = (a, b) if a <= 12 else (b, a)
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return _loose(s[start:end])
        return f"{_digits(g('uy'))}年{_cardinal(str(month))}月{_cardinal(str(day))}日"
    if g("ym"):
        return f"{_digits(g('ymy'))}年{_cardinal(g('ymm'))}" + ("" if s.startswith("月", after) else "月")
    if g("trange"):
        return _time(g("t1h"), g("t1m"), None, None) + "到" + _time(g("t2h"), g("t2m"), None, None)
    if g("time"):
        return _time(g("th"), g("tm"), g("ts"), g("tap"))
    if g("hap"):
        return _time(g("hh"), "00", None, g("hapm"))
    if g("phone"):
        said = _digits(s[start:end])
        return ("加" + said) if s[start] == "+" else said
    if g("cur"):
        num = g("cn")
        said = "两" if num == "2" and not g("cscale") else _number(num, money=True)
        return _signed(g("cs"), said + (g("cscale") or "") + _CURRENCY[g("csym")])
    if g("pct"):
        word = "百分之" if g("pm") == "%" else "千分之"
        said = word + _number(g("pa"))
        if g("pb"):
            said += "到" + word + _number(g("pb"))
        return _signed(g("ps"), said)
    if g("unit"):
        return _unit(g("us_"), g("un"), g("uu"), g("per"))
    if g("frac"):
        return f"{_cardinal(g('fb'))}分之{_cardinal(g('fa'))}"
    if g("dotted"):
        return "点".join(_integer(p) for p in s[start:end].split("."))
    if g("range"):
        a, b = g("ra"), g("rb")
        if len(a) == len(b) == 4 and a.isdecimal() and b.isdecimal() and s.startswith("年", after):
            return f"{_digits(a)}到{_digits(b)}"
        money = _money(s, after)
        two = _liang(s, after)  # "2-3个" 两到三个
        first = "两" if a == "2" and two else _number(a, money=money)
        return first + "到" + ("两" if b == "2" and two else _number(b, money=money))
    if g("ratio"):
        return f"{_integer(g('xa'))}比{_integer(g('xb'))}"
    return _loose(s[start:end])  # pragma: no cover - every alternative is handled above


def _time(h: str, m: str, sec: str | None, ampm: str | None) -> str:
    hour = int(h)
    said = ("两" if hour == 2 else _cardinal(h)) + "点"
    if m != "00" or (sec and sec != "00"):
        said += ("零" + _DIGITS[int(m)] if m[0] == "0" and m != "00" else _cardinal(m)) + "分"
    if sec and sec != "00":
        said += ("零" + _DIGITS[int(sec)] if sec[0] == "0" else _cardinal(sec)) + "秒"
    if ampm:
        said = ("上午" if ampm in "Aa" else "下午") + said
    return said


def _unit(sign: str | None, num: str, unit: str, per: str | None) -> str:
    said = "两" if num == "2" and not sign and unit not in _TEMPERATURE else _number(num)
    below_zero = sign in ("-", "−") and unit in _TEMPERATURE and unit != "°"
    said = "零下" + said if below_zero else _signed(sign, said)
    if per and unit in _PER_UNITS:
        return f"{_PER[per]}{said}{_UNITS[unit]}"
    if per:
        return f"{said}{_UNITS[unit]}每{_PER[per][1:]}"
    return said + _UNITS[unit]


def _loose(piece: str) -> str:
    """Digits inside anything else: each run of digits a number, a "." 点, other signs silent."""
    out: list[str] = []
    for part in re.findall(r"[0-9]+|\.", piece):
        out.append("点" if part == "." else _integer(part))
    return "".join(out).strip("点")
