"""A fault-injecting, tracing HTTP proxy in front of LocalStack, run as its own process.

    python -m tests.faults.proxy --upstream http://127.0.0.1:4566 --port 4599 --rate 0.2 \\
        --stats f.json --trace t.jsonl

Workers point ``AWS_ENDPOINT_URL`` at it and see real network-level failures, with nothing in
the worker changed for the test.

**Random faults.** A fraction ``--rate`` of requests fail, in one of four ways: "dropped" (40 %:
a 503 in the protocol's own error format, the request never reaches LocalStack), "reset" (20 %:
the connection is aborted before the request reaches LocalStack), "lost" (20 %: LocalStack
performs it, the client gets a 503 anyway), "truncated" (20 %: LocalStack performs it, the
client gets the status line, headers with the full Content-Length, half the body, then a reset).
``PUT /_fault/rate`` with a number changes the rate (an outage: 1.0). ``PUT /_fault/rules`` with
``[{"match": REGEX, "kind": KIND, "times": N}]`` adds faults for requests whose ``"METHOD /path"``
matches, N times (-1: always), before the random faults; a rule may also carry ``id``, ``op``
(a regular expression the request's API action must match, e.g. "SQS ChangeMessageVisibility"),
``key`` (one the request's keys must match), ``agent`` and ``state`` (of a status document
written), and the after-kinds ``lost``/``truncated``/``hang`` (held ``hang_s``, default 60).
``DELETE /_fault/rules`` with a JSON list of ids removes those rules (no body: all of them).

**The trace.** ``--trace`` gets one JSON line per request: ``seq``, ``agent`` (from the
``tts-pipeline/<agent>`` User-Agent tag: worker, lease, reconciler, console, cli, tool),
``key_id`` (the access key that signed it), ``op`` (the API action: "S3 PutObject", "S3
DeleteObjects", "SQS ReceiveMessage", "SNS Publish"...), ``bucket``, ``keys``, ``queue``,
``jobs`` (the jobs it concerns: from the key, the S3 event in a message body, the receipt handle
of a message received earlier, a notification's ``job_id``), ``state`` (of a status document
written, and its ``attempt``), ``status`` (the HTTP status LocalStack answered; null when the
request never reached it), and ``fault``/``point`` when one was injected.

**Fault points.** ``PUT /_fault/points`` with ``[{"id", "job", "op", "agent", "key", "state",
"nth", "kind", "count", "hang_s", "pid"}]`` arms faults at one request position: the ``nth`` request
(counting from arming) that concerns ``job``, comes from process ``pid`` and has that op (``S3 PutObject``, ``SQS
DeleteMessage``...), agent, key (a regular expression one of its keys matches) and
status-document state (each optional but ``op`` and ``kind``). Kinds:

- before the request reaches LocalStack: ``dropped``, ``reset``, ``brownout`` (``dropped`` for
  ``count`` consecutive matching requests: by default 6, every retry of the client's budget),
  ``denied`` (a 403 ``AccessDenied`` whose message names a role ARN and an account, as AWS's do);
- after LocalStack performed it: ``lost``, ``truncated``, ``hang`` (the answer is held back for
  ``hang_s``, longer than any client waits), ``kill`` (the process that sent it, found from the
  TCP connection, gets SIGKILL before the answer), ``stop`` (it gets SIGSTOP before the answer;
  the answer is sent after ``PUT /_fault/continue/<id>``; the test sends SIGCONT).

A received message's jobs are only known from the answer, so a ``ReceiveMessage`` point takes the
after-kinds only. ``GET /_fault/fired`` lists the points that fired (id, seq, kind, pid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from aiohttp import ClientSession, ClientTimeout, web

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
KINDS = {"dropped": 0.4, "reset": 0.2, "lost": 0.2, "truncated": 0.2}
BEFORE_KINDS = ("dropped", "reset", "brownout", "denied")
AFTER_KINDS = ("lost", "truncated", "hang", "kill", "stop")
BROWNOUT_COUNT = 6  # pipeline.cloud.aws.MAX_ATTEMPTS: one call's whole retry budget
_AGENT_RE = re.compile(r"tts-pipeline/(\w+)")
_KEY_ID_RE = re.compile(r"Credential=([^/,\s]+)/")
_JOB_KEY_RE = re.compile(r"^(?:inbox|status|results)/([^/]+)\.json$|^(?:outputs|voices)/([^/]+)/|^cancel/([^/]+)$")


def _error(request: web.Request) -> web.Response:
    if request.headers.get("X-Amz-Target", "").startswith("AmazonSQS"):
        body = json.dumps({"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "injected fault"})
        return web.Response(status=503, body=body.encode(), content_type="application/x-amz-json-1.0")
    body = "<?xml version='1.0'?><Error><Code>ServiceUnavailable</Code><Message>injected fault</Message></Error>"
    return web.Response(status=503, body=body.encode(), content_type="application/xml")


# What AWS says when a role lacks a permission: its message names the role's ARN and the account.
DENIED_MESSAGE = (
    "User: arn:aws:sts::123456789012:assumed-role/tts-worker/i-0fa1 is not authorized to perform: "
    "s3:GetObject because no identity-based policy allows the s3:GetObject action"
)


def _denied(request: web.Request) -> web.Response:
    if request.headers.get("X-Amz-Target", "").startswith("AmazonSQS"):
        body = json.dumps({"__type": "com.amazonaws.sqs#AccessDenied", "message": DENIED_MESSAGE})
        return web.Response(status=403, body=body.encode(), content_type="application/x-amz-json-1.0")
    body = f"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>{DENIED_MESSAGE}</Message></Error>"
    return web.Response(status=403, body=body.encode(), content_type="application/xml")


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


def s3_action(method: str, key: str, query: set[str], headers: Any) -> str:
    """The S3 API action of a REST request (what IAM calls it, or near enough to map)."""
    if not key:
        if method == "GET":
            return "ListObjectsV2" if "list-type" in query else "GetBucket"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        return {"HEAD": "HeadBucket", "PUT": "PutBucket", "DELETE": "DeleteBucket"}.get(method, f"Bucket{method}")
    if method == "GET":
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "uploadId" in query:
            return "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return method


def job_of_key(key: str) -> str | None:
    m = _JOB_KEY_RE.match(key)
    return next((g for g in m.groups() if g), None) if m else None


def jobs_in_event(body: str) -> list[str]:
    """The jobs an S3 event notification (as an SQS message body) is about."""
    try:
        doc = json.loads(body)
        if doc.get("Type") == "Notification":
            doc = json.loads(doc["Message"])
        out = []
        for rec in doc.get("Records", []):
            job = job_of_key(unquote_plus(rec["s3"]["object"]["key"]))
            if job:
                out.append(job)
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


class Request:
    """What the trace and the points see of one request."""

    def __init__(self, request: web.Request, body: bytes, receipts: dict[str, list[str]], own_port: int = 0) -> None:
        self._request = request
        self._own_port = own_port
        self._pid: int | None = None
        self.method = request.method
        ua = request.headers.get("User-Agent", "")
        m = _AGENT_RE.search(ua)
        self.agent = m.group(1) if m else "other"
        auth = request.headers.get("Authorization", "") or request.query.get("X-Amz-Credential", "")
        k = _KEY_ID_RE.search(auth) or re.match(r"([^/]+)/", auth)
        self.key_id = k.group(1) if k else None
        self.bucket: str | None = None
        self.keys: list[str] = []
        self.s3_query: list[str] = []
        self.queue: str | None = None
        self.jobs: list[str] = []
        self.state: str | None = None
        self.attempt: int | None = None
        self.receipts_of: list[str] = []
        self.messages: list[dict[str, Any]] = []  # a ReceiveMessage answer's messages (id, jobs, sent)
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith("AmazonSQS"):
            self.op = "SQS " + target.split(".")[-1]
            self._sqs(body, receipts)
        elif request.method == "POST" and b"Action=" in body[:200] and request.path == "/":
            form = parse_qs(body.decode(errors="replace"))
            self.op = "SNS " + form.get("Action", ["?"])[0]
            self._sns(form)
        else:
            self.op = f"S3 {request.method}"
            self._s3(request, body)

    def _s3(self, request: web.Request, body: bytes) -> None:
        path = request.path.lstrip("/")
        self.bucket, _, key = path.partition("/")
        self.s3_query = sorted(request.query.keys())
        self.op = "S3 " + s3_action(request.method, key, set(request.query), request.headers)
        if key:
            self.keys = [key]
        elif "prefix" in request.query:
            self.keys = [request.query["prefix"]]
        if "delete" in request.query:
            self.keys = [unquote_plus(k) for k in re.findall(r"<Key>(.*?)</Key>", body.decode(errors="replace"))]
        self.jobs = sorted({j for k in self.keys if (j := job_of_key(k))})
        if self.op == "S3 PutObject" and key.startswith("status/") and body[:1] == b"{":
            with contextlib.suppress(ValueError):
                doc = json.loads(body)
                self.state, self.attempt = doc.get("state"), doc.get("attempt")

    def _sqs(self, body: bytes, receipts: dict[str, list[str]]) -> None:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        url = doc.get("QueueUrl") or doc.get("QueueName") or ""
        self.queue = url.rstrip("/").rsplit("/", 1)[-1] or None
        handles = [doc["ReceiptHandle"]] if "ReceiptHandle" in doc else []
        handles += [e.get("ReceiptHandle", "") for e in doc.get("Entries", [])]
        self.receipts_of = handles
        jobs = {j for h in handles for j in receipts.get(h, [])}
        if "MessageBody" in doc:
            jobs.update(jobs_in_event(doc["MessageBody"]))
        self.jobs = sorted(jobs)

    def _sns(self, form: dict[str, list[str]]) -> None:
        self.queue = form.get("TopicArn", [""])[0].rsplit(":", 1)[-1] or None
        try:
            job = json.loads(form.get("Message", ["{}"])[0]).get("job_id")
        except ValueError:
            job = None
        self.jobs = [job] if job else []

    def pid(self) -> int | None:
        """The sending process (looked up only when a point asks: it scans the TCP table)."""
        if self._pid is None:
            self._pid = _pid_of(self._request, self._own_port)
        return self._pid

    def received(self, payload: bytes, receipts: dict[str, list[str]]) -> None:
        """A ReceiveMessage answer: which jobs it delivered, and their receipt handles."""
        try:
            messages = json.loads(payload or b"{}").get("Messages", [])
        except ValueError:
            return
        jobs: set[str] = set()
        for m in messages:
            found = jobs_in_event(m.get("Body", ""))
            receipts[m.get("ReceiptHandle", "")] = found
            jobs.update(found)
            attrs = m.get("Attributes", {})
            sent_by = (m.get("MessageAttributes", {}).get("tts-sent-by") or {}).get("StringValue")
            self.messages.append(
                {
                    "id": m.get("MessageId"),
                    "jobs": found,
                    "sent_ms": int(attrs["SentTimestamp"]) if "SentTimestamp" in attrs else None,
                    "receives": int(attrs["ApproximateReceiveCount"]) if "ApproximateReceiveCount" in attrs else None,
                    "sent_by": sent_by,
                }
            )
        self.jobs = sorted(jobs)

    def record(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "key_id": self.key_id,
            "op": self.op,
            "method": self.method,
            "bucket": self.bucket,
            "keys": self.keys,
            "s3_query": self.s3_query,
            "queue": self.queue,
            "jobs": self.jobs,
            "state": self.state,
            "attempt": self.attempt,
        }


class Point:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.id = str(spec["id"])
        self.kind = str(spec["kind"])
        self.nth = int(spec.get("nth", 1))
        self.count = int(spec.get("count", BROWNOUT_COUNT if self.kind == "brownout" else 1))
        self.hang_s = float(spec.get("hang_s", 60.0))
        self.seen = 0
        self.released = asyncio.Event()

    def matches(self, r: Request) -> bool:
        s = self.spec
        return (
            (s.get("job") is None or s["job"] in r.jobs)
            and (s.get("pid") is None or s["pid"] == r.pid())
            and s["op"] == r.op
            and s.get("agent", r.agent) == r.agent
            and (s.get("key") is None or any(re.fullmatch(s["key"], k) for k in r.keys))
            and (s.get("state") is None or s["state"] == r.state)
        )

    def hit(self, r: Request) -> bool:
        """Count a matching request; True if this one is faulted."""
        if not self.matches(r):
            return False
        self.seen += 1
        return self.nth <= self.seen < self.nth + self.count


def _rule_matches(rule: dict[str, Any], target: str, r: Request) -> bool:
    return (
        re.search(rule.get("match", ""), target) is not None
        and (rule.get("op") is None or re.search(rule["op"], r.op) is not None)
        and (rule.get("key") is None or any(re.search(rule["key"], k) for k in r.keys))
        and rule.get("agent", r.agent) == r.agent
        and rule.get("state", r.state) == r.state
    )


def _pid_of(request: web.Request, own_port: int) -> int | None:
    """The process on the other end of this request's TCP connection."""
    import psutil

    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == peer[1] and conn.raddr and conn.raddr.port == own_port:
            return conn.pid
    return None


