"""Every parser of outside bytes is total (issue 25): on any input it returns a value or raises its
own domain error, never another exception.

A parser that raises something else on a hostile input is a poison pill: the SQS message parser's
AttributeError took the worker down and then every DLQ tool and the reconciler with it. Each test
below feeds one parser arbitrary JSON, its own document shape with a wrong type at any field,
deep nesting, huge strings and numbers, control characters, lone surrogates and raw bytes; an
exception other than the domain error fails the test (pytest reports it). The targeted tests at the
end pin each concrete case that escaped before.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cloud.consumer import Message
from pipeline.cloud.events import ParsedMessage, UnrecognisedMessage, parse_message_body
from pipeline.cloud.store import Unreadable, parse_document
from pipeline.jobs import chunks
from pipeline.jobs.contract import (
    ErrorCode,
    JobResult,
    JobState,
    JobStatus,
    Manifest,
    ManifestError,
    parse_manifest,
    utcnow,
)
from pipeline.ops import dlq
from pipeline.text.lexicon import LexiconError, check, parse_pls
from pipeline.tts import voices
from pipeline.web.api import ApiError, parse_speech_request
from pipeline.web.console import ConsoleError, _Form, form_manifest, manifest_voice
from pipeline.worker.fair import ANONYMOUS, submitter_of
from tests.helpers import sample_result

# Cheap enough that the whole file stays well under a minute on one busy core.
FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

BOMB = "[" * 100_000  # json.loads recurses once per level: RecursionError, not JSONDecodeError

# -- strategies -------------------------------------------------------------------------------

# Any character, lone surrogates and control characters included (hypothesis leaves surrogates out
# by default; json.dumps writes them as "\udXXX" escapes, which json.loads turns back into them).
_chars = st.characters(exclude_categories=())
_text = st.text(_chars, max_size=40)
_huge_text = st.integers(0, 200_000).map(lambda n: "x" * n)
_strings = st.one_of(_text, _huge_text, st.sampled_from(["", " ", "\x00", "\ud800", "inbox/a.json", "%ff+%2B"]))
_numbers = st.one_of(
    st.integers(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans()
)
json_values = st.recursive(
    st.one_of(st.none(), _numbers, _strings),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_text, st.sampled_from(["Records", "s3", "key"])), inner, max_size=4),
    ),
    max_leaves=12,
)


def _nested(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


# JSON-ish text that json.dumps cannot produce: nesting past any recursion limit, integers over
# Python's 4,300-digit limit, NaN and Infinity, lone surrogate escapes, duplicated keys, junk.
_raw_json = st.one_of(
    st.integers(1, 120_000).map(lambda n: "[" * n),
    st.integers(1, 60_000).map(_nested),
    st.integers(1, 10_000).map(lambda n: "[" * n + "]" * n),
    st.integers(4000, 6000).map(lambda n: '{"Records": ' + "1" * n + "}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '{"a": NaN}', '"\\ud800"', '{"a":1,"a":[]}', "", "null"]),
    _text,
)


def _json_text(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return st.one_of(values.map(json.dumps), _raw_json)


def _bytes_of(texts: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, as a hostile writer may send.
    return st.one_of(texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def _mutated(draw: st.DrawFn, template: Any) -> Any:
    """``template`` with one to three fields (any depth, the root included) replaced by arbitrary
    JSON of any type, or removed: a wrong type at every field, one at a time or together."""
    doc = copy.deepcopy(template)
    paths = list(_paths(template))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        if not path:
            return draw(json_values)
        parent: Any = doc
        for step in path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                break  # an earlier mutation replaced this branch
        else:
            last = path[-1]
            if isinstance(parent, dict) and last in parent:
                if draw(st.booleans()):
                    del parent[last]
                else:
                    parent[last] = draw(json_values)
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                parent[last] = draw(json_values)
    return doc


def _shaped(*templates: Any) -> st.SearchStrategy[Any]:
    return st.one_of(*(_mutated(t) for t in templates))


def _any_document(*templates: Any) -> st.SearchStrategy[bytes]:
    return _bytes_of(_json_text(st.one_of(json_values, _shaped(*templates))))


# -- templates: valid documents of each kind --------------------------------------------------

S3_RECORD = {
    "eventVersion": "2.1",
    "eventSource": "aws:s3",
    "eventName": "ObjectCreated:Put",
    "eventTime": "2026-11-25T01:02:03.456Z",
    "userIdentity": {"principalId": "AWS:alice"},
    "s3": {
        "bucket": {"name": "tts-jobs"},
        "object": {"key": "inbox/j1.json", "size": 12, "eTag": "abc", "sequencer": "01"},
    },
}
S3_EVENT = {"Records": [S3_RECORD, {**S3_RECORD, "eventName": "ObjectRemoved:Delete"}]}
EVENTBRIDGE = {
    "source": "aws.s3",
    "detail-type": "Object Created",
    "time": "2026-11-25T01:02:03Z",
    "detail": {
        "bucket": {"name": "tts-jobs"},
        "object": {"key": "inbox/j1.json", "size": 12, "etag": "abc", "sequencer": "01"},
        "requester": "123456789012",
    },
}
TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "tts-jobs"}


def _sns(inner: Any) -> dict[str, Any]:
    return {"Type": "Notification", "Message": json.dumps(inner), "TopicArn": "arn:aws:sns:us-east-1:1:t"}


_event_docs = st.one_of(
    json_values,
    _shaped(S3_EVENT, EVENTBRIDGE, TEST_EVENT, _sns(S3_EVENT)),
    _shaped(S3_EVENT).map(_sns),  # the wrong type inside the envelope
    _shaped(S3_EVENT).map(lambda d: _sns(_sns(_sns(d)))),  # envelopes in envelopes
)
event_bodies = _json_text(_event_docs)

MANIFEST_TEXT = {
    "version": 1,
    "text": "Hello there. [pause:1s] It costs $3.50.",
    "voice": "alice",
    "ref_text": "a reference",
    "speed": 1.0,
    "nfe_step": 8,
    "seed": 7,
    "output_format": "mp3",
    "subtitles": ["srt", "vtt"],
    "language": "en",
    "lexicon": {"SQS": "S Q S"},
    "lexicons": ["lexicons/a.pls"],
    "quality": {"max_wer": 0.3, "max_retries": 1},
}
MANIFEST_DIALOGUE = {
    "segments": [{"text": "Hi.", "voice": "alice", "pause_after_s": 0.5}, {"text": "Hello.", "speed": 1.2}],
    "priority": "interactive",
}

STATUS = json.loads(JobStatus.new("j1").moved_to(JobState.PROCESSING, worker="w", lease_s=45).model_dump_json())
RESULT = json.loads(sample_result("j1", "s3://b/outputs/j1/a.wav", srt_uri="s3://b/outputs/j1/a.srt").model_dump_json())
VOICE = json.loads(
    voices.VoiceRecord(
        name="alice",
        audio_key="voices/alice/audio.wav",
        sha256="0" * 64,
        bytes=1,
        duration_s=1.0,
        sample_rate=24000,
        channels=1,
    ).model_dump_json()
)
CHUNK = {
    "index": 0,
    "digest": "d" * 32,
    "samples": 24000,
    "sample_rate": 24000,
    "words": [[0.0, 0.5, 0.9], [0.5, 1.0, 0.8]],
    "alignment_error": None,
    "ordinal": 0,
    "start": 0,
    "cross_fade": False,
    "after": None,
}
SPEECH = {
    "model": "tts-1",
    "input": "Hello there.",
    "voice": "alice",
    "response_format": "mp3",
    "speed": 1.0,
    "stream_format": "audio",
    "cancel_on_disconnect": False,
}


# -- the SQS message / S3 event parser and its callers ----------------------------------------


def _check_parsed(parsed: ParsedMessage) -> None:
    """What the worker relies on in a value the parser returns."""
    for r in parsed.created:
        assert isinstance(r.bucket, str) and r.bucket and isinstance(r.key, str) and r.key
        r.key.encode("utf-8")  # sendable to S3
        assert r.size is None or (type(r.size) is int and r.size >= 0)
        assert r.etag is None or isinstance(r.etag, str)
        assert r.sequencer is None or isinstance(r.sequencer, str)
        assert r.principal is None or isinstance(r.principal, str)
        assert r.event_time is None or r.event_time.tzinfo is not None


@FUZZ
@given(event_bodies)
def test_the_message_parser_is_total(body: str) -> None:
    try:
        parsed = parse_message_body(body)
    except UnrecognisedMessage:
        return
    _check_parsed(parsed)


@FUZZ
@given(event_bodies)
def test_the_fair_share_and_the_dlq_tools_read_any_message(body: str) -> None:
    msg = Message("m1", "r1", body, 1, None)
    assert isinstance(submitter_of(msg), str)
    jobs, unreadable = dlq.read(msg)
    assert (jobs is None) == (unreadable is not None)
    assert jobs is None or all(isinstance(j, str) for j in jobs)


# -- the manifest ------------------------------------------------------------------------------


@FUZZ
@given(_any_document(MANIFEST_TEXT, MANIFEST_DIALOGUE))
def test_the_manifest_parser_is_total(raw: bytes) -> None:
    try:
        manifest = parse_manifest(raw)
    except ManifestError as e:
        assert e.code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_MANIFEST)
        return
    assert isinstance(manifest, Manifest)
    manifest.model_dump_json().encode("utf-8")  # writable back, as the worker and the API do


# -- documents read back from S3 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "template", "parse"),
    [
        (JobStatus, STATUS, lambda raw: parse_document("status/j1.json", raw, JobStatus)),
        (JobResult, RESULT, lambda raw: parse_document("results/j1.json", raw, JobResult)),
        (voices.VoiceRecord, VOICE, lambda raw: voices.parse_record("voices/alice/voice.json", raw)),
        (chunks.ChunkRecord, CHUNK, lambda raw: chunks.parse_record("outputs/j1/chunks/0-d.json", raw)),
    ],
    ids=["status", "result", "voice-record", "chunk-record"],
)
def test_stored_documents_parse_or_are_unreadable(model: type, template: Any, parse: Callable[[bytes], Any]) -> None:
    assert isinstance(parse(json.dumps(template).encode()), model)  # the template itself is valid

    @FUZZ
    @given(_any_document(template))
    def run(raw: bytes) -> None:
        try:
            assert isinstance(parse(raw), model)
        except Unreadable as e:
            assert len(str(e)) < 2000  # says what is wrong without echoing the document

    run()


# -- lexicons ----------------------------------------------------------------------------------

_tags = st.sampled_from(["lexicon", "lexeme", "grapheme", "alias", "phoneme", "x", "p:lexicon", "lexicon"])


@st.composite
def _xml(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(_tags)
    attrs = ""
    if draw(st.booleans()):
        name = draw(st.sampled_from(["prefer", "xmlns", "xmlns:p", "version", "alphabet"]))
        value = draw(st.sampled_from(["true", "http://www.w3.org/2005/01/pronunciation-lexicon", "urn:x", ""]))
        attrs = f" {name}={quoteattr(value)}"
    children = draw(st.lists(_xml(depth + 1), max_size=3)) if depth < 4 else []
    text = escape(draw(_text))  # control characters included: XML 1.0 forbids most of them
    return f"<{tag}{attrs}>{text}{''.join(children)}</{tag}>"


_decls = st.sampled_from(
    [
        "",
        '<?xml version="1.0"?>',
        *(
            f'<?xml version="1.0" encoding="{e}"?>'
            for e in ("utf-8", "latin-1", "shift_jis", "utf-16", "foo", "ascii", "euc-jp", "big5")
        ),
    ]
)
_pls = st.one_of(
    st.tuples(_decls, _xml(), st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-8-sig"])).map(
        lambda t: (
            (t[0] + t[1]).encode(t[2], "surrogatepass") if t[2] != "latin-1" else (t[0] + t[1]).encode(t[2], "replace")
        )
    ),
    st.integers(1, 120_000).map(lambda n: b"<lexicon>" + b"<a>" * n + b"x" + b"</a>" * n + b"</lexicon>"),
    st.just(b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><lexicon>&b;</lexicon>'),
    st.binary(max_size=300),
)


@FUZZ
@given(_pls)
def test_the_pls_parser_is_total(raw: bytes) -> None:
    try:
        table = parse_pls(raw)
    except LexiconError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in table.items())


@FUZZ
@given(
    st.one_of(json_values, _mutated({"SQS": "S Q S", "AWS": "A W S"}), st.dictionaries(_strings, _strings, max_size=5))
)
def test_an_inline_lexicon_is_checked_or_refused(lexicon: Any) -> None:
    try:
        check(lexicon)
    except LexiconError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in lexicon.items())


# -- web request bodies ------------------------------------------------------------------------


@FUZZ
@given(_any_document(SPEECH))
def test_the_speech_request_parser_is_total(raw: bytes) -> None:
    try:
        req, manifest = parse_speech_request(raw, max_text_chars=100_000)
    except ApiError as e:
        assert e.status == 400
        return
    assert len(req.input) <= 100_000 and manifest.text == req.input
    manifest.model_dump_json().encode("utf-8")  # what client.submit writes to the inbox


@FUZZ
@given(_any_document(MANIFEST_TEXT, MANIFEST_DIALOGUE))
def test_the_console_reads_the_voice_of_any_stored_manifest(raw: bytes) -> None:
    voice = manifest_voice(raw)
    assert voice is None or isinstance(voice, str)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["text", "ref_text", "speed", "output_format", "subtitles", "voice"]),
        st.lists(
            st.one_of(_strings, st.sampled_from(["nan", "inf", "-1", "1e999", "1.5", "srt", "vtt", "mp3"])), max_size=3
        ),
    ),
    _strings,
)
def test_the_console_form_makes_a_manifest_or_a_400(fields: dict[str, list[str]], voice: str) -> None:
    form = _Form()
    for name, values in fields.items():
        for v in values:
            # The form reader decodes with errors="replace": no lone surrogate reaches here.
            form.add(name, v.encode("utf-8", "replace").decode("utf-8"))
    try:
        manifest = form_manifest(form, voice)
    except ConsoleError as e:
        assert e.status_code == 400
        return
    assert isinstance(manifest, Manifest) and math.isfinite(manifest.speed)


# -- each case that escaped before -------------------------------------------------------------


def _s3_event(**changes: Any) -> str:
    record = copy.deepcopy(S3_RECORD)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: Any = record
        for p in parents:
            node = node[p]
        node[last] = value
    return json.dumps({"Records": [record]})


ESCAPED_BEFORE = {
    # AttributeError from unquote_plus: the message that took the worker down on the real stack
    "key-is-a-number": _s3_event(s3__object__key=123),
    "key-is-null": _s3_event(s3__object__key=None),
    "bucket-name-is-a-list": _s3_event(s3__bucket__name=["tts-jobs"]),  # passed on as the bucket before
    "event-name-is-a-list": _s3_event(eventName=["ObjectCreated:Put"]),
    "recursion-bomb": BOMB,  # RecursionError from json
    "integer-over-the-digit-limit": '{"Records": ' + "1" * 5000 + "}",  # ValueError, not JSONDecodeError
}


@pytest.mark.parametrize("body", ESCAPED_BEFORE.values(), ids=ESCAPED_BEFORE.keys())
def test_what_escaped_the_message_parser_is_unrecognised(body: str) -> None:
    with pytest.raises(UnrecognisedMessage):
        parse_message_body(body)
    msg = Message("m1", "r1", body, 1, None)
    assert submitter_of(msg) == ANONYMOUS  # the bulk loop's first look at it
    assert dlq.jobs_of(msg) is None  # dlq list / redrive / reconcile


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_s3_event(s3__object__size="12"), "size"),  # passed through as a str before
        (_s3_event(s3__object__eTag=7), "eTag"),
        (_s3_event(s3__object__key="inbox/\ud800.json"), "Unicode"),  # a lone surrogate: S3 cannot take it
        (json.dumps(_sns(_sns(_sns(S3_EVENT)))), "SNS"),  # envelopes are unwrapped a bounded number of times
    ],
    ids=["size-is-a-string", "etag-is-a-number", "lone-surrogate-key", "sns-in-sns-in-sns"],
)
def test_wrong_types_in_an_s3_event_are_refused_not_passed_on(body: str, why: str) -> None:
    with pytest.raises(UnrecognisedMessage, match=why):
        parse_message_body(body)


@pytest.mark.parametrize("identity", ["alice", ["alice"], {"principalId": 7}, {"principalId": ""}])
def test_an_odd_uploader_is_the_anonymous_submitter_not_a_refused_event(identity: Any) -> None:
    """Who uploaded it only picks a turn in the fair share: the job itself is still run."""
    body = _s3_event(userIdentity=identity)  # a string: AttributeError (.get on a str) before
    [rec] = parse_message_body(body).created
    assert rec.principal is None and rec.key == "inbox/j1.json"
    assert submitter_of(Message("m1", "r1", body, 1, None)) == ANONYMOUS


def test_one_sns_envelope_is_still_unwrapped_and_a_naive_event_time_is_utc() -> None:
    [rec] = parse_message_body(json.dumps(_sns({"Records": [S3_RECORD]}))).created
    assert rec.key == "inbox/j1.json"
    [rec] = parse_message_body(_s3_event(eventTime="2026-11-25T01:02:03")).created
    # A naive created_at in a status would make the reconciler's age arithmetic raise TypeError.
    assert rec.event_time is not None and rec.event_time.utcoffset() is not None
    assert rec.event_time < utcnow()  # comparable with an aware clock (TypeError if naive)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"text": "a", "seed": ' + b"1" * 5000 + b"}", ErrorCode.INVALID_JSON),  # ValueError before
        (b'{"text": "a", "speed": NaN}', ErrorCode.INVALID_JSON),  # not JSON, whatever Python's json reads
        (b'{"text": "\\ud800"}', ErrorCode.INVALID_JSON),  # a lone surrogate is no character
    ],
    ids=["integer-over-the-digit-limit", "nan", "lone-surrogate"],
)
def test_what_the_manifest_parser_let_through_is_a_manifest_error(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(raw)
    assert e.value.code is code


@pytest.mark.parametrize(
    "raw",
    [
        b'<?xml version="1.0" encoding="shift_jis"?><lexicon/>',  # ValueError from expat before
        b'<?xml version="1.0" encoding="no-such-encoding"?><lexicon/>',  # LookupError before
    ],
    ids=["multi-byte-encoding", "unknown-encoding"],
)
def test_a_lexicon_in_an_encoding_expat_cannot_read_is_a_lexicon_error(raw: bytes) -> None:
    with pytest.raises(LexiconError, match="encoding"):
        parse_pls(raw)


def test_stored_documents_that_are_not_documents_are_unreadable() -> None:
    for raw in (BOMB.encode(), b"\xff\xfe", b"[]", json.dumps({**STATUS, "state": 7}).encode()):
        with pytest.raises(Unreadable, match=r"status/j1\.json"):
            parse_document("status/j1.json", raw, JobStatus)
    assert isinstance(Unreadable("k", "JobStatus", "x"), ValueError)  # readers that skip a ValueError still do


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (BOMB.encode(), None),  # RecursionError out of request.json() before: a 500
        (json.dumps({**SPEECH, "input": "   "}).encode(), "input"),  # ValidationError from Manifest(...): a 500
        (json.dumps({**SPEECH, "voice": "v" * 2000}).encode(), "voice"),
        (json.dumps(SPEECH).replace("1.0", "NaN").encode(), None),
        (b"\xff" + json.dumps(SPEECH).encode(), None),
        (b"[]", None),
    ],
    ids=["recursion-bomb", "blank-input", "long-voice", "nan-speed", "not-utf8", "not-an-object"],
)
def test_a_bad_speech_request_is_a_400(raw: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as e:
        parse_speech_request(raw, max_text_chars=100_000)
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize(
    ("doc", "voice"),
    [
        ({"segments": [{"text": "a", "voice": ["x"]}, {"text": "b", "voice": "bob"}]}, "bob"),  # TypeError before
        ({"segments": [{"text": "a", "voice": {"x": 1}}]}, None),
        ({"voice": "alice", "text": "a"}, "alice"),
    ],
    ids=["voice-is-a-list", "voice-is-an-object", "plain"],
)
def test_the_console_reads_a_manifests_voice_whatever_its_segments_hold(doc: Any, voice: str | None) -> None:
    assert manifest_voice(json.dumps(doc).encode()) == voice
    assert manifest_voice(BOMB.encode()) is None  # RecursionError before


@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "fast"])
def test_a_console_speed_that_is_not_a_number_is_a_400(speed: str) -> None:
    form = _Form()
    form.add("text", "hello")
    form.add("speed", speed)
    with pytest.raises(ConsoleError) as e:
        form_manifest(form, "alice")
    assert e.value.status_code == 400
