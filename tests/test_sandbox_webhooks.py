"""Webhooks: Ed25519 signatures checked with cryptography; retries on a scaled clock."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batchrun.sandbox import Sandbox, SandboxConfig

CATALOG_ID = "67b50933-5ef8-4092-a481-b172df24e498"
COPYWRITER_ID = "dd782e43-4e2b-421a-96e8-d3be2ba51d2c"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback webhook endpoint answering a scripted list of statuses."""

    url: str = ""
    answers: list[int] = field(default_factory=list)  # then 200 for ever
    stall: float = 0.0  # seconds to sit on the first delivery
    deliveries: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(Delivery(dict(request.headers), body, time.monotonic()))
        if self.stall and len(self.deliveries) == 1:
            await asyncio.sleep(self.stall)
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status)

    async def received(self, count: int) -> list[Delivery]:
        async with asyncio.timeout(5):
            while len(self.deliveries) < count:
                await asyncio.sleep(0.01)
        return self.deliveries


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield hook
    await runner.cleanup()


def session_for(sandbox: Sandbox) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        sandbox.base_url, headers={"x-api-key": sandbox.api_key}
    )


async def start_run(
    http: aiohttp.ClientSession, hook: str, app_id: str = CATALOG_ID, **inputs: str
) -> str:
    async with http.post(
        f"/v1/apps/{app_id}/runs", params={"webhook": hook}, json={"inputs": inputs}
    ) as response:
        assert response.status == 202, await response.text()
        return str((await response.json())["data"]["runId"])


async def published_keys(http: aiohttp.ClientSession) -> list[Ed25519PublicKey]:
    async with http.get("/v1/webhooks/signing-key") as response:
        jwks = await response.json()
    return [
        Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(k["x"] + "=="))
        for k in jwks["keys"]
    ]


def verifies(keys: list[Ed25519PublicKey], delivery: Delivery) -> bool:
    timestamp = delivery.headers["X-Lamina-Webhook-Timestamp"]
    signature = bytes.fromhex(delivery.headers["X-Lamina-Webhook-Signature"])
    for key in keys:
        try:
            key.verify(signature, timestamp.encode() + b"." + delivery.body)
        except InvalidSignature:
            continue
        return True
    return False


async def test_a_finished_run_posts_a_signed_webhook(receiver):
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        run_id = await start_run(http, receiver.url)
        [delivery] = await receiver.received(1)
        keys = await published_keys(http)
        async with http.get(f"/v1/runs/{run_id}") as response:
            run = (await response.json())["data"]

    headers = delivery.headers
    assert verifies(keys, delivery)
    assert headers["X-Lamina-Webhook-Signature"] == (
        headers["X-Lamina-Webhook-Signature"].lower()
    )
    assert abs(int(headers["X-Lamina-Webhook-Timestamp"]) - time.time()) < 300
    assert headers["X-Lamina-Webhook-Request-Id"] == run_id
    assert headers["X-Lamina-Webhook-User-Id"] == sandbox.user_id
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(delivery.body) == {"data": run}
    assert run["status"] == "completed"
    assert sandbox.signing_public_key.public_bytes_raw() == keys[0].public_bytes_raw()


async def test_a_tampered_body_does_not_verify(receiver):
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        await start_run(http, receiver.url)
        [delivery] = await receiver.received(1)
        keys = await published_keys(http)

    tampered = Delivery(
        delivery.headers, delivery.body.replace(b"completed", b"failed"), 0
    )

    assert verifies(keys, delivery)
    assert not verifies(keys, tampered)


async def test_a_cancelled_run_sends_its_webhook(receiver):
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(5, 5))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        run_id = await start_run(http, receiver.url)
        sandbox.cancel_run(run_id)
        [delivery] = await receiver.received(1)

    data = json.loads(delivery.body)["data"]
    assert data["runId"] == run_id
    assert data["status"] == "cancelled"


