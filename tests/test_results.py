"""Each result strategy end to end: `apply` against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from batchrun.batch import Overrides, Target, apply_async
from batchrun.errors import UsageError
from batchrun.progress import ProgressDisplay
from batchrun.retries import RetryPolicy
from tests.conftest import write_spec

COPY = """
version: 1
settings:
  concurrency: 50
  filename: "{key}{ext}"
jobs:
  - app: Product Copywriter
    inputs:
      Product: blue mug
    repeat: JOBS
"""

# usage (the learned rate), list_apps and get_app (resolving the app by name).
SETUP = 3
FAST_RETRY = RetryPolicy(retries=5, base=0.005, cap=0.05)


def copy_spec(folder: Path, jobs: int) -> Path:
    return write_spec(folder, COPY.replace("JOBS", str(jobs)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def webhook_overrides() -> dict[str, str]:
    port = free_port()
    return {
        "results": "webhook",
        "webhook_url": f"http://127.0.0.1:{port}/hooks/lamina",
        "webhook_listen": f"127.0.0.1:{port}",
    }


async def run(spec: Path, sandbox, progress=None, **overrides):
    options = Overrides(output_dir=spec.parent / "out", **overrides)
    return await apply_async(
        spec,
        target=Target(base_url=sandbox.base_url, api_key=sandbox.api_key),
        overrides=options,
        retry=FAST_RETRY,
        progress=progress,
    )


def written_texts(folder: Path) -> list[str]:
    return sorted(p.read_text() for p in (folder / "out").glob("*.txt"))


async def test_webhooks_cost_one_request_per_job(tmp_path, sandbox):
    spec = copy_spec(tmp_path, 12)

    result = await run(spec, sandbox, **webhook_overrides())

    assert result.exit_code == 0
    assert result.results == "webhook"
    requests = sandbox.stats.requests
    assert requests["create_run"] == 12
    assert requests["signing_key"] == 1
    assert requests["get_run"] == requests["list_runs"] == 0
    assert result.requests == 12 + SETUP + 1
    assert len(written_texts(tmp_path)) == 12


async def test_a_lost_webhook_is_found_by_the_safety_check(tmp_path, sandbox):
    sandbox.faults.webhook_loss_next = 1
    spec = copy_spec(tmp_path, 6)

    result = await run(spec, sandbox, **webhook_overrides())

    assert result.exit_code == 0
    assert sandbox.stats.faults_injected["webhook_loss"] == 1
    assert 1 <= sandbox.stats.requests["get_run"] <= 3
    assert len(written_texts(tmp_path)) == 6


def signed(key: Ed25519PrivateKey, run: dict, timestamp: int) -> tuple[bytes, dict]:
    body = json.dumps({"data": run}).encode()
    signature = key.sign(f"{timestamp}.".encode() + body).hex()
    headers = {
        "Content-Type": "application/json",
        "X-Lamina-Webhook-Signature": signature,
        "X-Lamina-Webhook-Timestamp": str(timestamp),
        "X-Lamina-Webhook-Request-Id": run["runId"],
    }
    return body, headers


async def test_forged_and_stale_webhooks_are_rejected_during_a_batch(tmp_path):
    from batchrun.sandbox import Sandbox, SandboxConfig

    # Runs long enough (~0.4 s) that the deliveries below land while they are running.
    config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.3, 0.4), rate_limit=10_000
    )
    options = webhook_overrides()
    spec = copy_spec(tmp_path, 4)
    async with Sandbox(config) as sandbox, aiohttp.ClientSession() as http:
        batch = asyncio.create_task(run(spec, sandbox, **options))
        while len(sandbox.stats.runs) < 4:
            await asyncio.sleep(0.01)
        target = sandbox.stats.runs[0].run_id
        fake = {
            "runId": target,
            "status": "completed",
            "outputs": [
                {"id": "x", "label": "Copy", "type": "text", "value": "FORGED",
                 "status": "completed", "error": None}
            ],
        }  # fmt: skip
        genuine_key = sandbox._signer._private_key
        now = int(time.time())
        deliveries = {
            "forged": signed(Ed25519PrivateKey.generate(), fake, now),
            "stale": signed(genuine_key, fake, now - 1000),
        }
        answers = {}
        for name, (body, headers) in deliveries.items():
            async with http.post(
                options["webhook_url"], data=body, headers=headers
            ) as r:
                answers[name] = r.status

        result = await batch

    assert answers == {"forged": 401, "stale": 401}
    assert result.exit_code == 0
    texts = written_texts(tmp_path)
    assert len(texts) == 4
    assert not any("FORGED" in text for text in texts)


async def test_a_replayed_delivery_during_a_batch_is_acknowledged_and_ignored(tmp_path):
    from batchrun.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.3, 0.4), rate_limit=10_000
    )
    options = webhook_overrides()
    spec = copy_spec(tmp_path, 2)
    async with Sandbox(config) as sandbox, aiohttp.ClientSession() as http:
        # The second run is held back a while, so the batch is still running when
        # the first run's webhook is sent again.
        batch = asyncio.create_task(run(spec, sandbox, concurrency=1, **options))
        while not sandbox.stats.webhook_attempts:
            await asyncio.sleep(0.01)
        first = sandbox.stats.webhook_attempts[0].run_id
        real = sandbox.run(first).to_api()
        body, headers = signed(sandbox._signer._private_key, real, int(time.time()))
        async with http.post(options["webhook_url"], data=body, headers=headers) as r:
            replay = (r.status, await r.json())
        result = await batch

    assert replay == (200, {"status": "duplicate"})
    assert result.exit_code == 0
    assert sandbox.stats.requests["create_run"] == 2


async def test_streams_survive_tiny_chunks_crlf_and_comments(tmp_path, sandbox):
    sandbox.faults.sse_chunk_size = 1
    sandbox.faults.sse_crlf = True
    sandbox.faults.sse_comments = True
    spec = copy_spec(tmp_path, 5)
    shown = io.StringIO()

    def display(runner):
        return ProgressDisplay(runner, stream=shown, live=False, plain_every=0.005)

    result = await run(spec, sandbox, progress=display, results="stream")

    assert result.exit_code == 0
    requests = sandbox.stats.requests
    assert requests["stream_run"] == 5
    assert requests["get_run"] == requests["wait_run"] == 0
    assert len(written_texts(tmp_path)) == 5
    assert "outputs 0/" in shown.getvalue()


async def test_bulk_polling_stays_within_its_request_share(tmp_path, sandbox):
    spec = copy_spec(tmp_path, 30)

    result = await run(spec, sandbox, results="poll")

    assert result.exit_code == 0
    requests = sandbox.stats.requests
    assert requests["create_run"] == requests["get_run"] == 30
    assert result.requests <= 2.2 * 30 + SETUP


async def test_long_polling_reads_every_run_without_get(tmp_path, sandbox):
    spec = copy_spec(tmp_path, 4)

    result = await run(spec, sandbox, results="wait")

    assert result.exit_code == 0
    assert sandbox.stats.requests["wait_run"] >= 4
    assert sandbox.stats.requests["get_run"] == 0


async def test_auto_uses_webhooks_on_the_sandbox(tmp_path):
    spec = copy_spec(tmp_path, 2)
    options = {"queue_seconds": 0.02, "run_seconds": (0.05, 0.1), "rate_limit": 10_000}

    result = await apply_async(
        spec,
        target=Target(sandbox=True, sandbox_options=options),
        overrides=Overrides(output_dir=tmp_path / "out"),
        retry=FAST_RETRY,
    )

    assert result.exit_code == 0
    assert result.results == "webhook"


async def test_auto_polls_without_a_webhook_url(tmp_path, sandbox):
    spec = copy_spec(tmp_path, 2)

    result = await run(spec, sandbox)

    assert result.results == "poll"


async def test_webhooks_without_a_url_off_the_sandbox_are_a_usage_error(
    tmp_path, sandbox
):
    spec = copy_spec(tmp_path, 2)

    with pytest.raises(UsageError) as caught:
        await run(spec, sandbox, results="webhook")

    assert "--webhook-url" in str(caught.value)
    assert sandbox.stats.requests["create_run"] == 0
