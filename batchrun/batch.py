"""batchrun's public API: plan and apply a spec, from Python as from the CLI.

    result = batchrun.apply("specs/cartoonify.yaml", target=Target(sandbox=True))
    print(result.exit_code, result.tally.outcomes)

Both functions load and validate the spec, resolve its apps through the API and expand
every job before anything is spent; `apply` then carries the pending jobs through.
"""

from __future__ import annotations

import asyncio
import difflib
import gc
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from batchrun.apps import App, is_app_id
from batchrun.client import DEFAULT_BASE_URL, LaminaClient
from batchrun.errors import ApiError, ManifestError, Problem, SpecError, UsageError
from batchrun.jobs import Job, plan_jobs
from batchrun.limits import DEFAULT_RATE, RequestBudget
from batchrun.manifest import Manifest
from batchrun.naming import output_path
from batchrun.plan import SUBMIT, Plan, build_plan
from batchrun.results import PollSource, ResultSource, WaitSource
from batchrun.retries import RetryPolicy
from batchrun.runner import Runner, Tally, files_intact
from batchrun.spec import Settings, Spec, load_spec
from batchrun.stream_source import StreamSource
from batchrun.templates import parse_template
from batchrun.times import now_iso
from batchrun.webhook_source import WebhookSource

log = logging.getLogger(__name__)

RESULT_STRATEGIES = ("auto", "webhook", "poll", "wait", "stream")
LISTEN_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):\d{1,5}$")


@dataclass(frozen=True)
class Target:
    """Which API to talk to. Unset fields come from LAMINA_BASE_URL / LAMINA_API_KEY."""

    base_url: str | None = None
    api_key: str | None = None
    workspace_id: str | None = None
    sandbox: bool = False
    sandbox_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Overrides:
    """Command-line values that take precedence over the spec's settings."""

    output_dir: Path | None = None
    manifest: Path | None = None
    concurrency: int | None = None
    rate: int | None = None
    retries: int | None = None
    max_jobs: int | None = None
    results: str | None = None
    webhook_url: str | None = None
    webhook_listen: str | None = None
    retry_failed: bool = False


@dataclass(frozen=True)
class PlanResult:
    """What `plan` found: the plan, and where the batch writes."""

    spec: Spec
    settings: Settings
    plan: Plan
    output_dir: Path
    manifest: Path


@dataclass
class BatchResult:
    """What `apply` did."""

    planned: PlanResult
    tally: Tally
    requests: int
    rate_limited: int
    elapsed: float
    results: str

    @property
    def exit_code(self) -> int:
        """0 when every job completed with all its outputs, else 1."""
        outcomes = self.tally.outcomes
        unfinished = sum(v for k, v in outcomes.items() if k != "done")
        return 0 if unfinished == 0 else 1


def apply(
    spec: str | Path,
    *,
    target: Target | None = None,
    overrides: Overrides | None = None,
    progress: Callable[[Runner], Any] | None = None,
) -> BatchResult:
    """Run every pending job of `spec` and download its outputs; resumable."""
    return asyncio.run(
        apply_async(spec, target=target, overrides=overrides, progress=progress)
    )


def plan(
    spec: str | Path,
    *,
    target: Target | None = None,
    overrides: Overrides | None = None,
) -> PlanResult:
    """What `apply` would do, without spending anything."""
    return asyncio.run(plan_async(spec, target=target, overrides=overrides))


async def plan_async(
    spec: str | Path,
    *,
    target: Target | None = None,
    overrides: Overrides | None = None,
) -> PlanResult:
    overrides = overrides or Overrides()
    loaded = load_spec(spec)
    settings = effective_settings(loaded, overrides)
    output_dir, manifest_path = _paths(loaded, settings)
    # A plan only reads apps: its sandbox (if any) needs no state, and takes no lock.
    async with connect(target or Target(), settings) as api:
        jobs, apps = await _expand(api.client, loaded, settings)
    if manifest_path.exists():
        manifest = Manifest.read(manifest_path)
        states, recorded = manifest.jobs, _recorded_apps(manifest)
    else:
        states, recorded = {}, {}
    built = build_plan(
        jobs,
        states,
        apps,
        recorded_apps=recorded,
        retry_failed=overrides.retry_failed,
        files_intact=files_intact(output_dir),
    )
    return PlanResult(loaded, settings, built, output_dir, manifest_path)


