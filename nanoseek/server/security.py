"""API keys, per-key rate limits (token buckets), the request-body size limit, and the Host/Origin check that keeps
web pages from using a local server."""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nanoseek.server.schemas import error_body

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def load_keys(keys: Iterable[str] = (), key_file: str | Path | None = None) -> list[str]:
    """Keys from the command line plus a file (one per line; blank lines and # comments ignored)."""
    found = [k.strip() for k in keys if k.strip()]
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"API key file {path} does not exist")
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        found += [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise ValueError(f"API key file {path} holds no keys")
    return found


class APIKeys:
    """Bearer-token check in constant time: every configured key is compared, whichever matches."""

    def __init__(self, keys: Iterable[str] = ()):
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def match(self, authorization: bytes) -> str | None:
        """The key of an `Authorization: Bearer KEY` header, or None when it is missing or wrong."""
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = token.strip()
        found = None
        for key in self._keys:
            if secrets.compare_digest(token, key):
                found = key
        return found.decode("utf-8") if found is not None else None


class TokenBucket:
    """Holds up to `capacity` units, refilled at capacity per minute."""

    def __init__(self, capacity: float):
        self.capacity = capacity
        self.level = capacity
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60)
        self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0: available now)."""
        self._refill(now)
        return max(0.0, (amount - self.level) * 60 / self.capacity)

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests per minute and tokens per minute (prompt + max_tokens, refunded when fewer were generated), per
    API key (per client address when no keys are configured)."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None):
        self.rpm, self.tpm = rpm, tpm
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.tpm)

    def acquire(self, who: str, tokens: int) -> float:
        """Charge one request of `tokens`: 0 when allowed, otherwise the seconds to wait (nothing charged)."""
        if not self.enabled:
            return 0.0
        if self.tpm and tokens > self.tpm:
            return float("inf")
        with self._lock:
            requests, token_bucket = self._get(who)
            now = time.monotonic()
            wait = max(
                requests.wait(1, now) if requests else 0.0,
                token_bucket.wait(tokens, now) if token_bucket else 0.0,
            )
            if wait == 0:
                if requests:
                    requests.take(1)
                if token_bucket:
                    token_bucket.take(tokens)
            return wait

    def refund(self, who: str, tokens: int) -> None:
        if self.tpm and tokens > 0:
            with self._lock:
                bucket = self._get(who)[1]
                if bucket:
                    bucket.give(tokens)

    def _get(self, who: str) -> tuple[TokenBucket | None, TokenBucket | None]:
        if who not in self._buckets:
            if len(self._buckets) > 10_000:  # forget idle clients (a full bucket is the same as a new one)
                now = time.monotonic()
                self._buckets = {k: v for k, v in self._buckets.items() if not _all_full(v, now)}
            self._buckets[who] = (
                TokenBucket(self.rpm) if self.rpm else None,
                TokenBucket(self.tpm) if self.tpm else None,
            )
        return self._buckets[who]


def _all_full(buckets: tuple[TokenBucket | None, TokenBucket | None], now: float) -> bool:
    return all(b is None or b.wait(b.capacity, now) == 0 for b in buckets)


class Guard:
    """ASGI middleware in front of the app: the body-size limit (Content-Length and the bytes that actually
    arrive, so a chunked upload cannot slip past it) and the API key on /v1/ routes. Checking here, before
    FastAPI parses anything, means a missing key is a 401 even when the body is also bad."""

    def __init__(self, app: Any, keys: APIKeys, max_body_bytes: int):
        self.app, self.keys, self.max_body_bytes = app, keys, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if is_anthropic(scope["path"]):  # its clients read Anthropic's error shape
            send = _anthropic_errors(send)
        if self.keys.enabled and scope["path"].startswith(PROTECTED):
            key = self.keys.match(headers.get(b"authorization", b""))
            if key is None and b"x-api-key" in headers:  # Anthropic's header (its SDK sends no Bearer)
                key = self.keys.match(b"Bearer " + headers[b"x-api-key"])
            if key is None:
                await _reject(send, 401, _auth_error(headers), {"www-authenticate": "Bearer"})
                return
            scope.setdefault("state", {})["api_key"] = key
        too_large = error_body(
            f"the request body exceeds this server's limit of {self.max_body_bytes} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _reject(send, 400, error_body("the Content-Length header is not a number"))
                return
            if int(length) > self.max_body_bytes:
                await _reject(send, 413, too_large)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _reject(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


class SameOrigin:
    """ASGI middleware, outermost: refuses (403) what a web page could make a browser send to this server.

    - Host: must name localhost (or a *.localhost name), be an IP address, or be a configured name (the bound
      --host, --allow-host). A DNS-rebinding page reaches the server under the attacker's own domain name, which
      is none of these, so it can neither send requests nor read answers.
    - Origin: a browser sends it on cross-site requests (a form post, a fetch); it must be the server's own
      origin (the Host it was sent to, so the chat app at / keeps working) or a configured one (--allow-origin);
      "null" (sandboxed frames, files) is refused. Clients that are not browsers send no Origin and pass.
    - Sec-Fetch-Site: cross-site on anything but GET/HEAD/OPTIONS without an Origin is refused as well.
    """

    def __init__(self, app: Any, allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()):
        self.app = app
        self.origins = {o.strip().rstrip("/").lower() for o in allowed_origins}
        hosts = {h.strip().lower().strip("[]") for h in allowed_hosts}
        self.hosts = hosts - {"", "0.0.0.0", "::"}  # binding every interface names no host

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(dict(scope["headers"]), scope.get("method", "GET"))
            if refusal is not None:
                await _reject(send, 403, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[bytes, bytes], method: str) -> dict[str, Any] | None:
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if host and not self.host_allowed(host):
            return error_body(
                f"this server does not answer to the host name {host!r}; start it with --allow-host NAME to accept "
                "it (names other than localhost and IP addresses are refused against DNS rebinding)",
                type="permission_error",
                code="host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip().rstrip("/").lower()
            if "*" in self.origins or text in self.origins or (host and _netloc(text) == host):
                return None
            return error_body(
                f"requests from the web page at {text!r} are refused (cross-origin); start the server with "
                "--allow-origin ORIGIN to allow that page",
                type="permission_error",
                code="origin_not_allowed",
            )
        if headers.get(b"sec-fetch-site") == b"cross-site" and method not in ("GET", "HEAD", "OPTIONS"):
            return error_body(
                "cross-site requests from web pages are refused", type="permission_error", code="origin_not_allowed"
            )
        return None

    def host_allowed(self, host: str) -> bool:
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:
            return False
        if "*" in self.hosts or name in self.hosts or name in LOOPBACK_HOSTS or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)  # an address is never a rebound name
        except ValueError:
            return False
        return True


def _netloc(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    return parts.netloc if parts.scheme in ("http", "https") else None


PROTECTED = ("/v1/", "/beta/", "/anthropic/")  # paths that need an API key when keys are set
ANTHROPIC_PREFIX = "/anthropic/"
# Anthropic's own path, for clients given the server's root as their base URL (the SDK's base_url, Claude Code's
# ANTHROPIC_BASE_URL): DeepSeek serves the API under /anthropic, Anthropic at /v1/messages
ANTHROPIC_ROOT_PATH = "/v1/messages"


def is_anthropic(path: str) -> bool:
    return (
        path.startswith(ANTHROPIC_PREFIX) or path == ANTHROPIC_ROOT_PATH or path.startswith(ANTHROPIC_ROOT_PATH + "/")
    )


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: {"type": "error", "error": {"type": ..., "message": ...}}."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _anthropic_errors(send: Any) -> Any:
    """send() that rewrites OpenAI-shaped JSON error responses (from anywhere in the app) into Anthropic's shape."""
    start: dict | None = None

    async def wrapped(message: dict) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message  # held until the body shows whether it is a JSON error
            return
        if message["type"] == "http.response.body" and start is not None:
            held, start = start, None
            try:
                error = json.loads(message.get("body", b""))["error"]
                data = json.dumps(anthropic_error(held["status"], error["message"])).encode()
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                held = {**held, "headers": [*headers, (b"content-length", str(len(data)).encode())]}
                message = {**message, "body": data, "more_body": False}
            except (ValueError, KeyError, TypeError):
                pass
            await send(held)
        await send(message)

    return wrapped


def _auth_error(headers: dict[bytes, bytes]) -> dict[str, Any]:
    if b"authorization" not in headers and b"x-api-key" not in headers:
        message = "no API key: send it in an 'Authorization: Bearer YOUR_KEY' header"
    else:
        message = "incorrect API key"
    return error_body(message, code="invalid_api_key")


def _replay(body: bytes, receive: Any) -> Any:
    """A receive() that hands the buffered body to the app, then passes on what comes next (disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reject(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})
