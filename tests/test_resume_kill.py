"""`batchrun apply` killed at random moments resumes without loss or double pay (#3).

Both the sandbox and every `apply` are real processes: the sandbox is started once per
test with faults on (lost 202s, dropped connections, 500s, torn downloads), and `apply`
is SIGKILLed again and again (mostly after a seeded random delay; two kills are aimed
at a run start in flight) before one last run goes to completion. Then the sandbox's
own records show how many runs were really created, and the files on disk are checked
against the manifest and against what the sandbox made.

Reproduce a failure with the seed printed in its captured output:
    BATCHRUN_KILL_SEED=1234 pytest tests/test_resume_kill.py -q
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchrun.manifest import Manifest
from tests.conftest import REPO, write_spec

SEED = int(os.environ.get("BATCHRUN_KILL_SEED", "20261203"))
KILLS = 8
# Counted from the first line `apply` logs (it has imported and reached the API), so
# the kills land in planning, uploads, submissions, polling and downloads rather
# than in Python's start-up, which takes most of a second on a busy machine.
KILL_DELAY = (0.05, 1.5)
# Two kills aim at the window a random kill rarely hits (a few milliseconds): a run
# start sent but unanswered. The sandbox holds every answer back HOLD s meanwhile.
KILL_BEFORE_ANSWER = 3  # once "submitting" is on disk, before the run exists
KILL_AFTER_LOST_ANSWER = 6  # once the run exists and its 202 was lost
HOLD = 0.25
START_TIMEOUT = 20.0
FINAL_TIMEOUT = 60.0

# 500s and drops stay moderate: a run start gets five attempts back to back (no
# backoff), and with 10% 500s and 5% drops one run of this test in about fifteen saw
# a job fail all five: a submission problem (reported), not a resume one.
SANDBOX_FLAGS = (
    "--run-seconds", "0.2,0.6",
    "--queue-seconds", "0.05",
    "--rate-limit", "100000",
    "--lost-response-rate", "0.2",
    "--drop-rate", "0.03",
    "--error-rate", "0.05",
    "--truncate-rate", "0.2",
)  # fmt: skip

PHOTO_NAMES = ("astronaut.jpg", "coffee.jpg")
# The inputs MIXED sets; a default the client might also send is left out of the count.
SPEC_INPUTS = ("Upload", "Style", "Aspect Ratio", "Product", "Language")
STYLES = ("Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk")
RATIOS = ("1:1", "16:9", "9:16")
LANGUAGES = ("English", "French")

# 2 photos x 4 styles x 3 ratios = 24 image jobs, plus 4 CSV rows x 2 languages = 8
# text jobs: two apps, so two run-start queues to reconcile independently.
MIXED = """
version: 1
settings:
  # Few workers, so the batch outlasts most of the kills (each run takes 0.2-0.6 s).
  concurrency: 2
jobs:
  - app: Cartoonify!
    matrix:
      Upload: [{photos}/astronaut.jpg, {photos}/coffee.jpg]
      Style: [Ghibli, Simpsons, Disney / Pixar, Cyberpunk]
      Aspect Ratio: ["1:1", "16:9", "9:16"]
  - app: Product Copywriter
    inputs:
      Product: "{product} for {audience}"
    matrix:
      rows: {from: products.csv}
      Language: [English, French]
"""

# 2 photos x 3 styles x 2 ratios = 12 jobs.
CARTOONS = """
version: 1
settings:
  concurrency: 4
jobs:
  - app: Cartoonify!
    matrix:
      Upload: [{photos}/astronaut.jpg, {photos}/coffee.jpg]
      Style: [Ghibli, Simpsons, Cyberpunk]
      Aspect Ratio: ["1:1", "16:9"]