async def apply_async(
    spec: str | Path,
    *,
    target: Target | None = None,
    overrides: Overrides | None = None,
    progress: Callable[[Runner], Any] | None = None,
    retry: RetryPolicy | None = None,
) -> BatchResult:
    started = time.monotonic()
    overrides = overrides or Overrides()
    loaded = load_spec(spec)
    settings = effective_settings(loaded, overrides)
    filename = parse_template(settings.filename)
    output_dir, manifest_path = _paths(loaded, settings)

    async with connect(
        target or Target(),
        settings,
        retry=retry,
        sandbox_state=_sandbox_state(output_dir),
    ) as api:
        jobs, apps = await _expand(api.client, loaded, settings)
        with Manifest.open(manifest_path) as manifest:
            if manifest.header is None:
                _warn_of_old_outputs(output_dir, manifest_path)
            built = build_plan(
                jobs,
                manifest.jobs,
                apps,
                recorded_apps=_recorded_apps(manifest),
                retry_failed=overrides.retry_failed,
                files_intact=files_intact(output_dir),
            )
            for change in built.changed:
                log.warning(
                    "app.changed %s (%s) has other parameters than when this manifest "
                    "was started; %d unfinished jobs use the new ones",
                    change.app.name,
                    change.app.app_id,
                    change.affected,
                )
            _record_start(manifest, loaded, apps, built)

            strategy = _strategy(settings, api)
            async with AsyncExitStack() as stack:
                source = await stack.enter_async_context(
                    _result_source(strategy, api, settings)
                )
                runner = Runner(
                    client=api.client,
                    storage=api.storage,
                    manifest=manifest,
                    plan=built,
                    source=source.source,
                    resumed_source=source.resumed,
                    output_dir=output_dir,
                    filename=filename,
                    concurrency=settings.concurrency,
                    retry=api.client.retry,
                    webhook_url=source.webhook_url,
                )
                display = progress(runner) if progress else None
                if display is not None:
                    await stack.enter_async_context(display)
                tally = await runner.run()

        return BatchResult(
            planned=PlanResult(loaded, settings, built, output_dir, manifest_path),
            tally=tally,
            requests=api.client.requests,
            rate_limited=api.client.budget.rate_limited,
            elapsed=time.monotonic() - started,
            results=strategy,
        )


def list_apps(target: Target, search: str = "") -> list[dict[str, Any]]:
    """The app summaries the API lists (for `batchrun apps`)."""

    async def fetch() -> list[dict[str, Any]]:
        async with connect(target, Settings(rate=DEFAULT_RATE)) as api:
            return await api.client.list_apps(search=search)

    return asyncio.run(fetch())


def describe_app(target: Target, name_or_id: str) -> App:
    """One app with its parameters, by ID or exact name (for `batchrun apps APP`)."""

    async def fetch() -> App:
        async with connect(target, Settings(rate=DEFAULT_RATE)) as api:
            try:
                return await _resolve_app(api.client, name_or_id)
            except _Unresolved as exc:
                raise UsageError(str(exc)) from None

    return asyncio.run(fetch())


