"""An OpenAI-compatible speech API in front of the S3 contract (``tts-pipeline console``).

    POST /v1/audio/speech      {model, input, voice, response_format?, speed?} -> audio bytes
    GET  /v1/audio/voices      the voice library (also /v1/voices)
    GET  /v1/models            what ``model`` may name
    GET  /healthz

An ``Idempotency-Key`` header makes retries safe: the same key always means the same job (OpenAI's
client retries a 504 twice by default; without a key each retry would start another job).

Tools written for OpenAI's ``client.audio.speech.create`` (Open WebUI, SillyTavern, Home Assistant,
scripts) work unchanged. The server is a client of the pipeline like any other: a request becomes a
manifest in ``inbox/`` (the one way jobs enter the system), the server waits for the job's status
(bounded by ``TTS_API_WAIT_S``; past it, a 504 that carries the job id so the caller can fetch the
result later with ``tts-pipeline result``), then streams the audio back. It never loads a model.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so OpenAI's
clients raise their usual exceptions. With ``TTS_API_KEY`` set every ``/v1`` request needs
``Authorization: Bearer <key>`` (the console's session cookie is not enough: a request a page can
make on its own never carries the key); the server binds to 127.0.0.1 unless told otherwise, and
``pipeline.web.guard`` has refused foreign hosts, cross-site writes and non-JSON bodies before a
handler runs.

Bounded: at most ``TTS_API_MAX_CONCURRENT`` speech requests at once (more get 429 with
``Retry-After``); a client that disconnects stops its request's polling (the job itself goes on and
completes: fetch it by the ``X-Job-Id`` it was given, or retry with the same ``Idempotency-Key``);
the audio is streamed from S3 as stored (mp3/wav/flac) or transcoded from at most
``TTS_CONSOLE_MAX_AUDIO_BYTES`` (opus/pcm), and only ever from the job's own outputs
(``keys.job_output_key``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, NoReturn

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.client import jobs as client
from pipeline.cloud.aws import describe, is_transient
from pipeline.cloud.consumer import Queue
from pipeline.cloud.events import s3_event
from pipeline.cloud.store import NotFound, Store, TooLarge
from pipeline.config import Settings
from pipeline.jobs import keys
from pipeline.jobs.contract import JobResult, JobState, JobStatus, Manifest, OutputFormat, Priority
from pipeline.jobs.state import request_cancel
from pipeline.tts.voices import VoiceError, VoiceLibrary, is_name
from pipeline.web import encoders
from pipeline.web.door import Door, OverBudget, Ticket
from pipeline.web.stream import (
    ChunkFollower,
    ClientGone,
    StreamFailed,
    StreamStalled,
    begin,
    prepared,
    write_within,
)

log = logging.getLogger(__name__)

SENT_BY = "tts-console"  # the principal and sender the API's own messages name
LANE_RETRY_S = 60.0  # an interactive queue that could not be found is looked up again this much later
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "f5-tts")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


UNSUPPORTED = {"aac": "no AAC encoder is available (libsndfile has none); use mp3, opus, flac, wav or pcm"}
FORMATS = (*encoders.STREAMED, "flac")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI adds fields over time (instructions, stream_format)

    model: str = Field(min_length=1)
    input: str = Field(min_length=1)
    voice: str = Field(min_length=1)
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    # Ours (OpenAI's client sends it with extra_body): a client that goes away cancels the job.
    # By default it does not: the job completes and stays fetchable by its X-Job-Id.
    cancel_on_disconnect: bool = False


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = "invalid_request_error" if status < 500 else "server_error"

    def response(self, **extra: str) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status, headers=extra or None)


class JobTimeout(ApiError):
    def __init__(self, job_id: str, waited_s: float) -> None:
        super().__init__(
            504,
            f"job {job_id} is still running after {waited_s:g}s; fetch it later with "
            f"`tts-pipeline result {job_id}` (or results/{job_id}.json)",
            code="job_timeout",
        )
        self.job_id = job_id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SpeechApi:
    def __init__(self, settings: Settings, store: Store, door: Door, lane: Queue | None = None) -> None:
        self.settings = settings
        self.store = store
        self.door = door
        self.lane = lane  # the interactive queue, sent to directly (None: the S3 notification only)
        self.voices = VoiceLibrary(store)
        self.slots = asyncio.Semaphore(settings.api_max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lane_missing_until = 0.0  # the interactive queue was not found: not looked up again before

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_get("/v1/audio/voices", self.list_voices)
        app.router.add_get("/v1/voices", self.list_voices)
        app.router.add_get("/v1/models", self.models)

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/v1/"):
                await self._authorise(request)
            return await handler(request)
        except ClientGone as e:  # cut off mid-answer: nothing more to send it
            return e.response
        except OverBudget:  # the door's 429 (pipeline.web.app)
            raise
        except JobTimeout as e:
            return e.response(**{"X-Job-Id": e.job_id})
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if not request.path.startswith("/v1/"):
                raise
            return ApiError(e.status, e.reason or "error").response()
        except Exception as e:
            begun = prepared(request)
            if begun is not None:  # mid-answer: no second answer on this connection, cut it short
                log.warning("%s %s failed mid-answer (%s): the body is cut short", request.method, request.path, e)
                if request.transport is not None:
                    request.transport.close()
                return begun
            # What the handlers do not answer themselves (S3 unreachable past the retries while a
            # voice or a job is looked up) still gets OpenAI's error shape, never aiohttp's bare
            # 500 page: a 503 the client's own retries handle, or a 500 that points at the log.
            if not request.path.startswith("/v1/"):
                raise
            if is_transient(e):
                log.warning("%s %s: the job store is unreachable: %s", request.method, request.path, describe(e))
                return ApiError(503, "the job store is unreachable; try again", code="service_unavailable").response(
                    **{"Retry-After": "5"}
                )
            log.exception("%s %s failed", request.method, request.path)
            return ApiError(500, "internal error; the console's log has the details", code="internal_error").response()

    async def _authorise(self, request: web.Request) -> None:
        """The bearer key, when one is set. A wrong one counts against the address's guesses
        (``Door``): past them the address is refused 429 before its key is even compared."""
        secret = self.settings.api_key
        if secret is None or not secret.get_secret_value():
            return
        client = self.door.client(request)
        self.door.check_guesses(client)
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        expected = secret.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            await self.door.wrong_key(client)
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        self.door.right_key(client)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """The body is read and checked before anything is held for it (a slow body holds no slot);
        then, in order and before any S3 call: the client's stream budget, the server's
        concurrency bound, the client's job and character budgets."""
        client = self.door.client(request)
        with self.door.body(client):
            req, manifest = await self._speech_request(request)
        with self.door.stream(client):
            if self.slots.locked():
                raise ApiError(
                    429,
                    f"more than {self.settings.api_max_concurrent} speech requests at once; retry shortly",
                    code="rate_limit_exceeded",
                )
            async with self.slots:
                interactive = manifest.priority is Priority.interactive
                ticket = self.door.job(client, len(req.input), self._job_id_for(request), interactive)
                update: dict[str, object] = {"requester": self.door.requester(client)}  # the worker's fair share
                if interactive and not ticket.interactive:  # the client's interactive share is in use
                    update["priority"] = Priority.bulk
                manifest = manifest.model_copy(update=update)
                try:
                    return await self._speech(request, req, manifest, ticket)
                finally:
                    self.door.settle(ticket, self.store)

    async def _speech(
        self, request: web.Request, req: SpeechRequest, manifest: Manifest, ticket: Ticket
    ) -> web.StreamResponse:
        await self._check_voice(req.voice)
        streamed = req.response_format in encoders.STREAMED
        job_id = ticket.job_id
        ticket.made = True  # from here the job may exist (a hang-up mid-write must not free its place)
        await self._submit(request, job_id, manifest)
        log.info(
            "speech request: job %s (voice %r, %d chars, %s lane)", job_id, req.voice, len(req.input), manifest.priority
        )
        try:
            if streamed:
                return await self._stream(request, req, job_id, ticket)
            return await self._whole(request, job_id, ticket)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler). The job goes on unless asked.
            if req.cancel_on_disconnect:
                log.info("job %s: its client went away: cancelling it (cancel_on_disconnect)", job_id)
                self._later(self._cancel(job_id))
            else:
                log.info("job %s: its client went away: the job goes on (fetch it by its id)", job_id)
            raise

    async def _stream(
        self, request: web.Request, req: SpeechRequest, job_id: str, ticket: Ticket
    ) -> web.StreamResponse:
        """Audio as the job renders (``pipeline.web.stream``), encoded as it arrives. Until the
        first audio nothing is sent, so a job that fails first still gets an HTTP error; after it,
        a failure ends an SSE stream with an ``error`` event and cuts an audio stream short (the
        connection closes without the last chunk: clients report an incomplete body)."""
        s = self.settings
        follower = ChunkFollower(
            self.store, job_id, poll_s=s.api_stream_poll_s, idle_s=s.api_wait_s, max_bytes=s.console_max_audio_bytes
        )
        out = _Out(request, job_id, req.response_format, req.stream_format == "sse", s.api_io_timeout_s)
        try:
            async for block in follower.blocks():  # encoding is CPU work: off the event loop
                await out.send(await asyncio.to_thread(out.encoder.encode, block))
            await out.send(await asyncio.to_thread(out.encoder.finish), final=True)
            await out.done(len(req.input))
            return out.response  # type: ignore[return-value]
        except StreamStalled:
            if out.response is None:
                raise JobTimeout(job_id, s.api_wait_s) from None
            return await out.fail("job_timeout", f"no audio from job {job_id} for {s.api_wait_s:g}s")
        except StreamFailed as e:
            error = ApiError(e.http, str(e), code=e.code) if e.code else _job_error(job_id, e.status)
            if out.response is None:
                raise error from None
            return await out.fail(error.code or "job_failed", error.message)
        finally:
            if follower.status is not None and follower.status.state.terminal:
                self.door.ended(ticket)

    async def _whole(self, request: web.Request, job_id: str, ticket: Ticket) -> web.StreamResponse:
        """FLAC: the worker's file once the job is COMPLETED, streamed from S3 as stored."""
        status = await client.wait(self.store, job_id, timeout_s=self.settings.api_wait_s, poll_s=0.25)
        if status.state.terminal:
            self.door.ended(ticket)
        else:
            raise JobTimeout(job_id, self.settings.api_wait_s)
        if status.state is not JobState.COMPLETED:
            raise _job_error(job_id, status)
        result = await client.get_result(self.store, job_id)
        return await self._audio(request, job_id, result)

    async def _cancel(self, job_id: str) -> None:
        try:
            await request_cancel(self.store, job_id)
            log.info("job %s: cancelled (its client went away and asked for that)", job_id)
        except Exception as e:  # the job is unaffected: it completes and stays fetchable
            log.warning("job %s: could not cancel after the client went away: %s", job_id, e)

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` past the request's own cancellation."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audio(self, request: web.Request, job_id: str, result: JobResult) -> web.StreamResponse:
        """The job's audio as stored, a ranged GET at a time (``Store.ranges``): a client that reads
        slowly holds one block and no S3 connection; one that reads nothing is cut off after
        TTS_API_IO_TIMEOUT_S."""
        try:
            key = keys.job_output_key(self.store.bucket, job_id, result.audio.uri)
        except keys.UntrustedKey as e:
            log.warning("job %s: %s: not served", job_id, e)
            raise ApiError(502, f"job {job_id}'s result names no audio of its own", code="bad_result") from None
        limit = self.settings.console_max_audio_bytes
        try:
            size = await self.store.size(key, max_bytes=limit)
        except NotFound:
            raise ApiError(502, f"job {job_id}'s audio is gone", code="audio_not_found") from None
        except TooLarge as e:
            raise ApiError(
                413,
                f"job {job_id}'s audio is {e.size} bytes, over {limit} (TTS_CONSOLE_MAX_AUDIO_BYTES)",
                code="too_large",
            ) from None
        response = web.StreamResponse(headers={"X-Job-Id": job_id, "Content-Type": encoders.CONTENT_TYPES["flac"]})
        response.content_length = size
        await begin(request, response)
        try:
            async for block in self.store.ranges(key, size):
                await write_within(request, response, block, self.settings.api_io_timeout_s)
        except NotFound:  # removed after the answer began: cut it short (the body is incomplete)
            log.warning("job %s: its audio went away while it was sent", job_id)
            if request.transport is not None:
                request.transport.close()
            return response
        await write_within(request, response, None, self.settings.api_io_timeout_s)
        return response

    @staticmethod
    def _job_id_for(request: web.Request) -> str:
        """A fresh job id; or, for a request carrying an ``Idempotency-Key``, the key's job."""
        idem = request.headers.get("Idempotency-Key", "").strip()
        return f"api-{hashlib.sha256(idem.encode()).hexdigest()[:32]}" if idem else client.new_job_id()

    async def _submit(self, request: web.Request, job_id: str, manifest: Manifest) -> None:
        """A new job; or, for a request carrying an ``Idempotency-Key`` seen before (a client retrying
        after a 504, or racing the first request), the job that key started, so retries wait on one
        job instead of starting more. ``client.submit`` refuses an id whose manifest or status
        exists and creates the manifest only if there is none, so a retry never starts that job
        again (not even once its manifest has expired: its status stays)."""
        try:
            await client.submit(self.store, job_id, manifest)
        except client.JobExists:  # the same request again (earlier, or at the same time)
            if not request.headers.get("Idempotency-Key", "").strip():
                raise
            log.info("idempotency key seen before: waiting on job %s", job_id)
            return
        if self.lane is not None and manifest.priority is Priority.interactive:
            self._later(self._announce(job_id, manifest))  # the request's answer does not wait on SQS

    async def _announce(self, job_id: str, manifest: Manifest) -> None:
        """Put the interactive job's message on its queue now, not when S3's notification arrives
        (on AWS "typically in seconds, sometimes a minute or longer"): someone is waiting. The
        notification's message follows as a duplicate the worker drops (the claim decides). A
        failed send costs only that wait: the notification is still on its way."""
        assert self.lane is not None
        if time.monotonic() < self._lane_missing_until:
            return
        key = keys.manifest_key(job_id, manifest.priority)
        try:
            if self.lane.url is None:
                try:
                    await self.lane.locate()
                except Exception:
                    self._lane_missing_until = time.monotonic() + LANE_RETRY_S  # not on every request
                    raise
            await self.lane.send(s3_event(self.store.bucket, key, principal=SENT_BY), {"tts-sent-by": SENT_BY})
        except Exception as e:
            log.warning("job %s: could not send its message (%s): the S3 notification will", job_id, describe(e))

    async def _speech_request(self, request: web.Request) -> tuple[SpeechRequest, Manifest]:
        if request.content_length is not None and request.content_length > self.settings.max_manifest_bytes:
            raise ApiError(413, f"request body over {self.settings.max_manifest_bytes} bytes", code="too_large")
        try:
            async with asyncio.timeout(self.settings.api_io_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise ApiError(408, "the request body did not arrive in time", code="request_timeout") from None
        s = self.settings
        return parse_speech_request(raw, s.max_text_chars, interactive_chars=s.api_interactive_chars)

    async def _check_voice(self, voice: str) -> None:
        """Only library voices, named exactly as the worker names them: never a key or a path."""
        try:
            known = is_name(voice) and await self.voices.get(voice) is not None
        except VoiceError:  # a record the library did not write
            known = False
        if not known:
            raise ApiError(
                400,
                f"voice {voice!r} is not in the voice library (GET /v1/audio/voices lists it)",
                param="voice",
                code="voice_not_found",
            )

    async def list_voices(self, request: web.Request) -> web.Response:
        records = await self.voices.list()
        data = [
            {"id": r.name, "name": r.name, "duration_s": r.duration_s, "has_transcript": bool(r.ref_text)}
            for r in records
        ]
        return web.json_response({"object": "list", "data": data, "voices": [r.name for r in records]})

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "tts-pipeline"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})


def parse_speech_request(
    raw: bytes, max_text_chars: int, *, interactive_chars: int | None = None
) -> tuple[SpeechRequest, Manifest]:
    """A speech request body and the job it asks for, or ``ApiError`` (400): never another
    exception, whatever the bytes (a 500 for a bad body would say the server is at fault). Input
    over ``interactive_chars`` is a bulk job: the interactive lane is for short requests."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)  # JSON is UTF-8 (RFC 8259)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate from "\ud800" is no text
    except RecursionError:
        raise ApiError(400, "request body is JSON nested too deeply", code="invalid_json") from None
    except ValueError:  # undecodable bytes, JSONDecodeError, a lone surrogate, an over-long integer
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        req = SpeechRequest.model_validate(body)
    except ValidationError as e:
        raise _invalid(e) from None
    if req.response_format in UNSUPPORTED:
        raise ApiError(400, UNSUPPORTED[req.response_format], param="response_format", code="unsupported_format")
    if req.stream_format == "sse" and req.response_format not in encoders.STREAMED:
        raise ApiError(
            400,
            f"stream_format sse streams {', '.join(encoders.STREAMED)}",
            param="response_format",
            code="unsupported_format",
        )
    if req.response_format not in FORMATS:
        supported = ", ".join(FORMATS)
        raise ApiError(
            400, f"response_format must be one of {supported}", param="response_format", code="invalid_value"
        )
    if len(req.input) > max_text_chars:
        raise ApiError(400, f"input has {len(req.input)} characters; the limit is {max_text_chars}", param="input")
    streamed = req.response_format in encoders.STREAMED
    try:
        manifest = Manifest(
            text=req.input,
            voice=req.voice,
            speed=req.speed,
            # Streamed formats are encoded here from the worker's samples; FLAC is the worker's file.
            output_format=OutputFormat.wav if streamed else OutputFormat(req.response_format),
            # OpenAI's request names no language: text with CJK characters is detected sentence by
            # sentence (Chinese, mixed with English, is the model's other language); the rest is English.
            language="auto" if _CJK.search(req.input) else "eng",
            # Someone is waiting: the interactive lane (received first, chunks lead the batcher,
            # a short first chunk), for short input; a long one must not lead everyone's batches.
            priority=Priority.bulk
            if interactive_chars is not None and len(req.input) > interactive_chars
            else Priority.interactive,
        )
    except ValidationError as e:  # what a job allows beyond the request's own rules (blank text, a long voice)
        raise _invalid(e, {"text": "input"}) from None
    return req, manifest


def _invalid(e: ValidationError, renamed: dict[str, str] | None = None) -> ApiError:
    first = e.errors(include_url=False)[0]
    loc = [str((renamed or {}).get(str(p), p)) for p in first["loc"]]
    param = ".".join(loc) or None
    return ApiError(400, f"{param or 'request body'}: {first['msg']}", param=param, code="invalid_value")


def _no_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity; JSON has neither (a NaN speed would pass no check).
    raise ValueError(f"{name} is not a JSON number")


def _job_error(job_id: str, status: JobStatus | None) -> ApiError:
    """A job that ended without audio, in OpenAI's error shape: 400 for what the request did."""
    if status is None:
        return ApiError(500, f"job {job_id} ended without audio", code="job_failed")
    err = status.error
    message = f"job {job_id} ended {status.state}" + (f": {err.code}: {err.message}" if err else "")
    code = err.code.lower() if err else status.state.lower()
    status_code = 400 if err and err.code.startswith(("TEXT", "INVALID", "JOB_TOO", "UNSUPPORTED")) else 500
    return ApiError(status_code, message, code=code)


class _Out:
    """One streamed answer: headers go out with the first bytes; SSE wraps them in OpenAI's events."""

    def __init__(self, request: web.Request, job_id: str, fmt: str, sse: bool, io_timeout_s: float) -> None:
        self.request = request
        self.io_timeout_s = io_timeout_s
        self.job_id = job_id
        self.sse = sse
        self.encoder = encoders.for_format(fmt)
        self.content_type = "text/event-stream" if sse else encoders.CONTENT_TYPES[fmt]
        self.response: web.StreamResponse | None = None

    async def send(self, data: bytes, *, final: bool = False) -> None:
        if not data and not final:
            return
        if self.response is None:
            headers = {"X-Job-Id": self.job_id, "Content-Type": self.content_type, "Cache-Control": "no-store"}
            self.response = web.StreamResponse(headers=headers)
            await begin(self.request, self.response)
        if not data:
            return
        if self.sse:
            await self._event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        else:
            await write_within(self.request, self.response, data, self.io_timeout_s)

    async def done(self, input_chars: int) -> None:
        if self.sse:
            # No tokenizer stands behind this model: input_tokens counts the input's characters.
            usage = {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars}
            await self._event({"type": "speech.audio.done", "usage": usage})
        assert self.response is not None
        await write_within(self.request, self.response, None, self.io_timeout_s)

    async def fail(self, code: str, message: str) -> web.StreamResponse:
        assert self.response is not None
        if not self.sse:
            # Audio already sent cannot be taken back: close without the final chunk, so the client
            # sees an incomplete body rather than a short file that looks whole.
            log.warning("job %s: stream cut short: %s", self.job_id, message)
            if self.request.transport is not None:
                self.request.transport.close()
            return self.response
        await self._event({"type": "error", "error": {"message": message, "type": "server_error", "code": code}})
        await write_within(self.request, self.response, None, self.io_timeout_s)
        return self.response

    async def _event(self, event: dict[str, Any]) -> None:
        assert self.response is not None
        await write_within(self.request, self.response, f"data: {json.dumps(event)}\n\n".encode(), self.io_timeout_s)
