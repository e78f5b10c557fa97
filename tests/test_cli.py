"""The `batchrun` command as a user meets it: output streams, messages, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.manifest import Manifest
from tests.conftest import REPO, write_spec

SPEC = """
version: 1
settings:
  filename: "{Upload}-{Style}{ext}"
jobs:
  - app: Cartoonify!
    matrix:
      Upload: [{photos}/chelsea.jpg]
      Style: [Ghibli, Simpsons]
"""


def batchrun(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def bare_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LAMINA_API_KEY", None)
    env.pop("LAMINA_BASE_URL", None)
    return env


def test_apply_prints_the_summary_on_stdout_and_progress_on_stderr(
    tmp_path, threaded_sandbox
):
    spec = write_spec(tmp_path, SPEC)

    done = batchrun(
        "apply", str(spec), "--out", str(tmp_path / "out"), env=threaded_sandbox.env()
    )

    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout
    assert "batchrun: done 2" in done.stderr
    assert (tmp_path / "out" / "chelsea-Ghibli.png").is_file()


def test_apply_json_is_stable_and_machine_readable(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)

    done = batchrun(
        "apply",
        str(spec),
        "--out",
        str(tmp_path / "out"),
        "--json",
        env=threaded_sandbox.env(),
    )

    report = json.loads(done.stdout)
    assert report["exit_code"] == 0
    assert report["jobs"] == 2
    assert report["outcomes"]["done"] == 2
    assert report["failures"] == []
    assert set(report) >= {
        "manifest",
        "output_dir",
        "requests",
        "rate_limited",
        "elapsed_s",
        "results",
    }


def test_the_api_key_appears_in_no_output_and_no_file(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)
    key = threaded_sandbox.sandbox.api_key

    done = batchrun(
        "--debug",
        "apply",
        str(spec),
        "--out",
        str(tmp_path / "out"),
        env=threaded_sandbox.env(),
    )

    assert done.returncode == 0
    assert key not in done.stdout + done.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert threaded_sandbox.sandbox.stats.key_leaks == 0


def test_an_invalid_spec_exits_2_with_one_line_per_problem(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC.replace("Simpsons]", "Simpson, Pixar]"))

    done = batchrun("apply", str(spec), env=threaded_sandbox.env(), cwd=tmp_path)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"{spec}:9:")
    assert (
        "'Simpson' is not an option of Cartoonify!; did you mean 'Simpsons'?"
        in lines[0]
    )
    assert "'Pixar' is not an option" in lines[1]
    assert lines[-1] == "batchrun: 2 problems in the spec; nothing was submitted"
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert threaded_sandbox.sandbox.stats.requests["create_run"] == 0


def test_a_missing_spec_file_is_a_usage_error(tmp_path):
    done = batchrun("plan", str(tmp_path / "nope.yaml"), "--sandbox")

    assert done.returncode == 2
    assert "nope.yaml" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_api_key_says_how_to_set_one(tmp_path):
    spec = write_spec(tmp_path, SPEC)

    done = batchrun("plan", str(spec), env=bare_env())

    assert done.returncode == 2
    assert "set LAMINA_API_KEY or pass --api-key" in done.stderr
    assert "--sandbox" in done.stderr


def test_a_wrong_api_key_exits_4_without_echoing_it(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)
    env = {**threaded_sandbox.env(), "LAMINA_API_KEY": "lma_wrong_key_for_test_only"}

    done = batchrun("plan", str(spec), env=env)

    assert done.returncode == 4
    assert "check LAMINA_API_KEY" in done.stderr
    assert "lma_wrong_key_for_test_only" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_api_exits_5(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    env = {
        **bare_env(),
        "LAMINA_API_KEY": "lma_x",
        "LAMINA_BASE_URL": "http://127.0.0.1:9",
    }

    done = batchrun("plan", str(spec), "--retries", "0", env=env)

    assert done.returncode == 5
    assert "cannot connect to http://127.0.0.1:9" in done.stderr


def test_a_manifest_in_use_exits_3(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)
    out = tmp_path / "out"

    with Manifest.open(out / "manifest.jsonl"):
        done = batchrun(
            "apply", str(spec), "--out", str(out), env=threaded_sandbox.env()
        )

    assert done.returncode == 3
    assert "another batchrun is applying this manifest" in done.stderr


def test_status_folds_the_manifest(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)
    out = tmp_path / "out"
    batchrun("apply", str(spec), "--out", str(out), env=threaded_sandbox.env())

    table = batchrun("status", str(out / "manifest.jsonl"))
    as_json = batchrun("status", str(out / "manifest.jsonl"), "--json")

    assert table.returncode == 0
    assert "Cartoonify!" in table.stdout
    assert json.loads(as_json.stdout)["apps"] == {"Cartoonify!": {"done": 2}}


def test_plan_spends_nothing(tmp_path, threaded_sandbox):
    spec = write_spec(tmp_path, SPEC)

    done = batchrun(
        "plan", str(spec), "--out", str(tmp_path / "out"), env=threaded_sandbox.env()
    )

    assert done.returncode == 0
    assert "2 jobs, all valid; nothing was submitted" in done.stdout
    assert threaded_sandbox.sandbox.stats.requests["create_run"] == 0


@pytest.mark.parametrize("command", ["apply", "plan", "status", "sandbox", "apps"])
def test_every_command_has_help_with_an_example(command):
    done = batchrun(command, "--help")

    assert done.returncode == 0
    assert "Example" in done.stdout or "example" in done.stdout


def test_the_shipped_specs_are_valid(threaded_sandbox):
    for spec in sorted((REPO / "specs").glob("*.yaml")):
        done = batchrun("plan", str(spec), env=threaded_sandbox.env(), cwd=REPO)

        assert done.returncode == 0, f"{spec.name}: {done.stderr}"


def test_a_file_name_template_that_escapes_the_output_folder_is_refused_at_plan(
    tmp_path, threaded_sandbox
):
    spec = write_spec(
        tmp_path, SPEC.replace('"{Upload}-{Style}{ext}"', '"../../{Style}{ext}"')
    )

    done = batchrun("plan", str(spec), env=threaded_sandbox.env())

    assert done.returncode == 2
    assert (
        f"{spec}:4:13: settings.filename: the file name template gives an unsafe"
        in (done.stderr)
    )
    assert threaded_sandbox.sandbox.stats.requests["create_run"] == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--webhook-listen", "bad"], "--webhook-listen 'bad': expected HOST:PORT"),
        (
            ["--webhook-url", "https://x.example/hook"],
            "--webhook-url needs --webhook-listen",
        ),
        (["--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["--results", "bogus"], "Invalid value for '--results'"),
    ],
    ids=["listen", "url-without-listen", "concurrency", "results"],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, message):
    spec = write_spec(tmp_path, SPEC)

    done = batchrun("apply", str(spec), "--sandbox", *flags)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_apps_shows_parameters_with_the_whitespace_that_matters(threaded_sandbox):
    done = batchrun("apps", "Full Set Catalog Generation", env=threaded_sandbox.env())

    assert done.returncode == 0
    assert "'Model␣␣Ethnicity': options, no default: required" in done.stdout
    assert "'Standard␣', 'Plus Size', 'Muscular'" in done.stdout


def test_apps_suggests_the_app_a_partial_name_means(threaded_sandbox):
    done = batchrun("apps", "Full Set", env=threaded_sandbox.env())

    assert done.returncode == 2
    assert "did you mean 'Full Set Catalog Generation'?" in done.stderr
