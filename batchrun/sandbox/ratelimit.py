"""The API's rate limit: a fixed window per API key (Decision 9).

A window opens at a key's first request and lasts `window` seconds; up to `limit`
requests fit in it. Requests refused with 429 do not use up the budget further.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """The outcome of one request, and what the RateLimit-* headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the current window closes

    @property
    def reset_header(self) -> int:
        """Seconds until the window resets, rounded up (headers carry integers)."""
        return max(1, math.ceil(self.reset_seconds))

    def headers(self) -> dict[str, str]:
        """RateLimit-Limit, -Remaining and -Reset for this verdict."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_header),
        }


class FixedWindowLimiter:
    """Counts requests per key in fixed windows; the clock is injectable for tests."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (start, used)

    def hit(self, key: str) -> Verdict:
        """Count one request for `key` if the window has room."""
        now = self._clock()
        start, used = self._current(key, now)
        allowed = used < self.limit
        if allowed:
            used += 1
            self._windows[key] = (start, used)
        return Verdict(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - used),
            reset_seconds=start + self.window - now,
        )

    def export(self) -> dict[str, tuple[float, int]]:
        """Open windows as {key: (seconds left, requests used)}, for a snapshot."""
        now = self._clock()
        return {
            key: (start + self.window - now, used)
            for key, (start, used) in self._windows.items()
            if now < start + self.window
        }

    def restore(self, windows: Mapping[str, tuple[float, int]], elapsed: float) -> None:
        """Reopen the windows `export` gave `elapsed` seconds ago, if still open."""
        now = self._clock()
        for key, (left, used) in windows.items():
            left = min(left - elapsed, self.window)
            if left > 0:
                self._windows[key] = (now - (self.window - left), used)

    def _current(self, key: str, now: float) -> tuple[float, int]:
        start, used = self._windows.get(key, (now, 0))
        if now >= start + self.window:
            start, used = now, 0
        if len(self._windows) > 10_000:
            # Keys seen once (typos, scanners) must not grow memory without bound.
            self._windows = {
                k: w for k, w in self._windows.items() if now < w[0] + self.window
            }
        self._windows[key] = (start, used)
        return start, used
