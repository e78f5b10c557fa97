"""Runs: the store, the API shapes, and the simulated lifecycle that drives them.

A run goes queued -> running (startedAt) -> its outputs finish one at a time ->
completed (some outputs may have errored) or failed (all errored; errorMessage set);
completedAt is set on every terminal status (Decisions 2 and 3). Each run is driven
by one asyncio task; its timings and simulated failures come from an RNG seeded by
(seed, creation order), so a given seed replays the same batch the same way.

A run's schedule is anchored to its createdAt and startedAt (wall clock), so a run
loaded from a state dir resumes as if the sandbox had never stopped: the downtime
counts as elapsed, and whatever fell due meanwhile happens at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batchrun.apps import App
from batchrun.sandbox.catalog import SandboxApp
from batchrun.sandbox.config import SandboxConfig
from batchrun.sandbox.envelope import iso_time, now_ms
from batchrun.sandbox.media import FetchedMedia, MediaFetcher
from batchrun.sandbox.render import Rendered, RenderError, render_output
from batchrun.sandbox.storage import Storage

logger = logging.getLogger(__name__)

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
SIMULATED_FAILURE = "Simulated failure (the sandbox's failure_rate)"
SIMULATED_OUTPUT_ERROR = "Simulated output error (the sandbox's output_error_rate)"
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Output:
    """One output of a run, as it changes from pending to its final state."""

    id: str
    label: str
    type: str = "pending"
    value: str | None = None
    status: str = "pending"
    error: str | None = None
    path: str | None = None  # the storage path of a media value, which outlives ports

    def to_api(self) -> dict[str, Any]:
        """The output object of the API."""
        return {
            "id": self.id,
            "label": self.label,
            "type": self.type,
            "value": self.value,
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class RunPlan:
    """What the simulation will do with a run, drawn once when it is created."""

    queue_seconds: float  # real seconds, time_scale applied
    run_seconds: float
    fail: bool
    output_errors: tuple[bool, ...]


@dataclass
class Run:
    """One run and everything the API reports about it."""

    run_id: str
    app: SandboxApp
    inputs: dict[str, str]  # every parameter, defaults filled in
    outputs: list[Output]
    plan: RunPlan
    created_at: datetime
    sequence: int
    webhook_url: str | None = None
    status: str = "queued"
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    version: int = 0
    _on_change: Callable[[Run], None] | None = field(default=None, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _subscribers: list[asyncio.Queue[dict[str, Any] | None]] = field(
        default_factory=list, repr=False
    )

    @property
    def terminal(self) -> bool:
        """Whether the run has reached completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    def touch(self) -> None:
        """Record a change and wake everyone waiting for one (wait, SSE)."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        if self._subscribers:
            snapshot = self.to_api()
            for queue in self._subscribers:
                queue.put_nowait(snapshot)
        if self._on_change is not None:
            self._on_change(self)

    def wake(self) -> None:
        """Wake every waiter without a change (the sandbox is shutting down).

        Subscribers receive None, meaning "stop listening".
        """
        self._changed.set()
        self._changed = asyncio.Event()
        for queue in self._subscribers:
            queue.put_nowait(None)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue that receives the run object after every change, none missed."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Stop feeding `queue` (a stream ended)."""
        if queue in self._subscribers:
            self._subscribers.remove(queue)

    async def changed_since(self, version: int, timeout: float) -> bool:
        """Wait until the run's version passes `version`; False on timeout."""
        if self.version != version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def to_api(self) -> dict[str, Any]:
        """The run as `GET /v1/runs/{runId}` returns it under "data"."""
        return {
            "runId": self.run_id,
            "workflowId": self.app.app_id,
            "status": self.status,
            "outputs": [o.to_api() for o in self.outputs],
            "errorMessage": self.error_message,
            "startedAt": _iso_or_none(self.started_at),
            "completedAt": _iso_or_none(self.completed_at),
            "createdAt": iso_time(self.created_at),
        }

    def to_created(self) -> dict[str, Any]:
        """The run as the 202 of `POST /v1/apps/{appId}/runs` returns it."""
        return {
            "runId": self.run_id,
            "workflowId": self.app.app_id,
            "workflowName": self.app.name,
            "status": self.status,
            "webhookUrl": self.webhook_url,
            "outputs": [o.to_api() for o in self.outputs],
        }

    def to_summary(self) -> dict[str, Any]:
        """The run as an item of `GET /v1/runs` (no outputs)."""
        return {
            "runId": self.run_id,
            "workflowId": self.app.app_id,
            "status": self.status,
            "source": "api_app",
            "errorMessage": self.error_message,
            "startedAt": _iso_or_none(self.started_at),
            "completedAt": _iso_or_none(self.completed_at),
            "createdAt": iso_time(self.created_at),
        }


def _iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso_time(moment)


def _age(moment: datetime) -> float:
    """Seconds since `moment` (never negative, should the wall clock step back)."""
    return max(0.0, (now_ms() - moment).total_seconds())