def make_app(
    upstream: str, rate: float, stats_path: Path | None, seed: int, trace_path: Path | None = None, port: int = 0
) -> web.Application:
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    current = {"rate": rate}
    rules: list[dict[str, Any]] = []
    points: list[Point] = []
    fired: list[dict[str, Any]] = []
    receipts: dict[str, list[str]] = {}
    seq = [0]
    trace = trace_path.open("a", buffering=1) if trace_path else None

    def pick(request: web.Request, r: Request) -> tuple[str | None, dict[str, Any] | None]:
        target = f"{request.method} {request.path}"
        for rule in rules:
            if rule["times"] != 0 and _rule_matches(rule, target, r):
                rule["times"] -= 1 if rule["times"] > 0 else 0
                return str(rule["kind"]), rule
        if request.path.startswith("/_localstack") or rng.random() >= current["rate"]:
            return None, None
        return rng.choices(list(KINDS), weights=list(KINDS.values()))[0], None

    def save() -> None:
        if stats_path:
            stats_path.write_text(json.dumps(dict(stats), indent=1, sort_keys=True))

    def point_for(r: Request, kinds: tuple[str, ...]) -> Point | None:
        for p in points:
            if p.kind in kinds and p.hit(r):
                return p
        return None

    async def control(request: web.Request) -> web.Response | None:
        path = request.path
        if path == "/_fault/rate" and request.method == "PUT":
            current["rate"] = float(await request.text())
            return web.Response(text=f"rate {current['rate']}\n")
        if path == "/_fault/rules" and request.method == "PUT":
            rules.extend(json.loads(await request.text()))
            return web.Response(text=f"{len(rules)} rules\n")
        if path == "/_fault/rules" and request.method == "DELETE":
            text = await request.text()
            gone = set(json.loads(text)) if text.strip() else None
            rules[:] = [r for r in rules if gone is not None and r.get("id") not in gone]
            return web.Response(text=f"{len(rules)} rules\n")
        if path == "/_fault/points" and request.method == "PUT":
            points.extend(Point(s) for s in json.loads(await request.text()))
            return web.Response(text=f"{len(points)} points\n")
        if path == "/_fault/fired" and request.method == "GET":
            return web.json_response(fired)
        if path.startswith("/_fault/continue/") and request.method == "PUT":
            ident = path.rsplit("/", 1)[-1]
            for p in points:
                if p.id == ident:
                    p.released.set()
            return web.Response(text="ok\n")
        return None

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_fault/"):
            answer = await control(request)
            if answer is not None:
                return answer
        session: ClientSession = request.app["session"]
        body = await request.read()
        r = Request(request, body, receipts, port)
        seq[0] += 1
        entry: dict[str, Any] = {"seq": seq[0], "t": round(time.time(), 3), **r.record()}
        stats["requests"] += 1
        fault, rule = pick(request, r)
        if rule is not None and rule.get("id") is not None:
            entry["rule"] = rule["id"]
        point = None if fault else point_for(r, BEFORE_KINDS)
        if point is not None:
            fault = "dropped" if point.kind == "brownout" else point.kind
            entry["point"] = point.id
            fired.append({"id": point.id, "seq": seq[0], "kind": point.kind, "pid": None})
        if fault is not None:
            stats["faults"] += 1
            stats[f"faults.{fault}.{r.op}"] += 1
            stats[f"faults.{fault}"] += 1
            entry["fault"] = fault
            save()
        if fault in ("dropped", "reset", "denied"):
            entry["status"] = {"dropped": 503, "denied": 403}.get(fault)
            _write(trace, entry)
            return {"dropped": _error, "denied": _denied}.get(fault, _abort)(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Host"] = request.host  # keep the client's host: it is part of what it signed
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            payload = await resp.read()
            status = resp.status
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            head_length = resp.headers.get("Content-Length") if request.method == "HEAD" else None
        if r.op == "SQS ReceiveMessage":
            r.received(payload, receipts)
            entry["jobs"] = r.jobs
            entry["messages"] = r.messages
        entry["status"] = status
        if fault is None:
            point = point_for(r, AFTER_KINDS)
            if point is not None:
                fault = point.kind
                entry["fault"], entry["point"] = fault, point.id
        _write(trace, entry)
        if head_length is not None:
            out_headers["Content-Length"] = head_length  # a HEAD answer's is the object's size
        if point is not None and point.kind in AFTER_KINDS:
            return await _after(request, r, point, fault, status, out_headers, payload)
        if fault == "hang" and rule is not None:
            await asyncio.sleep(float(rule.get("hang_s", 60.0)))  # the client gives up long before
            return _error(request)
        if fault == "lost" or (fault == "truncated" and len(payload) < 2):
            return _error(request)  # (nothing to truncate: the client sees a lost answer)
        if fault == "truncated":
            return await _truncated(request, status, out_headers, payload)
        return _answer(request, status, out_headers, payload)

    async def _after(
        request: web.Request,
        r: Request,
        point: Point,
        kind: str | None,
        status: int,
        headers: dict[str, str],
        payload: bytes,
    ) -> web.StreamResponse:
        record = {"id": point.id, "seq": seq[0], "kind": point.kind, "pid": None}
        fired.append(record)
        if kind in ("kill", "stop"):
            pid = r.pid()
            record["pid"] = pid
            if pid is not None and pid != os.getpid():
                os.kill(pid, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
            if kind == "stop":
                await point.released.wait()
            else:
                return _abort(request)
        elif kind == "hang":
            await asyncio.sleep(point.hang_s)  # the client gives up long before
        if kind in ("lost", "hang") or (kind == "truncated" and len(payload) < 2):
            return _error(request)
        if kind == "truncated":
            return await _truncated(request, status, headers, payload)
        return _answer(request, status, headers, payload)

    async def start(app: web.Application) -> None:
        app["session"] = ClientSession(timeout=ClientTimeout(total=120), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()
        save()
        if trace:
            trace.close()

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def _answer(request: web.Request, status: int, headers: dict[str, str], payload: bytes) -> web.Response:
    if request.method == "HEAD":
        return web.Response(status=status, headers=headers)  # no body; Content-Length kept
    return web.Response(status=status, body=payload, headers=headers)


def _write(trace: Any, entry: dict[str, Any]) -> None:
    if trace is not None:
        trace.write(json.dumps(entry) + "\n")


class ProxyProcess:
    """A proxy of this module run as its own process, and the test's handle on it."""

    def __init__(self, upstream: str, workdir: Path) -> None:
        from tests.helpers import free_port

        self.port = free_port()
        self.trace_path = workdir / f"trace-{self.port}.jsonl"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.proxy",
                "--upstream",
                upstream,
                "--port",
                str(self.port),
                "--rate",
                "0",
                "--trace",
                str(self.trace_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / f"proxy-{self.port}.log").open("wb"),
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        from tests.helpers import wait_until

        wait_until(self._up, "the fault proxy to answer", 30)
        self._read_at = 0
        self._trace: list[dict[str, Any]] = []

    def _up(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/_fault/fired", timeout=1).read()
            return True
        except OSError:
            return False

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if method == "GET" else None

    def arm(self, point: dict[str, Any]) -> None:
        self._call("PUT", "/_fault/points", [point])

    def fired(self, ident: str) -> dict[str, Any] | None:
        return next((f for f in self._call("GET", "/_fault/fired") if f["id"] == ident), None)

    def release(self, ident: str) -> None:
        self._call("PUT", f"/_fault/continue/{ident}", {})

    def add_rules(self, rules: list[dict[str, Any]]) -> None:
        self._call("PUT", "/_fault/rules", rules)

    def remove_rules(self, ids: list[str] | None = None) -> None:
        """Remove the rules with these ids (None: every rule)."""
        self._call("DELETE", "/_fault/rules", ids)

    def trace(self) -> list[dict[str, Any]]:
        with self.trace_path.open() as f:
            f.seek(self._read_at)
            chunk = f.read()
            cut = chunk.rfind("\n") + 1
            self._read_at += len(chunk[:cut].encode())
        self._trace.extend(json.loads(line) for line in chunk[:cut].splitlines() if line)
        return self._trace

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stats", type=Path, default=None)
    p.add_argument("--trace", type=Path, default=None)
    a = p.parse_args()
    app = make_app(a.upstream, a.rate, a.stats, a.seed, a.trace, a.port)
    # Hung answers (points of kind "hang") must not hold up the proxy's own exit.
    web.run_app(app, host="127.0.0.1", port=a.port, print=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
