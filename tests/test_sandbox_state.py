"""A sandbox with a state dir survives a restart: same runs, key, files and credits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchrun.sandbox import Sandbox, SandboxConfig, SandboxStateError
from batchrun.sandbox.state import JOURNAL_FILE, SNAPSHOT_FILE
from tests.conftest import PHOTOS, REPO

CARTOONIFY_ID = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
COPYWRITER_ID = "dd782e43-4e2b-421a-96e8-d3be2ba51d2c"
FAST = {"queue_seconds": 0.01, "run_seconds": (0.05, 0.08), "rate_limit": 10_000}
SLOW = {**FAST, "run_seconds": (0.6, 0.6)}  # long enough to stop mid-run


def config(state_dir: Path, **changes: Any) -> SandboxConfig:
    return SandboxConfig(state_dir=state_dir, **{**FAST, **changes})


def free_port(avoid: set[int]) -> int:
    """A free loopback port other than `avoid`, so a restart really moves."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def moved(sandbox: Sandbox) -> dict[str, int]:
    """Sandbox() keywords that bind both sites to ports the old one did not use."""
    used = {port_of(sandbox.base_url), port_of(sandbox.storage_url)}
    api = free_port(used)
    return {"port": api, "storage_port": free_port(used | {api})}


async def call(
    sandbox: Sandbox, method: str, path: str, key: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"x-api-key": key or sandbox.api_key}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, sandbox.base_url + path, headers=headers, **kw) as r,
    ):
        return r.status, await r.json()


async def start_run(sandbox: Sandbox, app_id: str, inputs: dict[str, Any]) -> str:
    status, body = await call(
        sandbox, "POST", f"/v1/apps/{app_id}/runs", json={"inputs": inputs}
    )
    assert status == 202, body
    return str(body["data"]["runId"])


async def wait(sandbox: Sandbox, run_id: str) -> dict[str, Any]:
    status, body = await call(
        sandbox, "GET", f"/v1/runs/{run_id}/wait", params={"timeout": "10"}
    )
    assert status == 200 and body["timeout"] is False, body
    return dict(body["data"])


