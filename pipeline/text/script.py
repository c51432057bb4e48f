"""A job's text as the model will speak it: turns -> text runs and pauses -> tokens -> sentences ->
chunks ("pieces").

Two steps, because chunk sizes depend on the reference voice (F5-TTS budgets a chunk against a
22 s window from the reference's speaking rate) while text errors should fail a job before any
voice is downloaded:

- ``analyse``: markup (``[pause:1.5s]``), lexicons, normalization and sentence splitting of every
  turn. Pure and cheap; raises ``ScriptError`` with the job's error code.
- ``Analysis.plan``: packs each run's sentences into chunks within the voice's budget and lays
  pauses between them. The plan is deterministic: the same manifest and voices always give the
  same pieces, which is what lets a retried job find its earlier attempt's chunks (``pipeline.jobs.chunks``).

Offsets in tokens are into the turn's own text (for a plain ``text`` job, the manifest's text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.jobs.contract import ErrorCode, Manifest, Segment
from pipeline.text import languages, markup, normalize, plan
from pipeline.text.tokens import Token


class ScriptError(ValueError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Word:
    """A source token inside a chunk, with the sentence it belongs to (index into Script.sentences)."""

    token: Token
    sentence: int


@dataclass(frozen=True)
class Piece:
    """One chunk of speech (``words``) or one pause (``pause_s``), in the order they are heard."""

    index: int
    turn: int
    speed: float
    words: tuple[Word, ...] = ()
    pause_s: float = 0.0
    marker: tuple[int, int] | None = None  # a pause's [pause:...] offsets in the turn's text

    @property
    def is_pause(self) -> bool:
        return not self.words

    @property
    def spoken(self) -> str:
        """What the model is given for this chunk (CJK joined without spaces: ``plan.chunk_spoken``)."""
        return plan.chunk_spoken([w.token for w in self.words])


# An interactive job's first chunk gets at most this share of the chunk budget (``Analysis.plan``).
FIRST_CHUNK_SHARE = 4


@dataclass(frozen=True)
class SentenceRef:
    turn: int
    text_start: int
    text_end: int
    language: str | None = None  # as detected, for language "auto"


@dataclass(frozen=True)
class _Run:
    sentences: list[list[Word]]


@dataclass(frozen=True)
class _Pause:
    seconds: float
    marker: tuple[int, int] | None


@dataclass
class Analysis:
    turns: list[Segment]
    items: list[list[_Run | _Pause]]  # per turn
    sentences: list[SentenceRef]
    normalized_text: str
    languages: dict[str, int] = field(default_factory=dict)  # characters of the text per language

    def plan(self, budget: Callable[[int, float], int], *, first_short: bool = False) -> list[Piece]:
        """Pieces in order; ``budget(turn, speed)`` is the max UTF-8 bytes of a chunk for that turn.
        ``first_short``: the job's first chunk is its first sentence or clause, at most a quarter of
        the budget (``plan.pack``), so its audio exists after a fraction of a full chunk's model
        time. A pure function of the job's text and budget: a retried job plans the same chunks."""
        pieces: list[Piece] = []
        spoken_yet = False  # a flag, not a look back over the pieces: thousands of pauses may come first
        for t, (turn, items) in enumerate(zip(self.turns, self.items, strict=True)):
            speed = turn.speed if turn.speed is not None else 1.0
            for item in items:
                if isinstance(item, _Pause):
                    pieces.append(Piece(len(pieces), t, speed, pause_s=item.seconds, marker=item.marker))
                    continue
                max_bytes = budget(t, speed)
                lead = max_bytes // FIRST_CHUNK_SHARE if first_short and not spoken_yet else None
                for chunk in _pack(item, max_bytes, lead):
                    pieces.append(Piece(len(pieces), t, speed, words=chunk))
                    spoken_yet = True
            if turn.pause_after_s > 0:
                pieces.append(Piece(len(pieces), t, speed, pause_s=turn.pause_after_s))
        return pieces


def _pack(run: _Run, max_bytes: int, first_bytes: int | None = None) -> list[tuple[Word, ...]]:
    by_token: dict[tuple[int, int], int] = {}
    sents: list[plan.Sentence] = []
    for words in run.sentences:
        toks = tuple(w.token for w in words)
        spoken = " ".join(t.spoken for t in toks if t.spoken)
        sents.append(plan.Sentence(tokens=toks, text_start=toks[0].start, text_end=toks[-1].end, spoken=spoken))
        for w in words:
            by_token[(w.token.start, w.token.end)] = w.sentence
    return [
        tuple(Word(t, by_token[(t.start, t.end)]) for t in chunk) for chunk in plan.pack(sents, max_bytes, first_bytes)
    ]


@dataclass
class _Builder:
    sentences: list[SentenceRef] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)
    spoken_chars: int = 0
    languages: dict[str, int] = field(default_factory=dict)


