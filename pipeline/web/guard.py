"""The front door's checks that come before any handler: which requests the server answers at all.

A browser is an attacker's client too. A page the operator visits can send requests to the console
(CSRF) and, by rebinding its own host name to 127.0.0.1, read the answers (DNS rebinding). So:

- **Host allow-list** (``TTS_CONSOLE_ALLOWED_HOSTS``; loopback names by default, and the host the
  server was told to bind): a request naming another host is answered 421 Misdirected Request, so a
  rebound name reaches nothing. ``/healthz`` is exempt (probes use the pod's address; it says
  nothing).
- **Cross-site reads of the JSON endpoints** (``/v1``, ``/console/api``): a GET a browser marks
  as coming from another site (an ``<img>`` on any page the operator visits) is refused 403 before
  it costs a listing.
- **Cross-site writes**: a state-changing request (anything but GET/HEAD/OPTIONS) that a browser
  marks as coming from another site (``Sec-Fetch-Site`` other than ``same-origin``/``none``), or,
  from a browser too old to send that header, whose ``Origin`` is not the server's own, is
  refused 403. Clients that are not browsers send
  neither header and are judged by the key alone.
- **JSON means JSON**: ``/v1`` bodies are read only when sent as ``application/json``: a form or
  ``text/plain`` (what a page can send without a CORS preflight) is refused 415. The console's own
  writes carry ``X-Console: 1``, which no page can add cross-origin without a preflight either
  (``pipeline.web.console``).

Checks on who the caller is (the key, the session) come after these, in the API's and the
console's own middleware.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
EXEMPT = ("/healthz",)
READ_APIS = ("/v1/", "/console/api/")


def is_loopback(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(configured: tuple[str, ...], bound: str) -> frozenset[str]:
    """The Host names answered: the configured list (loopback by default), plus the bound address
    when it is a specific one (not 0.0.0.0 / ::)."""
    names = {h.strip().lower().strip("[]") for h in configured if h.strip()}
    if bound not in ("", "0.0.0.0", "::"):
        names.add(bound.lower().strip("[]"))
    return frozenset(names)


def host_name(header: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:8080`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def refusal_body(request: web.Request, message: str, code: str) -> str:
    """An error body in the shape the path's clients read: OpenAI's under ``/v1``."""
    if request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    else:
        body = {"error": {"message": message, "code": code}}
    return json.dumps(body)


def _refuse(request: web.Request, status: int, message: str, code: str) -> web.Response:
    return web.Response(text=refusal_body(request, message, code), status=status, content_type="application/json")


class Guard:
    def __init__(self, hosts: frozenset[str]) -> None:
        self.hosts = hosts
        self.any_host = "*" in hosts

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self.refusal(request)
        if refusal is not None:
            return refusal
        return await handler(request)

    def refusal(self, request: web.Request) -> web.Response | None:
        if request.path in EXEMPT:
            return None
        host = host_name(request.headers.get("Host", ""))
        if not self.any_host and host not in self.hosts:
            log.warning("refused a request for host %r (TTS_CONSOLE_ALLOWED_HOSTS)", host)
            return _refuse(request, 421, "this server does not answer for that host name", "misdirected_request")
        site = request.headers.get("Sec-Fetch-Site")
        if request.method in SAFE_METHODS:
            # A page elsewhere can fire GETs at the JSON endpoints from an <img> (in the no-key
            # mode they answer anyone): reading them is the console's own page's business only.
            if site not in (None, "same-origin", "none") and request.path.startswith(READ_APIS):
                return _refuse(request, 403, f"cross-site request refused (Sec-Fetch-Site: {site})", "cross_site")
            return None
        # A browser sets Sec-Fetch-Site itself (no page can forge it): where it is present it is the
        # answer. (A same-origin form under Referrer-Policy: no-referrer says Origin: null.) Older
        # browsers send only Origin, which must then be this server's own.
        origin = request.headers.get("Origin")
        if site is not None:
            if site not in ("same-origin", "none"):
                return _refuse(request, 403, f"cross-site request refused (Sec-Fetch-Site: {site})", "cross_site")
        elif origin is not None and not self._own_origin(request, origin):
            return _refuse(request, 403, "cross-origin request refused", "cross_site")
        if request.path.startswith("/v1/") and request.content_type != "application/json":
            return _refuse(request, 415, "send the request body as application/json", "unsupported_media_type")
        return None

    def _own_origin(self, request: web.Request, origin: str) -> bool:
        """The Origin names this server: the same host (and port) the request was sent to."""
        if origin == "null":
            return False
        parts = urlsplit(origin)
        return bool(parts.netloc) and parts.netloc.lower() == request.headers.get("Host", "").strip().lower()
