"""The fixed-window rate limit (Decision 9), as a pure limiter and over HTTP."""

from __future__ import annotations

import asyncio

import aiohttp

from batchrun.sandbox import Sandbox, SandboxConfig
from batchrun.sandbox.ratelimit import FixedWindowLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_allows_limit_requests_then_refuses():
    limiter = FixedWindowLimiter(3, 60.0, clock=FakeClock())

    verdicts = [limiter.hit("k") for _ in range(4)]

    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]


def test_the_window_is_fixed_from_its_first_request():
    clock = FakeClock()
    limiter = FixedWindowLimiter(1, 60.0, clock=clock)
    limiter.hit("k")

    clock.now += 59.5
    late = limiter.hit("k")
    clock.now += 0.5
    fresh = limiter.hit("k")

    assert not late.allowed
    assert late.reset_header == 1  # 0.5 s, rounded up
    assert fresh.allowed
    assert fresh.reset_header == 60


def test_keys_have_separate_windows():
    limiter = FixedWindowLimiter(1, 60.0, clock=FakeClock())

    first, other, again = limiter.hit("a"), limiter.hit("b"), limiter.hit("a")

    assert (first.allowed, other.allowed, again.allowed) == (True, True, False)


async def test_over_the_limit_answers_429_with_retry_after():
    config = SandboxConfig(rate_limit=3, rate_window=60.0)
    async with Sandbox(config) as sandbox:
        headers = {"x-api-key": sandbox.api_key}
        async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as http:
            remaining = []
            for _ in range(3):
                async with http.get("/v1/apps") as response:
                    remaining.append(response.headers["RateLimit-Remaining"])
            async with http.get("/v1/apps") as refused:
                body = await refused.json()

    assert remaining == ["2", "1", "0"]
    assert refused.status == 429
    assert body["code"] == "RATE_LIMITED"
    assert body["retryable"] is True
    assert body["requestId"] == refused.headers["X-Request-Id"]
    retry_after = int(refused.headers["Retry-After"])
    assert 58 <= retry_after <= 60
    assert body["retryAfter"] == retry_after
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Reset"] == str(retry_after)
    assert sandbox.stats.rate_limited == 1
    assert sandbox.stats.requests["list_apps"] == 4


async def test_the_window_resets_on_the_scaled_clock():
    # 60 s times 0.005 = 0.3 s; usage reports the effective window.
    config = SandboxConfig(rate_limit=2, rate_window=60.0, time_scale=0.005)
    async with Sandbox(config) as sandbox:
        headers = {"x-api-key": sandbox.api_key}
        async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as http:
            statuses = []
            for _ in range(3):
                async with http.get("/v1/account/usage") as response:
                    statuses.append(response.status)
                    if response.status == 200:
                        usage = (await response.json())["data"]["rateLimit"]
            await asyncio.sleep(0.35)
            async with http.get("/v1/account/usage") as after:
                pass

    assert statuses == [200, 200, 429]
    assert usage == {"limit": 2, "windowMs": 300}
    assert after.status == 200
    assert after.headers["RateLimit-Remaining"] == "1"


async def test_requests_with_a_wrong_key_do_not_spend_the_real_keys_budget():
    config = SandboxConfig(rate_limit=2)
    async with (
        Sandbox(config) as sandbox,
        aiohttp.ClientSession(sandbox.base_url) as http,
    ):
        for _ in range(3):
            async with http.get("/v1/apps", headers={"x-api-key": "lma_wrong"}):
                pass
        async with http.get("/v1/apps", headers={"x-api-key": sandbox.api_key}) as ok:
            pass

    assert ok.status == 200
    assert ok.headers["RateLimit-Remaining"] == "1"