def effective_settings(spec: Spec, overrides: Overrides) -> Settings:
    """The spec's settings with command-line overrides applied and checked."""
    changes = {
        name: value
        for name in (
            "concurrency",
            "rate",
            "retries",
            "max_jobs",
            "results",
            "webhook_url",
            "webhook_listen",
        )
        if (value := getattr(overrides, name)) is not None
    }
    if overrides.output_dir is not None:
        changes["output_dir"] = overrides.output_dir.resolve()
    if overrides.manifest is not None:
        changes["manifest"] = overrides.manifest.resolve()
    settings = replace(spec.settings, **changes)
    if settings.results not in RESULT_STRATEGIES:
        raise UsageError(
            f"--results {settings.results!r}: choose one of "
            + ", ".join(RESULT_STRATEGIES)
        )
    if settings.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if settings.rate is not None and settings.rate < 1:
        raise UsageError("--rate must be at least 1 request per minute")
    if settings.webhook_listen and not LISTEN_RE.match(settings.webhook_listen):
        raise UsageError(
            f"--webhook-listen {settings.webhook_listen!r}: expected HOST:PORT, "
            "e.g. 127.0.0.1:8787"
        )
    if settings.webhook_url and not settings.webhook_listen:
        raise UsageError(
            "--webhook-url needs --webhook-listen HOST:PORT: the local address your "
            "tunnel or proxy forwards that URL to"
        )
    return settings


def _warn_of_old_outputs(output_dir: Path, manifest_path: Path) -> None:
    """A new manifest over a folder of outputs usually means a lost manifest."""
    count = sum(1 for p in output_dir.rglob("*") if p.is_file() and p != manifest_path)
    if count:
        log.warning(
            "output.exists %s already holds %d files but the manifest %s is new: every "
            "job runs (and is paid for) again, and files with the same names are "
            "replaced; press Ctrl-C now if the manifest was lost or moved",
            output_dir,
            count,
            manifest_path,
        )


def _sandbox_state(output_dir: Path) -> Path:
    """Where `--sandbox` keeps its server's state for this batch.

    In the user's cache, not beside the outputs: the state holds the sandbox's key and
    secrets, which have no business in a folder that people zip and share.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16]
    return cache / "batchrun" / "sandbox" / digest


def _paths(spec: Spec, settings: Settings) -> tuple[Path, Path]:
    output_dir = settings.output_dir or (Path.cwd() / "out" / spec.path.stem)
    manifest = settings.manifest or (output_dir / "manifest.jsonl")
    return output_dir, manifest


# -- talking to the API ----------------------------------------------------------------


@dataclass
class Connection:
    client: LaminaClient
    storage: aiohttp.ClientSession
    sandbox: Any | None = None


@asynccontextmanager
async def connect(
    target: Target,
    settings: Settings,
    *,
    retry: RetryPolicy | None = None,
    sandbox_state: Path | None = None,
) -> AsyncIterator[Connection]:
    """An API client (and storage session, and sandbox when asked), closed on exit.

    `retry` replaces the backoff policy built from the settings (tests pass a fast one).
    `sandbox_state` is where an embedded sandbox keeps its runs, so that a resumed
    `apply --sandbox` finds the runs the interrupted one started.
    """
    async with AsyncExitStack() as stack:
        sandbox = None
        if target.sandbox:
            # Imported here: the sandbox brings Pillow, which real batches never need.
            from batchrun.sandbox import Sandbox, SandboxConfig, SandboxStateError

            options = dict(target.sandbox_options)
            if sandbox_state is not None:
                options.setdefault("state_dir", sandbox_state)
            try:
                sandbox = await stack.enter_async_context(
                    Sandbox(SandboxConfig(**options))
                )
            except SandboxStateError as exc:
                raise ManifestError(
                    "another batchrun is applying this batch on --sandbox; wait for it "
                    f"to finish, or pass a different --out ({exc})"
                ) from None
            base_url, api_key = sandbox.base_url, sandbox.api_key
        else:
            base_url = target.base_url or os.environ.get("LAMINA_BASE_URL") or ""
            base_url = base_url or DEFAULT_BASE_URL
            api_key = target.api_key or os.environ.get("LAMINA_API_KEY") or ""
            if not api_key:
                raise UsageError(
                    "no API key: set LAMINA_API_KEY or pass --api-key "
                    "(or add --sandbox to try the spec locally for free)"
                )
            if not base_url.startswith(("http://", "https://")):
                raise UsageError(f"LAMINA_BASE_URL {base_url!r} is not an http(s) URL")

        connector = aiohttp.TCPConnector(limit=max(100, settings.concurrency + 10))
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector)
        )
        storage = await stack.enter_async_context(aiohttp.ClientSession())
        retry = retry or RetryPolicy(retries=settings.retries)
        budget = RequestBudget(settings.rate or DEFAULT_RATE)
        client = LaminaClient(
            base_url,
            api_key,
            session=session,
            budget=budget,
            retry=retry,
            workspace_id=target.workspace_id,
        )
        if settings.rate is None:
            await _learn_rate(client)
        yield Connection(client, storage, sandbox)


async def _learn_rate(client: LaminaClient) -> None:
    """Use the account's own rate limit when the spec does not set one."""
    try:
        usage = await client.usage()
    except ApiError as exc:
        if exc.status in (401, 403):
            raise
        log.info(
            "rate.default could not read account usage (%s); using %d/min",
            exc.code,
            DEFAULT_RATE,
        )
        return
    limit = (usage.get("rateLimit") or {}).get("limit")
    window_ms = (usage.get("rateLimit") or {}).get("windowMs") or 60_000
    if limit:
        client.budget.set_rate(float(limit) * 60_000 / float(window_ms))
        log.info("rate.learned %.0f requests per minute", client.budget.rate)


