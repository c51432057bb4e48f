"""``tts-pipeline console``: one aiohttp application serving the speech API and the console.

Middlewares, outermost first: ``Guard`` (host allow-list, cross-site requests, JSON bodies), the
door's per-client request budget (``pipeline.web.door``), the API's errors and key check
(``/v1``), the console's auth and headers. The server is a client of
the bucket, never of a model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pipeline.cloud.consumer import Queue
from pipeline.cloud.store import Store
from pipeline.config import Settings
from pipeline.web.api import SpeechApi
from pipeline.web.console import LIVE_STREAMS, Console
from pipeline.web.door import Door, OverBudget
from pipeline.web.guard import Guard, allowed_hosts, is_loopback, refusal_body

log = logging.getLogger(__name__)


class OpenWithoutKey(RuntimeError):
    """Binding beyond loopback with no TTS_API_KEY, and TTS_CONSOLE_ALLOW_OPEN not set."""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


METERED = ("/v1/", "/console/api/", "/login")


def budget_middleware(door: Door) -> Callable[..., Any]:
    """Every metered request takes one from its client's request budget; any handler's
    ``OverBudget`` (streams, jobs, characters, wrong keys) becomes the same 429."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        metered = request.path.startswith(METERED)
        try:
            if metered:
                door.admit(door.client(request))
            return await handler(request)
        except OverBudget as e:
            door.refused(door.client(request), f"{request.method} {request.path}: {e.message}")
            body = refusal_body(request, e.message, e.code)
            return web.Response(
                text=body, status=429, content_type="application/json", headers={"Retry-After": e.retry_after}
            )

    return middleware


def make_app(settings: Settings, store: Store, bound: str = "127.0.0.1", lane: Queue | None = None) -> web.Application:
    guard = Guard(allowed_hosts(settings.console_allowed_hosts, bound))
    door = Door(settings)
    api = SpeechApi(settings, store, door, lane)
    page = Console(settings, store, door)
    # client_max_size bounds every body read whole; the console's uploads stream (multipart) and
    # are held to their budget part by part (Console._read_form).
    middlewares = [guard.middleware, budget_middleware(door), api.errors, page.middleware]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_manifest_bytes)
    api.routes(app)
    page.routes(app)
    app.router.add_get("/healthz", healthz)
    return app


def check_binding(settings: Settings, host: str) -> None:
    """Anyone who can reach the port can read every job and clone every voice unless a key is set."""
    keyed = settings.api_key is not None and bool(settings.api_key.get_secret_value())
    if keyed or is_loopback(host):
        return
    if not settings.console_allow_open:
        raise OpenWithoutKey(
            f"refusing to serve on {host} without TTS_API_KEY: anyone who can reach it could read every "
            "job and clone every voice. Set TTS_API_KEY, bind 127.0.0.1, or set TTS_CONSOLE_ALLOW_OPEN=1 "
            "if something in front of it authenticates."
        )
    log.warning("SERVING ON %s WITHOUT TTS_API_KEY (TTS_CONSOLE_ALLOW_OPEN): no authentication here", host)


async def serve(settings: Settings, host: str, port: int, ready: Callable[[str], Any] | None = None) -> None:
    """Until cancelled (SIGINT/SIGTERM end ``asyncio.run``)."""
    from pipeline.cloud.store import open_store

    check_binding(settings, host)
    # The S3 pool outnumbers what the handlers can hold at once (each audio answer holds at most
    # one connection, and only while a ranged GET is read: never while a client reads), so no
    # client can take the pool.
    pool = settings.api_max_concurrent + LIVE_STREAMS + 16
    async with (
        open_store(settings, "console", max_pool=pool) as store,
        Queue.open(settings.interactive_queue, resolve=False, calls=settings.calls("console")) as lane,
    ):
        # handler_cancellation: a client that disconnects stops its handler (a speech request's
        # polling), instead of keeping it polling S3 for TTS_API_WAIT_S.
        runner = web.AppRunner(make_app(settings, store, host, lane), access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        url = f"http://{host}:{port}"
        log.info("console listening on %s (API key %s)", url, "required" if settings.api_key else "not set")
        if ready:
            ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
