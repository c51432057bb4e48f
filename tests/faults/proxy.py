"""A fault-injecting HTTP proxy in front of LocalStack, run as its own process.

    python -m tests.faults.proxy --upstream http://127.0.0.1:4566 --port 4599 --rate 0.2 --stats f.json

Workers point ``AWS_ENDPOINT_URL`` at it and see real network-level failures, with nothing in
the worker changed for the test. A fraction ``--rate`` of requests fail with a 503 in the
protocol's own error format:

- "dropped" (2/3 of faults): the request never reaches LocalStack;
- "lost" (1/3): LocalStack performs it, the client gets a 503 anyway: the nasty at-least-once
  case, where a retry repeats an operation that already happened.

Counts per kind and per operation go to ``--stats`` (JSON), rewritten after every fault.
``PUT /_fault/rate`` with a number as the body changes the rate while running (an outage: 1.0).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

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


def make_app(upstream: str, rate: float, stats_path: Path | None, seed: int) -> web.Application:
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    current = {"rate": rate}

    def save() -> None:
        if stats_path:
            stats_path.write_text(json.dumps(dict(stats), indent=1, sort_keys=True))

    async def handle(request: web.Request) -> web.StreamResponse:
        session: ClientSession = request.app["session"]
        if request.path == "/_fault/rate" and request.method == "PUT":
            current["rate"] = float(await request.text())
            return web.Response(text=f"rate {current['rate']}\n")
        op = _operation(request)
        stats["requests"] += 1
        fault = None
        if not request.path.startswith("/_localstack") and rng.random() < current["rate"]:
            fault = "dropped" if rng.random() < 2 / 3 else "lost"
        if fault == "dropped":
            stats["faults"] += 1
            stats[f"faults.dropped.{op}"] += 1
            save()
            return _error(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = request.host  # keep the client's host: it is part of what it signed
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            if fault == "lost":
                stats["faults"] += 1
                stats[f"faults.lost.{op}"] += 1
                save()
                return _error(request)
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
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
