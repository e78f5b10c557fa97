"""The request budget: how many API requests batchrun may send, and when.

Lamina allows about 100 requests per minute, counted in a fixed window per key. A leaky
bucket sized to the whole minute would let 100 requests through at once and 100 more as
it drains, so the server would see up to twice its limit in one window. We space
requests instead: a bucket of one request that refills every `60 / rate` seconds never
puts more than `rate` requests into any 60-second window, wherever the server's window
starts.

On top of that the budget follows what the server says: `RateLimit-Remaining: 0` pauses
everyone until `RateLimit-Reset`, and a 429's `Retry-After` pauses everyone until then,
each waiter adding its own jitter so they do not all wake in the same instant.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from aiolimiter import AsyncLimiter

log = logging.getLogger(__name__)

DEFAULT_RATE = 100


class RequestBudget:
    """Paces every API request; shared by all workers of one batch."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        max_jitter: float = 1.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._max_jitter = max_jitter
        self._paused_until = 0.0
        self._pause_reason = ""
        self._limiter: AsyncLimiter | None = None
        self.rate = rate
        self.sent = 0
        self.rate_limited = 0
        self.waiting = 0

    def set_rate(self, rate: float) -> None:
        """Use a new requests-per-minute figure (e.g. the one the account reports)."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self._limiter = None

    @property
    def state(self) -> str:
        """Why requests are held back right now: '', 'window' or 'backoff'."""
        if self._clock() < self._paused_until:
            return self._pause_reason
        return "window" if self.waiting else ""

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        self.waiting += 1
        try:
            while (delay := self._paused_until - self._clock()) > 0:
                await self._sleep(delay + self._jitter() * self._max_jitter)
            if self._limiter is None:
                # Created lazily, inside the running loop (aiolimiter binds to it).
                self._limiter = AsyncLimiter(1, 60.0 / self.rate)
            await self._limiter.acquire()
        finally:
            self.waiting -= 1
        self.sent += 1

    def pause(self, seconds: float, reason: str = "backoff") -> None:
        """Hold every request back for `seconds` from now."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self._pause_reason = reason

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Learn from a response's headers; returns the Retry-After delay of a 429."""
        remaining = _number(headers.get("RateLimit-Remaining"))
        reset = _number(headers.get("RateLimit-Reset"))
        if remaining is not None and remaining <= 0 and reset is not None:
            self.pause(reset, "window")
        if status != 429:
            return None

        self.rate_limited += 1
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None:
            retry_after = reset if reset is not None else 60.0 / self.rate * 10
        self.pause(retry_after, "backoff")
        return retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None
