"""A job's text as pieces: markup, lexicon, normalization and chunking together, offsets intact."""

from __future__ import annotations

import pytest

from pipeline.jobs.contract import ErrorCode, Manifest
from pipeline.text import script


def _manifest(**fields: object) -> Manifest:
    return Manifest.model_validate({"voice": "voices/a.wav", **fields})


def test_pieces_cover_the_text_in_order_with_pauses_between() -> None:
    text = "It costs $3.50. [pause:1.5s] Dr. Smith left at 10:30.\nThe end."
    analysis = script.analyse(_manifest(text=text), {})
    pieces = analysis.plan(lambda turn, speed: 10_000)
    kinds = ["pause" if p.is_pause else "speech" for p in pieces]
    assert kinds == ["speech", "pause", "speech"]
    assert pieces[1].pause_s == 1.5 and text[slice(*pieces[1].marker)] == "[pause:1.5s]"
    words = [w for p in pieces for w in p.words]
    assert [text[w.token.start : w.token.end] for w in words] == [m for m in text.replace("[pause:1.5s]", " ").split()]
    money = next(w for w in words if text[w.token.start : w.token.end] == "$3.50.")
    assert "dollars" in money.token.spoken
    # Sentences: one per sentence end or line break, in order, indexing analysis.sentences.
    assert [text[s.text_start : s.text_end] for s in analysis.sentences] == [
        "It costs $3.50.",
        "Dr. Smith left at 10:30.",
        "The end.",
    ]
    assert [w.sentence for w in words] == sorted(w.sentence for w in words)
    assert "[pause" not in analysis.normalized_text and "$" not in analysis.normalized_text


def test_chunks_respect_the_budget_at_sentence_boundaries() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    pieces = script.analyse(_manifest(text=text), {}).plan(lambda turn, speed: 120)
    assert len(pieces) > 5
    for p in pieces:
        assert len(p.spoken.encode()) <= 120
        assert p.spoken.endswith(".")  # whole sentences: none of these is over the budget
    again = script.analyse(_manifest(text=text), {}).plan(lambda turn, speed: 120)
    assert [p.spoken for p in again] == [p.spoken for p in pieces]  # deterministic: resumable


def test_dialogue_turns_keep_their_own_offsets_voices_and_speeds() -> None:
    m = _manifest(
        voice=None,
        segments=[
            {"voice": "alice", "text": "Hello 2 you.", "pause_after_s": 0.5},
            {"voice": "bob", "text": "Hi.", "speed": 1.5},
            {"text": "Bye."},
        ],
    )
    turns = m.turns
    assert [t.voice for t in turns] == ["alice", "bob", None]
    analysis = script.analyse(m, {})
    pieces = analysis.plan(lambda turn, speed: 1000)
    assert [(p.turn, p.is_pause) for p in pieces] == [(0, False), (0, True), (1, False), (2, False)]
    assert pieces[2].speed == 1.5 and pieces[0].speed == 1.0
    w = pieces[0].words[1]
    assert turns[0].text[w.token.start : w.token.end] == "2" and w.token.spoken == "two"


def test_lexicon_applies_before_normalization_and_normalize_false_keeps_digits() -> None:
    words = script.analyse(_manifest(text="GIF 42."), {"GIF": "jif"}).plan(lambda t, s: 100)[0].words
    assert [w.token.spoken for w in words] == ["jif", "forty two."]
    raw = script.analyse(_manifest(text="GIF 42.", normalize=False), {}).plan(lambda t, s: 100)[0].words
    assert [w.token.spoken for w in raw] == ["GIF", "42."]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"text": 'Say <break time="1s"/> this.'}, ErrorCode.INVALID_MARKUP),
        ({"text": "Wait [pause:99s] here."}, ErrorCode.INVALID_MARKUP),
        ({"text": "[pause:1s] [pause:2s]"}, ErrorCode.TEXT_NOT_SPEAKABLE),
        ({"segments": [{"text": "Fine."}, {"text": "<speak>no</speak>"}]}, ErrorCode.INVALID_MARKUP),
    ],
)
def test_text_errors_name_the_problem(fields: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(script.ScriptError) as e:
        script.analyse(_manifest(**fields), {})
    assert e.value.code == code and e.value.message
    if "segments" in fields:
        assert e.value.message.startswith("segments[1]: ")


def test_total_pause_limit_counts_pause_after() -> None:
    m = _manifest(segments=[{"text": "A.", "pause_after_s": 10.0}, {"text": "B. [pause:10s]"}])
    with pytest.raises(script.ScriptError, match="pauses add up to 20s"):
        script.analyse(m, {}, max_total_pause_s=15)


def test_a_manifest_needs_text_or_segments_not_both() -> None:
    from pipeline.jobs.contract import ManifestError, parse_manifest

    for body in (b'{"voice": "v"}', b'{"text": "a", "segments": [{"text": "b"}]}'):
        with pytest.raises(ManifestError, match="either text or segments"):
            parse_manifest(body)