async def resolve_apps(
    client: LaminaClient, spec: Spec
) -> tuple[dict[int, App], list[Problem]]:
    """Each spec entry's app (by ID or exact name), and the entries' problems."""
    problems: list[Problem] = []
    by_text: dict[str, App | None] = {}
    resolved: dict[int, App] = {}
    for entry in spec.entries:
        if entry.app not in by_text:
            try:
                by_text[entry.app] = await _resolve_app(client, entry.app)
            except _Unresolved as exc:
                by_text[entry.app] = None
                problems.append(
                    Problem(entry.where, f"jobs[{entry.index}].app", str(exc))
                )
        app = by_text[entry.app]
        if app is not None:
            resolved[entry.index] = app
    return resolved, problems


class _Unresolved(Exception):
    pass


async def _resolve_app(client: LaminaClient, text: str) -> App:
    if is_app_id(text):
        try:
            return await client.get_app(text)
        except ApiError as exc:
            if exc.status == 404:
                raise _Unresolved(f"no app has the ID {text}") from None
            raise
    found = await client.list_apps(search=text)
    exact = [a for a in found if a.get("name") == text]
    if len(exact) > 1:
        ids = ", ".join(str(a.get("appId")) for a in exact)
        raise _Unresolved(
            f"{len(exact)} apps are called {text!r} ({ids}); write the appId instead"
        )
    if not exact:
        everything = await client.list_apps(limit=100)
        names = sorted({str(a.get("name")) for a in everything + found})
        close = _closest(text, names)
        hint = f"; did you mean {close!r}?" if close else "; `batchrun apps` lists them"
        raise _Unresolved(f"no app is called {text!r}{hint}")
    return await client.get_app(str(exact[0]["appId"]))


def _closest(text: str, names: list[str]) -> str | None:
    folded = {n.casefold().strip(): n for n in names}
    if text.casefold().strip() in folded:
        return folded[text.casefold().strip()]
    matches = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # A part of the name ("Full Set" for "Full Set Catalog Generation").
    containing = [n for n in names if text.casefold() in n.casefold()]
    return containing[0] if len(containing) == 1 else None


async def _expand(
    client: LaminaClient, spec: Spec, settings: Settings
) -> tuple[list[Job], dict[str, App]]:
    """Every job of the spec, validated; all problems (apps and jobs) raised at once."""
    by_entry, problems = await resolve_apps(client, spec)
    entries = tuple(e for e in spec.entries if e.index in by_entry)
    # The effective settings: a --max-jobs or a file name from the flags is checked too.
    known = replace(spec, settings=settings, entries=entries)
    try:
        with _no_gc_pauses():
            jobs = plan_jobs(known, by_entry, max_jobs=settings.max_jobs)
    except SpecError as exc:
        problems += exc.problems
    problems += _filename_problems(spec, settings)
    if problems:
        raise SpecError(sorted(problems, key=_position))
    apps = {app.app_id: app for app in by_entry.values()}
    return jobs, apps


