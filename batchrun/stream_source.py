"""Following each run's event stream: live per-output progress, two requests a job.

`GET /v1/runs/{id}/stream` sends the run whenever it changes and the final run when it
ends, so one request per run both reports progress and delivers the outputs. A stream
that breaks off is opened again (an ended run answers its final event at once); after
too many breaks in a row the run is read with `get_run` and then long-polled, so a flaky
connection slows a job down but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from batchrun.client import LaminaClient, normalize_run
from batchrun.errors import ApiError, TransportError
from batchrun.results import defer_to_waiting, is_terminal
from batchrun.sse import Event

log = logging.getLogger(__name__)

# What opening or reading a stream can raise that another attempt may cure: a broken
# connection, a 429 (the budget has paused by then) or a 5xx at open.
_BREAKS: tuple[type[BaseException], ...] = (TransportError, ApiError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status == 429 or (exc.status or 0) >= 500
    return True


# Consecutive breaks of one run's stream before it is read and long-polled instead.
MAX_BREAKS = 3
# Streams opening at once; more let more of them slip in between run starts.
OPENING_AT_ONCE = 1
FINAL_EVENTS = frozenset({"complete", "error"})


@dataclass(frozen=True)
class OutputProgress:
    """How many of a run's outputs have finished (completed or in error)."""

    finished: int
    total: int


class StreamSource:
    """Results from each run's SSE stream, with outputs counted as they finish."""

    def __init__(
        self,
        client: LaminaClient,
        *,
        max_breaks: int = MAX_BREAKS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._max_breaks = max_breaks
        self._sleep = sleep
        self.progress: dict[str, OutputProgress] = {}  # run id -> counts, while running
        self.reconnects = 0
        # The gate lets one opener at a time check that no run start waits first.
        self._opening = asyncio.Semaphore(OPENING_AT_ONCE)
        self._gate = asyncio.Lock()

    def outputs(self) -> OutputProgress:
        """Finished and total outputs over the runs being followed right now."""
        return OutputProgress(
            sum(p.finished for p in self.progress.values()),
            sum(p.total for p in self.progress.values()),
        )

    async def result(self, run_id: str, app_id: str) -> dict[str, Any]:
        """Follow the run's stream until its final event; the final run."""
        try:
            return await self._follow(run_id)
        finally:
            self.progress.pop(run_id, None)

    async def aclose(self) -> None:
        return None

    async def _follow(self, run_id: str) -> dict[str, Any]:
        breaks = 0
        while breaks < self._max_breaks:
            try:
                run = await self._read_stream(run_id)
            except _BREAKS as exc:
                if not _transient(exc):
                    raise
                breaks += 1
                self.reconnects += 1
                log.warning(
                    "stream.broken run=%s break=%d/%d (%s); opening it again",
                    run_id,
                    breaks,
                    self._max_breaks,
                    exc.__class__.__name__,
                )
                await self._sleep(self._client.retry.delay(breaks))
                continue
            if run is not None:
                return run
            # The stream ended cleanly without a final event (the server's 10-minute
            # stream timeout, or a proxy closing idle streams): not a fault, go on.

        log.warning(
            "stream.gave_up run=%s after %d breaks; reading the run instead",
            run_id,
            breaks,
        )
        run = await self._client.get_run(run_id)
        while not is_terminal(run):
            run, _timed_out = await self._client.wait_run(run_id)
        return run

    async def _open(self, run_id: str) -> AsyncGenerator[Event, None]:
        """The run's events, opened once run starts waiting for the budget have gone.

        Streams wait their turn, OPENING_AT_ONCE at a time, so they never crowd out
        run starts: a run started late ends late, a stream opened late only shows
        progress later (an ended run answers its final event at once).
        """
        # stream_run is an async generator: close it, and its response, when done.
        stream = cast(AsyncGenerator[Event, None], self._client.stream_run(run_id))
        async with contextlib.aclosing(stream) as events:
            async with self._opening:
                async with self._gate:
                    await defer_to_waiting(self._client, self._sleep)
                first = await anext(events, None)
            if first is None:
                return
            yield first
            async for event in events:
                yield event

    async def _read_stream(self, run_id: str) -> dict[str, Any] | None:
        """The final run, or None when the stream ended before the run did."""
        async with contextlib.aclosing(self._open(run_id)) as events:
            async for event in events:
                if event.event == "timeout":
                    return None  # the server's stream limit: reconnect
                run = self._run_of(run_id, event)
                if run is not None:
                    self._count(run_id, run)
                    if event.event in FINAL_EVENTS or is_terminal(run):
                        return run
        return None

    def _run_of(self, run_id: str, event: Event) -> dict[str, Any] | None:
        """The run object an event carries, or None for pings and unknown events."""
        if event.event not in FINAL_EVENTS and event.event != "progress":
            if event.event != "ping":
                log.debug("stream.unknown_event run=%s event=%s", run_id, event.event)
            return None
        try:
            run = event.json()
        except ValueError:
            log.warning(
                "stream.bad_event run=%s event=%s: data is not JSON; skipped",
                run_id,
                event.event,
            )
            return None
        return normalize_run(run) if isinstance(run, dict) else None

    def _count(self, run_id: str, run: dict[str, Any]) -> None:
        outputs = run.get("outputs") or []
        finished = sum(1 for o in outputs if o.get("status") not in (None, "pending"))
        self.progress[run_id] = OutputProgress(finished, len(outputs))
