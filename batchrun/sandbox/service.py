"""`Sandbox`: the API site, the storage site, runs and webhooks, run as one.

    async with Sandbox(SandboxConfig(time_scale=0.01)) as sandbox:
        ...  # talk to sandbox.base_url with sandbox.api_key

Everything that needs an event loop (sites, the client session, tasks) is created in
`__aenter__`, so a Sandbox can be constructed anywhere but entered only inside a loop.
With `config.state_dir`, starting also locks that dir and loads what a previous
sandbox left there (batchrun.sandbox.state), so `api_key` and the signing key are
final only once the sandbox has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batchrun.sandbox.catalog import SandboxApp, load_catalog
from batchrun.sandbox.config import SandboxConfig, generate_api_key
from batchrun.sandbox.faults import Faults
from batchrun.sandbox.media import MediaFetcher
from batchrun.sandbox.ratelimit import FixedWindowLimiter
from batchrun.sandbox.runs import Run, RunSimulator, RunStore
from batchrun.sandbox.server import Account, ApiContext, build_api_app
from batchrun.sandbox.state import (
    StateDir,
    build_snapshot,
    record_from_state,
    run_from_state,
)
from batchrun.sandbox.stats import SandboxStats
from batchrun.sandbox.storage import Storage, build_storage_app
from batchrun.sandbox.webhooks import WebhookSender, WebhookSigner

logger = logging.getLogger(__name__)

# Long-polls and SSE streams are still open when a sandbox stops; don't wait for them.
SHUTDOWN_TIMEOUT = 0.25


class Sandbox:
    """A local Lamina-compatible server with real outputs, for tests and benchmarks."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        storage_port: int = 0,
    ) -> None:
        self.config = config or SandboxConfig()
        self.host = host
        self.port = port
        self.storage_port = storage_port
        self._set_api_key(self.config.api_key or generate_api_key())
        self.apps: list[SandboxApp] = load_catalog(self.config.apps_file)
        self.faults: Faults = self.config.faults
        self.stats = SandboxStats()
        self.store = RunStore(self.config)
        self.storage = Storage()
        self._signer = WebhookSigner()
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._simulator: RunSimulator | None = None
        self._webhooks: WebhookSender | None = None
        self._context: ApiContext | None = None
        self._state: StateDir | None = None
        self._limiter_windows: dict[str, tuple[float, int]] = {}
        # Saved runs this catalog cannot serve, kept as saved so no snapshot drops them.
        self._unloaded_runs: list[dict[str, Any]] = []
        self.base_url = ""
        self.storage_url = ""

    def _set_api_key(self, key: str) -> None:
        self.api_key = key
        # Stable per key, so a client configured once keeps matching across restarts.
        self.workspace_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{key}:ws"))
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox:{key}:user"))

    @property
    def signing_public_key(self) -> Ed25519PublicKey:
        """The Ed25519 key webhook signatures verify against."""
        return self._signer.public_key

    @property
    def render_count(self) -> int:
        """How many outputs were actually rendered (the rest came from the cache)."""
        return self._simulator.cache.renders if self._simulator else 0

    def run(self, run_id: str) -> Run | None:
        """The live run with this id (for tests that look inside), or None."""
        return self.store.get(run_id)

    def cancel_run(self, run_id: str) -> bool:
        """End a run as `cancelled` (there is no cancel endpoint in the API)."""
        run = self.store.get(run_id)
        if run is None or self._simulator is None:
            return False
        return self._simulator.cancel(run)

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind both sites and get ready to serve (must run inside the event loop).

        With a state dir, raises SandboxStateError when another sandbox holds it.
        """
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        config = self.config
        account = Account(balance=config.credits)
        if config.state_dir is not None:
            self._state = StateDir.open(config.state_dir)
            account = self._adopt_identity(self._state)
        self._session = aiohttp.ClientSession()
        rng = random.Random(f"{config.seed}:faults")
        media = MediaFetcher(
            self.storage, self._session, allow_remote=config.allow_remote
        )
        self._webhooks = WebhookSender(
            self._signer,
            self._session,
            config,
            self.stats,
            lambda: self.faults,
            rng,
            self.user_id,
        )
        self._simulator = RunSimulator(self.storage, media, self._run_ended)

        storage_app = build_storage_app(
            self.storage, self.stats, lambda: self.faults, rng
        )
        self.storage_url = await self._serve(storage_app, self.storage_port)
        self.storage.base_url = self.storage_url
        if self._state is not None:
            self._load_runs(self._state)

        context = ApiContext(
            config=config,
            api_key=self.api_key,
            workspace_id=self.workspace_id,
            apps={app.app_id: app for app in self.apps},
            store=self.store,
            simulator=self._simulator,
            storage=self.storage,
            signer=self._signer,
            stats=self.stats,
            faults=lambda: self.faults,
            limiter=FixedWindowLimiter(
                config.rate_limit, config.scaled(config.rate_window)
            ),
            account=account,
            rng=rng,
            state=self._state,
        )
        self._context = context
        if self._state is not None:
            self._state.start(self._snapshot)
            if self._limiter_windows:
                saved_at = self._state.saved.saved_at or time.time()
                context.limiter.restore(
                    self._limiter_windows, max(0.0, time.time() - saved_at)
                )
        self.base_url = await self._serve(build_api_app(context), self.port)
        for run in self.store.runs():
            if not run.terminal:
                self._simulator.start(run)  # resumes where its schedule says
        logger.info(
            "sandbox.started api=%s storage=%s apps=%d",
            self.base_url,
            self.storage_url,
            len(self.apps),
        )

    def _adopt_identity(self, state: StateDir) -> Account:
        """Take the key, signing key, upload secret and credits the state dir holds."""
        saved = state.saved
        if self.config.api_key is None and saved.api_key is not None:
            self._set_api_key(saved.api_key)
        if saved.signing_key is not None:
            self._signer = WebhookSigner.from_private_bytes(saved.signing_key)
        self.storage = Storage(
            saved.storage_secret, state.objects_dir, on_put=state.record_object
        )
        self.storage.restore(saved.objects)
        self.store = RunStore(self.config, on_change=state.record_run)
        self.stats.runs[:] = [record_from_state(r) for r in saved.stats_runs.values()]
        self.stats.on_reset.append(state.record_stats_reset)
        self._limiter_windows = saved.limiter
        if saved.account is None:
            return Account(balance=self.config.credits)
        # A real account's balance persists; --credits only seeds a new state dir.
        return Account(balance=saved.account["balance"], used=saved.account["used"])

    def _load_runs(self, state: StateDir) -> None:
        """Rebuild the saved runs, their media URLs on the storage host as bound now."""
        apps = {app.app_id: app for app in self.apps}
        runs = []
        for data in state.saved.runs.values():
            try:
                run = run_from_state(data, apps, self.storage)
            except (KeyError, TypeError, ValueError) as exc:
                # One garbled run must not keep the other thousand from loading.
                logger.warning(
                    "sandbox.state.bad_run run=%s error=%r (not loaded)",
                    data.get("runId"),
                    exc,
                )
                self._unloaded_runs.append(data)
                continue
            if run is None:
                logger.warning(
                    "sandbox.state.unknown_app run=%s app=%s (not in this catalog; "
                    "the run is not loaded, but stays in the state dir)",
                    data["runId"],
                    data["appId"],
                )
                self._unloaded_runs.append(data)
                continue
            runs.append(run)
        self.store.restore(runs)

    def _snapshot(self) -> dict[str, Any]:
        assert self._context is not None
        context = self._context
        return build_snapshot(
            api_key=self.api_key,
            signing_key=self._signer.private_bytes(),
            storage=self.storage,
            runs=self.store.runs(),
            unloaded_runs=self._unloaded_runs,
            stats_runs=self.stats.runs,
            balance=context.account.balance,
            used=context.account.used,
            limiter=context.limiter.export(),
        )

    async def close(self) -> None:
        """Stop runs, webhook deliveries and both sites; safe to call twice.

        With a state dir, the final snapshot is written and the dir released.
        """
        if self._context is not None:
            self._context.closing.set()
            self.store.wake_all()
        if self._simulator is not None:
            await self._simulator.close()
        if self._webhooks is not None:
            await self._webhooks.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._state is not None:
            self._state.close()
            self._state = None
        logger.info("sandbox.stopped api=%s", self.base_url)

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{bound_port}"

    def _run_ended(self, run: Run) -> None:
        if run.webhook_url and self._webhooks is not None:
            self._webhooks.send(run.webhook_url, run.to_api())


def run_sandbox(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    storage_port: int = 0,
    on_ready: Callable[[Sandbox], None] | None = None,
) -> None:
    """Serve a sandbox until Ctrl-C or SIGTERM (blocking; for the CLI).

    `on_ready` is called once both sites are listening, e.g. to print the base URL.
    """

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        async with Sandbox(config, host, port, storage_port=storage_port) as sandbox:
            if on_ready is not None:
                on_ready(sandbox)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
