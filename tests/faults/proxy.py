"""A fault-injecting HTTP proxy in front of LocalStack, run as its own process.

    python -m tests.faults.proxy --upstream http://127.0.0.1:4566 --port 4599 --rate 0.2 --stats f.json

Workers point ``AWS_ENDPOINT_URL`` at it and see real network-level failures, with nothing in
the worker changed for the test. A fraction ``--rate`` of requests fail, in one of four ways:

- "dropped" (40 % of faults): a 503 in the protocol's own error format; the request never
  reaches LocalStack;
- "reset" (20 %): the connection is aborted (TCP reset) before the request reaches LocalStack;
- "lost" (20 %): LocalStack performs it, the client gets a 503 anyway: the nasty at-least-once
  case, where a retry repeats an operation that already happened;
- "truncated" (20 %): LocalStack performs it, the client gets the status line, headers with the
  full Content-Length, half the body, then the connection is aborted.

Counts per kind and per operation go to ``--stats`` (JSON), rewritten after every fault.
``PUT /_fault/rate`` with a number as the body changes the rate while running (an outage: 1.0).
``PUT /_fault/rules`` with a JSON list ``[{"match": REGEX, "kind": KIND, "times": N}]`` adds
targeted faults: a request whose ``"METHOD /path"`` matches fails with that kind, N times (-1:
always); the first matching rule with times left applies, before the random faults.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


def _operation(request: web.Request) -> str:
    target = request.headers.get("X-Amz-Target", "")
    if target:
        return target.split(".")[-1]  # SQS JSON protocol: AmazonSQS.ReceiveMessage
    return f"S3 {request.method}"


def _error(request: web.Request) -> web.Response:
    if request.headers.get("X-Amz-Target", "").startswith("AmazonSQS"):
        body = json.dumps({"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "injected fault"})
        return web.Response(status=503, body=body.encode(), content_type="application/x-amz-json-1.0")
    body = "<?xml version='1.0'?><Error><Code>ServiceUnavailable</Code><Message>injected fault</Message></Error>"
    return web.Response(status=503, body=body.encode(), content_type="application/xml")


KINDS = {"dropped": 0.4, "reset": 0.2, "lost": 0.2, "truncated": 0.2}
_BEFORE = {"dropped", "reset"}  # these never reach LocalStack


def _abort(request: web.Request) -> web.Response:
    """Close the connection without an answer (the client sees a reset)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)  # never written: the transport is gone


async def _truncated(request: web.Request, status: int, headers: dict[str, str], payload: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(len(payload))})
    await resp.prepare(request)
    await resp.write(payload[: len(payload) // 2])
    if request.transport is not None:
        request.transport.abort()
    return resp


def make_app(upstream: str, rate: float, stats_path: Path | None, seed: int) -> web.Application:
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    current = {"rate": rate}
    rules: list[dict[str, Any]] = []

    def pick(request: web.Request) -> str | None:
        target = f"{request.method} {request.path}"
        for rule in rules:
            if rule["times"] != 0 and re.search(rule["match"], target):
                rule["times"] -= 1 if rule["times"] > 0 else 0
                return str(rule["kind"])
        if request.path.startswith("/_localstack") or rng.random() >= current["rate"]:
            return None
        return rng.choices(list(KINDS), weights=list(KINDS.values()))[0]

    def save() -> None:
        if stats_path:
            stats_path.write_text(json.dumps(dict(stats), indent=1, sort_keys=True))

    async def handle(request: web.Request) -> web.StreamResponse:
        session: ClientSession = request.app["session"]
        if request.path == "/_fault/rate" and request.method == "PUT":
            current["rate"] = float(await request.text())
            return web.Response(text=f"rate {current['rate']}\n")
        if request.path == "/_fault/rules" and request.method == "PUT":
            rules.extend(json.loads(await request.text()))
            return web.Response(text=f"{len(rules)} rules\n")
        op = _operation(request)
        stats["requests"] += 1
        fault = pick(request)
        if fault is not None:
            stats["faults"] += 1
            stats[f"faults.{fault}.{op}"] += 1
            stats[f"faults.{fault}"] += 1
            save()
        if fault == "dropped":
            return _error(request)
        if fault == "reset":
            return _abort(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = request.host  # keep the client's host: it is part of what it signed
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            if fault == "lost" or (fault == "truncated" and len(payload) < 2):
                return _error(request)  # (nothing to truncate: the client sees a lost answer)
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            if fault == "truncated":
                return await _truncated(request, resp.status, out_headers, payload)
            if request.method == "HEAD" and "Content-Length" in resp.headers:
                # A HEAD answer has no body, but its Content-Length is the object's size.
                out_headers["Content-Length"] = resp.headers["Content-Length"]
                return web.Response(status=resp.status, headers=out_headers)
            return web.Response(status=resp.status, body=payload, headers=out_headers)

    async def start(app: web.Application) -> None:
        app["session"] = ClientSession(timeout=ClientTimeout(total=120), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()
        save()

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stats", type=Path, default=None)
    a = p.parse_args()
    web.run_app(make_app(a.upstream, a.rate, a.stats, a.seed), host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
