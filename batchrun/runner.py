"""Executing a plan: upload, submit, learn results, download; recording every step.

Concurrency: `concurrency` workers each carry one job from submission to its last
download, so memory grows with the jobs in flight, not with the size of the batch.

Never paying twice: run starts for one app are sent one at a time, and each is recorded
as "submitting" (fsynced) before it is sent. So at any moment at most one start per app
has an unknown outcome, and after a lost answer or a crash the run it may have created
is the one run of that app, created since then, that the manifest does not know.
`_reconcile` looks for exactly that before anything is sent again; two or more such runs
(someone else is using the app with this key) make the job fail as ambiguous rather than
risk a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from batchrun.apps import App
from batchrun.client import LaminaClient
from batchrun.download import download, file_digest, upload, write_atomically
from batchrun.errors import (
    ApiError,
    BatchrunError,
    DownloadFailed,
    QuotaExhausted,
    SubmissionUncertain,
)
from batchrun.jobs import Job
from batchrun.manifest import JobState, Manifest
from batchrun.naming import output_ext, output_path, with_suffix_number
from batchrun.plan import DONE, FAILED, RETRY, Plan, Step
from batchrun.results import ResultSource, is_terminal
from batchrun.retries import RetryPolicy
from batchrun.templates import Template
from batchrun.times import format_time, parse_time

log = logging.getLogger(__name__)

# How far apart we allow the server's clock and ours to be when looking for the run a
# lost start created: small when the Date header told us the offset, wide otherwise.
RECONCILE_MARGIN = timedelta(seconds=3)
RECONCILE_SKEW = timedelta(seconds=120)

MEDIA_TYPES = {"image": "image", "video": "video", "audio": "audio"}


class JobFailed(BatchrunError):
    """Internal: this job is over, recorded as failed; the batch goes on."""


@dataclass
class Tally:
    """Live counts for the progress display and the summary."""

    phases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    # (job key, app name, reason) of every job that did not fully complete
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    output_errors: int = 0
    idle_reason: str = ""
    stop_reason: str = ""


class Runner:
    """Carries a plan's pending steps through to downloaded files."""

    def __init__(
        self,
        *,
        client: LaminaClient,
        storage: aiohttp.ClientSession,
        manifest: Manifest,
        plan: Plan,
        source: ResultSource,
        output_dir: Path,
        filename: Template,
        concurrency: int,
        retry: RetryPolicy,
        webhook_url: str | None = None,
        resumed_source: ResultSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.storage = storage
        self.manifest = manifest
        self.plan = plan
        self.source = source
        self.resumed_source = resumed_source or source
        self.output_dir = output_dir
        self.filename = filename
        self.concurrency = concurrency
        self.retry = retry
        self.webhook_url = webhook_url
        self.clock = clock
        self.tally = Tally()
        self._app_locks: dict[str, asyncio.Lock] = {}
        self._claimed: dict[str, tuple[str, str]] = {}  # path -> (job key, output id)
        self._assets: dict[str, str] = {}  # sha256 -> asset URL
        self._stop_submitting = False

    async def run(self) -> Tally:
        """Do every pending step; returns the tally. Fatal errors propagate."""
        for step in self.plan.steps:
            if step.action == DONE:
                self.tally.outcomes["done"] += 1
            elif step.action == FAILED:
                self.tally.outcomes["skipped_failed"] += 1
        for state in self.manifest.jobs.values():
            for output_id, item in state.downloads.items():
                self._claimed[item.path] = (state.key, output_id)

        pending = self.plan.pending
        self.tally.phases["queued"] = len(pending)
        await self._settle_uncertain(pending)
        await self._upload_files(pending)

        steps = iter(pending)
        workers = [
            asyncio.create_task(self._work(steps), name=f"batchrun-worker-{n}")
            for n in range(min(self.concurrency, len(pending)))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return self.tally

    async def _work(self, steps: Any) -> None:
        for step in steps:
            self._move("queued", "working")
            try:
                await self._carry(step)
            except JobFailed as exc:
                self._fail_tally(step.job, str(exc))
            except DownloadFailed as exc:
                self.tally.outcomes["download_failed"] += 1
                self.tally.failures.append(
                    (step.job.key, self._app(step.job).name, f"download: {exc}")
                )
            finally:
                self.tally.phases["working"] -= 1

    def _move(self, old: str, new: str) -> None:
        self.tally.phases[old] -= 1
        self.tally.phases[new] += 1

    def _fail_tally(self, job: Job, reason: str) -> None:
        self.tally.outcomes["failed"] += 1
        self.tally.failures.append((job.key, self._app(job).name, reason))

    def _app(self, job: Job) -> App:
        return self.plan.apps[job.app_id]

    # -- one job -----------------------------------------------------------------------

    async def _carry(self, step: Step) -> None:
        job = step.job
        state = self.manifest.jobs.get(job.key)
        if state is None:
            raise RuntimeError(f"job {job.key} was not planned in the manifest")
        if step.action == RETRY:
            self.manifest.job(job.key, "retrying")
        elif state.state == "failed":
            return  # settled as failed before the workers started, and tallied then

        run = state.run if state.state in ("finished", "downloaded") else None
        if run is None:
            run_id = state.run_id
            resumed = run_id is not None
            if run_id is None:
                if self._stop_submitting:
                    self.tally.outcomes["not_submitted"] += 1
                    return
                run_id = await self._submit(job)
                if run_id is None:
                    self.tally.outcomes["not_submitted"] += 1
                    return
            self.tally.phases["running"] += 1
            try:
                run = await self._result(job, run_id, resumed=resumed)
            finally:
                self.tally.phases["running"] -= 1
            self.manifest.job(job.key, "finished", run_id=run_id, run=_compact(run))

        if run.get("status") != "completed":
            reason = run.get("errorMessage") or f"the run ended {run.get('status')}"
            self.manifest.job(
                job.key,
                "failed",
                code="run_" + str(run.get("status")),
                reason=reason,
                run_id=run.get("runId"),
            )
            raise JobFailed(f"run {run.get('runId')}: {reason}")

        await self._download_outputs(job, state, run)
        errors = [o for o in run.get("outputs") or [] if o.get("status") != "completed"]
        if errors:
            self.tally.output_errors += len(errors)
            self.tally.outcomes["partial"] += 1
            labels = ", ".join(str(o.get("label")) for o in errors)
            self.tally.failures.append(
                (job.key, self._app(job).name, f"outputs in error: {labels}")
            )
        else:
            self.tally.outcomes["done"] += 1

    async def _result(self, job: Job, run_id: str, *, resumed: bool) -> dict[str, Any]:
        try:
            if resumed:
                # It may have ended while no batchrun was listening (its webhook went to
                # a receiver that is gone): one look before waiting for news.
                run = await self.client.get_run(run_id)
                if is_terminal(run):
                    return run
                return await self.resumed_source.result(run_id, job.app_id)
            return await self.source.result(run_id, job.app_id)
        except ApiError as exc:
            if exc.status == 404:
                self.manifest.job(
                    job.key,
                    "failed",
                    code="run_not_found",
                    reason=str(exc),
                    run_id=run_id,
                )
                raise JobFailed(f"run {run_id} is unknown to the API") from exc
            raise

    # -- submitting --------------------------------------------------------------------

    async def _submit(self, job: Job) -> str | None:
        """Start the job's run: its run ID, or None if it was not submitted."""
        inputs = self._inputs_with_assets(job)
        attempts = self.retry.retries + 1
        lock = self._app_locks.setdefault(job.app_id, asyncio.Lock())
        async with lock:
            for attempt in range(1, attempts + 1):
                if self._stop_submitting:
                    return None
                since = datetime.now(UTC)
                self.manifest.job(job.key, "submitting", attempt=attempt)
                self.tally.phases["submitting"] += 1
                try:
                    run = await self.client.create_run(
                        job.app_id, inputs, webhook=self.webhook_url
                    )
                except SubmissionUncertain as exc:
                    log.warning(
                        "submit.uncertain job=%s app=%s: %s; looking for the run "
                        "before sending again",
                        job.key,
                        job.app_id,
                        exc,
                    )
                    run_id = await self._reconcile(job, format_time(since))
                    if run_id is not None:
                        return run_id
                    # Nothing was created: safe to send again, after a backoff.
                    if attempt < attempts:
                        await asyncio.sleep(self.retry.delay(attempt))
                    continue
                except QuotaExhausted as exc:
                    self._stop(str(exc))
                    self.manifest.job(job.key, "planned")
                    return None
                except ApiError as exc:
                    if exc.status in (401, 403):
                        raise
                    self.manifest.job(
                        job.key,
                        "failed",
                        code=exc.code or f"http_{exc.status}",
                        reason=str(exc),
                    )
                    raise JobFailed(_submit_reason(exc)) from exc
                finally:
                    self.tally.phases["submitting"] -= 1

                run_id = str(run["runId"])
                self.manifest.job(
                    job.key, "submitted", run_id=run_id, created_at=run.get("createdAt")
                )
                return run_id

        # The API is unstable, but nothing was created: leave the job to the next apply
        # instead of failing it (failed jobs wait for --retry-failed).
        reason = f"the run start failed {attempts} times without creating a run"
        self.manifest.job(job.key, "planned")
        self.tally.failures.append((job.key, self._app(job).name, reason))
        return None

    async def _settle_uncertain(self, steps: list[Step]) -> None:
        """Find out what the starts left unanswered by an earlier process created.

        This runs before anything new is sent, so the one unknown start per app (see the
        module docstring) is settled before a new one could join it.
        """
        for step in steps:
            state = self.manifest.jobs[step.job.key]
            if not state.uncertain:
                continue
            lock = self._app_locks.setdefault(step.job.app_id, asyncio.Lock())
            async with lock:
                try:
                    run_id = await self._reconcile(step.job, state.submitting_since)
                except JobFailed as exc:
                    self._fail_tally(step.job, str(exc))
                    continue
                if run_id is None:
                    self.manifest.job(step.job.key, "planned")

    async def _reconcile(self, job: Job, since: str | None) -> str | None:
        """The run a lost submission created, or None if it created none.

        Call with the app's lock held.
        """
        sent = parse_time(since) if since else datetime.now(UTC) - timedelta(days=1)
        server_sent = self.client.server_time(sent)
        server_now = self.client.server_time(datetime.now(UTC))
        if server_sent is None or server_now is None:
            after, before = sent - RECONCILE_SKEW, None
        else:
            after, before = (
                server_sent - RECONCILE_MARGIN,
                server_now + RECONCILE_MARGIN,
            )
        candidates: list[str] = []
        offset = 0
        while True:
            runs, page = await self.client.list_runs(
                app_id=job.app_id, since=format_time(after), limit=100, offset=offset
            )
            candidates += [
                str(r["runId"])
                for r in runs
                if r.get("runId") not in self.manifest.run_ids
                and not _created_after(r, before)
            ]
            offset += len(runs)
            if not runs or offset >= int(page.get("total", 0)):
                break

        if not candidates:
            log.info("submit.reconciled job=%s created=none", job.key)
            return None
        if len(candidates) == 1:
            run_id = candidates[0]
            log.info("submit.reconciled job=%s run=%s", job.key, run_id)
            self.manifest.job(job.key, "submitted", run_id=run_id, reconciled=True)
            return run_id

        reason = (
            f"its run start's answer was lost, and {len(candidates)} runs of this app "
            f"({', '.join(candidates[:3])}, ...) were created with this API key at "
            f"that moment ({format_time(after)}), some by another client; not "
            "resubmitting, "
            "to avoid paying twice. --retry-failed submits it again (a second run if "
            "one of those was this job's)"
        )
        self.manifest.job(job.key, "failed", code="ambiguous_submission", reason=reason)
        raise JobFailed(reason)

    def _stop(self, reason: str) -> None:
        if not self._stop_submitting:
            log.error(
                "submit.stopped %s; runs already started will still finish", reason
            )
        self._stop_submitting = True
        self.tally.stop_reason = reason

    # -- uploads -----------------------------------------------------------------------

    async def _upload_files(self, steps: list[Step]) -> None:
        """Upload every local input not uploaded yet: one upload-URL request per 100."""
        digests: dict[str, str] = {}
        for step in steps:
            for path in step.job.files.values():
                if path not in digests:
                    digests[path] = file_digest(Path(path))[1]
        for digest, record in self.manifest.uploads.items():
            # An asset belongs to the API it was uploaded through (a sandbox of an
            # earlier process is gone, and its URLs with it).
            if record.get("api") == self.client.base_url:
                self._assets[digest] = record["asset_url"]
        todo = {
            digest: path
            for path, digest in digests.items()
            if digest not in self._assets
        }
        self._digests = digests
        items = list(todo.items())
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            files = [
                {"filename": Path(path).name, "mediaType": _media_type(path)}
                for _digest, path in chunk
            ]
            grants = await self.client.upload_urls(files)
            for (digest, path), grant in zip(chunk, grants, strict=True):
                content_type = grant.get("contentTypeHint") or _content_type(path)
                await upload(
                    self.storage,
                    grant["uploadUrl"],
                    Path(path),
                    content_type,
                    retry=self.retry,
                )
                self.manifest.append(
                    [
                        {
                            "type": "upload",
                            "api": self.client.base_url,
                            "path": path,
                            "sha256": digest,
                            "asset_url": grant["assetUrl"],
                        }
                    ]
                )
                self._assets[digest] = grant["assetUrl"]
                log.info("upload.done file=%s", path)

    def _inputs_with_assets(self, job: Job) -> dict[str, str]:
        inputs = dict(job.inputs)
        for name, path in job.files.items():
            inputs[name] = self._assets[self._digests[path]]
        return inputs

    # -- downloads ---------------------------------------------------------------------

    async def _download_outputs(
        self, job: Job, state: JobState, run: dict[str, Any]
    ) -> None:
        app = self._app(job)
        refreshed = False
        for index, output in enumerate(run.get("outputs") or []):
            if output.get("status") != "completed":
                continue
            output_id = str(output.get("id"))
            existing = state.downloads.get(output_id)
            if existing and _intact(self.output_dir / existing.path, existing):
                continue
            relative = (
                existing.path if existing else self._claim(job, app, run, output, index)
            )
            dest = self.output_dir / relative
            self.tally.phases["downloading"] += 1
            try:
                if output.get("type") == "text":
                    size, digest = write_atomically(
                        dest, str(output.get("value")).encode()
                    )
                else:
                    try:
                        size, digest, _ = await download(
                            self.storage,
                            str(output.get("value")),
                            dest,
                            retry=self.retry,
                        )
                    except DownloadFailed:
                        if refreshed:
                            raise
                        # Media URLs can expire: read the run again for fresh ones.
                        refreshed = True
                        fresh = await self.client.get_run(str(run["runId"]))
                        output = _same_output(fresh, output_id) or output
                        size, digest, _ = await download(
                            self.storage,
                            str(output.get("value")),
                            dest,
                            retry=self.retry,
                        )
            finally:
                self.tally.phases["downloading"] -= 1
            self.manifest.job(
                job.key,
                "downloaded",
                output=output_id,
                index=index,
                path=relative,
                size=size,
                sha256=digest,
            )

    def _claim(
        self,
        job: Job,
        app: App,
        run: dict[str, Any],
        output: dict[str, Any],
        index: int,
    ) -> str:
        """A relative file name for an output that no other output has taken."""
        values = {
            **job.names,
            "app": app.name,
            "app_id": app.app_id,
            "key": job.key,
            "repeat": str(job.repeat),
            "run_id": str(run.get("runId")),
            "output": str(output.get("label") or "output"),
            "index": str(index),
            "ext": output_ext(output),
        }
        base = output_path(self.filename, values)
        candidate, number = base, 1
        owner = (job.key, str(output.get("id")))
        while self._claimed.get(str(candidate), owner) != owner:
            number += 1
            candidate = with_suffix_number(base, number)
        self._claimed[str(candidate)] = owner
        return str(candidate)


def _created_after(run: dict[str, Any], moment: datetime | None) -> bool:
    created = run.get("createdAt")
    if moment is None or not created:
        return False
    return parse_time(str(created)) > moment


def files_intact(output_dir: Path) -> Callable[[JobState], bool]:
    """A check that every recorded file of a job is on disk with its checksum."""

    def check(state: JobState) -> bool:
        return all(_intact(output_dir / d.path, d) for d in state.downloads.values())

    return check


def _intact(path: Path, record: Any) -> bool:
    try:
        if path.stat().st_size != record.size:
            return False
    except OSError:
        return False
    return file_digest(path)[1] == record.sha256


def _compact(run: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps of a finished run."""
    keep = ("runId", "status", "errorMessage", "createdAt", "startedAt", "completedAt")
    compact = {k: run.get(k) for k in keep if k in run}
    compact["outputs"] = [
        {k: o.get(k) for k in ("id", "label", "type", "value", "status", "error")}
        for o in run.get("outputs") or []
    ]
    return compact


def _same_output(run: dict[str, Any], output_id: str) -> dict[str, Any] | None:
    for output in run.get("outputs") or []:
        if str(output.get("id")) == output_id:
            return output
    return None


def _submit_reason(exc: ApiError) -> str:
    if exc.details:
        parts = []
        for d in exc.details:
            if isinstance(d, dict):
                parts.append(f"{d.get('field')}: {d.get('code')} ({d.get('message')})")
            else:
                parts.append(str(d))
        return f"the API refused the inputs: {'; '.join(parts)}"
    return str(exc)


def _media_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0] or ""
    return MEDIA_TYPES.get(guessed.split("/")[0], "image")


def _content_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