class RunStore:
    """Every run the sandbox created, by id and in creation order.

    `on_change(run)` hears of every new run and every change to one (the state
    journal listens here).
    """

    def __init__(
        self, config: SandboxConfig, on_change: Callable[[Run], None] | None = None
    ) -> None:
        self._config = config
        self._on_change = on_change
        self._runs: dict[str, Run] = {}
        self._next_sequence = 0

    def create(
        self, app: SandboxApp, inputs: dict[str, str], webhook_url: str | None
    ) -> Run:
        """A new queued run with its outputs' placeholders and its simulation plan."""
        sequence = self._next_sequence
        self._next_sequence += 1
        rng = random.Random(f"{self._config.seed}:{sequence}")
        created_at = now_ms()
        stamp = int(created_at.timestamp() * 1000)
        outputs = [
            Output(
                id=f"{node_name(spec.label)}-{stamp}-{_base36(rng, 9)}",
                label=spec.label,
            )
            for spec in app.outputs
        ]
        run = Run(
            # Random, not seeded: a restarted sandbox must never reuse an id a client
            # may still hold in a manifest.
            run_id=str(uuid.uuid4()),
            app=app,
            inputs=inputs,
            outputs=outputs,
            plan=self._plan(rng, len(outputs)),
            created_at=created_at,
            sequence=sequence,
            webhook_url=webhook_url,
            _on_change=self._on_change,
        )
        self._runs[run.run_id] = run
        if self._on_change is not None:
            self._on_change(run)
        return run

    def restore(self, runs: list[Run]) -> None:
        """Take back runs a previous sandbox saved; new runs are numbered after them."""
        for run in runs:
            run._on_change = self._on_change
            self._runs[run.run_id] = run
            self._next_sequence = max(self._next_sequence, run.sequence + 1)

    def runs(self) -> list[Run]:
        """Every run, in creation order."""
        return sorted(self._runs.values(), key=lambda run: run.sequence)

    def get(self, run_id: str) -> Run | None:
        """The run with this id, or None."""
        return self._runs.get(run_id)

    def wake_all(self) -> None:
        """Release every long-poll and stream (see Run.wake)."""
        for run in self._runs.values():
            run.wake()

    def query(
        self,
        *,
        status: str | None = None,
        app_id: str | None = None,
        since: datetime | None = None,
        limit: int = 25,
        offset: int = 0,
    ) -> tuple[list[Run], int]:
        """One page of runs, newest first, and how many match the filters in all."""
        matching = [
            run
            for run in self._runs.values()
            if (status is None or run.status == status)
            and (app_id is None or run.app.app_id == app_id)
            and (since is None or run.created_at > since)
        ]
        matching.sort(key=lambda run: (run.created_at, run.sequence), reverse=True)
        return matching[offset : offset + limit], len(matching)

    def _plan(self, rng: random.Random, count: int) -> RunPlan:
        config = self._config
        low, high = config.run_seconds
        fail = rng.random() < config.failure_rate
        return RunPlan(
            queue_seconds=config.scaled(config.queue_seconds),
            run_seconds=config.scaled(rng.uniform(low, high)),
            fail=fail,
            output_errors=tuple(
                rng.random() < config.output_error_rate for _ in range(count)
            ),
        )


def node_name(label: str) -> str:
    """The node part of an output id: "AI Designer" -> "aiDesignerNode"."""
    words = re.findall(r"[A-Za-z0-9]+", label)
    if not words:
        return "outputNode"
    head = words[0].lower()
    tail = "".join(w[:1].upper() + w[1:].lower() for w in words[1:])
    return f"{head}{tail}Node"


def _base36(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_BASE36) for _ in range(length))