async def download(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read()


async def upload(sandbox: Sandbox, photo: Path) -> str:
    status, body = await call(
        sandbox,
        "POST",
        "/v1/assets/upload-urls",
        json={"files": [{"filename": photo.name, "mediaType": "image"}]},
    )
    assert status == 200, body
    entry = body["data"]["uploads"][0]
    async with (
        aiohttp.ClientSession() as http,
        http.put(entry["uploadUrl"], data=photo.read_bytes()) as put,
    ):
        assert put.status == 200
    return str(entry["assetUrl"])


# -- runs ------------------------------------------------------------------------------


async def test_a_run_stopped_mid_flight_finishes_after_a_restart(tmp_path):
    async with Sandbox(config(tmp_path, **SLOW)) as first:
        run_id = await start_run(first, CARTOONIFY_ID, {"Style": "Ghibli"})
        while first.run(run_id).status == "queued":  # type: ignore[union-attr]
            await asyncio.sleep(0.005)
        _, before = await call(first, "GET", f"/v1/runs/{run_id}")

    async with Sandbox(config(tmp_path, **SLOW), **moved(first)) as second:
        run = await wait(second, run_id)
        status, data = await download(run["outputs"][0]["value"])

    assert before["data"]["status"] == "running"
    assert run["runId"] == run_id
    assert run["status"] == "completed"
    # The schedule is anchored to the saved startedAt, not restarted.
    assert run["startedAt"] == before["data"]["startedAt"]
    assert run["outputs"][0]["value"].startswith(second.storage_url + "/outputs/")
    assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n"


async def test_finished_runs_answer_with_the_new_storage_url(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        run_id = await start_run(first, CARTOONIFY_ID, {"Style": "Simpsons"})
        old = await wait(first, run_id)
        _, old_bytes = await download(old["outputs"][0]["value"])

    async with Sandbox(config(tmp_path), **moved(first)) as second:
        status, body = await call(second, "GET", f"/v1/runs/{run_id}")
        new_url = body["data"]["outputs"][0]["value"]
        fetched, new_bytes = await download(new_url)
        _, listing = await call(second, "GET", "/v1/runs")

    assert status == 200
    assert body["data"]["status"] == "completed"
    assert new_url.startswith(second.storage_url + "/outputs/")
    assert new_url.removeprefix(second.storage_url) == old["outputs"][0][
        "value"
    ].removeprefix(first.storage_url)
    assert fetched == 200 and new_bytes == old_bytes
    assert [r["runId"] for r in listing["data"]] == [run_id]


async def test_new_runs_after_a_restart_get_fresh_ids_and_keep_their_order(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        earlier = await start_run(first, COPYWRITER_ID, {"Product": "a lamp"})
        await wait(first, earlier)

    async with Sandbox(config(tmp_path)) as second:
        later = await start_run(second, COPYWRITER_ID, {"Product": "a lamp"})
        await wait(second, later)
        _, listing = await call(second, "GET", "/v1/runs")

    assert later != earlier
    assert [r["runId"] for r in listing["data"]] == [later, earlier]
    assert [r.sequence for r in second.store.runs()] == [0, 1]


# -- assets ----------------------------------------------------------------------------


async def test_an_asset_url_from_before_a_restart_still_works_as_an_input(tmp_path):
    photo = PHOTOS / "astronaut.jpg"
    async with Sandbox(config(tmp_path)) as first:
        asset_url = await upload(first, photo)

    async with Sandbox(config(tmp_path), **moved(first)) as second:
        run_id = await start_run(
            second, CARTOONIFY_ID, {"Upload": asset_url, "Style": "Ghibli"}
        )
        run = await wait(second, run_id)
        served_at = second.storage_url + asset_url.removeprefix(first.storage_url)
        status, data = await download(served_at)

    assert not asset_url.startswith(second.storage_url)
    assert run["status"] == "completed"
    assert {o["status"] for o in run["outputs"]} == {"completed"}
    assert status == 200 and data == photo.read_bytes()


async def test_an_unknown_url_on_a_dead_port_is_not_mistaken_for_an_asset(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        asset_url = await upload(first, PHOTOS / "coffee.jpg")
    never_uploaded = asset_url.rsplit("/", 2)[0] + "/nope/coffee.jpg"

    async with Sandbox(config(tmp_path), **moved(first)) as second:
        run_id = await start_run(
            second, CARTOONIFY_ID, {"Upload": never_uploaded, "Style": "Ghibli"}
        )
        run = await wait(second, run_id)

    assert run["status"] == "failed"
    assert "cannot fetch 'Upload'" in run["outputs"][0]["error"]


# -- identity, credits, stats ----------------------------------------------------------


async def test_the_generated_api_key_and_signing_key_survive_a_restart(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        key = first.api_key
        _, jwks = await call(first, "GET", "/v1/webhooks/signing-key")

    async with Sandbox(config(tmp_path)) as second:
        status, _ = await call(second, "GET", "/v1/apps", key=key)
        _, jwks_again = await call(second, "GET", "/v1/webhooks/signing-key")

    assert key.startswith("lma_sandbox_")
    assert second.api_key == key
    assert status == 200
    assert jwks_again == jwks


async def test_a_given_api_key_wins_and_is_kept_for_the_next_start(tmp_path):
    async with Sandbox(config(tmp_path)):
        pass
    async with Sandbox(config(tmp_path, api_key="lma_chosen")) as chosen:
        refused, _ = await call(chosen, "GET", "/v1/apps", key="lma_other")

    async with Sandbox(config(tmp_path)) as later:
        accepted, _ = await call(later, "GET", "/v1/apps", key="lma_chosen")

    assert refused == 401
    assert later.api_key == "lma_chosen"
    assert accepted == 200


async def test_credits_and_stats_runs_carry_over_a_restart(tmp_path):
    async with Sandbox(config(tmp_path, credits=5)) as first:
        ids = [
            await start_run(first, COPYWRITER_ID, {"Product": name})
            for name in ("a lamp", "a chair")
        ]

    async with Sandbox(config(tmp_path, credits=5)) as second:
        _, usage = await call(second, "GET", "/v1/account/usage")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{second.base_url}/_sandbox/stats") as response,
        ):
            stats = await response.json()

    assert usage["data"]["credits"] == {"balance": 3, "used": 2}
    assert [r.run_id for r in second.stats.runs] == ids
    assert [r["runId"] for r in stats["runs"]] == ids
    assert second.stats.runs[0].inputs == {"Product": "a lamp"}


async def test_a_stats_reset_stays_reset_after_a_restart(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        await start_run(first, COPYWRITER_ID, {"Product": "a lamp"})
        first.stats.reset()
        kept = await start_run(first, COPYWRITER_ID, {"Product": "a chair"})

    async with Sandbox(config(tmp_path)) as second:
        pass

    assert [r.run_id for r in second.stats.runs] == [kept]


async def test_the_rate_limit_window_is_not_refilled_by_a_restart(tmp_path):
    limited = {"rate_limit": 3, "rate_window": 60.0}
    async with Sandbox(config(tmp_path, **limited)) as first:
        for _ in range(3):
            await call(first, "GET", "/v1/apps")

    async with Sandbox(config(tmp_path, **limited)) as second:
        status, body = await call(second, "GET", "/v1/apps")

    assert status == 429
    assert body["code"] == "RATE_LIMITED"


async def test_runs_of_an_app_missing_from_the_catalog_are_kept_for_later(tmp_path):
    only_cartoonify = tmp_path / "apps.json"
    catalog = json.loads((REPO / "batchrun/sandbox/apps.json").read_text())
    catalog["apps"] = [a for a in catalog["apps"] if a["appId"] == CARTOONIFY_ID]
    only_cartoonify.write_text(json.dumps(catalog))
    async with Sandbox(config(tmp_path / "state")) as first:
        run_id = await start_run(first, COPYWRITER_ID, {"Product": "a lamp"})
        await wait(first, run_id)

    async with Sandbox(config(tmp_path / "state", apps_file=only_cartoonify)) as narrow:
        missing, _ = await call(narrow, "GET", f"/v1/runs/{run_id}")
    async with Sandbox(config(tmp_path / "state")) as full:
        found, body = await call(full, "GET", f"/v1/runs/{run_id}")

    assert missing == 404
    assert found == 200
    assert body["data"]["status"] == "completed"


# -- the state dir itself --------------------------------------------------------------


async def test_a_second_sandbox_on_a_state_dir_in_use_is_refused(tmp_path):
    async with Sandbox(config(tmp_path)):
        with pytest.raises(SandboxStateError) as refused:
            async with Sandbox(config(tmp_path)):
                pass
    async with Sandbox(config(tmp_path)) as after:
        status, _ = await call(after, "GET", "/v1/apps")

    message = str(refused.value)
    assert f"state dir {tmp_path} is in use by another sandbox (pid {os.getpid()})" in (
        message
    )
    assert "\n" not in message
    assert status == 200  # released by the first sandbox's close


async def test_a_garbled_snapshot_is_refused_not_silently_replaced(tmp_path):
    (tmp_path / SNAPSHOT_FILE).write_text('{"format": 1, "generation": ')

    with pytest.raises(SandboxStateError, match="is not a readable sandbox snapshot"):
        async with Sandbox(config(tmp_path)):
            pass

    assert (tmp_path / SNAPSHOT_FILE).read_text() == '{"format": 1, "generation": '


async def test_a_journal_older_than_the_snapshot_is_not_replayed(tmp_path):
    async with Sandbox(config(tmp_path)) as first:
        await start_run(first, COPYWRITER_ID, {"Product": "a lamp"})
    snapshot = json.loads((tmp_path / SNAPSHOT_FILE).read_text())
    stale = {"kind": "journal", "generation": snapshot["generation"] - 1}
    ghost = {"kind": "stats_reset"}
    lines = [json.dumps(stale), json.dumps(ghost)]
    (tmp_path / JOURNAL_FILE).write_text("\n".join(lines) + "\n")

    async with Sandbox(config(tmp_path)) as second:
        pass

    assert len(second.stats.runs) == 1


# -- a real crash ----------------------------------------------------------------------


def launch_sandbox(state_dir: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "batchrun", "sandbox", "--port", "0"]
    return subprocess.Popen(
        [*command, "--state-dir", str(state_dir), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def test_a_killed_sandbox_loses_no_run_and_a_torn_last_line_is_skipped(
    tmp_path,
):
    process = launch_sandbox(
        tmp_path, "--queue-seconds", "0.01", "--run-seconds", "0.05,0.05"
    )
    try:
        assert process.stdout is not None
        base = re.fullmatch(
            r"export LAMINA_BASE_URL=(\S+)\n", process.stdout.readline()
        )
        key = re.fullmatch(r"export LAMINA_API_KEY=(\S+)\n", process.stdout.readline())
        assert base and key
        async with aiohttp.ClientSession(
            base.group(1), headers={"x-api-key": key.group(1)}
        ) as http:
            url = f"/v1/apps/{COPYWRITER_ID}/runs"
            async with http.post(url, json={"inputs": {"Product": "a lamp"}}) as r:
                run_id = (await r.json())["data"]["runId"]
            async with http.get(f"/v1/runs/{run_id}/wait?timeout=10") as r:
                finished = (await r.json())["data"]
    finally:
        process.send_signal(signal.SIGKILL)  # no close, no final snapshot
        process.wait(timeout=10)
    with (tmp_path / JOURNAL_FILE).open("a") as journal:
        journal.write('{"kind": "run", "run": {"runId": "torn')

    async with Sandbox(config(tmp_path)) as after:
        status, body = await call(after, "GET", f"/v1/runs/{run_id}", key=key.group(1))

    assert finished["status"] == "completed"
    assert after.api_key == key.group(1)
    assert status == 200
    assert body["data"] == finished
    assert [r.run_id for r in after.stats.runs] == [run_id]


def test_the_cli_refuses_a_state_dir_in_use_with_one_line(tmp_path):
    holder = launch_sandbox(tmp_path)
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # listening, and holding the dir

        command = [sys.executable, "-m", "batchrun", "sandbox", "--port", "0"]
        second = subprocess.run(
            [*command, "--state-dir", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=10)

    assert second.returncode == 1
    assert second.stdout == ""
    assert second.stderr == (
        f"Error: state dir {tmp_path} is in use by another sandbox "
        f"(pid {holder.pid}); stop that one or choose another state dir\n"
    )


def test_the_state_dir_flag_is_documented_in_help():
    shown = subprocess.run(
        [sys.executable, "-m", "batchrun", "sandbox", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert shown.returncode == 0
    assert "--state-dir DIR" in shown.stdout
    assert "One sandbox per DIR." in shown.stdout
