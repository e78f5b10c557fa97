"""Run lifecycle, wait, SSE and outputs of the sandbox, observed over real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from batchrun.sandbox import Sandbox, SandboxConfig

CARTOONIFY_ID = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
CATALOG_ID = "67b50933-5ef8-4092-a481-b172df24e498"  # six outputs, all defaults
COPYWRITER_ID = "dd782e43-4e2b-421a-96e8-d3be2ba51d2c"
FAST = {"queue_seconds": 0.01, "run_seconds": (0.05, 0.08)}


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of an SSE body: any line ending, comments skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(**FAST)) as sb:
        yield sb


async def client(sandbox: Sandbox) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        sandbox.base_url, headers={"x-api-key": sandbox.api_key}
    )


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    async with await client(sandbox) as session:
        yield session


async def start_run(
    http: aiohttp.ClientSession,
    app_id: str,
    inputs: dict[str, Any],
) -> str:
    async with http.post(f"/v1/apps/{app_id}/runs", json={"inputs": inputs}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["data"]["runId"])


async def wait(http: aiohttp.ClientSession, run_id: str) -> dict[str, Any]:
    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "10"}) as r:
        body = await r.json()
    assert body["timeout"] is False
    return dict(body["data"])


async def stream(http: aiohttp.ClientSession, run_id: str) -> list[tuple[str, Any]]:
    async with asyncio.timeout(10), http.get(f"/v1/runs/{run_id}/stream") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return parse_sse(await r.text())


# -- lifecycle --------------------------------------------------------------------


async def test_outputs_finish_one_at_a_time_while_running(http):
    run_id = await start_run(http, CATALOG_ID, {})

    events = await stream(http, run_id)

    names = [name for name, _ in events]
    assert names == ["progress"] * 8 + ["complete"]
    runs = [data for _, data in events]
    assert [r["status"] for r in runs] == ["queued"] + ["running"] * 7 + ["completed"]
    finished = [sum(o["status"] != "pending" for o in r["outputs"]) for r in runs]
    assert finished == [0, 0, 1, 2, 3, 4, 5, 6, 6]
    assert runs[0]["startedAt"] is None
    assert all(r["startedAt"] for r in runs[1:])
    assert all(r["completedAt"] is None for r in runs[:-1])
    assert runs[-1]["completedAt"] >= runs[-1]["startedAt"] >= runs[-1]["createdAt"]


async def test_completed_outputs_carry_their_type_and_storage_url(sandbox, http):
    run_id = await start_run(http, CATALOG_ID, {})

    run = await wait(http, run_id)

    assert run["status"] == "completed"
    assert run["errorMessage"] is None
    types = [o["type"] for o in run["outputs"]]
    assert types == ["image"] * 5 + ["video"]
    labels = [o["label"] for o in run["outputs"]]
    assert labels.count("AI Designer") == 2
    assert len({o["id"] for o in run["outputs"]}) == 6
    for output in run["outputs"]:
        assert output["status"] == "completed"
        assert output["error"] is None
        assert output["value"].startswith(sandbox.storage_url + "/outputs/")


async def test_output_files_are_real_images_and_animations(http):
    run_id = await start_run(http, CATALOG_ID, {})
    run = await wait(http, run_id)

    async with aiohttp.ClientSession() as storage:
        files = []
        for output in run["outputs"]:
            async with storage.get(output["value"]) as response:
                files.append((response.headers["Content-Type"], await response.read()))

    for content_type, data in files[:5]:
        assert content_type == "image/png"
        assert Image.open(io.BytesIO(data)).format == "PNG"
    video_type, video = files[5]
    assert video_type in ("image/gif", "image/webp")
    assert Image.open(io.BytesIO(video)).n_frames > 1


async def test_text_outputs_carry_the_text_itself(http):
    run_id = await start_run(http, COPYWRITER_ID, {"Product": "Moonlight Mug"})

    run = await wait(http, run_id)

    [output] = run["outputs"]
    assert output["type"] == "text"
    assert output["status"] == "completed"
    assert "Moonlight Mug" in output["value"]


async def test_an_unreachable_default_url_is_replaced_by_a_placeholder(http):
    run_id = await start_run(http, CARTOONIFY_ID, {"Style": "Cyberpunk"})

    run = await wait(http, run_id)

    assert run["status"] == "completed"
    assert run["outputs"][0]["type"] == "image"


async def test_failure_rate_one_fails_every_output_and_the_run():
    config = SandboxConfig(failure_rate=1.0, **FAST)
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        run_id = await start_run(http, CATALOG_ID, {})
        run = await wait(http, run_id)

    assert run["status"] == "failed"
    assert run["errorMessage"]
    assert run["completedAt"]
    for output in run["outputs"]:
        assert output["status"] == "error"
        assert output["type"] == "pending"  # a failed output keeps type pending
        assert output["value"] is None
        assert output["error"]


async def test_some_output_errors_still_complete_the_run():
    config = SandboxConfig(output_error_rate=0.5, seed=3, **FAST)
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        runs = [
            await wait(http, await start_run(http, CATALOG_ID, {})) for _ in range(3)
        ]

    mixed = [
        r for r in runs if {o["status"] for o in r["outputs"]} == {"completed", "error"}
    ]
    assert mixed, "seed 3 should give at least one run with mixed outputs"
    for run in mixed:
        assert run["status"] == "completed"
        assert run["errorMessage"] is None


async def test_the_same_seed_replays_the_same_failures():
    async def statuses(seed: int) -> list[str]:
        config = SandboxConfig(failure_rate=0.5, seed=seed, **FAST)
        async with Sandbox(config) as sandbox, await client(sandbox) as http:
            ids = [
                await start_run(http, COPYWRITER_ID, {"Product": "x"}) for _ in range(8)
            ]
            return [(await wait(http, run_id))["status"] for run_id in ids]

    first, again, other = await statuses(7), await statuses(7), await statuses(8)

    assert first == again
    assert set(first) == {"completed", "failed"}
    assert first != other


async def test_cancelled_runs_end_with_cancelled_outputs():
    config_slow = SandboxConfig(queue_seconds=0.01, run_seconds=(5, 5))
    async with Sandbox(config_slow) as slow, await client(slow) as slow_http:
        run_id = await start_run(slow_http, CATALOG_ID, {})
        listener = asyncio.create_task(stream(slow_http, run_id))
        await asyncio.sleep(0.1)

        cancelled = slow.cancel_run(run_id)
        events = await listener
        run = await wait(slow_http, run_id)

    assert cancelled is True
    assert events[-1][0] == "error"
    assert run["status"] == "cancelled"
    assert run["completedAt"]
    assert run["errorMessage"] is None
    assert {o["status"] for o in run["outputs"]} == {"cancelled"}


async def test_the_admin_route_cancels_a_run_without_a_key():
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(5, 5))
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        run_id = await start_run(http, CATALOG_ID, {})
        async with aiohttp.ClientSession(sandbox.base_url) as admin:
            async with admin.post(f"/_sandbox/runs/{run_id}/cancel") as response:
                body = await response.json()
            async with admin.post(f"/_sandbox/runs/{run_id}/cancel") as again:
                pass

    assert response.status == 200
    assert body["data"]["status"] == "cancelled"
    assert again.status == 200  # already cancelled: nothing changes


async def test_renders_are_cached_by_app_and_inputs(sandbox, http):
    same = {"Style": "Ghibli", "Aspect Ratio": "16:9"}
    for inputs in (same, same, {**same, "Style": "Simpsons"}):
        await wait(http, await start_run(http, CARTOONIFY_ID, inputs))

    renders = sandbox.render_count

    assert renders == 2


# -- wait ---------------------------------------------------------------------------


async def test_wait_answers_timeout_true_while_the_run_is_still_going():
    config = SandboxConfig(queue_seconds=0, run_seconds=(100, 100), time_scale=0.05)
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        run_id = await start_run(http, CATALOG_ID, {})

        async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "2"}) as r:
            body = await r.json()

    assert r.status == 200
    assert set(body) == {"data", "timeout"}
    assert body["timeout"] is True
    assert body["data"]["status"] in ("queued", "running")


async def test_wait_returns_as_soon_as_the_run_ends(http):
    run_id = await start_run(http, CATALOG_ID, {})

    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "120"}) as r:
        body = await r.json()

    assert body["timeout"] is False
    assert body["data"]["status"] == "completed"


@pytest.mark.parametrize("timeout", ["0", "121", "soon", "-5"])
async def test_wait_rejects_timeouts_outside_1_to_120(http, timeout):
    run_id = await start_run(http, CATALOG_ID, {})

    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": timeout}) as r:
        body = await r.json()

    assert r.status == 400
    assert body["code"] == "VALIDATION_ERROR"


async def test_wait_and_stream_of_unknown_runs_are_404(http):
    missing = "00000000-0000-4000-8000-000000000000"

    async with http.get(f"/v1/runs/{missing}/wait") as waited:
        pass
    async with http.get(f"/v1/runs/{missing}/stream") as streamed:
        pass

    assert (waited.status, streamed.status) == (404, 404)


# -- SSE ------------------------------------------------------------------------------


async def test_a_finished_run_streams_one_final_event_at_once(http):
    run_id = await start_run(http, CATALOG_ID, {})
    finished = await wait(http, run_id)

    events = await stream(http, run_id)

    assert events == [("complete", finished)]


async def test_a_failed_run_streams_an_error_event():
    config = SandboxConfig(failure_rate=1.0, **FAST)
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        run_id = await start_run(http, COPYWRITER_ID, {"Product": "x"})

        events = await stream(http, run_id)

    assert events[0][0] == "progress"
    assert events[-1][0] == "error"
    assert events[-1][1]["status"] == "failed"


async def test_sse_framing_is_event_then_one_data_line(http):
    run_id = await start_run(http, COPYWRITER_ID, {"Product": "x"})

    async with http.get(f"/v1/runs/{run_id}/stream") as response:
        raw = await response.text()

    blocks = raw.split("\n\n")
    assert blocks[-1] == ""
    for block in blocks[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2
        assert lines[0].startswith("event: ")
        assert lines[1].startswith("data: ")
        json.loads(lines[1].removeprefix("data: "))
    assert "id:" not in raw and "retry:" not in raw


async def test_streams_ping_and_time_out_on_the_scaled_clock():
    # 15 s pings and the 10 min timeout, times 0.001: 15 ms and 0.6 s.
    config = SandboxConfig(
        queue_seconds=0, run_seconds=(10_000, 10_000), time_scale=0.001
    )
    async with Sandbox(config) as sandbox, await client(sandbox) as http:
        run_id = await start_run(http, CATALOG_ID, {})

        events = await stream(http, run_id)

    names = [name for name, _ in events]
    assert names[0] == "progress"
    assert names[-1] == "timeout"
    assert events[-1][1] == {"message": "Stream timeout after 10 minutes"}
    pings = [data for name, data in events if name == "ping"]
    assert len(pings) >= 10
    assert all(isinstance(p, int) and p > 1_700_000_000_000 for p in pings)


# -- url inputs -----------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
async def image_host() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback web server with /photo.png; yields (base URL, paths requested)."""
    seen: list[str] = []

    async def photo(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(body=png_bytes((200, 40, 40)), content_type="image/png")

    async def notes(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="not a picture")

    app = web.Application()
    app.router.add_get("/photo.png", photo)
    app.router.add_get("/notes.png", notes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_a_loopback_url_input_is_fetched_and_rendered(http, image_host):
    base, seen = image_host
    inputs = {"Upload": f"{base}/photo.png", "Style": "Simpsons"}

    run = await wait(http, await start_run(http, CARTOONIFY_ID, inputs))

    assert run["status"] == "completed"
    assert seen == ["/photo.png"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/nothing.png", "127.0.0.1:9"),
        ("https://example.invalid/photo.png", "allow_remote"),
    ],
    ids=["refused", "remote-not-allowed"],
)
async def test_an_unfetchable_user_url_errors_the_outputs(http, url, reason):
    inputs = {"Upload": url, "Style": "Ghibli"}

    run = await wait(http, await start_run(http, CARTOONIFY_ID, inputs))

    assert run["status"] == "failed"
    [output] = run["outputs"]
    assert output["status"] == "error"
    assert reason in output["error"]


async def test_a_url_answering_404_errors_the_output(http, image_host):
    base, _ = image_host
    inputs = {"Upload": f"{base}/missing.png", "Style": "Ghibli"}

    run = await wait(http, await start_run(http, CARTOONIFY_ID, inputs))

    assert run["status"] == "failed"
    assert "HTTP 404" in run["outputs"][0]["error"]


async def test_a_url_that_is_not_an_image_errors_the_output(http, image_host):
    base, _ = image_host
    inputs = {"Upload": f"{base}/notes.png", "Style": "Ghibli"}

    run = await wait(http, await start_run(http, CARTOONIFY_ID, inputs))

    assert run["status"] == "failed"
    assert "not a readable image" in run["outputs"][0]["error"]


async def test_stopping_the_sandbox_ends_open_streams_and_long_polls_at_once():
    config = SandboxConfig(queue_seconds=0, run_seconds=(100, 100))
    sandbox = Sandbox(config)
    await sandbox.start()
    async with await client(sandbox) as http:
        run_id = await start_run(http, CATALOG_ID, {})
        listener = asyncio.create_task(stream(http, run_id))
        async with asyncio.timeout(5):
            while sandbox.stats.requests["stream_run"] == 0:
                await asyncio.sleep(0.01)
        waiter = asyncio.create_task(
            http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "120"})
        )
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()

        await sandbox.close()
        events = await listener
        waited = await waiter
        body = await waited.json()
        took = loop.time() - started

    assert took < 0.2
    assert events
    assert {name for name, _ in events} == {"progress"}  # ended, no final event
    assert waited.status == 200
    assert body["timeout"] is True