RenderKey = tuple[str, int, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


class RenderCache:
    """Rendered outputs by (app, index, inputs, media digests), computed at most once.

    A 300-run benchmark mostly repeats a handful of input combinations, so each is
    rendered once; concurrent runs asking for the same key share one render.
    """

    def __init__(self) -> None:
        self._entries: dict[RenderKey, asyncio.Future[Rendered]] = {}
        self.renders = 0

    async def get(
        self,
        app: SandboxApp,
        index: int,
        inputs: Mapping[str, str],
        media: FetchedMedia,
    ) -> Rendered:
        """The output, rendering it in a worker thread the first time."""
        digests = tuple(
            sorted((k, hashlib.sha256(v).hexdigest()) for k, v in media.data.items())
        )
        key: RenderKey = (app.app_id, index, tuple(sorted(inputs.items())), digests)
        entry = self._entries.get(key)
        if entry is None:
            entry = asyncio.ensure_future(self._render(app, index, inputs, media))
            self._entries[key] = entry
        try:
            # shield: one run being cancelled must not cancel a render others await.
            return await asyncio.shield(entry)
        except BaseException:
            # Only successes are cached: a failed render may succeed next time
            # (e.g. after a fixed upload), so a later run tries again.
            if entry.done() and (entry.cancelled() or entry.exception() is not None):
                self._entries.pop(key, None)
            raise

    async def close(self) -> None:
        """Cancel renders still in flight (their threads finish on their own)."""
        pending = [entry for entry in self._entries.values() if not entry.done()]
        for entry in pending:
            entry.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _render(
        self,
        app: SandboxApp,
        index: int,
        inputs: Mapping[str, str],
        media: FetchedMedia,
    ) -> Rendered:
        self.renders += 1
        return await asyncio.to_thread(
            render_output, app, index, dict(inputs), dict(media.data)
        )


class RunSimulator:
    """Drives every run through its lifecycle with one asyncio task per run."""

    def __init__(
        self,
        storage: Storage,
        media: MediaFetcher,
        on_terminal: Callable[[Run], None],
    ) -> None:
        self._storage = storage
        self._media = media
        self._on_terminal = on_terminal
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.cache = RenderCache()

    def start(self, run: Run) -> None:
        """Begin driving `run` in the background."""
        task = asyncio.create_task(self._drive(run), name=f"sandbox-run-{run.run_id}")
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.run_id, None))

    def cancel(self, run: Run) -> bool:
        """End `run` as cancelled (pending outputs too); False if already terminal."""
        if run.terminal:
            return False
        task = self._tasks.pop(run.run_id, None)
        if task is not None:
            task.cancel()
        for output in run.outputs:
            if output.status == "pending":
                output.status = "cancelled"
        self._finish(run, "cancelled")
        return True

    async def close(self) -> None:
        """Stop every run task (runs keep the state they had reached)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.cache.close()

    async def _drive(self, run: Run) -> None:
        try:
            await self._lifecycle(run)
        except Exception as exc:
            # A sandbox bug must not leave a run "running" for ever: clients would
            # wait on it until their own timeouts.
            logger.exception("sandbox.run.crash run=%s", run.run_id)
            if not run.terminal:
                for output in run.outputs:
                    if output.status == "pending":
                        output.status = "error"
                        output.error = f"sandbox internal error: {exc}"
                run.error_message = f"sandbox internal error: {exc}"
                self._finish(run, "failed")

    async def _lifecycle(self, run: Run) -> None:
        loop = asyncio.get_running_loop()
        if run.status == "queued":
            # Measured from createdAt, not from now: a run loaded after a restart
            # has been queued all the while the sandbox was down.
            await asyncio.sleep(max(0.0, run.plan.queue_seconds - _age(run.created_at)))
            run.status = "running"
            run.started_at = now_ms()
            run.touch()
            logger.debug("sandbox.run.running run=%s app=%s", run.run_id, run.app.name)

        assert run.started_at is not None
        started = loop.time() - _age(run.started_at)
        count = len(run.outputs)
        media: FetchedMedia | None = None
        for index, output in enumerate(run.outputs):
            if output.status != "pending":
                continue  # settled before the sandbox restarted
            if media is None and not self._doomed(run, index):
                media = await self._media.fetch(App.from_api(run.app.app), run.inputs)
            outcome = await self._produce(run, index, media)
            due = started + run.plan.run_seconds * (index + 1) / count
            await asyncio.sleep(max(0.0, due - loop.time()))
            self._settle(run, output, index, outcome)
            run.touch()

        failed = all(o.status == "error" for o in run.outputs)
        if failed:
            first = next((o.error for o in run.outputs if o.error), "")
            run.error_message = f"All {count} outputs failed: {first}"
        self._finish(run, "failed" if failed else "completed")

    def _doomed(self, run: Run, index: int) -> bool:
        return run.plan.fail or run.plan.output_errors[index]

    async def _produce(
        self, run: Run, index: int, media: FetchedMedia | None
    ) -> Rendered | str:
        """The output's file, or the error message it ends with."""
        if run.plan.fail:
            return SIMULATED_FAILURE
        if run.plan.output_errors[index]:
            return SIMULATED_OUTPUT_ERROR
        assert media is not None  # fetched before any output that is not doomed
        if media.problems:
            return "; ".join(media.problems.values())

        try:
            return await self.cache.get(run.app, index, run.inputs, media)
        except RenderError as exc:
            return str(exc)
        except Exception as exc:
            # A renderer bug must end one output, not kill the run task silently.
            logger.exception("sandbox.render.crash run=%s output=%d", run.run_id, index)
            return f"internal renderer error: {type(exc).__name__}: {exc}"

    def _settle(
        self, run: Run, output: Output, index: int, outcome: Rendered | str
    ) -> None:
        if isinstance(outcome, str):
            output.status = "error"
            output.error = outcome
            return

        spec = run.app.outputs[index]
        output.type = spec.type
        if spec.type == "text" and outcome.text is not None:
            output.value = outcome.text
        else:
            output.path = self._storage.put_output(
                run.run_id, output.id, outcome.ext, outcome.data, outcome.content_type
            )
            output.value = self._storage.url_for(output.path)
        output.status = "completed"

    def _finish(self, run: Run, status: str) -> None:
        run.status = status
        run.completed_at = now_ms()
        run.touch()
        logger.info("sandbox.run.%s run=%s app=%s", status, run.run_id, run.app.name)
        self._on_terminal(run)