def _filename_problems(spec: Spec, settings: Settings) -> list[Problem]:
    """A file-name template must name files inside the output folder."""
    try:
        template = parse_template(settings.filename)
        output_path(template, {name: "x" for name in template.fields} | {"ext": ".png"})
    except ValueError as exc:
        where = spec.where("settings.filename")
        return [
            Problem(
                where,
                "settings.filename",
                f"{exc}; write a path relative to the output folder, without '..'",
            )
        ]
    return []


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Hold the cyclic GC while a large plan is built: its objects form no cycles, and
    collections triggered by 100,000 new jobs would scan them again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _position(problem: Problem) -> tuple[int, int]:
    """Sort key: a problem's line and column in the spec."""
    parts = problem.where.rsplit(":", 2)
    try:
        return int(parts[-2]), int(parts[-1])
    except (IndexError, ValueError):
        return (0, 0)


# -- the manifest's bookkeeping --------------------------------------------------------


def _recorded_apps(manifest: Manifest) -> dict[str, dict[str, Any]]:
    header = manifest.header
    return dict(header.get("apps") or {}) if header else {}


def _record_start(
    manifest: Manifest, spec: Spec, apps: dict[str, App], built: Plan
) -> None:
    """Write a header when the spec or an app changed, and plan records for new jobs."""
    header = manifest.header
    recorded = _recorded_apps(manifest)
    apps_now = {
        app_id: {"name": app.name, "digest": app.digest, "parameters": app.schema}
        for app_id, app in apps.items()
    }
    stale = any(
        recorded.get(app_id, {}).get("digest") != entry["digest"]
        for app_id, entry in apps_now.items()
    )
    if header is None or header.get("spec_digest") != spec.digest or stale:
        merged = {**recorded, **apps_now}
        manifest.write_header(spec=str(spec.path), spec_digest=spec.digest, apps=merged)

    now = now_iso()
    manifest.append(
        {
            "type": "job",
            "key": step.job.key,
            "state": "planned",
            "time": now,
            "app_id": step.job.app_id,
            "entry": step.job.entry,
            "inputs": step.job.inputs,
            "files": step.job.files,
            "names": step.job.names,
            "repeat": step.job.repeat,
        }
        for step in built.steps
        if step.action == SUBMIT and step.state is None
    )


# -- result strategies -----------------------------------------------------------------


def _strategy(settings: Settings, api: Connection) -> str:
    """The result strategy to use: `auto` means webhooks wherever they can arrive."""
    reachable = settings.webhook_url is not None or api.sandbox is not None
    if settings.results == "webhook" and not reachable:
        raise UsageError(
            "--results webhook needs --webhook-url (a public URL that reaches "
            "--webhook-listen)"
        )
    if settings.results != "auto":
        return settings.results
    # The sandbox delivers to 127.0.0.1 directly; elsewhere a public URL is needed.
    return "webhook" if reachable else "poll"


@dataclass
class _Source:
    source: ResultSource
    webhook_url: str | None = None
    resumed: ResultSource | None = None  # for runs an earlier process started


@asynccontextmanager
async def _result_source(
    strategy: str, api: Connection, settings: Settings
) -> AsyncIterator[_Source]:
    if strategy == "webhook":
        # Runs started by an earlier process send their webhooks to its receiver,
        # which is gone: those are polled in bulk instead.
        resumed = PollSource(api.client)
        try:
            async with WebhookSource(
                api.client,
                public_url=settings.webhook_url,
                listen=settings.webhook_listen,
            ) as webhooks:
                yield _Source(webhooks, webhooks.webhook_url, resumed)
        finally:
            await resumed.aclose()
        return

    if strategy == "wait":
        source: ResultSource = WaitSource(api.client)
    elif strategy == "poll":
        source = PollSource(api.client)
    elif strategy == "stream":
        source = StreamSource(api.client)
    else:
        choices = ", ".join(RESULT_STRATEGIES)
        raise UsageError(f"--results {strategy}: choose one of {choices}")
    try:
        yield _Source(source)
    finally:
        await source.aclose()