"""


@dataclass(frozen=True)
class SandboxProcess:
    """A `batchrun sandbox` process serving on 127.0.0.1."""

    base_url: str
    api_key: str

    def stats(self) -> dict[str, Any]:
        """What the sandbox saw: GET /_sandbox/stats."""
        with urllib.request.urlopen(f"{self.base_url}/_sandbox/stats", timeout=5) as r:
            return json.load(r)

    def set_faults(self, **changes: Any) -> None:
        """Change the sandbox's faults live: POST /_sandbox/faults."""
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/faults",
            data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def lost_answers(self) -> int:
        """How many run starts created a run whose 202 the sandbox then dropped."""
        return int(self.stats()["faultsInjected"].get("lost_response", 0))

    def env(self) -> dict[str, str]:
        """An environment pointing batchrun at this sandbox."""
        return {
            **os.environ,
            "LAMINA_BASE_URL": self.base_url,
            "LAMINA_API_KEY": self.api_key,
        }


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A faulty sandbox in its own process, stopped after the test whatever happens."""
    log = (tmp_path / "sandbox.log").open("wb")
    command = [sys.executable, "-m", "batchrun", "sandbox", "--port", "0"]
    process = subprocess.Popen(
        [*command, *SANDBOX_FLAGS, "--seed", str(SEED)],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO,
    )
    try:
        exports = _read_exports(process, timeout=START_TIMEOUT)
        running = SandboxProcess(exports["LAMINA_BASE_URL"], exports["LAMINA_API_KEY"])
        running.stats()  # it answers, or the test errors here
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def _read_exports(process: subprocess.Popen[bytes], timeout: float) -> dict[str, str]:
    """The `export NAME=value` lines the sandbox prints once it is listening."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    printed = b""
    deadline = time.monotonic() + timeout
    # Raw reads: a buffered readline() could swallow the second line into a buffer
    # that select() cannot see.
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while printed.count(b"\n") < 2:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"the sandbox did not start within {timeout} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(
                    f"the sandbox exited ({process.poll()}) before ready"
                )
            printed += chunk
    exports = {}
    for line in printed.decode().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = value
    return exports


# -- driving apply ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """One interrupted apply, as printed in the schedule."""

    number: int
    when: str
    returncode: int
    states: dict[str, int]
    last_record: str
    uncertain: tuple[str, ...]  # jobs whose run start was left unanswered
    offset: int  # the manifest's size when the process died

    def cut_short(self, jobs: int) -> bool:
        """Whether this kill interrupted an unfinished batch."""
        return self.returncode == -signal.SIGKILL and self.states.get("done", 0) < jobs

    def line(self) -> str:
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        return (
            f"kill {self.number}: {self.when}, rc={self.returncode}, last record: "
            f"{self.last_record}; {states}; unanswered: {list(self.uncertain)}"
        )


def apply_command(spec: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchrun",
        "-v",
        "apply",
        str(spec),
        "--out",
        str(out),
    ]


