"""Chinese normalization and segmentation (pipeline.text.zh): the case table, offsets, lexicon, joining."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text import zh
from pipeline.text.normalize import CHINESE, SUPPORTED, normalize, spoken_text
from pipeline.text.tokens import Token
from tests.unit.normalize_cases import CHINESE_CASES, ENGLISH_CASES
from tests.unit.test_normalize import assert_offsets

ASCII_DIGITS = frozenset("0123456789")


def assert_zh_tokens(text: str, tokens: list[Token]) -> None:
    """The offsets contract, plus: every token covers something, and no ASCII digit is spoken."""
    assert_offsets(text, tokens)
    for tok in tokens:
        assert text[tok.start : tok.end], tok
        assert not ASCII_DIGITS & set(tok.spoken), (text[tok.start : tok.end], tok.spoken)
        assert tok.spoken == tok.spoken.strip()
        assert "  " not in tok.spoken


def said(text: str, lexicon: dict[str, str] | None = None, language: str = "zho") -> str:
    tokens = normalize(text, language, lexicon)
    assert_offsets(text, tokens)
    return spoken_text(tokens)


def pairs(text: str, tokens: list[Token]) -> list[tuple[str, str]]:
    return [(text[t.start : t.end], t.spoken) for t in tokens]


# ---------------------------------------------------------------------------------------------
# The case table
# ---------------------------------------------------------------------------------------------


def test_the_case_table_is_big_enough() -> None:
    assert len(CHINESE_CASES) >= 40
    assert len({text for text, _ in CHINESE_CASES}) == len(CHINESE_CASES)
    assert "zho" in SUPPORTED


@pytest.mark.parametrize(("text", "expected"), CHINESE_CASES, ids=[c[0] for c in CHINESE_CASES])
def test_chinese(text: str, expected: str) -> None:
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert spoken_text(tokens) == expected


@pytest.mark.parametrize(("text", "expected"), CHINESE_CASES, ids=[c[0] for c in CHINESE_CASES])
def test_chinese_disabled_keeps_every_token_as_written(text: str, expected: str) -> None:
    tokens = normalize(text, "zho", enabled=False)
    assert_offsets(text, tokens)
    assert [t.spoken for t in tokens] == [" ".join(text[t.start : t.end].split()) for t in tokens]
    assert expected  # the same segmentation reads the table


@pytest.mark.parametrize("language", ["zho", "ZHO", "cmn", "zh", "chi", " Zh "])
def test_every_chinese_code_gets_the_rules(language: str) -> None:
    assert said("我有2个苹果", language=language) == "我有两个苹果"
    assert language.strip().lower() in CHINESE


# ---------------------------------------------------------------------------------------------
# Segmentation and offsets
# ---------------------------------------------------------------------------------------------


def test_one_token_per_word_with_exact_offsets() -> None:
    text = "你好，世界。今天是2026年12月1日，气温是15度。"
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert pairs(text, tokens) == [
        ("你好，", "你好，"),
        ("世界。", "世界。"),
        ("今天", "今天"),
        ("是", "是"),
        ("2026", "二零二六"),
        ("年", "年"),
        ("12", "十二"),
        ("月", "月"),
        ("1", "一"),
        ("日，", "日，"),
        ("气温", "气温"),
        ("是", "是"),
        ("15", "十五"),
        ("度。", "度。"),
    ]
    assert [(t.start, t.end) for t in tokens[:6]] == [(0, 3), (3, 6), (6, 8), (8, 9), (9, 13), (13, 14)]
    assert spoken_text(tokens) == "你好，世界。今天是二零二六年十二月一日，气温是十五度。"


def test_mixed_chinese_and_english() -> None:
    text = "我用 iPhone 15 Pro 拍的"
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert pairs(text, tokens) == [
        ("我", "我"),
        ("用", "用"),
        ("iPhone", "iPhone"),
        ("15", "十五"),
        ("Pro", "Pro"),
        ("拍", "拍"),
        ("的", "的"),
    ]
    assert [t.words for t in tokens][2:5] == [["iPhone"], ["十五"], ["Pro"]]


def test_number_expressions_are_one_token_each() -> None:
    text = "花了¥3.50，跑了5 km，在2026-12-01的10:30。"
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert pairs(text, tokens) == [
        ("花", "花"),
        ("了", "了"),
        ("¥3.50，", "三点五元，"),
        ("跑", "跑"),
        ("了", "了"),
        ("5 km，", "五公里，"),
        ("在", "在"),
        ("2026-12-01", "二零二六年十二月一日"),
        ("的", "的"),
        ("10:30。", "十点三十分。"),
    ]


def test_punctuation_attaches_and_openers_lead() -> None:
    text = "他说：“你好！”（真的）"
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert pairs(text, tokens) == [("他", "他"), ("说：", "说："), ("“你好！”", "“你好！”"), ("（真的）", "（真的）")]


def test_punctuation_with_nothing_to_attach_to_is_silent() -> None:
    text = "。你好 —— 世界 ！"
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert pairs(text, tokens) == [("。", ""), ("你好", "你好"), ("——", ""), ("世界", "世界"), ("！", "")]
    assert spoken_text(tokens) == "你好世界"


def test_a_hyphen_between_letters_and_digits_is_not_spoken() -> None:
    text = "COVID-19"
    assert pairs(text, normalize(text, "zho")) == [("COVID-", "COVID"), ("19", "十九")]


def test_number_readings_look_at_their_neighbours() -> None:
    assert said("2个") == "两个"
    assert said("第2个") == "第二个"
    assert said("2月2日") == "二月二日"
    assert said("2点") == "两点"
    assert said("2") == "二"
    assert said("22个") == "二十二个"
    assert said("2026年") == "二零二六年"
    assert said("2026个") == "两千零二十六个"
    assert said("3.50元") == "三点五元"
    assert said("3.50米") == "三点五零米"


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("0", "零"),
        ("10", "十"),
        ("11", "十一"),
        ("20", "二十"),
        ("101", "一百零一"),
        ("110", "一百一十"),
        ("1001", "一千零一"),
        ("1010", "一千零一十"),
        ("2222", "两千二百二十二"),
        ("10001", "一万零一"),
        ("100000", "十万"),
        ("150000", "十五万"),
        ("1000500", "一百万零五百"),
        ("100000000", "一亿"),
        ("200000000", "两亿"),
        ("1000000000000", "一万亿"),
        ("1234567890123456", "一千二百三十四万五千六百七十八亿九千零一十二万三千四百五十六"),
    ],
)
def test_cardinals(digits: str, expected: str) -> None:
    assert zh._cardinal(digits) == expected


def test_fullwidth_forms_are_read_like_ascii() -> None:
    assert said("价格１２．５元，涨了５％，时间１０：３０") == "价格十二点五元，涨了百分之五，时间十点三十分"


def test_very_long_digit_strings_are_read_digit_by_digit() -> None:
    text = "9" * 5000
    tokens = normalize(text, "zho")
    assert_zh_tokens(text, tokens)
    assert tokens[0].spoken == "九" * 5000


# ---------------------------------------------------------------------------------------------
# Joining spoken forms
# ---------------------------------------------------------------------------------------------


def test_spoken_text_joins_chinese_without_spaces() -> None:
    def tok(spoken: str) -> Token:
        return Token(0, 1, spoken)

    assert spoken_text([tok("你好，"), tok("世界。")]) == "你好，世界。"
    assert spoken_text([tok("用"), tok("iPhone"), tok("十五"), tok("Pro"), tok("拍")]) == "用iPhone十五Pro拍"
    assert spoken_text([tok("Hello"), tok(""), tok("world")]) == "Hello world"
    assert spoken_text([tok("iPhone"), tok("Pro")]) == "iPhone Pro"
    assert spoken_text([tok("“好”"), tok("OK")]) == "“好” OK"  # curly quotes are not CJK
    assert spoken_text([tok("ok，"), tok("fine")]) == "ok，fine"  # a fullwidth comma is
    assert spoken_text([]) == ""


def test_english_is_unchanged() -> None:
    for text, expected in ENGLISH_CASES:
        assert spoken_text(normalize(text)) == expected


# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------


def test_lexicon_matches_chinese_inside_words_longest_first() -> None:
    text = "中国银行和银行家都在银行。"
    lexicon = {"银行": "yin2 hang2", "中国银行": "中行", "银": "金"}
    tokens = normalize(text, "zho", lexicon)
    assert_offsets(text, tokens)
    assert pairs(text, tokens) == [
        ("中国银行", "中行"),
        ("和", "和"),
        ("银行", "{yin2 hang2}"),
        ("家", "家"),
        ("都", "都"),
        ("在", "在"),
        ("银行。", "{yin2 hang2}。"),
    ]
    assert [t.words for t in tokens][2] == ["{yin2", "hang2}"]


def test_pinyin_alias_is_marked_and_other_aliases_are_normalized() -> None:
    assert said("去银行", {"银行": "yin2 hang2"}) == "去{yin2 hang2}"
    assert said("用V2", {"V2": "第2版"}) == "用第二版"
    assert said("看WHO报告", {"WHO": "世界卫生组织"}) == "看世界卫生组织报告"
    assert said("重庆", {"重庆": "chong2 qing4"}) == "{chong2 qing4}"
    assert said("重庆", {"重庆": "Chong Qing 2"}) == "Chong Qing二"  # not pinyin: normalized


def test_lexicon_latin_graphemes_need_a_latin_boundary() -> None:
    lexicon = {"AI": "人工智能", "5G": "第五代"}
    assert said("我们AI的MAIL和AIs", lexicon) == "我们人工智能的MAIL和AIs"
    assert said("用5G不用15G", lexicon) == "用第五代不用十五G"


def test_lexicon_graphemes_with_spaces_and_punctuation() -> None:
    text = "在New  York，看“GIF”。"
    tokens = normalize(text, "zho", {"New York": "纽约", "GIF": "动图"})
    assert_offsets(text, tokens)
    assert pairs(text, tokens) == [("在", "在"), ("New  York，", "纽约，"), ("看", "看"), ("“GIF”。", "“动图”。")]


def test_lexicon_with_normalization_disabled() -> None:
    text = "去银行取100元"
    tokens = normalize(text, "zho", {"银行": "yin2 hang2", "100元": "一百块"}, enabled=False)
    assert_offsets(text, tokens)
    assert pairs(text, tokens) == [("去", "去"), ("银行", "{yin2 hang2}"), ("取", "取"), ("100元", "一百块")]
    assert normalize("去AI", "zho", {"AI": "第2代"}, enabled=False)[-1].spoken == "第2代"


def test_an_empty_alias_is_silent() -> None:
    text = "嗯，好的"
    tokens = normalize(text, "zho", {"嗯": ""})
    assert pairs(text, tokens) == [("嗯，", ""), ("好", "好"), ("的", "的")]


# ---------------------------------------------------------------------------------------------
# Offsets on random text
# ---------------------------------------------------------------------------------------------

# fmt: off
_SAMPLES = [
    "你好", "世界", "，", "。", "！", "“", "”", "（", "）", "《", "》", "——", "…", "、", "：", "第", "年", "月",
    "日", "个", "元", "度", "iPhone", "Pro", "COVID-19", "2026", "2026-12-01", "10:30", "¥3.50", "$5", "15%",
    "3/4", "-5", "3.14", "13800138000", "100km/h", "20°C", "-5℃", "5 km", "１２", "３：１", "'", '"', "-",
    "银行", "中国银行", "AI", "2", "2-3", "1.2.3", "3pm", "10:30am",
]
# fmt: on
_PIECES = st.one_of(
    st.sampled_from(_SAMPLES),
    st.text(alphabet="你好世界银行年月日个第0123456789.,:;/-~%$¥°℃CkmgAIa“”（）《》，。！？：、—…'\" ", max_size=8),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.text(max_size=4),
)
_LEXICONS = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["银行", "中国银行", "AI", "2026", "你好 世界", "，", "A I"]),
        st.sampled_from(["yin2 hang2", "", "第2版", "人工智能", "x"]),
        max_size=3,
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=20).map("".join), _LEXICONS)
def test_offsets_on_random_chinese_text(text: str, lexicon: dict[str, str] | None) -> None:
    tokens = normalize(text, "zho", lexicon)
    assert_offsets(text, tokens)
    assert tokens == normalize(text, "zho", lexicon)
    pinyin = {v for v in (lexicon or {}).values() if zh._PINYIN.fullmatch(v)}
    for tok in tokens:
        assert text[tok.start : tok.end]
        assert tok.spoken == tok.spoken.strip()
        assert "  " not in tok.spoken
        if not any(p in tok.spoken for p in pinyin):
            assert not ASCII_DIGITS & set(tok.spoken), (text[tok.start : tok.end], tok.spoken)
    assert_offsets(text, normalize(text, "zho", lexicon, enabled=False))
