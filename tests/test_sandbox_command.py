"""`batchrun sandbox` as a real process: the lines it prints, and that it serves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "from batchrun.sandbox.command import sandbox_command; sandbox_command()"


def launch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """A sandbox process on a free port; yields (process, base URL, key)."""
    process = launch("--port", "0", "--time-scale", "0.01", "--api-key", "lma_cli_test")
    try:
        first = process.stdout.readline() if process.stdout else ""
        second = process.stdout.readline() if process.stdout else ""
        base = re.fullmatch(r"export LAMINA_BASE_URL=(\S+)\n", first)
        key = re.fullmatch(r"export LAMINA_API_KEY=(\S+)\n", second)
        assert base and key, (first, second)
        yield process, base.group(1), key.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def get(url: str, key: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"x-api-key": key} if key else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_it_prints_paste_ready_export_lines_and_serves_the_api(served):
    _, base, key = served

    status, body = get(f"{base}/v1/apps", key)

    assert base.startswith("http://127.0.0.1:")
    assert key == "lma_cli_test"
    assert status == 200
    assert "Cartoonify!" in [app["name"] for app in body["data"]]  # type: ignore[index]


def test_sigterm_stops_it_cleanly_with_logs_on_stderr(served):
    process, _, _ = served

    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=10)
    stderr = process.stderr.read() if process.stderr else ""
    rest = process.stdout.read() if process.stdout else ""

    assert code == 0
    assert "sandbox.started" in stderr
    assert "sandbox.stopped" in stderr
    assert rest == ""  # stdout carries only the two export lines


def test_a_generated_key_has_the_sandbox_prefix():
    process = launch("--port", "0")
    try:
        process.stdout.readline() if process.stdout else ""
        key_line = process.stdout.readline() if process.stdout else ""
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    assert re.fullmatch(r"export LAMINA_API_KEY=lma_sandbox_[0-9a-f]{24}\n", key_line)


def test_fault_flags_are_applied_at_startup():
    process = launch(
        "--port", "0", "--error-rate", "0.25", "--sse-crlf", "--delay", "0"
    )
    try:
        base_line = process.stdout.readline() if process.stdout else ""
        process.stdout.readline() if process.stdout else ""
        base = base_line.strip().split("=", 1)[1]

        _, faults = get(f"{base}/_sandbox/faults")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    assert faults["error_rate"] == 0.25
    assert faults["sse_crlf"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-seconds", "2"], "MIN,MAX"),
        (["--run-seconds", "3,1"], "MIN <= MAX"),
        (["--failure-rate", "1.5"], "failure-rate"),
        (["--api-key", "secret"], "lma_"),
    ],
    ids=["run-seconds-one-number", "run-seconds-reversed", "rate-above-1", "bad-key"],
)
def test_bad_options_exit_2_with_a_message(args, message):
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_broken_catalog_file_exits_2_naming_it(tmp_path):
    catalog = tmp_path / "apps.json"
    catalog.write_text('{"apps": [{"appId": "nope"}]}')

    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, "--port", "0", "--apps", str(catalog)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert str(catalog) in result.stderr


def test_help_explains_the_knobs_with_an_example():
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0
    for word in (
        "--time-scale",
        "--lost-response-rate",
        "Example:",
        "/_sandbox/faults",
    ):
        assert word in result.stdout
