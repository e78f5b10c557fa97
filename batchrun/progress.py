"""Live progress on stderr: a bar on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchrun.results import stop_task
from batchrun.runner import Runner
from batchrun.stream_source import StreamSource

PLAIN_EVERY = 10.0


class ProgressDisplay:
    """Shows a runner's tally while it works; an async context manager."""

    def __init__(
        self,
        runner: Runner,
        *,
        stream: IO[str] | None = None,
        live: bool | None = None,
        plain_every: float = PLAIN_EVERY,
    ) -> None:
        self._runner = runner
        self._stream = stream or sys.stderr
        self._live_enabled = self._stream.isatty() if live is None else live
        self._plain_every = plain_every
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._started = time.monotonic()

    async def __aenter__(self) -> ProgressDisplay:
        if self._live_enabled:
            console = Console(file=self._stream)
            self._live = Live(self._render(), console=console, refresh_per_second=4)
            self._live.start()
        self._task = asyncio.create_task(self._refresh(), name="batchrun-progress")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await stop_task(self._task)
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
        else:
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    async def _refresh(self) -> None:
        while True:
            if self._live is not None:
                await asyncio.sleep(0.25)
                self._live.update(self._render())
            else:
                await asyncio.sleep(self._plain_every)
                self._stream.write(self.line() + "\n")
                self._stream.flush()

    def counts(self) -> dict[str, int]:
        tally = self._runner.tally
        phases, outcomes = tally.phases, tally.outcomes
        running = phases["running"]
        busy = phases["submitting"] + running + phases["downloading"]
        return {
            "queued": max(0, phases["queued"]),
            # In a worker but between steps: waiting its app's turn to submit, being
            # looked for after a lost answer, or being read back.
            "waiting": max(0, phases["working"] - busy),
            "submitting": phases["submitting"],
            "running": running,
            "downloading": phases["downloading"],
            "done": outcomes["done"] + outcomes["partial"],
            "failed": outcomes["failed"]
            + outcomes["download_failed"]
            + outcomes["skipped_failed"],
            "not submitted": outcomes["not_submitted"],
        }

    def idle_reason(self) -> str:
        """Why nothing seems to move, when that is the case."""
        runner = self._runner
        budget = runner.client.budget
        state = budget.state
        if state == "backoff":
            return "backing off after a 429"
        if state == "window":
            return "waiting for the rate window"
        if runner.tally.stop_reason:
            return "submissions stopped: " + runner.tally.stop_reason
        counts = self.counts()
        if counts["running"] and not counts["submitting"] and not counts["downloading"]:
            return "waiting on runs"
        return ""

    def outputs(self) -> str:
        """Outputs finished over the runs in flight ("outputs 7/12"), when streaming."""
        source = self._runner.source
        if not isinstance(source, StreamSource):
            return ""
        progress = source.outputs()
        if not progress.total:
            return ""
        return f"outputs {progress.finished}/{progress.total}"

    def line(self) -> str:
        """One plain-text progress line."""
        counts = self.counts()
        parts = [f"{name} {n}" for name, n in counts.items() if n or name == "done"]
        if outputs := self.outputs():
            parts.append(outputs)
        budget = self._runner.client.budget
        elapsed = time.monotonic() - self._started
        text = (
            f"batchrun: {' · '.join(parts)} · {budget.sent} requests"
            f" · {budget.rate_limited}x429 · {elapsed:.0f}s"
        )
        reason = self.idle_reason()
        return f"{text} · {reason}" if reason else text

    def _render(self) -> Table:
        counts = self.counts()
        total = len(self._runner.plan.steps)
        finished = counts["done"] + counts["failed"]
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            ProgressBar(total=max(total, 1), completed=finished, width=40),
            Text(f"{finished}/{total}"),
        )
        grid.add_row(Text(self.line().removeprefix("batchrun: "), style="dim"), "")
        return grid
