"""`apply` end to end against the sandbox over real HTTP: outputs, resume, faults."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from batchrun.batch import Overrides, Target, apply_async, plan_async
from batchrun.errors import SpecError
from batchrun.manifest import Manifest
from batchrun.retries import RetryPolicy
from tests.conftest import write_spec

CARTOONS = """
version: 1
settings:
  filename: "{app}/{Upload}-{Style}{ext}"
jobs:
  - app: Cartoonify!
    inputs:
      Aspect Ratio: 16:9
    matrix:
      Upload: [{photos}/astronaut.jpg, {photos}/coffee.jpg]
      Style: [Ghibli, Cyberpunk]
"""

COPY = """
version: 1
settings:
  filename: "{sku}-{Language}{ext}"
jobs:
  - app: Product Copywriter
    inputs:
      Product: "{product}"
    matrix:
      rows: {from: products.csv}
      Language: [English, French]
"""


def target(sandbox) -> Target:
    return Target(base_url=sandbox.base_url, api_key=sandbox.api_key)


# Backoff as in production, but in milliseconds: these tests inject many faults.
FAST_RETRY = RetryPolicy(retries=5, base=0.005, cap=0.05)


async def run(spec: Path, sandbox, **overrides):
    options = Overrides(output_dir=spec.parent / "out", **overrides)
    return await apply_async(
        spec, target=target(sandbox), overrides=options, retry=FAST_RETRY
    )


def created_per_job(sandbox) -> Counter:
    return Counter(
        json.dumps([r.app_id, r.inputs], sort_keys=True) for r in sandbox.stats.runs
    )


def manifest_files(result) -> dict[str, str]:
    manifest = Manifest.read(result.planned.manifest)
    return {
        d.path: d.sha256
        for state in manifest.jobs.values()
        for d in state.downloads.values()
    }


async def test_apply_downloads_every_output_with_its_checksum(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS)

    result = await run(spec, sandbox)

    assert result.exit_code == 0
    assert result.tally.outcomes["done"] == 4
    files = manifest_files(result)
    assert sorted(files) == [
        "Cartoonify!/astronaut-Cyberpunk.png",
        "Cartoonify!/astronaut-Ghibli.png",
        "Cartoonify!/coffee-Cyberpunk.png",
        "Cartoonify!/coffee-Ghibli.png",
    ]
    for path, digest in files.items():
        data = (tmp_path / "out" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    assert len(sandbox.stats.runs) == 4
    assert sandbox.stats.key_leaks == 0


async def test_local_files_are_uploaded_once_with_one_upload_url_request(
    tmp_path, sandbox
):
    spec = write_spec(tmp_path, CARTOONS)

    await run(spec, sandbox)
    await run(spec, sandbox)

    assert sandbox.stats.requests["upload_urls"] == 1
    assert sandbox.stats.requests["storage_put"] == 2
    sent = {r.inputs["Upload"] for r in sandbox.stats.runs}
    assert all(url.startswith(sandbox.storage_url) for url in sent)


async def test_a_second_apply_submits_nothing(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS)
    await run(spec, sandbox)
    before = sandbox.stats.requests["create_run"]

    again = await run(spec, sandbox)

    assert again.exit_code == 0
    assert again.tally.outcomes["done"] == 4
    assert sandbox.stats.requests["create_run"] == before


async def test_a_corrupted_or_missing_file_is_downloaded_again(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS)
    first = await run(spec, sandbox)
    files = manifest_files(first)
    damaged = tmp_path / "out" / "Cartoonify!/coffee-Ghibli.png"
    damaged.write_bytes(b"not a png")
    (tmp_path / "out" / "Cartoonify!/astronaut-Ghibli.png").unlink()

    again = await run(spec, sandbox)

    assert again.exit_code == 0
    assert len(sandbox.stats.runs) == 4
    for path, digest in files.items():
        data = (tmp_path / "out" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest


async def test_lost_responses_are_reconciled_not_paid_twice(tmp_path, sandbox):
    sandbox.faults.lost_response_next = 3
    spec = write_spec(tmp_path, CARTOONS)

    result = await run(spec, sandbox)

    assert result.exit_code == 0
    assert sandbox.stats.faults_injected["lost_response"] == 3
    assert len(sandbox.stats.runs) == 4
    assert max(created_per_job(sandbox).values()) == 1


async def test_server_errors_and_dropped_connections_are_retried(tmp_path, sandbox):
    sandbox.faults.error_next = 4
    sandbox.faults.drop_next = 3
    spec = write_spec(tmp_path, CARTOONS)

    result = await run(spec, sandbox)

    assert result.exit_code == 0
    assert len(sandbox.stats.runs) == 4
    assert max(created_per_job(sandbox).values()) == 1


async def test_truncated_downloads_are_fetched_again(tmp_path, sandbox):
    sandbox.faults.truncate_next = 3
    spec = write_spec(tmp_path, CARTOONS)

    result = await run(spec, sandbox)

    assert result.exit_code == 0
    assert sandbox.stats.faults_injected["truncate"] == 3
    for path, digest in manifest_files(result).items():
        data = (tmp_path / "out" / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest


async def test_429s_are_waited_out(tmp_path):
    from batchrun.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.05, 0.1), rate_limit=5, rate_window=1.0
    )
    async with Sandbox(config) as sandbox:
        spec = write_spec(tmp_path, CARTOONS)

        # Ask for far more than the server allows, so it has to say 429.
        result = await run(spec, sandbox, rate=6000, results="wait")

        assert result.exit_code == 0
        assert sandbox.stats.rate_limited > 0
        assert result.rate_limited == sandbox.stats.rate_limited
        assert len(sandbox.stats.runs) == 4


async def test_failed_runs_are_kept_until_retry_failed(tmp_path, sandbox):
    from batchrun.sandbox import Sandbox, SandboxConfig

    spec = write_spec(tmp_path, CARTOONS)
    failing_config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.05, 0.1), rate_limit=10_000, failure_rate=1.0
    )
    async with Sandbox(failing_config) as failing_sandbox:
        failing = await run(spec, failing_sandbox)

    kept = await run(spec, sandbox)
    created_after_kept = len(sandbox.stats.runs)
    retried = await run(spec, sandbox, retry_failed=True)

    assert failing.exit_code == 1
    assert failing.tally.outcomes["failed"] == 4
    assert kept.exit_code == 1
    assert kept.tally.outcomes["skipped_failed"] == 4
    assert created_after_kept == 0
    assert retried.exit_code == 0
    assert retried.tally.outcomes["done"] == 4
    assert len(sandbox.stats.runs) == 4


async def test_an_invalid_spec_submits_nothing(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS.replace("Cyberpunk", "Pixar"))

    with pytest.raises(SpecError) as caught:
        await run(spec, sandbox)

    assert "'Pixar' is not an option of Cartoonify!" in str(caught.value)
    assert sandbox.stats.requests["create_run"] == 0
    assert sandbox.stats.requests["upload_urls"] == 0


async def test_exhausted_credits_stop_new_submissions_cleanly(tmp_path):
    from batchrun.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(
        queue_seconds=0.02, run_seconds=(0.05, 0.1), rate_limit=10_000, credits=2
    )
    async with Sandbox(config) as sandbox:
        spec = write_spec(tmp_path, CARTOONS)

        result = await run(spec, sandbox, concurrency=1)

        assert result.exit_code == 1
        assert result.tally.outcomes["done"] == 2
        assert result.tally.outcomes["not_submitted"] == 2
        assert "credits" in result.tally.stop_reason


async def test_text_outputs_from_a_csv_are_written_as_files(tmp_path, sandbox):
    (tmp_path / "products.csv").write_text("sku,product\nMUG,blue mug\nTEE,red shirt\n")
    spec = write_spec(tmp_path, COPY)

    result = await run(spec, sandbox, results="wait")

    assert result.exit_code == 0
    text = (tmp_path / "out" / "MUG-French.txt").read_text()
    assert "blue mug" in text
    assert len(list((tmp_path / "out").glob("*.txt"))) == 4


async def test_plan_counts_done_new_and_orphaned_jobs(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS)
    await run(spec, sandbox)
    write_spec(tmp_path, CARTOONS.replace("[Ghibli, Cyberpunk]", "[Ghibli, Simpsons]"))

    planned = await plan_async(
        spec, target=target(sandbox), overrides=Overrides(output_dir=tmp_path / "out")
    )

    counts = planned.plan.totals
    assert counts["done"] == 2
    assert counts["submit"] == 2
    assert sum(planned.plan.orphaned.values()) == 2
    assert sandbox.stats.requests["create_run"] == 4


async def test_plan_reports_an_app_whose_parameters_changed(tmp_path, sandbox):
    spec = write_spec(tmp_path, CARTOONS)
    first = await run(spec, sandbox)
    manifest_path = first.planned.manifest
    lines = manifest_path.read_text().splitlines()
    header = json.loads(lines[0])
    for app in header["apps"].values():
        app["digest"] = "0000000000000000"
    manifest_path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    write_spec(tmp_path, CARTOONS.replace("[Ghibli, Cyberpunk]", "[Ghibli, Simpsons]"))

    planned = await plan_async(
        spec, target=target(sandbox), overrides=Overrides(output_dir=tmp_path / "out")
    )

    assert [c.app.name for c in planned.plan.changed] == ["Cartoonify!"]
    assert planned.plan.changed[0].affected == 2


async def test_run_starts_that_keep_failing_leave_the_job_for_the_next_apply(
    tmp_path, sandbox
):
    sandbox.faults.error_routes = {"create_run"}
    sandbox.faults.error_next = 1_000
    spec = write_spec(tmp_path, CARTOONS)

    stuck = await run(spec, sandbox, concurrency=1)
    created_while_stuck = len(sandbox.stats.runs)
    sandbox.faults.error_next = 0
    again = await run(spec, sandbox)

    assert stuck.exit_code == 1
    assert stuck.tally.outcomes["not_submitted"] == 4
    assert "without creating a run" in stuck.tally.failures[0][2]
    assert created_while_stuck == 0
    assert again.exit_code == 0
    assert len(sandbox.stats.runs) == 4


async def test_an_interrupted_sandbox_batch_resumes_with_its_runs(tmp_path):
    import asyncio

    spec = write_spec(tmp_path, CARTOONS)
    fast = {"queue_seconds": 0.05, "run_seconds": (0.3, 0.5), "rate_limit": 10_000}
    sandboxed = Target(sandbox=True, sandbox_options=fast)
    options = Overrides(output_dir=tmp_path / "out", concurrency=2)
    manifest = tmp_path / "out" / "manifest.jsonl"

    first = asyncio.create_task(
        apply_async(spec, target=sandboxed, overrides=options, retry=FAST_RETRY)
    )
    while not (manifest.exists() and b'"submitted"' in manifest.read_bytes()):
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    interrupted = Manifest.read(manifest)
    started = {s.run_id for s in interrupted.jobs.values() if s.run_id}

    result = await apply_async(
        spec, target=sandboxed, overrides=options, retry=FAST_RETRY
    )

    finished = Manifest.read(manifest)
    assert started
    assert result.exit_code == 0
    assert started <= {s.run_id for s in finished.jobs.values()}
    assert len({s.run_id for s in finished.jobs.values()}) == 4
    # The sandbox's state (its key among it) stays out of the shareable output folder.
    assert not any(p.name.startswith(".sandbox") for p in (tmp_path / "out").iterdir())


async def test_a_lost_start_is_not_confused_with_another_clients_earlier_runs(
    tmp_path, sandbox
):
    import asyncio

    import aiohttp

    cartoonify = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
    async with aiohttp.ClientSession() as http:
        for style in ("Ghibli", "Simpsons", "Cyberpunk"):
            async with http.post(
                f"{sandbox.base_url}/v1/apps/{cartoonify}/runs",
                json={"inputs": {"Style": style}},
                headers={"x-api-key": sandbox.api_key},
            ) as answer:
                assert answer.status == 202
    # Another client's runs, a few seconds older than anything this batch sends.
    await asyncio.sleep(3.5)
    sandbox.faults.lost_response_next = 2
    spec = write_spec(tmp_path, CARTOONS)

    result = await run(spec, sandbox, concurrency=1)

    assert result.exit_code == 0
    assert result.tally.failures == []
    assert len(sandbox.stats.runs) == 3 + 4


async def test_a_new_manifest_over_old_outputs_warns(tmp_path, sandbox, caplog):
    spec = write_spec(tmp_path, CARTOONS)
    first = await run(spec, sandbox)
    first.planned.manifest.unlink()

    await run(spec, sandbox)

    assert "already holds 4 files but the manifest" in caplog.text
