"""Learning results from Lamina's webhooks: about one request per job.

A delivery carries the whole run, outputs included, so a run whose webhook arrives costs
nothing beyond its start. `WebhookSource` runs a `WebhookReceiver` (batchrun.webhooks),
which checks signatures, timestamps and duplicates, and resolves the runner's waits from
it.

Webhooks can be lost (a receiver that was down, a tunnel that dropped, a delivery that
gave up), so a slow safety check looks at runs that have waited much longer than runs
usually take: a run the API reports finished is read directly. A lost webhook costs a
batch some time and two requests, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from batchrun.client import LaminaClient
from batchrun.results import TERMINAL, is_terminal, stop_task
from batchrun.times import format_time
from batchrun.webhooks import WebhookReceiver

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:0"
DEFAULT_PATH = "/lamina-webhook"
# With no run finished yet, a run is looked at after this many seconds without news.
SAFETY_INTERVAL = 60.0
# Safety checks are at least this many request slots apart (a slot is 60 / rate s).
SAFETY_SLOTS = 60
# A run is overdue once it has waited this many times the median run so far.
PATIENCE_FACTOR = 2.0
# Up to this many overdue runs are read one by one; more are found with a listing.
DIRECT_READS = 3
# Deliveries for runs no one waits for yet are kept this long, and at most this many.
EARLY_KEEP_SECONDS = 600.0
EARLY_KEEP_COUNT = 10_000
CLOCK_SKEW = timedelta(seconds=120)


@dataclass
class _Watch:
    app_id: str
    future: asyncio.Future[dict[str, Any]]
    started: float  # local monotonic time result() was called
    submitted: datetime  # local wall time, to bound a listing
    checked: float  # when the run was last looked at (or the watch began)


class WebhookSource:
    """Resolves runs from verified webhook deliveries; an async context manager.

    ::

        async with WebhookSource(client, public_url=None) as source:
            run_id = (await client.create_run(app, inputs, webhook=source.webhook_url))
            run = await source.result(run_id, app)

    `public_url` is the URL Lamina posts to, which must reach `listen` (a tunnel or a
    reverse proxy); None means Lamina can reach `listen` directly (the sandbox), and the
    receiver's own URL is used. The receiver serves the public URL's path.
    """

    def __init__(
        self,
        client: LaminaClient,
        *,
        public_url: str | None = None,
        listen: str | None = None,
        safety_interval: float = SAFETY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = urlsplit(public_url).path if public_url else ""
        self._client = client
        self._public_url = public_url
        self._safety_interval = safety_interval
        self._clock = clock
        self._receiver = WebhookReceiver(
            fetch_keys=client.signing_keys,
            on_run=self._on_run,
            listen=listen or DEFAULT_LISTEN,
            path=path if path.startswith("/") else DEFAULT_PATH,
        )
        self._watched: dict[str, _Watch] = {}
        self._early: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._durations: list[float] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self.delivered = 0  # runs resolved by a webhook
        self.recovered = 0  # runs resolved by the safety check

    @property
    def receiver(self) -> WebhookReceiver:
        """The receiver (for its `stats` and `local_url`)."""
        return self._receiver

    @property
    def webhook_url(self) -> str:
        """The URL to pass as `?webhook=` on every run start."""
        return self._public_url or self._receiver.local_url

    async def __aenter__(self) -> WebhookSource:
        self._wake = asyncio.Event()
        await self._receiver.__aenter__()
        try:
            # Before any run starts, so the first delivery is checked without a fetch.
            await self._receiver.load_keys()
        except BaseException:
            await self._receiver.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the safety check and the receiver."""
        await stop_task(self._task)
        self._task = None
        await self._receiver.__aexit__(None, None, None)

    async def result(self, run_id: str, app_id: str) -> dict[str, Any]:
        """The run, with its outputs, once a webhook (or the safety check) says so."""
        early = self._early.pop(run_id, None)
        if early is not None:
            self.delivered += 1
            return early[1]

        now = self._clock()
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._watched[run_id] = _Watch(app_id, future, now, datetime.now(UTC), now)
        if self._task is None:
            self._task = asyncio.create_task(
                self._safety_loop(), name="batchrun-safety"
            )
        self._poke()
        try:
            return await future
        finally:
            self._watched.pop(run_id, None)

    def _on_run(self, run: dict[str, Any]) -> None:
        run_id = str(run.get("runId"))
        if not is_terminal(run):
            # Lamina sends webhooks for ended runs only; anything else is not news.
            log.debug(
                "webhook.not_terminal run=%s status=%s", run_id, run.get("status")
            )
            return

        watch = self._watched.get(run_id)
        if watch is None:
            # The run start's answer may still be on its way to the runner.
            self._keep_early(run_id, run)
            return
        if not watch.future.done():
            self.delivered += 1
            self._observe(self._clock() - watch.started)
            watch.future.set_result(run)

    def _keep_early(self, run_id: str, run: dict[str, Any]) -> None:
        now = self._clock()
        self._early[run_id] = (now, run)
        while self._early:
            oldest_id, (arrived, _) = next(iter(self._early.items()))
            if (
                len(self._early) <= EARLY_KEEP_COUNT
                and now - arrived < EARLY_KEEP_SECONDS
            ):
                break
            del self._early[oldest_id]

    def _observe(self, duration: float) -> None:
        self._durations.append(duration)
        del self._durations[:-50]
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the safety check ---------------------------------------------------------

    def patience(self) -> float:
        """Seconds a run may wait without news before the safety check looks at it."""
        floor = self._slots(SAFETY_SLOTS)
        if not self._durations:
            return max(floor, self._safety_interval)
        return max(floor, PATIENCE_FACTOR * statistics.median(self._durations))

    def _slots(self, count: int) -> float:
        return 60.0 / self._client.budget.rate * count

    async def _safety_loop(self) -> None:
        assert self._wake is not None, "result() runs inside the context"
        last_check = self._clock()
        while True:
            now = self._clock()
            patience = self.patience()
            due = min(
                (w.checked + patience for w in self._watched.values()), default=None
            )
            if due is None:
                wait_for: float | None = None
            else:
                wait_for = max(due, last_check + self._slots(SAFETY_SLOTS)) - now
            if wait_for is None or wait_for > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_for)
                continue

            last_check = self._clock()
            overdue = {
                run_id: w
                for run_id, w in self._watched.items()
                if last_check - w.checked >= patience and not w.future.done()
            }
            try:
                await self._check(overdue)
            except Exception as exc:  # hand it to the runs it concerns
                for watch in overdue.values():
                    if not watch.future.done():
                        watch.future.set_exception(exc)

    async def _check(self, overdue: dict[str, _Watch]) -> None:
        """Read the overdue runs that finished; mark the rest as looked at."""
        if len(overdue) <= DIRECT_READS:
            finished = list(overdue)
        else:
            finished = await self._finished_by_listing(overdue)
        for watch in overdue.values():
            watch.checked = self._clock()

        for run_id in finished:
            watch = overdue[run_id]
            if watch.future.done():
                continue  # its webhook came while we were listing
            run = await self._client.get_run(run_id)
            if is_terminal(run) and not watch.future.done():
                self._recover(run_id, watch, run)

    async def _finished_by_listing(self, overdue: dict[str, _Watch]) -> list[str]:
        """Overdue runs a listing shows as ended, plus those no listing shows at all."""
        unseen = set(overdue)
        finished: list[str] = []
        for app_id in sorted({w.app_id for w in overdue.values()}):
            mine = {r for r, w in overdue.items() if w.app_id == app_id}
            oldest = min(overdue[r].submitted for r in mine)
            since = format_time(oldest - CLOCK_SKEW)
            offset = 0
            while mine & unseen:
                runs, page = await self._client.list_runs(
                    app_id=app_id, since=since, limit=100, offset=offset
                )
                for run in runs:
                    run_id = run.get("runId")
                    if run_id in mine:
                        unseen.discard(run_id)
                        if run.get("status") in TERMINAL:
                            finished.append(run_id)
                offset += len(runs)
                if not runs or offset >= int(page.get("total", 0)):
                    break
        # A run older than the listing's bound (one resumed from an earlier process)
        # is read directly.
        return finished + sorted(unseen)

    def _recover(self, run_id: str, watch: _Watch, run: dict[str, Any]) -> None:
        self.recovered += 1
        log.warning(
            "webhook.missing run=%s ended %s but no webhook arrived; read it directly",
            run_id,
            run.get("status"),
        )
        if not self._warned and self.delivered == 0 and self.recovered >= 3:
            self._warned = True
            log.warning(
                "webhook.none_arrived %d runs ended and no webhook reached %s; check "
                "that --webhook-url reaches --webhook-listen; batchrun keeps checking "
                "every %.0f s meanwhile",
                self.recovered,
                self.webhook_url,
                self.patience(),
            )
        watch.future.set_result(run)
