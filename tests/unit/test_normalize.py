"""Text normalization: the English case table, other languages, lexicons, and the offsets contract."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text.normalize import BASIC, SUPPORTED, normalize, spoken_text
from pipeline.text.tokens import Token
from tests.unit.normalize_cases import ENGLISH_CASES


def assert_offsets(text: str, tokens: list[Token]) -> None:
    """Ordered, non-overlapping, no surrounding whitespace, every non-whitespace character once."""
    covered = [0] * len(text)
    prev_end = 0
    for tok in tokens:
        assert prev_end <= tok.start < tok.end <= len(text), (tok, prev_end)
        source = text[tok.start : tok.end]
        assert source == source.strip(), tok
        for k in range(tok.start, tok.end):
            covered[k] += 1
        prev_end = tok.end
    for k, ch in enumerate(text):
        if not ch.isspace():
            assert covered[k] == 1, (k, ch, text)


def said(text: str, language: str = "eng", lexicon: dict[str, str] | None = None) -> str:
    tokens = normalize(text, language, lexicon)
    assert_offsets(text, tokens)
    return spoken_text(tokens)


def token_for(text: str, tokens: list[Token], source: str) -> Token:
    matches = [t for t in tokens if text[t.start : t.end] == source]
    assert len(matches) == 1, (source, [(text[t.start : t.end], t.spoken) for t in tokens])
    return matches[0]


# ---------------------------------------------------------------------------------------------
# English
# ---------------------------------------------------------------------------------------------


def test_the_case_table_is_big_enough() -> None:
    assert len(ENGLISH_CASES) >= 60
    assert "eng" in SUPPORTED


@pytest.mark.parametrize(("text", "expected"), ENGLISH_CASES, ids=[c[0] for c in ENGLISH_CASES])
def test_english(text: str, expected: str) -> None:
    assert said(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5 - 3 = 2", "five minus three equals two"),
        ("Pages 5 - 10.", "Pages five to ten."),
        ("Wait - what?", "Wait what?"),
        ("1990-95", "nineteen ninety to ninety five"),
        ("2001-05", "two thousand one to oh five"),
        ("It was 10:00 am.", "It was ten a m."),
        ("It was 10:00am.", "It was ten a m."),
        ("It was 14:00.", "It was fourteen hundred."),
        ("We meet at 3 p.m. Then we eat.", "We meet at three p m. Then we eat."),
        ("I am here at 5.", "I am here at five."),
        ("The '90s were fun.", "The nineties were fun."),
        ("1000000", "one million"),
        ("1234567", "one two three four five six seven"),
        ("+1-555-123-4567", "plus one five five five one two three four five six seven"),
        ("192.168.0.1", "one hundred ninety two dot one hundred sixty eight dot zero dot one"),
        ("Version 1.2.3", "Version one point two point three"),
        ("Use 2x more.", "Use two times more."),
        ("It was -5°C.", "It was minus five degrees Celsius."),
        ("$3bn", "three billion dollars"),
        ("50¢", "fifty cents"),
        ("It costs 5 €.", "It costs five euros."),
        ("£0.01", "one penny"),
        ("It was 25/12/2026.", "It was the twenty fifth of December twenty twenty six."),
        ("It was 25.12.2026.", "It was the twenty fifth of December twenty twenty six."),
        ("Jan said hi.", "Jan said hi."),
        ("In Jan. 2026 we met.", "In January twenty twenty six we met."),
        ("It is 12 Elm Dr.", "It is twelve Elm drive."),
        ("Call Dr Jones.", "Call doctor Jones."),
        ("The answer is no.", "The answer is no."),
        ("Is the # 5?", "Is the number five?"),
        ("#1 fan", "number one fan"),
        ("R&D and Q&A", "R and D and Q and A"),
        ("C++ rocks", "C plus plus rocks"),
        ("Visit www.example.org.", "Visit w w w dot example dot org."),
        ("Write to john.doe@example.co.uk!", "Write to john dot doe at example dot co dot uk!"),
        ("Grab a file.txt now", "Grab a file.txt now"),
        ("The U.S. is big.", "The U.S. is big."),
        ("(5%)", "(five percent)"),
        ("5-10% off", "five to ten percent off"),
        ("2 3/4 miles", "two and three quarters miles"),
        ("5/8 inch", "five eighths inch"),
        ("9/11", "nine eleven"),
        ("7/3", "seven over three"),
        ("Gate 007", "Gate zero zero seven"),
        ("MP3 and A4", "MP three and A four"),
        ("Open 9am-5pm, Mon-Fri.", "Open nine a m to five p m, Mon-Fri."),
        ("Pay $5-$10 now", "Pay five dollars to ten dollars now"),
        ("Run 10-20km daily", "Run ten to twenty kilometers daily"),
        ("It was a 50-50 chance.", "It was a fifty fifty chance."),
        ("Add 1/4 tsp salt and 1 1/2 tbsp oil.", "Add one quarter teaspoon salt and one and a half tablespoons oil."),
        ("From 2010 to 2020 sales grew.", "From twenty ten to twenty twenty sales grew."),
        ("Q3 2024 results", "Q three twenty twenty four results"),
        ("221B Baker St., London.", "two hundred twenty one B Baker street, London."),
        ("It is 2026 now.", "It is twenty twenty six now."),
        ("", ""),
        ("   \n ", ""),
        ("— ... —", ""),
    ],
)
def test_english_more(text: str, expected: str) -> None:
    assert said(text) == expected


def test_sentence_final_abbreviation_keeps_its_period() -> None:
    assert said("Bring pens, etc.") == "Bring pens, et cetera."
    assert said("Bring pens, etc.\nThen go") == "Bring pens, et cetera. Then go"
    assert said('He said "pens, etc."') == 'He said "pens, et cetera."'
    assert said("Bring pens, etc. and go") == "Bring pens, et cetera and go"
    assert said("Ask Dr. Smith.") == "Ask doctor Smith."  # a title never ends a sentence


def test_currency_token_covers_the_word_and_its_punctuation() -> None:
    text = "It costs $3.50."
    tokens = normalize(text)
    assert [(text[t.start : t.end], t.spoken) for t in tokens] == [
        ("It", "It"),
        ("costs", "costs"),
        ("$3.50.", "three dollars fifty cents."),
    ]


def test_dates_are_one_token_per_word() -> None:
    text = "On Dec 25, 2026 we eat."
    tokens = normalize(text)
    assert [(text[t.start : t.end], t.spoken) for t in tokens][1:4] == [
        ("Dec", "December"),
        ("25,", "twenty fifth,"),
        ("2026", "twenty twenty six"),
    ]


def test_neighbours_are_read_without_merging_tokens() -> None:
    text = "at 10:30 am, 5 km and $3 billion"
    tokens = normalize(text)
    assert [(text[t.start : t.end], t.spoken) for t in tokens] == [
        ("at", "at"),
        ("10:30", "ten thirty"),
        ("am,", "a m,"),
        ("5", "five"),
        ("km", "kilometers"),
        ("and", "and"),
        ("$3", "three"),
        ("billion", "billion dollars"),
    ]


def test_silent_tokens_are_empty_and_still_cover_their_text() -> None:
    text = "Yes — no"
    tokens = normalize(text)
    assert [(text[t.start : t.end], t.spoken) for t in tokens] == [("Yes", "Yes"), ("—", ""), ("no", "no")]


def test_disabled_keeps_words() -> None:
    text = "It costs $3.50 on 12/25/2026.\nDr. Who"
    tokens = normalize(text, enabled=False)
    assert_offsets(text, tokens)
    assert [t.spoken for t in tokens] == text.split()
    assert spoken_text(tokens) == " ".join(text.split())


def test_disabled_still_applies_the_lexicon_without_normalizing_the_alias() -> None:
    text = "Run v2 now"
    tokens = normalize(text, lexicon={"v2": "version 2"}, enabled=False)
    assert [t.spoken for t in tokens] == ["Run", "version 2", "now"]


def test_deterministic_and_pure() -> None:
    text = "On 12/25/2026 at 10:30 am it costs $3.50, e.g. 5 km/h."
    assert normalize(text) == normalize(text)
    assert normalize(text, "eng") == normalize(text, "eng", None)


# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------


def test_lexicon_beats_normalization() -> None:
    text = "He ran to 2nd base."
    tokens = normalize(text, lexicon={"2nd": "second-ish"})
    assert_offsets(text, tokens)
    assert token_for(text, tokens, "2nd").spoken == "second-ish"
    assert normalize("Dr. Smith", lexicon={"Dr.": "drive"})[0].spoken == "drive"
    assert said("It costs $3.50.", lexicon={"$3.50": "a small fortune"}) == "It costs a small fortune."


def test_lexicon_multi_word_longest_first() -> None:
    text = "I love New York!"
    lexicon = {"New": "knew", "New York": "the big apple", "York": "pork"}
    tokens = normalize(text, lexicon=lexicon)
    assert_offsets(text, tokens)
    tok = token_for(text, tokens, "New York!")
    assert tok.spoken == "the big apple!"
    assert said("New\n  York and New", lexicon=lexicon) == "the big apple and knew"


def test_lexicon_is_case_sensitive_and_whole_word() -> None:
    lexicon = {"GIF": "jif", "cat": "dog"}
    assert said("gif GIF GIFs", lexicon=lexicon) == "gif jif GIFs"
    assert said("concatenate cat cats cat.", lexicon=lexicon) == "concatenate dog cats dog."


def test_lexicon_keeps_surrounding_punctuation_and_exact_offsets() -> None:
    text = 'He said "GIF," twice.'
    tokens = normalize(text, lexicon={"GIF": "jif"})
    assert_offsets(text, tokens)
    tok = token_for(text, tokens, '"GIF,"')
    assert tok.spoken == '"jif,"'
    assert (tok.start, tok.end) == (8, 14)


def test_lexicon_inside_a_longer_word_splits_it() -> None:
    text = "x/GIF here"
    tokens = normalize(text, lexicon={"GIF": "jif"})
    assert_offsets(text, tokens)
    assert [(text[t.start : t.end], t.spoken) for t in tokens] == [("x/", "x/"), ("GIF", "jif"), ("here", "here")]


def test_lexicon_alias_is_normalized() -> None:
    assert said("Run v2.", lexicon={"v2": "version 2"}) == "Run version two."
    assert said("Meet the CEO", lexicon={"CEO": "Dr. Smith"}) == "Meet the doctor Smith"


def test_lexicon_neighbours_still_normalize() -> None:
    text = "NYC has 8 million people"
    assert said(text, lexicon={"NYC": "New York City"}) == "New York City has eight million people"


def test_lexicon_in_other_languages() -> None:
    assert said("Die WHO hat 3 Ziele.", "deu", {"WHO": "Weltgesundheitsorganisation"}) == (
        "Die Weltgesundheitsorganisation hat drei Ziele."
    )
    assert said("我们 AI 的", "zho", {"AI": "人工智能"}) == "我们人工智能的"  # Chinese: no spaces


# ---------------------------------------------------------------------------------------------
# Other languages
# ---------------------------------------------------------------------------------------------

OTHER_CASES: dict[str, list[tuple[str, str]]] = {
    "deu": [
        ("Ich habe 42 Äpfel.", "Ich habe zweiundvierzig Äpfel."),
        ("Das sind 1.234 Leute.", "Das sind eintausendzweihundertvierunddreißig Leute."),
        ("Es sind 1.000.000 Menschen.", "Es sind eine Million Menschen."),
        ("Es war -5 Grad.", "Es war minus fünf Grad."),
        ("Zahl 0,5.", "Zahl null Komma fünf."),
        ("Pi ist 3,14.", "Pi ist drei Komma eins vier."),
        ("Version 3.14 ist da.", "Version drei Komma eins vier ist da."),
        ("Am 3. Oktober feiern wir.", "Am dritten Oktober feiern wir."),
        ("Der 2. Platz.", "Der zweite Platz."),
        ("Er wurde 1999 geboren.", "Er wurde neunzehnhundertneunundneunzig geboren."),
        ("Im Jahr 2026 kommt es.", "Im Jahr zweitausendsechsundzwanzig kommt es."),
        ("Es sind 25% mehr.", "Es sind fünfundzwanzig Prozent mehr."),
        ("Das kostet 5€.", "Das kostet fünf Euro."),
        ("Die Nummer 0042.", "Die Nummer null null vier zwei."),
        ("Wir sind 7 Leute und 21 Kinder.", "Wir sind sieben Leute und einundzwanzig Kinder."),
        ("COVID-19 ist vorbei.", "COVID neunzehn ist vorbei."),
        ("Kapitel 12", "Kapitel zwölf"),
    ],
    "fra": [
        ("J'ai 42 pommes.", "J'ai quarante-deux pommes."),
        ("Il y a 1.234 personnes.", "Il y a mille deux cent trente-quatre personnes."),
        ("Il fait -5 degrés.", "Il fait moins cinq degrés."),
        ("Il y a 0,5 litre.", "Il y a zéro virgule cinq litre."),
        ("Il coûte 3,50 euros.", "Il coûte trois virgule cinq zéro euros."),
        ("Le 1er mai.", "Le premier mai."),
        ("La 1re fois.", "La première fois."),
        ("Le 2e étage.", "Le deuxième étage."),
        ("Le 3ème jour.", "Le troisième jour."),
        ("En 1999 il est né.", "En mille neuf cent quatre-vingt-dix-neuf il est né."),
        ("Il reste 20%.", "Il reste vingt pour cent."),
        ("Ça coûte 5€.", "Ça coûte cinq euros."),
        ("Nous sommes 21.", "Nous sommes vingt et un."),
        ("Page 100.", "Page cent."),
        ("80 ans.", "quatre-vingts ans."),
        ("Le XXIe siècle.", "Le XXIe siècle."),
    ],
    "spa": [
        ("Tengo 42 manzanas.", "Tengo cuarenta y dos manzanas."),
        ("Hay 1.234 personas.", "Hay mil doscientos treinta y cuatro personas."),
        ("Somos 1.000.000.", "Somos un millón."),
        ("Hace -5 grados.", "Hace menos cinco grados."),
        ("Son 0,5 litros.", "Son cero coma cinco litros."),
        ("Cuesta 3,50 euros.", "Cuesta tres coma cinco cero euros."),
        ("El 1º de mayo.", "El primero de mayo."),
        ("La 2ª vez.", "La segunda vez."),
        ("El 1er día.", "El primer día."),
        ("El 3er piso.", "El tercer piso."),
        ("Nació en 1999.", "Nació en mil novecientos noventa y nueve."),
        ("El 20% de ellos.", "El veinte por ciento de ellos."),
        ("Cuesta 5€.", "Cuesta cinco euros."),
        ("Página 100.", "Página cien."),
        ("Son las 15.", "Son las quince."),
    ],
    "ita": [
        ("Ho 42 mele.", "Ho quarantadue mele."),
        ("Ci sono 1.234 persone.", "Ci sono milleduecentotrentaquattro persone."),
        ("Siamo 1.000.000.", "Siamo un milione."),
        ("Fa -5 gradi.", "Fa meno cinque gradi."),
        ("Sono 0,5 litri.", "Sono zero virgola cinque litri."),
        ("Costa 3,50 euro.", "Costa tre virgola cinque zero euro."),
        ("Il 1º maggio.", "Il primo maggio."),
        ("La 2ª volta.", "La seconda volta."),
        ("Il 3º piano.", "Il terzo piano."),
        ("Nato nel 1999.", "Nato nel millenovecentonovantanove."),
        ("Il 20% di loro.", "Il venti per cento di loro."),
        ("Costa 5€.", "Costa cinque euro."),
        ("Ha 21 anni.", "Ha ventuno anni."),
        ("Pagina 100.", "Pagina cento."),
        ("Sono 17.", "Sono diciassette."),
    ],
    "por": [
        ("Tem 21 anos.", "Tem vinte e um anos."),
        ("Há 1.234 pessoas.", "Há mil duzentos e trinta e quatro pessoas."),
        ("Somos 1.000.000.", "Somos um milhão."),
        ("Faz -5 graus.", "Faz menos cinco graus."),
        ("São 0,5 litros.", "São zero vírgula cinco litros."),
        ("Custa 3,50 euros.", "Custa três vírgula cinco zero euros."),
        ("O 1º lugar.", "O primeiro lugar."),
        ("A 2ª vez.", "A segunda vez."),
        ("O 3.º andar.", "O terceiro andar."),
        ("Nasceu em 1999.", "Nasceu em mil novecentos e noventa e nove."),
        ("Os 20% deles.", "Os vinte por cento deles."),
        ("Custa 5€.", "Custa cinco euros."),
        ("Tenho 1 gato.", "Tenho um gato."),
        ("Página 100.", "Página cem."),
        ("São 8 horas.", "São oito horas."),
    ],
    "nld": [
        ("Ik heb 42 appels.", "Ik heb tweeënveertig appels."),
        ("Er zijn 1.234 mensen.", "Er zijn duizendtweehonderdvierendertig mensen."),
        ("Wij zijn 1.000.000.", "Wij zijn een miljoen."),
        ("Het is -5 graden.", "Het is min vijf graden."),
        ("Het is 0,5 liter.", "Het is nul komma vijf liter."),
        ("Het kost 3,50 euro.", "Het kost drie komma vijf nul euro."),
        ("De 1e keer.", "De eerste keer."),
        ("De 2de plaats.", "De tweede plaats."),
        ("De 8ste dag.", "De achtste dag."),
        ("Geboren in 1999.", "Geboren in negentien honderd negenennegentig."),
        ("In 2026 komt het.", "In tweeduizendzesentwintig komt het."),
        ("Het is 20%.", "Het is twintig procent."),
        ("Het kost 5€.", "Het kost vijf euro."),
        ("Hij is 21 jaar.", "Hij is eenentwintig jaar."),
        ("Pagina 100.", "Pagina honderd."),
    ],
}


def test_every_basic_language_has_cases() -> None:
    assert set(OTHER_CASES) == set(BASIC)
    assert all(len(cases) >= 15 for cases in OTHER_CASES.values())


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [(lang, text, expected) for lang, cases in OTHER_CASES.items() for text, expected in cases],
    ids=[f"{lang}-{text}" for lang, cases in OTHER_CASES.items() for text, _ in cases],
)
def test_other_language(language: str, text: str, expected: str) -> None:
    assert said(text, language) == expected


@pytest.mark.parametrize("language", ["jpn", "xxx", ""])
def test_unsupported_language_is_left_as_written(language: str) -> None:
    text = "我有 42 个苹果, $3.50 on 12/25/2026."
    tokens = normalize(text, language)
    assert_offsets(text, tokens)
    assert [t.spoken for t in tokens] == text.split()


# ---------------------------------------------------------------------------------------------
# Offsets on random text
# ---------------------------------------------------------------------------------------------

# fmt: off
_SAMPLES = [
    "Dr.", "St.", "No.", "etc.", "e.g.", "a.m.", "pm", "am", "Dec", "May", "km", "km/h", "$", "€", "%",
    "-", "—", "&", "+", "=", "/", ":", ".", ",", "'", '"', "(", ")", "1/2", "$3.50", "10:30", "2026",
    "1,234", "3.14", "-5", "21st", "12/25/2026", "2026-12-25", "example.com", "bob@mail.com", "555-1234",
    "Main", "Louis", "billion", "5%", "20°C", "'90s", "COVID-19", "AT&T", "x", "New", "York", "GIF"
]
# fmt: on
_PIECES = st.one_of(
    st.sampled_from(_SAMPLES),
    st.text(alphabet="abcXYZ0123456789.,:;/-$%&+=@#'\"()!?°€£¥−–—·\u00a0", min_size=1, max_size=8),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(min_size=1, max_size=4),
)
_SPACES = st.sampled_from([" ", "  ", "\n", "\t", " \n ", "", "\u00a0", "\u2003", "\r\n"])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(_PIECES, _SPACES), max_size=25))
    return "".join(p + s for p, s in parts)


_LEXICONS = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["GIF", "New York", "2nd", "Dr.", "$3.50", "x", "St", "a b"]),
        st.sampled_from(["jif", "version 2", "", "Dr. Who", "12/25/2026"]),
        max_size=4,
    ),
)


@settings(max_examples=400, deadline=None)
@given(_texts(), st.sampled_from(["eng", "deu", "fra", "spa", "ita", "por", "nld", "zho"]), _LEXICONS)
def test_offsets_on_random_text(text: str, language: str, lexicon: dict[str, str] | None) -> None:
    tokens = normalize(text, language, lexicon)
    assert_offsets(text, tokens)
    assert tokens == normalize(text, language, lexicon)
    for tok in tokens:
        assert tok.spoken == tok.spoken.strip()
        assert "  " not in tok.spoken
    disabled = normalize(text, language, lexicon, enabled=False)
    assert_offsets(text, disabled)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_offsets_on_any_text(text: str) -> None:
    assert_offsets(text, normalize(text))
