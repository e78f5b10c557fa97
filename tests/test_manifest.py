"""The manifest journal: folding, durability, locking, and its schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from batchrun.errors import ManifestError
from batchrun.manifest import Manifest
from tests.conftest import REPO

KEY = "0123456789abcdef"
DIGEST = "a" * 64


def start(path):
    manifest = Manifest.open(path)
    manifest.write_header(spec="spec.yaml", spec_digest=DIGEST, apps={})
    return manifest


def test_folds_a_job_through_its_states(tmp_path):
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(
            KEY,
            "planned",
            app_id="app",
            inputs={"Style": "Ghibli"},
            files={},
            names={},
            repeat=0,
            entry=0,
        )
        manifest.job(KEY, "submitting", attempt=1)
        manifest.job(KEY, "submitted", run_id="run-1", created_at=None)
        run = {
            "runId": "run-1",
            "status": "completed",
            "outputs": [
                {
                    "id": "o1",
                    "label": "AI Designer",
                    "type": "image",
                    "value": "http://x/a.png",
                    "status": "completed",
                    "error": None,
                }
            ],
        }
        manifest.job(KEY, "finished", run_id="run-1", run=run)
        manifest.job(
            KEY,
            "downloaded",
            output="o1",
            index=0,
            path="a.png",
            size=3,
            sha256="b" * 64,
        )

    folded = Manifest.read(path).jobs[KEY]

    assert folded.run_id == "run-1"
    assert folded.inputs == {"Style": "Ghibli"}
    assert folded.done
    assert folded.downloads["o1"].path == "a.png"


def test_a_job_left_submitting_is_uncertain(tmp_path):
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(KEY, "planned", app_id="app")
        manifest.job(KEY, "submitting", attempt=1)

    assert Manifest.read(path).jobs[KEY].uncertain


def test_a_torn_last_line_is_cut_off_on_open(tmp_path):
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(KEY, "planned", app_id="app")
    with path.open("ab") as handle:
        handle.write(b'{"type":"job","key":"0123456789abcdef","sta')

    with Manifest.open(path) as manifest:
        state = manifest.jobs[KEY].state
        manifest.job(KEY, "submitting", attempt=1)

    assert state == "planned"
    lines = path.read_bytes().split(b"\n")
    assert all(json.loads(line) for line in lines if line)


def test_a_damaged_line_in_the_middle_names_its_line(tmp_path):
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(KEY, "planned", app_id="app")
    content = path.read_text().splitlines()
    path.write_text("\n".join([content[0], "garbage", content[1]]) + "\n")

    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not a JSON record"):
        Manifest.open(path)


def test_a_second_process_cannot_open_a_manifest_in_use(tmp_path):
    path = tmp_path / "m.jsonl"
    # flock is per open file, so a second open in this process conflicts too.
    with (
        start(path),
        pytest.raises(ManifestError, match="another batchrun is applying"),
    ):
        Manifest.open(path)


def test_a_file_that_is_not_a_manifest_is_refused(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"hello": "world"}\n')

    with pytest.raises(ManifestError, match="not a batchrun record"):
        Manifest.open(path)


def test_a_manifest_from_a_future_format_is_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"type": "header", "format": 99}\n')

    with pytest.raises(ManifestError, match="format 99"):
        Manifest.read(path)


def test_status_of_a_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="run `batchrun apply` first"):
        Manifest.read(tmp_path / "nope.jsonl")


def test_retrying_forgets_the_failed_run_but_not_its_id(tmp_path):
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(KEY, "planned", app_id="app")
        manifest.job(KEY, "submitted", run_id="run-1")
        manifest.job(KEY, "failed", code="run_failed", reason="boom", run_id="run-1")
        manifest.job(KEY, "retrying")

        state = manifest.jobs[KEY]
        assert state.state == "planned"
        assert state.run_id is None
        assert "run-1" in manifest.run_ids


def test_records_match_the_published_schema(tmp_path):
    schema = json.loads((REPO / "schemas" / "manifest.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    path = tmp_path / "m.jsonl"
    with start(path) as manifest:
        manifest.job(
            KEY,
            "planned",
            app_id="app",
            inputs={},
            files={},
            names={},
            repeat=0,
            entry=0,
        )
        manifest.job(KEY, "failed", code="run_failed", reason="boom", run_id=None)

    records = [json.loads(line) for line in path.read_text().splitlines()]

    for record in records:
        validator.validate(record)