def analyse(
    manifest: Manifest,
    lexicon: Mapping[str, str],
    *,
    max_pause_s: float = 10.0,
    max_total_pause_s: float = 600.0,
    on_spoken: Callable[[int], None] | None = None,
) -> Analysis:
    """``on_spoken`` sees the spoken characters so far, while each run of text is expanded (at
    least every ``normalize.REPORT_EVERY`` characters: a lower bound then) and after it (exact), and
    may raise to stop the analysis there: the job's work budget, applied before a lexicon that
    multiplies every word has built the whole text."""
    turns = manifest.turns
    b = _Builder()
    items: list[list[_Run | _Pause]] = []
    total_pause = 0.0
    for t, turn in enumerate(turns):
        where = f"segments[{t}]: " if manifest.segments is not None else ""
        try:
            parts = markup.parse(turn.text, max_pause_s=max_pause_s, max_total_pause_s=max_total_pause_s)
        except markup.MarkupError as e:
            raise ScriptError(ErrorCode.INVALID_MARKUP, f"{where}{e}") from None
        turn_items: list[_Run | _Pause] = []
        for part in parts:
            if isinstance(part, markup.Pause):
                total_pause += part.seconds
                turn_items.append(_Pause(part.seconds, (part.start, part.end)))
                continue
            run = _analyse_run(turn.text, part, t, manifest, lexicon, b, where, on_spoken)
            if run is not None:
                turn_items.append(run)
                if on_spoken is not None:
                    on_spoken(b.spoken_chars)
        total_pause += turn.pause_after_s
        if not any(isinstance(i, _Run) for i in turn_items):
            raise ScriptError(ErrorCode.TEXT_NOT_SPEAKABLE, f"{where}text has nothing to speak")
        items.append(turn_items)
    if total_pause > max_total_pause_s:
        raise ScriptError(
            ErrorCode.INVALID_MARKUP, f"pauses add up to {total_pause:g}s; the limit is {max_total_pause_s:g}s"
        )
    return Analysis(turns, items, b.sentences, "\n".join(b.spoken), dict(sorted(b.languages.items())))


def _analyse_run(
    text: str,
    run: markup.TextRun,
    turn: int,
    manifest: Manifest,
    lexicon: Mapping[str, str],
    b: _Builder,
    where: str = "",
    on_spoken: Callable[[int], None] | None = None,
) -> _Run | None:
    piece = text[run.start : run.end]
    if not piece.strip():
        return None
    auto = manifest.language == languages.AUTO
    spans = languages.detect(piece) if auto else [languages.Span(0, len(piece), manifest.language)]
    tokens: list[Token] = []
    so_far = b.spoken_chars  # a lower bound of the spoken text with this run's tokens so far
    for span in spans:
        part = piece[span.start : span.end]
        b.languages[span.language] = b.languages.get(span.language, 0) + len(part.strip())
        found = normalize.normalize(
            part,
            span.language,
            lexicon,
            enabled=manifest.normalize,
            on_spoken=(lambda n, base=so_far: on_spoken(base + n)) if on_spoken is not None else None,
        )
        so_far += sum(len(tok.spoken) for tok in found)
        tokens.extend(tok.shifted(run.start + span.start) for tok in found)
    if not any(t.spoken for t in tokens):
        return None
    _check_words(text, tokens, where)
    sentences: list[list[Word]] = []
    for sent in plan.sentences(tokens, text):
        index = len(b.sentences)
        lang = _language_at(spans, sent.text_start - run.start) if auto else None
        b.sentences.append(SentenceRef(turn, sent.text_start, sent.text_end, lang))
        sentences.append([Word(tok, index) for tok in sent.tokens])
    b.spoken.append(normalize.spoken_text(tokens))
    b.spoken_chars += len(b.spoken[-1])
    return _Run(sentences)


# The most one token may read as. The planner never splits a token (a word, or a number or URL
# read out), so a longer one would be one model call far beyond F5-TTS's 22 s window: a job of one
# 100,000-character "word" ended SYNTHESIS_FAILED (issue 25), blaming the model for its text.
# 2,000 characters is minutes of speech, more than any real word, number or address reads as.
MAX_WORD_SPOKEN = 2_000


def _check_words(text: str, tokens: Sequence[Token], where: str) -> None:
    for t in tokens:
        if len(t.spoken) > MAX_WORD_SPOKEN:
            word = text[t.start : t.end]
            shown = word if len(word) <= 40 else word[:40] + "..."
            raise ScriptError(
                ErrorCode.TEXT_NOT_SPEAKABLE,
                f"{where}the word at offset {t.start} ({shown!r}, {len(word):,} characters) reads as "
                f"{len(t.spoken):,} characters; a word is spoken in one piece, of at most {MAX_WORD_SPOKEN:,}",
            )


def _language_at(spans: Sequence[languages.Span], offset: int) -> str:
    return next((s.language for s in spans if s.start <= offset < s.end), spans[-1].language)


def spoken_words(words: Sequence[Word]) -> list[tuple[int, str]]:
    """(index into ``words``, spoken word) for every word the aligner will see, in order."""
    return [(i, sw) for i, w in enumerate(words) for sw in w.token.words]