def interrupt_after(
    command: list[str],
    env: dict[str, str],
    log: Path,
    delay: float,
    signum: int,
    *,
    ready: Callable[[str], bool] | None = None,
) -> int:
    """Run `command`, send `signum` `delay` s after it first logs; its return code.

    `ready(log_text)` can replace "first logs" as the moment the delay starts from.
    """
    with log.open("wb") as err:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if ready(text) if ready else bool(text):
                break
            time.sleep(0.01)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signum)
        return process.wait(timeout=FINAL_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_to_completion(
    command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=FINAL_TIMEOUT,
    )


def submitting_since(path: Path) -> Callable[[str], bool]:
    """A `ready` check: a "submitting" record was written after this call."""
    start = path.stat().st_size if path.exists() else 0

    def ready(_log: str) -> bool:
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                return b'"state":"submitting"' in handle.read()
        except FileNotFoundError:
            return False

    return ready


def kill_apply(
    number: int,
    command: list[str],
    env: dict[str, str],
    sandbox: SandboxProcess,
    manifest_path: Path,
    log: Path,
    rng: random.Random,
) -> Kill:
    """Start apply and SIGKILL it: aimed (see KILL_BEFORE_ANSWER) or after a delay."""
    kill = signal.SIGKILL
    if number == KILL_BEFORE_ANSWER:
        when = "run start sent, no answer yet"
        sandbox.set_faults(delay=HOLD)
        ready = submitting_since(manifest_path)
        returncode = interrupt_after(command, env, log, 0.0, kill, ready=ready)
        sandbox.set_faults(delay=0.0)
    elif number == KILL_AFTER_LOST_ANSWER:
        when = "run created, its answer lost"
        lost = sandbox.lost_answers()
        sandbox.set_faults(delay=HOLD, lost_response_next=1)
        returncode = interrupt_after(
            command, env, log, 0.0, kill, ready=lambda _: sandbox.lost_answers() > lost
        )
        sandbox.set_faults(delay=0.0, lost_response_next=0)
    else:
        delay = rng.uniform(*KILL_DELAY)
        when = f"{delay:.3f} s after its first log line"
        returncode = interrupt_after(command, env, log, delay, kill)
    return Kill(number, when, returncode, *manifest_summary(manifest_path))


def manifest_summary(path: Path) -> tuple[dict[str, int], str, tuple[str, ...], int]:
    """Jobs per state, the last whole record, unanswered starts, the size."""
    if not path.exists():
        return {}, "no manifest yet", (), 0
    folded = Manifest.read(path)
    states = Counter("done" if s.done else s.state for s in folded.jobs.values())
    uncertain = tuple(s.key for s in folded.jobs.values() if s.uncertain)
    data = path.read_bytes()
    whole = [line for line in data.split(b"\n")[:-1] if line.strip()]
    last = json.loads(whole[-1]) if whole else {}
    kind = str(last.get("state") or last.get("type") or "nothing")
    return dict(states), kind, uncertain, len(data)


def adopted_after(path: Path, offset: int, key: str) -> bool:
    """Whether a later apply took the run a lost start of job `key` had created."""
    later = path.read_bytes()[offset:].splitlines()
    return any(
        record.get("key") == key
        and record.get("state") == "submitted"
        and record.get("reconciled") is True
        for record in (json.loads(line) for line in later if line.strip())
    )


# -- what must be true afterwards ------------------------------------------------------


def expected_jobs(products_csv: Path) -> Counter[str]:
    """Every (app, inputs) pair of MIXED, written out independently of batchrun."""
    pairs = [
        ("Cartoonify!", {"Upload": photo, "Style": style, "Aspect Ratio": ratio})
        for photo in PHOTO_NAMES
        for style in STYLES
        for ratio in RATIOS
    ]
    with products_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs += [
        (
            "Product Copywriter",
            {
                "Product": f"{row['product']} for {row['audience']}",
                "Language": language,
            },
        )
        for row in rows
        for language in LANGUAGES
    ]
    return Counter(json.dumps(pair, sort_keys=True) for pair in pairs)


def created_jobs(stats: dict[str, Any], manifest: Manifest) -> Counter[str]:
    """The (app, inputs) pair of every run the sandbox created, uploads named by file.

    An asset URL is named through the manifest's upload records: a run is only ever
    started with an asset whose upload was recorded first.
    """
    names = {
        app_id: app["name"]
        for header in manifest.headers
        for app_id, app in header["apps"].items()
    }
    photos = {u["asset_url"]: Path(u["path"]).name for u in manifest.uploads.values()}
    pairs = []
    for run in stats["runs"]:
        inputs = {k: v for k, v in run["inputs"].items() if k in SPEC_INPUTS}
        if "Upload" in inputs:
            inputs["Upload"] = photos.get(inputs["Upload"], inputs["Upload"])
        pairs.append(json.dumps((names[run["appId"]], inputs), sort_keys=True))
    return Counter(pairs)


def assert_every_output_on_disk(out: Path, manifest: Manifest) -> None:
    recorded = set()
    for state in manifest.jobs.values():
        assert state.done, f"job {state.key} ended {state.state}: {state.failure}"
        for download in state.downloads.values():
            data = (out / download.path).read_bytes()
            assert len(data) == download.size, download.path
            assert hashlib.sha256(data).hexdigest() == download.sha256, download.path
            recorded.add(download.path)
    on_disk = {
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.jsonl"
    }
    # No half-written ".part" file or unrecorded output is left behind.
    assert on_disk == recorded


def assert_outputs_match_the_sandbox(
    manifest: Manifest, out: Path, sandbox: SandboxProcess
) -> None:
    """Each file holds what the sandbox made, not only what the manifest noted."""
    sandbox.set_faults(truncate_rate=0.0)  # the check's own reads must be whole
    for state in manifest.jobs.values():
        for output in state.completed_outputs:
            saved = (out / state.downloads[str(output["id"])].path).read_bytes()
            if output["type"] == "text":
                assert saved == str(output["value"]).encode(), state.key
            else:
                with urllib.request.urlopen(str(output["value"]), timeout=5) as r:
                    assert saved == r.read(), state.key


def assert_status_all_done(manifest_path: Path, jobs: int) -> None:
    status = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", str(manifest_path), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["jobs"] == jobs
    assert report["failures"] == []
    assert sum(c.get("done", 0) for c in report["apps"].values()) == jobs
    assert all(set(c) == {"done"} for c in report["apps"].values()), report["apps"]


# -- the tests -------------------------------------------------------------------------


def test_apply_resumes_after_sigkill_at_random_moments(
    tmp_path: Path, sandbox_process: SandboxProcess
) -> None:
    (tmp_path / "products.csv").write_text(
        (REPO / "examples" / "products.csv").read_text()
    )
    spec = write_spec(tmp_path, MIXED)
    out = tmp_path / "out"
    manifest_path = out / "manifest.jsonl"
    command = apply_command(spec, out)
    env = sandbox_process.env()
    rng = random.Random(SEED)
    print(f"seed={SEED} (reproduce: BATCHRUN_KILL_SEED={SEED}); logs in {tmp_path}")
    print(f"sandbox {' '.join(SANDBOX_FLAGS)}")
    kills: list[Kill] = []
    logs: list[str] = []

    for number in range(1, KILLS + 1):
        log = tmp_path / f"apply-{number}.log"
        kill = kill_apply(
            number, command, env, sandbox_process, manifest_path, log, rng
        )
        kills.append(kill)
        logs.append(log.read_text(errors="replace"))
        print(kill.line())
        if number == KILLS // 2 and manifest_path.exists():
            # SIGKILL cannot tear one small write() on Linux; a power cut can. Leave
            # what one would, so the next apply has a torn record to cut off.
            with manifest_path.open("ab") as handle:
                handle.write(b'{"type":"job","key":"torn","state":"submitt')
            print("tore the manifest's last line")
    final = run_to_completion(command, env)
    logs.append(final.stderr)
    stats = sandbox_process.stats()
    manifest = Manifest.read(manifest_path)
    print("final apply:", final.returncode, final.stderr[-2000:])
    print("sandbox faults injected:", stats["faultsInjected"])

    assert final.returncode == 0, final.stderr[-2000:]
    assert sum(k.cut_short(jobs=32) for k in kills) >= KILLS // 2, (
        "most kills came after the batch was done: the test proved little"
    )
    unanswered = kills[KILL_BEFORE_ANSWER - 1]
    assert unanswered.uncertain, unanswered.line()
    lost = kills[KILL_AFTER_LOST_ANSWER - 1]
    assert any(adopted_after(manifest_path, lost.offset, k) for k in lost.uncertain), (
        lost.line()
    )
    assert any("manifest.repaired" in text for text in logs)
    for line in manifest_path.read_bytes().splitlines():
        json.loads(line)
    expected = expected_jobs(tmp_path / "products.csv")
    assert len(manifest.jobs) == sum(expected.values()) == 32
    assert created_jobs(stats, manifest) == expected
    assert len(stats["runs"]) == 32
    assert {r["runId"] for r in stats["runs"]} == {
        s.run_id for s in manifest.jobs.values()
    }
    assert stats["keyLeaks"] == 0
    assert_every_output_on_disk(out, manifest)
    assert_outputs_match_the_sandbox(manifest, out, sandbox_process)
    assert_status_all_done(manifest_path, 32)


