"""API keys, per-key rate limits (token buckets) and the request-body size limit."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        if self.keys.enabled and scope["path"].startswith("/v1/"):
            key = self.keys.match(headers.get(b"authorization", b""))
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


def _auth_error(headers: dict[bytes, bytes]) -> dict[str, Any]:
    if b"authorization" not in headers:
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
