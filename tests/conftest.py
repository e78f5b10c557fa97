"""Shared fixtures: scripted HTTP servers and the sandbox, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent


class Scripted:
    """A real aiohttp.web server on a free port, with the requests it received."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.requests: list[web.Request] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        @web.middleware
        async def record(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            self.requests.append(request)
            return await handler(request)

        self.app.middlewares.append(record)
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """Keep `--sandbox` state (kept in the user's cache) out of the real home folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[Scripted]]]:
    """Start scripted apps: `server = await serve(app)`; stopped after the test."""
    started: list[Scripted] = []

    async def start(app: web.Application) -> Scripted:
        server = Scripted(app)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class FakeTime:
    """A clock that moves only when someone sleeps on it: retry tests never wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


PHOTOS = REPO / "examples" / "photos"


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    """A fast sandbox: runs take ~0.1 s and the rate limit is out of the way."""
    from batchrun.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.05, 0.15), rate_limit=10_000
    )
    async with Sandbox(config) as running:
        yield running


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    """A spec file in `folder`; `{photos}` in the text is the examples' photo folder."""
    path = folder / name
    path.write_text(text.replace("{photos}", str(PHOTOS)))
    return path


class ThreadedSandbox:
    """A sandbox serving from its own thread and loop, for tests that run the CLI."""

    def __init__(self, **options: Any) -> None:
        import asyncio
        import threading

        self._options = options
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.sandbox: Any = None

    def _main(self) -> None:
        import asyncio

        from batchrun.sandbox import Sandbox, SandboxConfig

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with Sandbox(SandboxConfig(**self._options)) as sandbox:
                self.sandbox = sandbox
                self._ready.set()
                await self._stop.wait()

        asyncio.run(serve())

    def start(self) -> ThreadedSandbox:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the sandbox did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def env(self) -> dict[str, str]:
        import os

        return {
            **os.environ,
            "LAMINA_BASE_URL": self.sandbox.base_url,
            "LAMINA_API_KEY": self.sandbox.api_key,
        }


@pytest.fixture
def threaded_sandbox() -> Any:
    running = ThreadedSandbox(
        queue_seconds=0.02, run_seconds=(0.05, 0.15), rate_limit=10_000
    ).start()
    yield running
    running.stop()
