"""Injected faults: each one observed from a real client, switched on and off live."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from batchrun.sandbox import Faults, Sandbox, SandboxConfig

CATALOG_ID = "67b50933-5ef8-4092-a481-b172df24e498"
COPYWRITER_ID = "dd782e43-4e2b-421a-96e8-d3be2ba51d2c"
FAST = {"queue_seconds": 0.01, "run_seconds": (0.03, 0.05)}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(**FAST)) as sb:
        yield sb


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"x-api-key": sandbox.api_key}
    async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as session:
        yield session


async def status_of(http: aiohttp.ClientSession, method: str, path: str) -> int:
    async with http.request(method, path, json={"inputs": {}}) as response:
        await response.read()
        return response.status


async def finished_run(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.post(f"/v1/apps/{CATALOG_ID}/runs", json={"inputs": {}}) as r:
        run_id = (await r.json())["data"]["runId"]
    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "10"}) as r:
        return dict((await r.json())["data"])


# -- 500s -------------------------------------------------------------------------


async def test_error_next_fails_exactly_that_many_requests(sandbox, http):
    sandbox.faults.error_next = 2

    statuses = [await status_of(http, "GET", "/v1/apps") for _ in range(3)]
    async with http.get("/v1/apps") as response:
        pass

    assert statuses == [500, 500, 200]
    assert response.status == 200
    assert sandbox.stats.faults_injected["error"] == 2


async def test_injected_errors_use_the_retryable_envelope(sandbox, http):
    sandbox.faults.error_next = 1

    async with http.get("/v1/apps") as response:
        body = await response.json()

    assert response.status == 500
    assert body["code"] == "INTERNAL_ERROR"
    assert body["retryable"] is True
    assert body["requestId"] == response.headers["X-Request-Id"]


async def test_error_routes_limit_errors_to_the_named_routes(sandbox, http):
    sandbox.faults.error_next = 1
    sandbox.faults.error_routes = {"create_run"}

    listing = await status_of(http, "GET", "/v1/apps")
    creating = await status_of(http, "POST", f"/v1/apps/{CATALOG_ID}/runs")
    again = await status_of(http, "POST", f"/v1/apps/{CATALOG_ID}/runs")

    assert (listing, creating, again) == (200, 500, 202)
    assert len(sandbox.stats.runs) == 1


async def test_error_rate_can_be_switched_on_and_off_at_runtime(sandbox, http):
    sandbox.faults.error_rate = 1.0
    during = [await status_of(http, "GET", "/v1/apps") for _ in range(3)]

    sandbox.faults.error_rate = 0.0
    after = [await status_of(http, "GET", "/v1/apps") for _ in range(3)]

    assert during == [500, 500, 500]
    assert after == [200, 200, 200]


async def test_faults_given_at_startup_apply_from_the_first_request():
    config = SandboxConfig(faults=Faults(error_next=1), **FAST)
    async with Sandbox(config) as sandbox:
        headers = {"x-api-key": sandbox.api_key}
        async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as http:
            statuses = [await status_of(http, "GET", "/v1/apps") for _ in range(2)]

    assert statuses == [500, 200]


async def test_an_error_rate_between_0_and_1_fails_some_requests(sandbox, http):
    sandbox.faults.error_rate = 0.5

    statuses = [await status_of(http, "GET", "/v1/apps") for _ in range(40)]

    assert 5 < statuses.count(500) < 35
    assert statuses.count(500) + statuses.count(200) == 40


# -- dropped connections -------------------------------------------------------------


async def test_a_dropped_request_is_a_disconnect_and_creates_no_run(sandbox, http):
    sandbox.faults.drop_next = 1

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await status_of(http, "POST", f"/v1/apps/{CATALOG_ID}/runs")
    async with http.get("/v1/runs") as response:
        listed = await response.json()

    assert sandbox.stats.runs == []
    assert listed["pagination"]["total"] == 0
    assert sandbox.stats.faults_injected["drop"] == 1


async def test_drop_rate_off_again_serves_normally(sandbox, http):
    sandbox.faults.drop_rate = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await status_of(http, "GET", "/v1/apps")

    sandbox.faults.drop_rate = 0.0
    status = await status_of(http, "GET", "/v1/apps")

    assert status == 200


async def test_drop_routes_limit_drops_to_the_named_routes(sandbox, http):
    sandbox.faults.drop_next = 1
    sandbox.faults.drop_routes = {"create_run"}

    listing = await status_of(http, "GET", "/v1/apps")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await status_of(http, "POST", f"/v1/apps/{CATALOG_ID}/runs")

    assert listing == 200
    assert sandbox.stats.runs == []


async def test_a_lost_response_still_creates_the_run(sandbox, http):
    sandbox.faults.lost_response_next = 1

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await status_of(http, "POST", f"/v1/apps/{CATALOG_ID}/runs")
    async with http.get("/v1/runs") as response:
        listed = await response.json()

    [record] = sandbox.stats.runs
    assert [r["runId"] for r in listed["data"]] == [record.run_id]
    assert sandbox.stats.faults_injected["lost_response"] == 1


async def test_lost_responses_only_hit_run_creation(sandbox, http):
    sandbox.faults.lost_response_rate = 1.0

    status = await status_of(http, "GET", "/v1/apps")

    assert status == 200


# -- slow answers -------------------------------------------------------------------


async def test_delay_slows_answers_in_real_seconds(sandbox, http):
    sandbox.faults.delay = 0.2
    started = time.monotonic()

    status = await status_of(http, "GET", "/v1/apps")

    assert status == 200
    assert time.monotonic() - started >= 0.2


async def test_delay_trips_a_client_timeout(sandbox, http):
    sandbox.faults.delay = 0.5

    with pytest.raises(asyncio.TimeoutError):
        async with http.get("/v1/apps", timeout=aiohttp.ClientTimeout(total=0.05)):
            pass


# -- torn downloads -----------------------------------------------------------------


async def test_truncated_downloads_fail_then_succeed_in_full(sandbox, http):
    run = await finished_run(http)
    url = run["outputs"][0]["value"]
    sandbox.faults.truncate_next = 1

    async with aiohttp.ClientSession() as storage:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with storage.get(url) as response:
                await response.read()
        async with storage.get(url) as response:
            data = await response.read()

    assert len(data) == int(response.headers["Content-Length"])
    assert data.startswith(b"\x89PNG")
    assert sandbox.stats.faults_injected["truncate"] == 1


# -- awkward SSE -----------------------------------------------------------------------


async def raw_stream(http: aiohttp.ClientSession, run_id: str) -> tuple[bytes, int]:
    chunks = []
    async with http.get(f"/v1/runs/{run_id}/stream") as response:
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
    return b"".join(chunks), len(chunks)


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    """Events of a stream whose events are `event:` then one `data:` line."""
    lines = [
        line
        for line in raw.decode().replace("\r\n", "\n").split("\n")
        if line and not line.startswith(":")
    ]
    return [
        (
            lines[i].removeprefix("event: "),
            json.loads(lines[i + 1].removeprefix("data: ")),
        )
        for i in range(0, len(lines), 2)
    ]


async def test_sse_faults_change_the_framing_not_the_events(sandbox, http):
    run = await finished_run(http)
    plain, _ = await raw_stream(http, run["runId"])
    sandbox.faults.sse_chunk_size = 7
    sandbox.faults.sse_crlf = True
    sandbox.faults.sse_comments = True

    awkward, chunks = await raw_stream(http, run["runId"])

    assert b"\r\n" in awkward
    assert b"\r\n: " in awkward
    assert b"\n\n" not in awkward.replace(b"\r\n", b"")
    assert chunks > 1
    assert sse_events(awkward) == sse_events(plain)


async def test_sse_in_one_byte_chunks_splits_utf8_and_still_parses(sandbox, http):
    async with http.post(
        f"/v1/apps/{COPYWRITER_ID}/runs",
        json={"inputs": {"Product": "Crème brûlée ☕", "Language": "Japanese"}},
    ) as r:
        run_id = (await r.json())["data"]["runId"]
    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "10"}):
        pass
    sandbox.faults.sse_chunk_size = 1

    raw, chunks = await raw_stream(http, run_id)

    text = raw.decode("utf-8")
    assert text.startswith("event: complete\ndata: ")
    data = json.loads(text.split("\n")[1].removeprefix("data: "))
    assert data["runId"] == run_id
    assert chunks > len(raw) // 10  # really many small reads, not one


# -- the admin route -------------------------------------------------------------------


async def test_faults_can_be_set_over_http_by_another_process(sandbox, http):
    async with aiohttp.ClientSession(sandbox.base_url) as admin:
        async with admin.post(
            "/_sandbox/faults", json={"error_next": 1, "error_routes": ["list_apps"]}
        ) as response:
            merged = await response.json()
        status = await status_of(http, "GET", "/v1/apps")
        async with admin.get("/_sandbox/faults") as response:
            after = await response.json()

    assert response.status == 200
    assert merged["error_next"] == 1
    assert merged["error_routes"] == ["list_apps"]
    assert status == 500
    assert after["error_next"] == 0
    assert sandbox.faults.error_routes == {"list_apps"}


@pytest.mark.parametrize(
    "change",
    [{"eror_rate": 1}, {"error_rate": 2}, {"error_next": -1}, {"sse_crlf": "yes"}],
    ids=["unknown-name", "rate-above-1", "negative-count", "not-a-bool"],
)
async def test_bad_fault_settings_are_refused_and_change_nothing(sandbox, change):
    async with (
        aiohttp.ClientSession(sandbox.base_url) as admin,
        admin.post("/_sandbox/faults", json={**change, "delay": 3}) as response,
    ):
        body = await response.json()

    assert response.status == 400
    assert body["code"] == "VALIDATION_ERROR"
    assert sandbox.faults == Faults()


async def test_admin_routes_are_not_rate_limited_or_faulted():
    config = SandboxConfig(rate_limit=1, faults=Faults(error_rate=1.0), **FAST)
    async with (
        Sandbox(config) as sandbox,
        aiohttp.ClientSession(sandbox.base_url) as admin,
    ):
        statuses = []
        for _ in range(5):
            async with admin.get("/_sandbox/stats") as response:
                statuses.append(response.status)

    assert statuses == [200] * 5