async def test_a_failed_run_sends_its_webhook(receiver):
    config = SandboxConfig(
        failure_rate=1.0, queue_seconds=0.01, run_seconds=(0.03, 0.05)
    )
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        await start_run(http, receiver.url, COPYWRITER_ID, Product="x")
        [delivery] = await receiver.received(1)

    data = json.loads(delivery.body)["data"]
    assert data["status"] == "failed"
    assert data["errorMessage"]


async def test_failed_deliveries_are_retried_after_5_30_120_seconds_scaled(receiver):
    # time_scale 0.002: retries after 10 ms, 60 ms and 240 ms.
    receiver.answers = [500, 502, 503, 200]
    config = SandboxConfig(time_scale=0.002)
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        run_id = await start_run(http, receiver.url)
        deliveries = await receiver.received(4)
        keys = await published_keys(http)
        attempts = list(sandbox.stats.webhook_attempts)

    assert [(a.run_id, a.attempt, a.status) for a in attempts] == [
        (run_id, 1, 500),
        (run_id, 2, 502),
        (run_id, 3, 503),
        (run_id, 4, 200),
    ]
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    assert gaps[0] >= 0.010
    assert gaps[1] >= 0.060
    assert gaps[2] >= 0.240
    assert gaps[0] < gaps[1] < gaps[2]
    assert all(verifies(keys, d) for d in deliveries)
    assert len({d.body for d in deliveries}) == 1


async def test_delivery_gives_up_after_three_retries(receiver):
    receiver.answers = [500] * 10
    config = SandboxConfig(time_scale=0.002)
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        await start_run(http, receiver.url)
        await receiver.received(4)
        await asyncio.sleep(0.6)  # longer than another 2-minute (scaled) retry
        attempts = list(sandbox.stats.webhook_attempts)

    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert len(receiver.deliveries) == 4
    assert not any(a.ok for a in attempts)


async def test_a_receiver_slower_than_15_seconds_scaled_counts_as_failed(receiver):
    # time_scale 0.005: the delivery timeout is 75 ms; the receiver stalls 400 ms.
    receiver.stall = 0.4
    config = SandboxConfig(time_scale=0.005)
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        await start_run(http, receiver.url)
        await receiver.received(2)
        async with asyncio.timeout(5):
            while len(sandbox.stats.webhook_attempts) < 2:
                await asyncio.sleep(0.01)
        attempts = list(sandbox.stats.webhook_attempts)

    assert attempts[0].status is None
    assert "Timeout" in (attempts[0].error or "")
    assert attempts[1].status == 200


async def test_webhook_loss_drops_exactly_the_next_delivery(receiver):
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        sandbox.faults.webhook_loss_next = 1
        lost = await start_run(http, receiver.url)
        async with http.get(f"/v1/runs/{lost}/wait", params={"timeout": "5"}):
            pass
        kept = await start_run(http, receiver.url)
        [delivery] = await receiver.received(1)
        await asyncio.sleep(0.05)

    assert delivery.headers["X-Lamina-Webhook-Request-Id"] == kept
    assert len(receiver.deliveries) == 1
    assert sandbox.stats.faults_injected["webhook_loss"] == 1


async def test_webhooks_to_other_hosts_are_not_sent_without_allow_remote():
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        run_id = await start_run(http, "https://hooks.example.invalid/x")
        async with asyncio.timeout(5):
            while not sandbox.stats.webhook_attempts:
                await asyncio.sleep(0.01)
        [attempt] = sandbox.stats.webhook_attempts

    assert attempt.run_id == run_id
    assert attempt.status is None
    assert "allow_remote" in (attempt.error or "")


async def test_webhook_attempts_appear_in_admin_stats(receiver):
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sandbox, session_for(sandbox) as http:
        run_id = await start_run(http, receiver.url)
        await receiver.received(1)
        await asyncio.sleep(0.02)
        async with http.get("/_sandbox/stats") as response:
            stats: dict[str, Any] = await response.json()

    assert stats["webhookAttempts"] == [
        {"runId": run_id, "attempt": 1, "status": 200, "error": None}
    ]
