"""How batchrun learns that runs finished, spending as few requests as it can.

Each strategy answers one question for the runner: `await source.result(run_id, app_id)`
returns the run, with its outputs, once it is terminal.

- `WaitSource` long-polls `GET /v1/runs/{id}/wait` per run (simple; 1-2 requests a run).
- `PollSource` lists runs in bulk: one `GET /v1/runs?appId=` page reports up to 100
  in-flight runs at once, then one read per finished run fetches its outputs. Its
  cadence follows how long runs take, and never spends more than a small share of the
  budget.
- `WebhookSource` (batchrun.webhook_source) believes verified deliveries and polls
  slowly as a safety net; `StreamSource` follows each run's SSE stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from batchrun.client import LaminaClient
from batchrun.errors import ApiError
from batchrun.times import format_time, parse_time

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "cancelled"})

# List requests may take at most one slot in this many of the request budget.
POLL_SHARE = 10
# Result reads sent at once by a poll round.
READS_IN_FLIGHT = 2
# How far the server's clock may be from ours when we bound a listing by local time.
CLOCK_SKEW = timedelta(seconds=120)

Progress = Callable[[str, dict[str, Any]], None]


class ResultSource(Protocol):
    """Tells the runner when a run is terminal, and gives back the full run."""

    async def result(self, run_id: str, app_id: str) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has really stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def is_terminal(run: dict[str, Any]) -> bool:
    return run.get("status") in TERMINAL


async def defer_to_waiting(
    client: LaminaClient, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> None:
    """Return once no other request waits for the budget; call before a result read.

    The budget is first come, first served, and a run start waits in it behind every
    read. But a run that ended can be read a little later at no cost to the batch,
    while a run started later finishes later: so reads let waiting requests (run
    starts, mostly) go first. Call it from one task at a time, or the readers wake
    together and crowd the starts out after all.
    """
    budget = client.budget
    while budget.waiting > 0:
        await sleep(60.0 / budget.rate)


class WaitSource:
    """One long-poll after another on each run."""

    def __init__(self, client: LaminaClient, *, timeout: int = 120) -> None:
        self._client = client
        self._timeout = timeout

    async def result(self, run_id: str, app_id: str) -> dict[str, Any]:
        while True:
            run, _timed_out = await self._client.wait_run(run_id, self._timeout)
            if is_terminal(run):
                return run

    async def aclose(self) -> None:
        return None


@dataclass
class _Watch:
    app_id: str
    future: asyncio.Future[dict[str, Any]]
    started: float  # local monotonic time the watch began
    submitted: datetime  # local wall time, as a bound for the listing
    created_at: str | None = None  # server time, once a listing showed it
    misses: int = 0  # listings in a row that should have shown the run and did not


class PollSource:
    """Bulk status polling: one listing covers every in-flight run of an app."""

    def __init__(
        self,
        client: LaminaClient,
        *,
        min_interval: float | None = None,
        max_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_status: Progress | None = None,
    ) -> None:
        self._client = client
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._clock = clock
        self._sleep = sleep
        self._on_status = on_status
        self._watched: dict[str, _Watch] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._durations: list[float] = []
        self._listed_at: float | None = None  # when the last round of listings began
        self.polls = 0

    async def result(self, run_id: str, app_id: str) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._watched[run_id] = _Watch(app_id, future, self._clock(), datetime.now(UTC))
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batchrun-poll")
        self._wake.set()
        try:
            return await future
        finally:
            self._watched.pop(run_id, None)

    async def aclose(self) -> None:
        await stop_task(self._task)
        self._task = None

    def interval(self) -> float:
        """Seconds to the next listing: soon enough to see runs end, cheap enough."""
        floor = self._min_interval
        if floor is None:
            floor = 60.0 / self._client.budget.rate * POLL_SHARE
        now = self._clock()
        # The floor runs from the start of the last listing, not from the end of the
        # reads that followed it: a long backlog of reads already kept the share low,
        # and idling after it would leave budget slots unused while runs wait.
        if self._listed_at is not None:
            floor = max(0.0, floor - (now - self._listed_at))
        if not self._watched or not self._durations:
            return floor
        expected = sorted(self._durations)[len(self._durations) // 2]
        due = min(w.started + expected - now for w in self._watched.values())
        return min(self._max_interval, max(floor, due))

    async def _loop(self) -> None:
        while True:
            if not self._watched:
                self._wake.clear()
                await self._wake.wait()
            await self._sleep(self.interval())
            self._listed_at = self._clock()
            apps = {w.app_id for w in self._watched.values()}
            for app_id in sorted(apps):
                try:
                    await self._poll_app(app_id)
                except Exception as exc:
                    for watch in list(self._watched.values()):
                        if watch.app_id == app_id and not watch.future.done():
                            watch.future.set_exception(exc)

    async def _poll_app(self, app_id: str) -> None:
        watches = {r: w for r, w in self._watched.items() if w.app_id == app_id}
        if not watches:
            return
        since = _listing_bound(watches.values())
        unseen = set(watches)
        finished: list[str] = []
        offset = 0
        while unseen:
            runs, page = await self._client.list_runs(
                app_id=app_id, since=since, limit=100, offset=offset
            )
            self.polls += 1
            for run in runs:
                run_id = str(run.get("runId"))
                watch = watches.get(run_id)
                if watch is None:
                    continue
                unseen.discard(run_id)
                watch.created_at = watch.created_at or run.get("createdAt")
                watch.misses = 0
                if is_terminal(run):
                    finished.append(run_id)
                    self._observe(watch, run)
            offset += len(runs)
            if not runs or offset >= int(page.get("total", 0)):
                break

        # A run the listing does not show (a server that lags, a clock far off, or a run
        # that no longer exists) is read directly after two misses, so none can hang the
        # batch; a run that is gone raises 404 to its waiter.
        for run_id in unseen:
            watches[run_id].misses += 1
        missing = [r for r in unseen if watches[r].misses >= 2]
        # Two reads in flight keep the budget busy (one waits for its slot while the
        # other's answer travels); the gate lets one at a time check that no run start
        # is waiting first (see defer_to_waiting).
        gate, slots = asyncio.Lock(), asyncio.Semaphore(READS_IN_FLIGHT)

        async def read(run_id: str) -> None:
            watch = watches[run_id]
            async with slots:
                async with gate:
                    await defer_to_waiting(self._client, self._sleep)
                try:
                    run = await self._client.get_run(run_id)
                except ApiError as exc:
                    if not watch.future.done():
                        watch.future.set_exception(exc)
                    return
            watch.misses = 0
            if is_terminal(run) and not watch.future.done():
                watch.future.set_result(run)

        outcomes = await asyncio.gather(
            *(read(r) for r in finished + missing), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _observe(self, watch: _Watch, run: dict[str, Any]) -> None:
        """Learn how long runs take, from a listing that shows one ended.

        The server's own timestamps when it gives them: our clock would count the
        wait for the listing, and the reads wait behind run starts (defer_to_waiting),
        so it would make runs look longer and the next listings come too late.
        """
        try:
            duration = (
                parse_time(str(run["completedAt"])) - parse_time(str(run["createdAt"]))
            ).total_seconds()
        except (KeyError, ValueError):
            duration = self._clock() - watch.started
        self._durations.append(max(0.0, duration))
        del self._durations[:-50]


def _listing_bound(watches: Any) -> str:
    """The `since` bound for a listing: just before the oldest watched run."""
    known = [w.created_at for w in watches if w.created_at]
    unknown = [w.submitted for w in watches if not w.created_at]
    bounds = []
    if known:
        oldest = min(parse_time(t) for t in known)
        bounds.append(oldest - timedelta(milliseconds=1))
    if unknown:
        bounds.append(min(unknown) - CLOCK_SKEW)
    return format_time(min(bounds))
