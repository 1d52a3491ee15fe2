"""HTTP plumbing both programs' APIs share: the error shape, request ids, rate limits.

Every error either API answers is `{"detail", "request_id"}` with its status, and every
response carries `X-Request-Id`: the caller's own id when it offers a plain one
(`REQUEST_ID_SHAPE`), otherwise a fresh one, so an id a log line shows can never carry
a newline or a secret. Rate limits are token buckets per key (an admin token, an agent,
a webhook), never per address: every agent on a host shares 127.0.0.1.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# aiohttp's own errors keep these headers when they become our error shape.
_KEPT_HEADERS = ("Allow", "Retry-After")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as {"detail", "request_id"} with its HTTP status."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def error_response(request: web.Request, status: int, detail: Any) -> web.Response:
    return web.json_response(
        {"detail": detail, "request_id": request.get(REQUEST_ID)}, status=status
    )


def request_id_for(offered: str) -> str:
    """The caller's request id when it is a plain token, else a new one."""
    return offered if REQUEST_ID_SHAPE.fullmatch(offered) else uuid.uuid4().hex


def request_context(
    log: structlog.typing.FilteringBoundLogger,
    *,
    failure_event: str,
    failure_detail: str,
    on_api_error: Callable[[web.Request, ApiError], None] | None = None,
) -> Middleware:
    """Middleware: a request id for every request, the error shape for every error.

    An unexpected exception is logged as `failure_event` and answered 500 with
    `failure_detail` (which says where to look), never with the exception's text.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = request_id_for(request.headers.get(REQUEST_ID_HEADER, ""))
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(request, exc.status, exc.detail)
            response.headers.update(exc.headers)
            if on_api_error is not None:
                on_api_error(request, exc)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, too large
            response = error_response(request, exc.status, exc.reason)
            for header in _KEPT_HEADERS:
                if header in exc.headers:
                    response.headers[header] = exc.headers[header]
        except Exception:
            log.exception(failure_event, path=request.path, request_id=request[REQUEST_ID])
            response = error_response(request, 500, failure_detail)
        if not response.prepared:  # a stream already sent its headers
            response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
        return response

    return middleware


class TokenBucket:
    """Classic token bucket: `burst` tokens, refilled at `rate_per_s`."""

    __slots__ = ("burst", "rate_per_s", "tokens", "updated_at")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.updated_at = now

    def take(self, now: float) -> float:
        """0.0 if a request may pass now (and count it); else seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate_per_s)
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def full_at(self, now: float) -> bool:
        return self.tokens + (now - self.updated_at) * self.rate_per_s >= self.burst

    def wait_s(self, now: float) -> float:
        """Seconds until a token is there (0.0: now), without taking it."""
        tokens = min(self.burst, self.tokens + (now - self.updated_at) * self.rate_per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s


class RateLimiter:
    """One token bucket per key, with bounded memory: idle keys are forgotten."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after_s(self, key: str) -> float:
        """0.0 if `key`'s request may pass now; else how long it must wait."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                # A full bucket is the same as a new one: forgetting idle keys is free.
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full_at(now)}
            bucket = TokenBucket(self.rate_per_s, self.burst, now)
            self._buckets[key] = bucket
        return bucket.take(now)

    def wait_s(self, key: str) -> float:
        """How long `key` must wait before its next request would pass (0.0: now)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait_s(self.clock())

    def check(self, key: str, what: str) -> None:
        """Raise ApiError 429 with Retry-After when `key` is over its limit."""
        wait_s = self.retry_after_s(key)
        if wait_s > 0:
            raise ApiError(
                429,
                f"{what} is over its rate limit of {self.rate_per_s:g} requests/s "
                f"(burst {self.burst:g}); retry in {wait_s:.2f} s",
                {"Retry-After": str(max(1, int(wait_s + 0.999)))},
            )


class FailedAuthLimiter:
    """Failed credential checks, per caller: a few a second, then refused before any check.

    Guessing a token costs the guesser, not the service: once a caller's failures pass
    `rate_per_s` (bursts of `burst`), its next attempts are answered 429 without being
    checked and without a log line each, until the bucket refills. Only failures fill
    it, so a caller that sends the right token is never counted. Who "the caller" is
    (an address, a gateway, a token id) is the key the API chooses.
    """

    def __init__(
        self,
        rate_per_s: float = 2.0,
        burst: float = 20.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures = RateLimiter(rate_per_s, burst, max_keys=10_000, clock=clock)

    def before_check(self, caller: str) -> None:
        """Raise 429 when `caller` has failed too often to be checked again yet."""
        wait_s = self._failures.wait_s(caller)
        if wait_s > 0:
            raise ApiError(
                429,
                f"too many failed credential checks from this caller; retry in {wait_s:.1f} s "
                "with the right token",
                {"Retry-After": str(max(1, int(wait_s + 0.999)))},
            )

    def failed(self, caller: str) -> None:
        self._failures.retry_after_s(caller)
