"""The request budget: spacing, server headers, Retry-After."""

from __future__ import annotations

import asyncio
import time

import pytest

from batchrun.limits import RequestBudget, parse_retry_after


async def test_requests_are_spaced_so_no_window_sees_more_than_the_rate():
    budget = RequestBudget(1200)  # one request every 50 ms
    started = time.monotonic()

    for _ in range(6):
        await budget.acquire()

    # Five gaps of 50 ms at the least: a burst of six would take no time at all.
    assert time.monotonic() - started >= 0.25
    assert budget.sent == 6


async def test_a_429_pauses_everyone_until_retry_after(fake_time):
    budget = RequestBudget(
        60_000,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        jitter=lambda: 0.5,
        max_jitter=1.0,
    )

    delay = budget.observe(429, {"Retry-After": "7"})
    await budget.acquire()

    assert delay == 7
    assert budget.rate_limited == 1
    assert fake_time.slept == [7.5]


async def test_remaining_zero_waits_for_the_reset(fake_time):
    budget = RequestBudget(
        60_000, clock=fake_time.clock, sleep=fake_time.sleep, jitter=lambda: 0.0
    )

    budget.observe(200, {"RateLimit-Remaining": "0", "RateLimit-Reset": "12"})
    state = budget.state
    await budget.acquire()

    assert state == "window"
    assert fake_time.slept == [12]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0", 0.0), (" 2.5 ", 2.5), ("soon", None), ("", None), (None, None)],
    ids=["seconds", "zero", "spaces", "garbage", "empty", "missing"],
)
def test_parse_retry_after_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date():
    now = 1_700_000_000.0
    header = "Tue, 14 Nov 2023 22:13:40 GMT"  # now + 20 s

    assert parse_retry_after(header, now=now) == pytest.approx(20.0)


async def test_waiters_are_counted_while_they_wait():
    budget = RequestBudget(600)  # 100 ms apart
    await budget.acquire()

    waiter = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0.01)
    waiting = budget.waiting
    await waiter

    assert waiting == 1
    assert budget.waiting == 0
