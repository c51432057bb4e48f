"""The web console served by ``tts-pipeline console`` next to the OpenAI-compatible API.

    GET  /                                   the page (jobs, submit form, voice library)
    GET  /jobs/{job_id}                      the same page, opened on one job
    GET  /static/...                         its HTML/CSS/JS (pipeline/web/static/, no build step)
    GET  /login, POST /login, POST /logout   only meaningful with TTS_API_KEY set

    GET    /console/api/session                       {auth_required, authenticated} (+ bucket,
                                                      limits once signed in)
    GET    /console/api/jobs?state=&offset=&limit=    recent jobs, newest first
    POST   /console/api/jobs                          multipart: text, voice | clip + ref_text, speed,
                                                      output_format, subtitles -> {job_id, status}
    GET    /console/api/jobs/{job_id}                 status, result (fresh presigned audio URL),
                                                      reference voice (presigned) and transcript
    GET    /console/api/jobs/{job_id}/peaks?n=        waveform peaks of the job's audio
    GET    /console/api/jobs/{job_id}/live.wav        the audio while the job renders (its chunks)
    GET    /console/api/jobs/{job_id}/subtitles/{fmt} the srt/vtt file, as a download
    POST   /console/api/jobs/{job_id}/cancel          `tts-pipeline cancel` (state.request_cancel)
    GET    /console/api/voices                        the voice library, with presigned audio URLs
    POST   /console/api/voices                        multipart: name, ref_text, file
    DELETE /console/api/voices/{name}

Like the API, the console is a client of the bucket: it reads and writes only the job prefixes
(``inbox/``, ``status/``, ``results/``, ``outputs/<job_id>/``, ``cancel/``) and ``voices/``, with
job ids checked by ``keys.is_valid_job_id`` and voice names by ``voices.is_name`` (the worker's
rules) before any key is built, and every key read from a stored document (a result's outputs, a
voice record's clip) checked where it is used (``keys.job_output_key``,
``VoiceRecord.audio_key_checked``). Forms are read part by part within one byte budget and a field
count, whatever the body's framing (Content-Length or chunked); uploaded clips are size- and
duration-checked before anything is written to S3.

With ``TTS_API_KEY`` set, the page asks for the key once and then holds a session cookie
(HttpOnly, SameSite=Strict, Secure over TLS or behind a trusted proxy's ``X-Forwarded-Proto:
https``) naming a server-side session (``pipeline.web.sessions``: logout ends it; guesses are
throttled). The JSON endpoints take that cookie or ``Authorization: Bearer <key>``. The requests
that reach these handlers have passed ``pipeline.web.guard`` (host allow-list, cross-site writes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web
from pydantic import ValidationError

from pipeline.client import jobs as client
from pipeline.cloud.store import NotFound, Store, TooLarge
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import JobResult, JobState, JobStatus, Manifest, utcnow
from pipeline.jobs.state import request_cancel
from pipeline.tts import audio as audio_utils
from pipeline.tts.voices import VoiceError, VoiceLibrary, is_name
from pipeline.web import encoders
from pipeline.web.door import Door, OverBudget, Ticket
from pipeline.web.sessions import SESSION_S, Sessions
from pipeline.web.stream import (
    ChunkFollower,
    ClientGone,
    StreamFailed,
    StreamMismatch,
    StreamStalled,
    begin,
    write_within,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "tts_console"
PRESIGN_S = 3600  # the page fetches fresh URLs on every load
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".ogg"}
FORM_OVERHEAD = 256 * 1024  # multipart headers and the small text fields around a clip
MAX_FORM_FIELDS = 32  # the forms have 8 fields at most; empty ones count too
PAGE_MAX = 100
MAX_OFFSET = 1_000  # deeper pages are what a state filter is for
MAX_SCAN = 2_000  # statuses one filtered page may read (scan_bound)
LISTING_TTL_S = 2.0  # one listing of the bucket serves every job-list request this long
LIST_CONCURRENCY = 8  # status and manifest reads of the job list at once, all requests together
LIVE_STREAMS = 16  # live players at once (each polls the job's chunks)
PEAKS = 4000  # computed once per audio at this resolution; a request's ``n`` is drawn from it

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' http: https: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer_ok(request: web.Request, key: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


class ConsoleError(web.HTTPException):
    """A JSON error: ``{"error": {"message", "code"}}``."""

    def __init__(self, status: int, message: str, code: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": {"message": message, "code": code}}), content_type="application/json"
        )


# -- the console --------------------------------------------------------------------------------


class Console:
    def __init__(self, settings: Settings, store: Store, door: Door) -> None:
        self.settings = settings
        self.store = store
        self.door = door
        self.voices = VoiceLibrary(store)
        self.sessions = Sessions()
        self._listing: tuple[float, asyncio.Future[_Listing]] | None = None
        self._rows = asyncio.Semaphore(LIST_CONCURRENCY)
        self._status_cache: OrderedDict[str, tuple[datetime, JobStatus]] = OrderedDict()
        self._voice_cache: OrderedDict[str, str | None] = OrderedDict()
        # key -> peaks at PEAKS resolution; one computation per key at a time, two at most at once
        self._peaks_cache: OrderedDict[str, list[float]] = OrderedDict()
        self._peaks_pending: dict[str, asyncio.Future[list[float]]] = {}
        self._peaks_slots = asyncio.Semaphore(2)
        self._live_slots = asyncio.Semaphore(LIVE_STREAMS)

    @property
    def key(self) -> str | None:
        secret = self.settings.api_key
        return secret.get_secret_value() if secret is not None and secret.get_secret_value() else None

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/jobs/{job_id}", self.page)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
        r.add_get("/console/api/session", self.session)
        r.add_get("/console/api/jobs", self.list_jobs)
        r.add_post("/console/api/jobs", self.submit)
        r.add_get("/console/api/jobs/{job_id}", self.job)
        r.add_get("/console/api/jobs/{job_id}/peaks", self.peaks)
        r.add_get("/console/api/jobs/{job_id}/live.wav", self.live)
        r.add_get("/console/api/jobs/{job_id}/subtitles/{fmt}", self.subtitles)
        r.add_post("/console/api/jobs/{job_id}/cancel", self.cancel)
        r.add_get("/console/api/voices", self.list_voices)
        r.add_post("/console/api/voices", self.add_voice)
        r.add_delete("/console/api/voices/{name}", self.remove_voice)

    # -- auth and headers

    def authenticated(self, request: web.Request) -> bool:
        """A page's visitor: signed in (the session cookie), or no key is set. A bearer key is
        checked only on the JSON endpoints, where the door counts wrong ones (``_check_key``):
        a page that took one would be a way round the guess throttle."""
        return self.key is None or self.sessions.valid(request.cookies.get(COOKIE))

    async def _check_key(self, request: web.Request) -> None:
        """A JSON request without a valid session: its bearer key, if it sends one, is a guess the
        door counts (the same budget as the API's and the login form's)."""
        key = self.key
        if key is None or self.sessions.valid(request.cookies.get(COOKIE)):
            return
        if "Authorization" in request.headers:
            client = self.door.client(request)
            self.door.check_guesses(client)
            if _bearer_ok(request, key):
                self.door.right_key(client)
                return
            await self.door.wrong_key(client)
        raise ConsoleError(401, "sign in first (or send Authorization: Bearer <key>)", "unauthorized")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/console/api/"):
            if path != "/console/api/session":
                await self._check_key(request)
            if request.method not in ("GET", "HEAD") and request.headers.get("X-Console") != "1":
                # Forms from other sites cannot set this header (a CORS preflight would be needed).
                raise ConsoleError(403, "missing X-Console header", "forbidden")
        try:
            response = await handler(request)
        except web.HTTPException as e:
            self._headers(path, e)
            raise
        self._headers(path, response)
        return response

    @staticmethod
    def _headers(path: str, response: web.StreamResponse) -> None:
        if path.startswith("/v1/"):
            return
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        if path.startswith(("/console/api/", "/jobs/")) or path in ("/", "/login"):
            h.setdefault("Cache-Control", "no-store")

    async def page(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info.get("job_id")
        if job_id is not None and not keys.is_valid_job_id(job_id):
            raise web.HTTPNotFound(text="no such job")
        if not self.authenticated(request):
            return self._login_response(request, status=401)
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if self.key is None or self.authenticated(request):
            return _see_other("/")
        return self._login_response(request)

    def _login_response(self, request: web.Request, status: int = 200, error: str = "") -> web.Response:
        html = (STATIC_DIR / "login.html").read_text()
        message = f'<p class="error" role="alert">{error}</p>' if error else ""
        html = html.replace("<!--error-->", message)
        return web.Response(text=html, status=status, content_type="text/html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        key = self.key
        if key is None:
            return _see_other("/")
        client_addr = self.door.client(request)  # the proxy's client, not the proxy, when trusted
        try:
            self.door.check_guesses(client_addr)
        except OverBudget as e:
            log.warning("login from %r refused: too many wrong keys", client_addr)
            response = self._login_response(request, status=429, error="Too many wrong keys: try again later.")
            response.headers["Retry-After"] = e.retry_after
            return response
        form = await request.post()
        given = str(form.get("key", ""))
        if not hmac.compare_digest(given.encode(), key.encode()):
            await self.door.wrong_key(client_addr)
            return self._login_response(request, status=401, error="That key is not right.")
        self.door.right_key(client_addr)
        response = _see_other("/")
        response.set_cookie(
            COOKIE,
            self.sessions.create(),
            max_age=SESSION_S,
            httponly=True,
            samesite="Strict",
            secure=self._over_tls(request),
            path="/",
        )
        return response

    def _over_tls(self, request: web.Request) -> bool:
        """TLS to us, or to a proxy in front that says so (only when TTS_CONSOLE_TRUST_PROXY)."""
        if request.secure:
            return True
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return self.settings.console_trust_proxy and proto == "https"

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.revoke(request.cookies.get(COOKIE))  # the cookie is dead even if kept
        response = _see_other("/login" if self.key else "/")
        response.del_cookie(COOKIE, path="/")
        return response

    async def session(self, request: web.Request) -> web.Response:
        s = self.settings
        body: dict[str, Any] = {"auth_required": self.key is not None, "authenticated": self.authenticated(request)}
        if body["authenticated"]:  # nothing about the deployment for anonymous callers
            body["bucket"] = self.store.bucket
            body["limits"] = {
                "max_voice_bytes": s.max_voice_bytes,
                "max_voice_seconds": s.max_voice_seconds,
                "min_voice_seconds": s.min_voice_seconds,
                "max_text_chars": s.max_text_chars,
            }
        return web.json_response(body)

    # -- jobs

    def _job_id(self, request: web.Request) -> str:
        job_id = request.match_info["job_id"]
        if not keys.is_valid_job_id(job_id):
            raise ConsoleError(400, "job ids match [A-Za-z0-9._-]{1,128}", "invalid_job_id")
        return job_id

    async def list_jobs(self, request: web.Request) -> web.Response:
        """A page of recent jobs, newest first. Bounded whatever is asked: ``offset`` at most
        ``MAX_OFFSET``; one listing of the bucket shared by every request within ``LISTING_TTL_S``;
        with a ``state`` filter at most ``scan_bound`` statuses read (``total_exact`` false when
        it stopped early); a manifest read only for the rows on the page; all reads through
        ``LIST_CONCURRENCY`` slots shared by every request."""
        q = request.query
        state = q.get("state", "").upper() or None
        if state is not None and state not in JobState.__members__:
            raise ConsoleError(400, f"state must be one of {', '.join(JobState.__members__)}", "invalid_state")
        try:
            offset = max(0, int(q.get("offset", "0")))
            limit = min(PAGE_MAX, max(1, int(q.get("limit", "20"))))
        except ValueError:
            raise ConsoleError(400, "offset and limit are integers", "invalid_value") from None
        if offset > MAX_OFFSET:
            raise ConsoleError(400, f"offset is at most {MAX_OFFSET}; filter by state instead", "invalid_value")
        listing = await self._listed()
        want = offset + limit
        # Unfiltered, the page is a slice of the listing (a status gone since it is a row short,
        # not a shift of every later page); filtered, the matches among the first scan_bound.
        order = listing.order[offset:want] if state is None else listing.order[: scan_bound(want)]
        statuses = await self._gated([self._status(j, listing.status_lm.get(j)) for j in order])
        matched = [
            (job_id, st)
            for job_id, st in zip(order, statuses, strict=True)
            if st is not None and (state is None or st.state.value == state)
        ]
        page = matched if state is None else matched[offset:want]
        voices = await self._gated([self._manifest_voice(job_id) for job_id, _ in page])
        exact = state is None or len(order) == len(listing.order)
        return web.json_response(
            {
                "jobs": [_row(job_id, st, voice) for (job_id, st), voice in zip(page, voices, strict=True)],
                "offset": offset,
                "limit": limit,
                "total": len(listing.order) if state is None else len(matched),
                "total_exact": exact,
                "now": utcnow().isoformat(),
            }
        )

    async def _gated(self, calls: list[Coroutine[Any, Any, T]]) -> list[T]:
        async def one(call: Coroutine[Any, Any, T]) -> T:
            async with self._rows:
                return await call

        return await asyncio.gather(*(one(c) for c in calls))

    async def _listed(self) -> _Listing:
        """The bucket's jobs by creation, listed at most once per ``LISTING_TTL_S`` for everyone."""
        now = time.monotonic()
        current = self._listing
        if current is None or (current[1].done() and (now - current[0] > LISTING_TTL_S or _failed(current[1]))):
            # A listing still under way is waited for, never doubled (a slow LIST of a big bucket).
            current = self._listing = (now, asyncio.ensure_future(self._list()))
        return await asyncio.shield(current[1])

    async def _list(self) -> _Listing:
        statuses, *inboxes = await asyncio.gather(
            self.store.list_objects(keys.STATUS), *(self.store.list_objects(p) for p in keys.INBOXES.values())
        )
        created: dict[str, datetime] = {}
        status_lm: dict[str, datetime] = {}
        for o in statuses:
            job_id = keys.job_id_from_key(o.key, keys.STATUS)
            if job_id:
                status_lm[job_id] = o.last_modified
                created[job_id] = o.last_modified
        for o in (m for listing in inboxes for m in listing):
            job_id = keys.job_id_from_any_inbox(o.key)
            if job_id:
                created[job_id] = o.last_modified
        return _Listing(sorted(created, key=lambda j: (created[j], j), reverse=True), status_lm)

    async def _status(self, job_id: str, last_modified: datetime | None) -> JobStatus | None:
        if last_modified is not None:
            cached = self._status_cache.get(job_id)
            if cached and cached[0] == last_modified:
                return cached[1]
        try:
            status = await client.get_status(self.store, job_id)
        except (client.JobNotFound, ValidationError, ValueError):
            return None
        if last_modified is not None:
            self._remember(self._status_cache, job_id, (last_modified, status), 5000)
        return status

    async def _manifest(self, job_id: str) -> bytes:
        """The job's manifest from whichever inbox holds it (NotFound if neither)."""
        for key in keys.manifest_keys(job_id):
            try:
                return await self.store.get_bytes(key, max_bytes=self.settings.max_manifest_bytes)
            except NotFound:
                continue
        raise NotFound(keys.manifest_key(job_id))

    async def _manifest_voice(self, job_id: str) -> str | None:
        if job_id in self._voice_cache:
            return self._voice_cache[job_id]
        try:
            voice = manifest_voice(await self._manifest(job_id))
        except (NotFound, TooLarge):
            voice = None
        self._remember(self._voice_cache, job_id, voice, 5000)
        return voice

    @staticmethod
    def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    async def job(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        try:
            status = await client.get_status(self.store, job_id)
        except client.JobNotFound:
            raise ConsoleError(404, f"no job {job_id}", "job_not_found") from None
        result: JobResult | None = None
        if status.state is JobState.COMPLETED:
            try:
                result = await client.get_result(self.store, job_id)
            except client.JobNotFound:
                result = None
        body: dict[str, Any] = {
            "job_id": job_id,
            "status": json.loads(status.model_dump_json()),
            "result": None,
            "audio_url": None,
            "subtitles": [],
            "voice": await self._job_voice(job_id, result),
        }
        if result is not None:
            audio_key = self._output_key(job_id, result.audio.uri)
            if audio_key is not None:
                result.audio.url = await self.store.presign_get(audio_key, PRESIGN_S)
                body["audio_url"] = result.audio.url
            body["result"] = json.loads(result.model_dump_json())
            body["subtitles"] = [f.value for f, uri in result.subtitles.items() if self._output_key(job_id, uri)]
        return web.json_response(body)

    def _output_key(self, job_id: str, uri: str) -> str | None:
        """A key the result names, only if it is this job's own output (never another prefix)."""
        try:
            return keys.job_output_key(self.store.bucket, job_id, uri)
        except keys.UntrustedKey:
            log.warning("job %s: its result names %r, not one of its outputs: not served", job_id, uri)
            return None

    async def _job_voice(self, job_id: str, result: JobResult | None) -> dict[str, Any] | None:
        """The reference voice: its presigned audio and the transcript (used, or known so far)."""
        ref_text = result.ref_text if result else ""
        source = result.ref_text_source if result else None
        key: str | None = None
        name = await self._manifest_voice(job_id)
        if result is not None and not result.segments:
            key = result.voice_key
        elif name and "," not in name:
            if is_name(name):
                try:
                    found = await self.voices.get(name)
                except VoiceError:
                    found = None
                if found is not None:
                    key = found[0].audio_key
                    ref_text = ref_text or found[0].ref_text
            else:
                key = name
        if key is None:
            return {"name": name, "url": None, "ref_text": ref_text, "ref_text_source": source} if name else None
        try:
            key = keys.voice_key(key, self.store.bucket, self.settings.voice_prefixes)
        except keys.VoiceRefError:
            return {"name": name, "url": None, "ref_text": ref_text, "ref_text_source": source}
        url = await self.store.presign_get(key, PRESIGN_S) if await self.store.exists(key) else None
        return {"name": name or key, "key": key, "url": url, "ref_text": ref_text, "ref_text_source": source}

    async def _result_or_404(self, job_id: str) -> JobResult:
        try:
            return await client.get_result(self.store, job_id)
        except client.JobNotFound:
            raise ConsoleError(404, f"no result for {job_id} (yet)", "result_not_found") from None

    async def peaks(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        try:
            n = min(PEAKS, max(16, int(request.query.get("n", "800"))))
        except ValueError:
            raise ConsoleError(400, "n is an integer", "invalid_value") from None
        result = await self._result_or_404(job_id)
        key = self._output_key(job_id, result.audio.uri)
        if key is None:
            raise ConsoleError(404, "the result names no audio of this job", "audio_not_found")
        peaks = _downsample(await self._peaks_of(key), n)
        return web.json_response({"job_id": job_id, "duration_s": result.audio.duration_s, "peaks": peaks})

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The job's audio while it renders, from its durable chunks (``pipeline.web.stream``): a
        WAV of unknown length the page's player plays as it arrives; it ends with the job."""
        job_id = self._job_id(request)
        with self.door.stream(self.door.client(request)):
            if self._live_slots.locked():
                raise ConsoleError(429, f"more than {LIVE_STREAMS} live players at once", "rate_limit_exceeded")
            async with self._live_slots:
                return await self._live(request, job_id)

    async def _live(self, request: web.Request, job_id: str) -> web.StreamResponse:
        s = self.settings
        follower = ChunkFollower(
            self.store, job_id, poll_s=s.api_stream_poll_s, idle_s=s.api_wait_s, max_bytes=s.console_max_audio_bytes
        )
        wav = encoders.Wav()
        response = web.StreamResponse(headers={"Content-Type": "audio/wav", "Cache-Control": "no-store"})
        await begin(request, response)
        timeout_s = s.api_io_timeout_s
        try:
            await write_within(request, response, wav.finish(), timeout_s)  # the header: the player starts at once
            try:
                async for block in follower.blocks():
                    await write_within(request, response, await asyncio.to_thread(wav.encode, block), timeout_s)
            except StreamMismatch as e:
                # What the player has is not the job's audio (another attempt finished it): cut the
                # body short, as the speech API does, so the player reports an error rather than
                # ending as if it had played the job; the page shows the finished audio.
                log.warning("live audio of %s cut short: %s", job_id, e)
                if request.transport is not None:
                    request.transport.close()
                return response
            except (StreamFailed, StreamStalled, client.JobNotFound, keys.UntrustedKey) as e:
                log.info("live audio of %s ended early: %s", job_id, e)
            await write_within(request, response, None, timeout_s)
        except ClientGone:
            pass  # cut off: the player took nothing for TTS_API_IO_TIMEOUT_S
        return response

    async def _peaks_of(self, key: str) -> list[float]:
        """Peaks of one audio object, computed once (whatever ``n`` callers ask for) by one request
        at a time (the others wait for it), at most two objects at once, each read bounded."""
        cached = self._peaks_cache.get(key)
        if cached is not None:
            return cached
        pending = self._peaks_pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._compute_peaks(key))
            self._peaks_pending[key] = pending
            pending.add_done_callback(lambda _: self._peaks_pending.pop(key, None))
        return await asyncio.shield(pending)  # a caller that goes away does not cancel the others'

    async def _compute_peaks(self, key: str) -> list[float]:
        async with self._peaks_slots:
            try:
                data = await self.store.get_bytes(key, max_bytes=self.settings.console_max_audio_bytes)
            except NotFound:
                raise ConsoleError(404, "the job's audio is gone", "audio_not_found") from None
            except TooLarge:
                raise ConsoleError(413, "the audio is too long to draw", "too_large") from None
            try:
                peaks = await asyncio.to_thread(compute_peaks, data, PEAKS)
            except audio_utils.AudioDecodeError as e:
                raise ConsoleError(422, str(e), "audio_unreadable") from None
        self._remember(self._peaks_cache, key, peaks, 64)
        return peaks

    async def subtitles(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        fmt = request.match_info["fmt"]
        if fmt not in ("srt", "vtt"):
            raise ConsoleError(400, "subtitle formats are srt and vtt", "invalid_format")
        result = await self._result_or_404(job_id)
        uri = next((u for f, u in result.subtitles.items() if f.value == fmt), None)
        key = self._output_key(job_id, uri) if uri else None
        if key is None:
            raise ConsoleError(404, f"job {job_id} has no {fmt} subtitles", "subtitles_not_found")
        try:
            data = await self.store.get_bytes(key, max_bytes=64 * 1024 * 1024)
        except (NotFound, TooLarge):
            raise ConsoleError(404, f"job {job_id} has no {fmt} subtitles", "subtitles_not_found") from None
        content_type = "text/vtt" if fmt == "vtt" else "application/x-subrip"
        return web.Response(
            body=data,
            content_type=content_type,
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.{fmt}"'},
        )

    async def cancel(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        try:
            await client.get_status(self.store, job_id)  # JobNotFound for unknown jobs, as the CLI
        except client.JobNotFound:
            raise ConsoleError(404, f"no job {job_id}", "job_not_found") from None
        status = await request_cancel(self.store, job_id)
        return web.json_response(
            {"job_id": job_id, "requested": True, "status": json.loads(status.model_dump_json()) if status else None}
        )

    async def submit(self, request: web.Request) -> web.Response:
        form, clip = await self._read_form(request, file_field="clip")
        s = self.settings
        text = form.get("text", "")
        if not text.strip():
            raise ConsoleError(400, "text is empty", "invalid_value")
        if len(text) > s.max_text_chars:
            raise ConsoleError(400, f"text has {len(text)} characters; the limit is {s.max_text_chars}", "too_long")
        job_id = client.new_job_id()
        # The API's job and character budgets (a key holder could otherwise submit here at the
        # request rate), before any S3 call; the place is held until the job ends.
        ticket = self.door.job(self.door.client(request), len(text), job_id, interactive=False)
        try:
            return await self._submit(form, clip, job_id, ticket)
        finally:
            self.door.settle(ticket, self.store)

    async def _submit(self, form: _Form, clip: tuple[str, bytes] | None, job_id: str, ticket: Ticket) -> web.Response:
        if clip is not None:
            filename, data = clip
            voice = await self._upload_clip(filename, data)
        else:
            voice = form.get("voice", "").strip()
            if not await self._in_library(voice):
                raise ConsoleError(400, f"voice {voice!r} is not in the voice library", "voice_not_found")
        manifest = form_manifest(form, voice).model_copy(update={"requester": self.door.requester(ticket.client)})
        ticket.made = True
        try:
            status = await client.submit(self.store, job_id, manifest)
        except client.JobExists as e:  # a fresh random id taken: nothing was written
            raise ConsoleError(409, str(e), "job_exists") from None
        log.info("console: submitted %s (voice %s, %d chars)", job_id, voice, len(manifest.text or ""))
        return web.json_response({"job_id": job_id, "status": json.loads(status.model_dump_json())}, status=201)

    async def _in_library(self, voice: str) -> bool:
        try:
            return is_name(voice) and await self.voices.get(voice) is not None
        except VoiceError:  # a record the library did not write: not a usable voice
            return False

    async def _upload_clip(self, filename: str, data: bytes) -> str:
        ext = self._check_clip(filename, data)
        key = f"{client.VOICE_UPLOADS}{hashlib.sha256(data).hexdigest()[:20]}{ext}"
        if not await self.store.exists(key):
            await self.store.put_bytes(key, data, "application/octet-stream")
        return key

    def _check_clip(self, filename: str, data: bytes) -> str:
        s = self.settings
        ext = Path(filename).suffix.lower() or ".wav"
        if ext not in AUDIO_EXTS:
            raise ConsoleError(400, f"voice files are {', '.join(sorted(AUDIO_EXTS))}", "unsupported_audio")
        try:
            info = audio_utils.probe(data)
        except audio_utils.AudioDecodeError as e:
            raise ConsoleError(400, str(e), "audio_unreadable") from None
        if info.duration_s > s.max_voice_seconds:
            raise ConsoleError(
                400, f"the clip lasts {info.duration_s:.1f}s; the limit is {s.max_voice_seconds:g}s", "voice_too_long"
            )
        if info.duration_s < s.min_voice_seconds:
            raise ConsoleError(
                400, f"the clip lasts {info.duration_s:.2f}s; at least {s.min_voice_seconds:g}s", "voice_too_short"
            )
        return ext

    async def _read_form(self, request: web.Request, file_field: str) -> tuple[_Form, tuple[str, bytes] | None]:
        """Stream a multipart form within one budget: the file at most TTS_MAX_VOICE_BYTES, every
        part (file, fields, empty ones) counted against the whole body's budget and the field count,
        so a chunked body (no Content-Length to check first), unnamed parts or a flood of empty
        fields cost nothing more than a legitimate form. Refused (413/400) as soon as it is over,
        and certainly before anything reaches S3. (The app's ``client_max_size`` does not apply
        to a streamed multipart body.)"""
        limit = self.settings.max_voice_bytes
        budget = limit + FORM_OVERHEAD + self.settings.max_manifest_bytes
        if request.content_length is not None and request.content_length > budget:
            raise ConsoleError(413, f"upload over {limit} bytes", "too_large")
        if not request.content_type.startswith("multipart/form-data"):
            raise ConsoleError(400, "send multipart/form-data", "invalid_body")
        form = _Form()
        clip: tuple[str, bytes] | None = None
        fields = 0
        reader = await request.multipart()
        async for part in reader:
            fields += 1
            if fields > MAX_FORM_FIELDS:
                raise ConsoleError(413, f"more than {MAX_FORM_FIELDS} form fields", "too_many_fields")
            if not isinstance(part, BodyPartReader) or not part.name:
                raise ConsoleError(400, "every form part needs a name (no nested multipart)", "invalid_body")
            if part.filename is not None:
                if part.name != file_field or clip is not None:
                    raise ConsoleError(400, f"unexpected file field {part.name!r}", "invalid_body")
                data = await _read_limited(part, min(limit, budget), "too_large", f"upload over {limit} bytes")
                budget -= len(data)
                if data:
                    clip = (part.filename, data)
                continue
            value = await _read_limited(part, budget, "too_large", "form fields too large")
            budget -= len(value)
            form.add(part.name, value.decode("utf-8", errors="replace"))
        return form, clip

    # -- voices

    async def list_voices(self, request: web.Request) -> web.Response:
        records = await self.voices.list()
        out = []
        for r in records:
            own = r.owned_audio_key()  # a planted record's key is never presigned
            url = await self.store.presign_get(own, PRESIGN_S) if own is not None else None
            out.append({**json.loads(r.model_dump_json(exclude={"audio_key"})), "url": url})
        return web.json_response({"voices": out})

    async def add_voice(self, request: web.Request) -> web.Response:
        form, clip = await self._read_form(request, file_field="file")
        name = form.get("name", "").strip()
        if not is_name(name):
            raise ConsoleError(400, "voice names match [A-Za-z0-9][A-Za-z0-9._-]{0,63}", "invalid_name")
        if clip is None:
            raise ConsoleError(400, "choose an audio file", "invalid_body")
        filename, data = clip
        ext = self._check_clip(filename, data)
        try:
            record = await self.voices.add(name, data, ext, form.get("ref_text", ""))
        except VoiceError as e:
            raise ConsoleError(400, str(e), "invalid_voice") from None
        return web.json_response(json.loads(record.model_dump_json(exclude={"audio_key"})), status=201)

    async def remove_voice(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not is_name(name):
            raise ConsoleError(400, "voice names match [A-Za-z0-9][A-Za-z0-9._-]{0,63}", "invalid_name")
        if not await self.voices.remove(name):
            raise ConsoleError(404, f"no voice named {name}", "voice_not_found")
        return web.json_response({"removed": name})


@dataclass
class _Listing:
    order: list[str]  # job ids, newest first
    status_lm: dict[str, datetime]  # job id -> its status object's LastModified


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.cancelled() or future.exception() is not None


def scan_bound(want: int) -> int:
    """Statuses a filtered page may read: ten per row wanted, at least 200, at most 2,000."""
    return min(MAX_SCAN, max(200, 10 * want))


def _row(job_id: str, status: JobStatus, voice: str | None) -> dict[str, Any]:
    end = status.finished_at or utcnow()
    progress = status.progress
    return {
        "job_id": job_id,
        "state": status.state.value,
        "created_at": status.created_at.isoformat(),
        "updated_at": status.updated_at.isoformat(),
        "duration_s": round(max(0.0, (end - status.created_at).total_seconds()), 1),
        "voice": voice,
        "error_code": status.error.code if status.error else None,
        "progress": progress.model_dump(include={"chunks_done", "chunks_total"}) if progress else None,
    }


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def manifest_voice(raw: bytes) -> str | None:
    """The voice(s) a stored manifest names, for the job list; None for a manifest without one or
    one that cannot be read (any bytes: a manifest is whatever its uploader wrote)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested past the decoder's limit
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("voice"), str):
        return doc["voice"]
    segments = doc.get("segments")
    if isinstance(segments, list):
        # Only string names: a list or object there is unhashable, and not a voice anyway.
        names = {seg["voice"] for seg in segments if isinstance(seg, dict) and isinstance(seg.get("voice"), str)}
        return ", ".join(sorted(names)) or None
    return None


def form_manifest(form: _Form, voice: str) -> Manifest:
    """The job the console's form asks for (text checked by the caller), or ``ConsoleError`` (400)."""
    fields: dict[str, Any] = {"text": form.get("text"), "voice": voice}
    ref_text = form.get("ref_text").strip()
    if ref_text:
        fields["ref_text"] = ref_text
    if form.get("speed"):
        try:
            speed = float(form["speed"])
        except ValueError:
            speed = math.nan
        if not math.isfinite(speed):  # "nan" and "inf" are floats to Python, not speeds
            raise ConsoleError(400, "speed: a number from 0.25 to 4", "invalid_value")
        fields["speed"] = speed
    if form.get("output_format"):
        fields["output_format"] = form["output_format"]
    subs = [v for v in form.getall("subtitles") if v]
    if subs:
        fields["subtitles"] = subs
    try:
        return Manifest.model_validate_json(json.dumps(fields))  # JSON mode, as a manifest is read
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "job"
        raise ConsoleError(400, f"{where}: {first['msg']}", "invalid_value") from None


class _Form:
    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def get(self, name: str, default: str = "") -> str:
        return next((v for k, v in self._items if k == name), default)

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def __getitem__(self, name: str) -> str:
        return self.get(name)


async def _read_limited(part: BodyPartReader, limit: int, code: str, message: str) -> bytes:
    buf = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        buf.extend(chunk)
        if len(buf) > limit:
            raise ConsoleError(413, message, code)
    return bytes(buf)


def compute_peaks(data: bytes, n: int) -> list[float]:
    """``n`` peak amplitudes (0..1) across the audio, read block by block (bounded memory)."""
    import io

    import numpy as np
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as e:
        raise audio_utils.AudioDecodeError(f"not a readable audio file ({e})") from None
    with f:
        frames = f.frames if f.frames > 0 else 0
        if frames == 0:
            return [0.0] * n
        size = max(1, math.ceil(frames / n))
        peaks: list[float] = []
        for block in f.blocks(blocksize=size, dtype="float32", always_2d=True):
            peaks.append(float(np.max(np.abs(block))) if block.size else 0.0)
    peaks = [min(1.0, round(p, 4)) for p in peaks[:n]]
    return peaks + [0.0] * (n - len(peaks))


def _downsample(peaks: list[float], n: int) -> list[float]:
    """``n`` peaks from a longer list: the maximum of each of ``n`` equal spans."""
    if n >= len(peaks):
        return peaks
    step = len(peaks) / n
    return [max(peaks[int(i * step) : max(int(i * step) + 1, int((i + 1) * step))]) for i in range(n)]
