"""The web console (`tts-pipeline console`, pipeline/console.py + pipeline/static/) in a real
headless chromium (Debian's, driven by Playwright), in front of a real worker on LocalStack."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    BUCKET,
    REF_TEXT,
    WorkerProcess,
    add_library_voice,
    http_request,
    multipart,
    reference_voice_path,
    start_console,
)

pytestmark = pytest.mark.integration

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VOICE = "console-alice"
STALLED = "console-stalled"  # a bucket and queue no worker consumes: jobs stay QUEUED
KEY = "sk-console-0123456789"
TEXT = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April. Then the clocks struck."
HANG_MS = 600_000  # hang guards only: nothing here depends on how fast this machine is
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console-job.png"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def console(aws_env: dict[str, str], worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    add_library_voice(aws_env, VOICE)
    proc, url = start_console(aws_env, tmp_path_factory.mktemp("console-page") / "console.log")
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def stalled(make_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = make_stack(STALLED)
    add_library_voice(env, VOICE)
    proc, url = start_console(env, tmp_path_factory.mktemp("console-stalled") / "console.log")
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def locked(aws_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A console with TTS_API_KEY set (the same bucket; it only needs to answer)."""
    proc, url = start_console(aws_env, tmp_path_factory.mktemp("console-locked") / "console.log", api_key=KEY)
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make browser` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.errors = errors  # shown when an expectation fails
    yield pg
    context.close()


def _submit(page: Any, url: str, text: str) -> str:
    """Fill in and send the form on the home page; returns the job id the page moves to."""
    page.goto(url)
    expect(page.locator("#voice option", has_text=VOICE)).to_have_count(1, timeout=60_000)
    page.get_by_label("Text").fill(text)
    page.get_by_label("Voice", exact=True).select_option(VOICE)
    page.get_by_label("SRT").check()
    page.get_by_role("button", name="Submit job").click()
    try:
        expect(page).to_have_url(re.compile(r"/jobs/[A-Za-z0-9._-]+$"), timeout=60_000)
    except AssertionError:
        raise AssertionError(f"{page.locator('#submit-form').inner_text()}\n{page.errors}") from None
    return urllib.parse.unquote(page.url.rsplit("/", 1)[1])


def _keys(s3: Any, prefix: str, bucket: str = BUCKET) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_a_job_submitted_from_the_page_plays_with_its_words_highlighted(console: str, page: Any) -> None:
    job_id = _submit(page, console, TEXT)
    page.evaluate("window.__noReload = true")
    # The page polls: the state changes in place, without a reload.
    expect(page.locator("#job-state")).to_have_text("COMPLETED", timeout=HANG_MS)
    words = page.locator("#transcript .word")
    expect(words.first).to_be_visible(timeout=60_000)
    timings = page.evaluate(
        "[...document.querySelectorAll('#transcript .word')].map(b => "
        "({word: b.textContent, start: +b.dataset.start, end: +b.dataset.end}))"
    )
    assert len(timings) >= 3
    assert page.locator("#transcript").inner_text().strip().startswith("The quick brown fox")

    # Playing: the audio comes from a presigned URL and really plays.
    page.evaluate("async () => { const a = document.getElementById('player'); a.muted = true; await a.play(); }")
    page.wait_for_function("document.getElementById('player').currentTime > 0", timeout=60_000)
    page.evaluate("document.getElementById('player').pause()")

    def seek_and_check(i: int) -> None:
        w = timings[i]
        t = w["start"] + min(0.01, (w["end"] - w["start"]) / 2)
        page.evaluate(f"document.getElementById('player').currentTime = {t}")
        current = page.locator("#transcript .word.current")
        expect(current).to_have_count(1)
        expect(current).to_have_attribute("data-i", str(i))
        expect(current).to_have_text(w["word"])
        expect(current).to_have_attribute("aria-current", "true")

    spoken = [i for i, w in enumerate(timings) if w["end"] - w["start"] > 0.005]
    assert len(spoken) >= 2, timings
    first, later = spoken[0], spoken[-1]
    assert timings[later]["start"] >= timings[first]["end"]
    seek_and_check(first)
    seek_and_check(later)  # the highlight moved with audio.currentTime

    mid = spoken[len(spoken) // 2]
    words.nth(mid).click()
    now = page.evaluate("document.getElementById('player').currentTime")
    assert abs(now - timings[mid]["start"]) < 0.05
    expect(page.locator("#transcript .word.current")).to_have_attribute("data-i", str(mid))
    words.nth(later).focus()
    page.keyboard.press("Enter")  # words are buttons: the keyboard seeks too
    assert abs(page.evaluate("document.getElementById('player').currentTime") - timings[later]["start"]) < 0.05

    # The rest of the job page: waveform, reference voice, subtitles, raw documents, history.
    peaks = page.evaluate(f"fetch('/console/api/jobs/{job_id}/peaks').then(r => r.json())")
    assert len(peaks["peaks"]) == 800 and max(peaks["peaks"]) > 0
    expect(page.locator("#wave")).to_be_visible()
    expect(page.locator("#ref-text")).to_contain_text(REF_TEXT)
    assert page.locator("#ref-audio").get_attribute("src").startswith("http")
    expect(page.locator("#subtitles a", has_text=".srt")).to_have_count(1)
    srt = page.evaluate(f"fetch('/console/api/jobs/{job_id}/subtitles/srt').then(r => r.text())")
    assert "-->" in srt
    assert json.loads(page.locator("#raw-status").text_content())["state"] == "COMPLETED"
    assert json.loads(page.locator("#raw-result").text_content())["job_id"] == job_id
    expect(page.locator("#history li")).to_have_count(3)  # QUEUED, PROCESSING, COMPLETED
    page.evaluate("document.getElementById('player').currentTime = %f" % (timings[first]["start"] + 0.005))
    page.evaluate("document.activeElement.blur()")
    page.set_viewport_size({"width": 1000, "height": 1000})
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=False)

    # Back to the list, still without a reload: the job is there with its state and voice.
    page.get_by_role("link", name="← All jobs").click()
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator(".state")).to_have_text("COMPLETED", timeout=60_000)
    expect(row).to_contain_text(VOICE)
    assert page.evaluate("window.__noReload") is True
    page.locator("#filter-state").select_option("FAILED")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)


def test_a_failed_job_shows_its_error_code(console: str, page: Any) -> None:
    _submit(page, console, "[pause:abc]")
    expect(page.locator("#job-state")).to_have_text("FAILED", timeout=HANG_MS)
    expect(page.locator("#error-code")).to_have_text("INVALID_MARKUP")


def test_a_queued_job_is_cancelled_from_its_page(stalled: str, page: Any, s3: Any) -> None:
    job_id = _submit(page, stalled, "Nobody will ever run me.")
    expect(page.locator("#job-state")).to_have_text("QUEUED", timeout=60_000)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-state")).to_have_text("CANCELLED", timeout=60_000)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    assert f"cancel/{job_id}" in _keys(s3, "cancel/", STALLED)  # the same marker `tts-pipeline cancel` writes


def test_the_voice_library_can_be_browsed_added_to_and_pruned(stalled: str, page: Any, s3: Any) -> None:
    page.goto(stalled)
    expect(page.locator(f'#voices li[data-voice="{VOICE}"]')).to_contain_text(REF_TEXT, timeout=60_000)
    page.get_by_label("Name").fill("console-bob")
    page.get_by_label("Audio file").set_input_files(str(reference_voice_path()))
    page.get_by_label("Transcript (optional)").fill(REF_TEXT)
    page.get_by_role("button", name="Add voice").click()
    bob = page.locator('#voices li[data-voice="console-bob"]')
    expect(bob).to_have_count(1, timeout=60_000)
    assert "voices/console-bob/voice.json" in _keys(s3, "voices/console-bob/", STALLED)
    expect(page.locator("#voice option", has_text="console-bob")).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Remove voice console-bob").click()
    expect(bob).to_have_count(0, timeout=60_000)
    assert _keys(s3, "voices/console-bob/", STALLED) == []


BAD_IDS = [
    "..",
    "%2e%2e",
    "..%2Fstatus%2Fx",
    "%2e%2e%2fresults%2fx",
    "s3:%2F%2Fother%2Fx",
    "status%2Fx",
    "a%00b",
    "x" * 129,
]


@pytest.mark.parametrize("job_id", BAD_IDS)
def test_bad_job_ids_never_reach_the_bucket(console: str, s3: Any, job_id: str) -> None:
    before = _keys(s3, "cancel/")
    for method, path in [
        ("GET", f"/console/api/jobs/{job_id}"),
        ("GET", f"/console/api/jobs/{job_id}/peaks"),
        ("GET", f"/console/api/jobs/{job_id}/subtitles/srt"),
        ("POST", f"/console/api/jobs/{job_id}/cancel"),
        ("GET", f"/jobs/{job_id}"),
    ]:
        code, body, _ = http_request(console + path, method, headers={"X-Console": "1"})
        assert code in (400, 404), (method, path, code, body[:200])
        assert b'"history"' not in body and b'"word_timings"' not in body
    assert _keys(s3, "cancel/") == before


@pytest.mark.parametrize(
    "path",
    [
        "/console/api/jobs/x/subtitles/..%2F..%2Fstatus%2Fx.json",
        "/console/api/jobs/x/subtitles/%2e%2e",
        "/console/api/jobs?state=..%2F",
        "/console/api/jobs?state=s3://other/x",
        "/console/api/jobs/x/peaks?n=..%2F",
        "/static/..%2Fconsole.py",
        "/static/%2e%2e/console.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    ],
)
def test_other_parameters_refuse_traversal(console: str, path: str) -> None:
    code, body, _ = http_request(console + path)
    assert code in (400, 403, 404), (path, code, body[:200])
    assert b"import " not in body and b"[project]" not in body and b'"history"' not in body


@pytest.mark.parametrize("name", ["..", "%2e%2e", "..%2Fstatus", "s3:%2F%2Fother%2Fv", "status%2Fx", "-x"])
def test_bad_voice_names_are_refused(console: str, s3: Any, name: str) -> None:
    before = _keys(s3, "voices/")
    code, _, _ = http_request(f"{console}/console/api/voices/{name}", "DELETE", headers={"X-Console": "1"})
    assert code in (400, 404)
    body, ctype = multipart({"name": urllib.parse.unquote(name)}, "file", reference_voice_path().read_bytes())
    code, _, _ = http_request(f"{console}/console/api/voices", "POST", body, {"Content-Type": ctype, "X-Console": "1"})
    assert code == 400
    assert _keys(s3, "voices/") == before


@pytest.mark.parametrize("voice", ["../voices/x", "voices/console-alice/audio.wav", "s3://other/v.wav", "status/x"])
def test_a_job_names_only_library_voices(console: str, s3: Any, voice: str) -> None:
    before = _keys(s3, "inbox/")
    body, ctype = multipart({"text": "Hi.", "voice": voice})
    code, resp, _ = http_request(f"{console}/console/api/jobs", "POST", body, {"Content-Type": ctype, "X-Console": "1"})
    assert code == 400 and json.loads(resp)["error"]["code"] == "voice_not_found"
    assert _keys(s3, "inbox/") == before


def test_an_oversized_upload_is_refused_before_s3(console: str, s3: Any) -> None:
    before = _keys(s3, "voices/")
    big = b"RIFF" + b"\0" * (25 * 1024 * 1024 + 1)  # TTS_MAX_VOICE_BYTES + a little
    body, ctype = multipart({"name": "too-big"}, "file", big)
    code, resp, _ = http_request(
        f"{console}/console/api/voices", "POST", body, {"Content-Type": ctype, "X-Console": "1"}
    )
    assert code == 413, resp[:200]
    # Without a Content-Length (chunked), the streamed reader stops it all the same.
    body, ctype = multipart({"text": "Hi."}, "clip", big)
    parsed = urllib.parse.urlsplit(console)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        chunks = (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))
        conn.request(
            "POST",
            "/console/api/jobs",
            body=chunks,
            headers={"Content-Type": ctype, "X-Console": "1"},
            encode_chunked=True,
        )
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        status = 413  # the server answered and closed while the body was still being sent
    finally:
        conn.close()
    assert status == 413
    assert _keys(s3, "voices/") == before


def test_a_clip_too_short_is_refused_before_s3(console: str, s3: Any, tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(2400, dtype="float32"), 24000)  # 0.1 s < TTS_MIN_VOICE_SECONDS
    before = _keys(s3, "voices/")
    body, ctype = multipart({"text": "Hi.", "ref_text": "x"}, "clip", path.read_bytes())
    code, resp, _ = http_request(f"{console}/console/api/jobs", "POST", body, {"Content-Type": ctype, "X-Console": "1"})
    assert code == 400 and json.loads(resp)["error"]["code"] == "voice_too_short"
    assert _keys(s3, "voices/") == before


def test_mutations_need_the_console_header(console: str) -> None:
    body, ctype = multipart({"text": "Hi.", "voice": VOICE})
    code, _, _ = http_request(f"{console}/console/api/jobs", "POST", body, {"Content-Type": ctype})
    assert code == 403  # a cross-site form cannot set X-Console


def test_with_an_api_key_the_page_asks_for_it(locked: str, page: Any) -> None:
    for path in ["/console/api/jobs", "/console/api/voices", "/console/api/jobs/x", "/console/api/jobs/x/peaks"]:
        code, body, _ = http_request(locked + path)
        assert code == 401 and KEY.encode() not in body
    code, _, _ = http_request(locked + "/console/api/jobs", headers={"Authorization": f"Bearer {KEY}"})
    assert code == 200  # the API's Bearer works here too
    code, _, _ = http_request(locked + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert code == 200

    resp = page.goto(locked + "/")
    assert resp.status == 401
    expect(page.locator("#login-form")).to_be_visible()
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not right")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#jobs")).to_be_visible(timeout=30_000)
    cookie = next(c for c in page.context.cookies() if c["name"] == "tts_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
    assert page.evaluate("fetch('/console/api/jobs').then(r => r.status)") == 200
    # The API wants the key itself: a cookie rides along on requests a page makes on its own.
    assert page.evaluate("fetch('/v1/models').then(r => r.status)") == 401
    assert KEY not in page.content()
    # A forged cookie is worth nothing.
    page.context.clear_cookies()
    page.context.add_cookies([{"name": "tts_console", "value": "abc.9999999999.xyz", "url": locked}])
    assert page.evaluate("fetch('/console/api/jobs').then(r => r.status)") == 401


def test_the_page_fits_a_phone(console: str, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        pg = context.new_page()
        pg.goto(console)
        expect(pg.locator("#jobs")).to_be_visible()
        expect(pg.locator("#voices")).to_be_visible()
        width = pg.evaluate("document.documentElement.scrollWidth")
        wide = pg.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391)"
            ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)"
        )
        assert width <= 390, wide
    finally:
        context.close()