def test_ctrl_c_exits_130_and_the_rerun_completes(
    tmp_path: Path, sandbox_process: SandboxProcess
) -> None:
    spec = write_spec(tmp_path, CARTOONS)
    out = tmp_path / "out"
    command = apply_command(spec, out)
    env = sandbox_process.env()
    log = tmp_path / "apply-interrupted.log"

    # Interrupted once it has started runs: mid-batch, not in Python's start-up.
    interrupted = interrupt_after(
        command,
        env,
        log,
        delay=0.05,
        signum=signal.SIGINT,
        ready=lambda _text: (
            '"state":"submitted"' in _read_or_empty(out / "manifest.jsonl")
        ),
    )
    created_before = len(sandbox_process.stats()["runs"])
    rerun = run_to_completion(command, env)
    stats = sandbox_process.stats()

    message = log.read_text(errors="replace")
    assert interrupted == 130, message[-2000:]
    assert "interrupted; the manifest is safe: run the same command again" in message
    assert 0 < created_before < 12
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(stats["runs"]) == 12
    created = Counter(json.dumps(r["inputs"], sort_keys=True) for r in stats["runs"])
    assert max(created.values()) == 1
    manifest = Manifest.read(out / "manifest.jsonl")
    assert_every_output_on_disk(out, manifest)
    assert_status_all_done(out / "manifest.jsonl", 12)


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
