"""The answer's own edges (issue 27, found in review): the end of an answer has the write deadline
too, and an error after an answer began cuts it short instead of writing a second answer into its
body. A real aiohttp server and raw sockets: what the client receives is what is checked."""

from __future__ import annotations

import asyncio
import socket
import types
from typing import Any

from aiohttp import web

from pipeline.web.api import SpeechApi
from pipeline.web.stream import ClientGone, begin, write_within


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def _read_all(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def test_an_error_after_the_answer_began_cuts_it_short_without_a_second_answer() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await begin(request, response)
        await response.write(b"RIFF-the-first-bytes")
        raise RuntimeError("the store went away mid-answer")

    errors = types.MethodType(SpeechApi.errors, object())  # the middleware needs nothing of the API here
    app = web.Application(middlewares=[errors])
    app.router.add_get("/audio", handler)
    runner, port = await _serve(app)
    try:
        raw = await asyncio.to_thread(_read_all, port, b"GET /audio HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await runner.cleanup()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"RIFF-the-first-bytes" in raw
    assert raw.count(b"HTTP/1.1") == 1, raw  # no 500 written into the audio
    assert not raw.endswith(b"0\r\n\r\n")  # and not ended cleanly: the client sees a cut answer


async def test_the_end_of_an_answer_has_the_write_deadline_too() -> None:
    """``write_eof`` waits for the client to take what is buffered: a client that reads nothing
    would hold the handler there for ever. Past the deadline: ``ClientGone`` and the connection
    closed."""

    class NeverTaken:
        async def write_eof(self) -> None:
            await asyncio.Event().wait()  # the client never takes the last bytes

    closed: list[bool] = []

    class Transport:
        def close(self) -> None:
            closed.append(True)

    request: Any = types.SimpleNamespace(method="POST", path="/v1/audio/speech", transport=Transport())
    response = NeverTaken()
    try:
        async with asyncio.timeout(60):  # a regression fails here, not at the suite's timeout
            await write_within(request, response, None, 0.05)  # type: ignore[arg-type]
    except ClientGone as e:
        assert e.response is response
    else:
        raise AssertionError("write_eof past its deadline was not cut off")
    assert closed == [True]
