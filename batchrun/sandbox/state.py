"""A sandbox that survives a restart: its state dir, change journal and snapshot.

A state dir holds:

    lock           flock'ed by the one sandbox using the dir; holds that sandbox's pid
    state.json     the last snapshot: identity (API key, webhook signing key, upload
                   secret), runs, stats.runs, credits, rate-limit windows and the
                   storage index; always replaced whole (temp file + rename)
    journal.jsonl  every change since that snapshot, one JSON object a line
    objects/       uploaded assets and output files, by storage path

Each change (a run created or changed, an object stored, credits charged, stats reset)
is appended to the journal and flushed to the OS at once, so even a SIGKILL of the
sandbox loses nothing; a power cut may lose what the OS had not yet written, and the
torn last line that leaves is skipped on load. The snapshot is rewritten on start, on
close and whenever the journal reaches COMPACT_LINES lines. Its `generation` must match
the journal's header line, so a journal the snapshot already contains (a crash between
the two renames) is never replayed on top of it. Rate-limit windows are saved with
snapshots only: after a crash they start afresh.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from batchrun.sandbox.catalog import SandboxApp
from batchrun.sandbox.envelope import iso_time, parse_iso_time
from batchrun.sandbox.runs import Output, Run, RunPlan
from batchrun.sandbox.stats import RunRecord
from batchrun.sandbox.storage import Storage

logger = logging.getLogger(__name__)

FORMAT = 1
COMPACT_LINES = 20_000
LOCK_FILE = "lock"
SNAPSHOT_FILE = "state.json"
JOURNAL_FILE = "journal.jsonl"
OBJECTS_DIR = "objects"


class SandboxStateError(ValueError):
    """A state dir cannot be used: another sandbox holds it, or it is unreadable."""


@dataclass
class SavedState:
    """What a state dir held when it was opened (empty for a new dir)."""

    generation: int = 0
    saved_at: float | None = None  # Unix time of the snapshot
    api_key: str | None = None
    signing_key: bytes | None = None
    storage_secret: bytes | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, latest
    stats_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by run id
    account: dict[str, Any] | None = None
    limiter: dict[str, tuple[float, int]] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)  # path -> Content-Type
    skipped_lines: int = 0


class StateDir:
    """One sandbox's hold on a state dir: the lock, the journal and the snapshots.

    `open` locks and reads the dir; `start(snapshot)` writes a first snapshot (so the
    identity is on disk before any request) and opens the journal; `record_*` append
    changes; `close` writes the final snapshot and releases the lock.
    """

    def __init__(self, path: Path, lock_fd: int, saved: SavedState) -> None:
        self.path = path
        self.saved = saved
        self._lock_fd: int | None = lock_fd
        self._generation = saved.generation
        self._snapshot: Callable[[], dict[str, Any]] | None = None
        self._journal: IO[str] | None = None
        self._lines = 0
        self._write_failed = False

    @classmethod
    def open(cls, path: str | Path) -> StateDir:
        """Lock the state dir at `path` (created if missing) and read what it holds.

        Raises SandboxStateError if another sandbox holds the dir, or if its snapshot
        is not one a sandbox wrote.
        """
        folder = Path(path).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SandboxStateError(
                f"cannot use state dir {folder}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(lock_fd)
            os.close(lock_fd)
            raise SandboxStateError(
                f"state dir {folder} is in use by another sandbox{holder}; "
                "stop that one or choose another state dir"
            ) from None

        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            saved = _load(folder)
        except BaseException:
            os.close(lock_fd)  # closing the descriptor releases the flock
            raise
        logger.info(
            "sandbox.state.loaded dir=%s runs=%d objects=%d skipped_lines=%d",
            folder,
            len(saved.runs),
            len(saved.objects),
            saved.skipped_lines,
        )
        return cls(folder, lock_fd, saved)

    @property
    def objects_dir(self) -> Path:
        """Where asset and output files are kept."""
        return self.path / OBJECTS_DIR

    def start(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Begin journaling; `snapshot()` gives the whole state for each compaction."""
        self._snapshot = snapshot
        self.compact()

    def record_run(self, run: Run) -> None:
        """Journal a run's current state (a new run, or any change to one)."""
        self._append({"kind": "run", "run": run_to_state(run)})

    def record_created(self, record: RunRecord, balance: int | None, used: int) -> None:
        """Journal a stats record of a new run and the credits after paying for it."""
        self._append(
            {
                "kind": "created",
                "record": record_to_state(record),
                "account": {"balance": balance, "used": used},
            }
        )

    def record_object(self, path: str, content_type: str) -> None:
        """Journal one stored object (its bytes are already under objects/)."""
        self._append({"kind": "object", "path": path, "contentType": content_type})

    def record_stats_reset(self) -> None:
        """Journal a stats reset, so a reload does not bring old records back."""
        self._append({"kind": "stats_reset"})

    def compact(self) -> None:
        """Write a full snapshot and start an empty journal after it."""
        if self._snapshot is None:
            return
        self._generation += 1
        data = {
            "format": FORMAT,
            "generation": self._generation,
            "savedAt": time.time(),
            **self._snapshot(),
        }
        _write_atomically(self.path / SNAPSHOT_FILE, _dumps(data) + "\n")
        if self._journal is not None:
            self._journal.close()
        header = {"kind": "journal", "format": FORMAT, "generation": self._generation}
        _write_atomically(self.path / JOURNAL_FILE, _dumps(header) + "\n")
        self._journal = (self.path / JOURNAL_FILE).open("a", encoding="utf-8")
        self._lines = 0

    def close(self) -> None:
        """Write the final snapshot and release the dir; safe to call twice."""
        try:
            if self._journal is not None:
                self.compact()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            self._snapshot = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _append(self, entry: dict[str, Any]) -> None:
        if self._journal is None:
            return  # not started, or closed: nothing to keep
        try:
            # One write and a flush: the line reaches the OS whole, or (in a power
            # cut) torn at the end, where loading skips it.
            self._journal.write(_dumps(entry) + "\n")
            self._journal.flush()
        except OSError as exc:
            if not self._write_failed:
                logger.error(
                    "sandbox.state.write_failed dir=%s error=%s: changes from now "
                    "on may be lost on restart",
                    self.path,
                    exc,
                )
                self._write_failed = True
            return
        self._lines += 1
        if self._lines >= COMPACT_LINES:
            self.compact()


def build_snapshot(
    *,
    api_key: str,
    signing_key: bytes,
    storage: Storage,
    runs: list[Run],
    unloaded_runs: list[dict[str, Any]],
    stats_runs: list[RunRecord],
    balance: int | None,
    used: int,
    limiter: Mapping[str, tuple[float, int]],
) -> dict[str, Any]:
    """The body of state.json (StateDir adds format, generation and savedAt).

    `unloaded_runs` are saved runs this sandbox could not load (say, their app is not
    in today's catalog): they are written back as they were read.
    """
    return {
        "identity": {
            "apiKey": api_key,
            "signingKey": base64.b64encode(signing_key).decode(),
            "storageSecret": base64.b64encode(storage.secret).decode(),
        },
        "runs": [*unloaded_runs, *(run_to_state(run) for run in runs)],
        "statsRuns": [record_to_state(record) for record in stats_runs],
        "account": {"balance": balance, "used": used},
        "limiter": {key: [left, used] for key, (left, used) in limiter.items()},
        "objects": storage.index(),
    }


# -- runs and records as JSON ------------------------------------------------------


def run_to_state(run: Run) -> dict[str, Any]:
    """Everything needed to bring `run` back, its outputs' media by storage path."""
    return {
        "runId": run.run_id,
        "appId": run.app.app_id,
        "sequence": run.sequence,
        "inputs": run.inputs,
        "webhookUrl": run.webhook_url,
        "status": run.status,
        "errorMessage": run.error_message,
        "createdAt": iso_time(run.created_at),
        "startedAt": None if run.started_at is None else iso_time(run.started_at),
        "completedAt": None if run.completed_at is None else iso_time(run.completed_at),
        "plan": {
            "queueSeconds": run.plan.queue_seconds,
            "runSeconds": run.plan.run_seconds,
            "fail": run.plan.fail,
            "outputErrors": list(run.plan.output_errors),
        },
        "outputs": [
            {
                "id": o.id,
                "label": o.label,
                "type": o.type,
                # A media URL names the port it was made on; the path outlives it.
                "value": None if o.path is not None else o.value,
                "path": o.path,
                "status": o.status,
                "error": o.error,
            }
            for o in run.outputs
        ],
    }


def run_from_state(
    data: Mapping[str, Any], apps: Mapping[str, SandboxApp], storage: Storage
) -> Run | None:
    """The run `run_to_state` saved, its media URLs on today's storage host.

    None if its app is not in this sandbox's catalog (it was started with other apps).
    """
    app = apps.get(data["appId"])
    if app is None:
        return None
    plan = data["plan"]
    outputs = [
        Output(
            id=o["id"],
            label=o["label"],
            type=o["type"],
            value=storage.url_for(o["path"]) if o.get("path") else o["value"],
            status=o["status"],
            error=o["error"],
            path=o.get("path"),
        )
        for o in data["outputs"]
    ]
    return Run(
        run_id=data["runId"],
        app=app,
        inputs=dict(data["inputs"]),
        outputs=outputs,
        plan=RunPlan(
            queue_seconds=float(plan["queueSeconds"]),
            run_seconds=float(plan["runSeconds"]),
            fail=bool(plan["fail"]),
            output_errors=tuple(bool(e) for e in plan["outputErrors"]),
        ),
        created_at=parse_iso_time(data["createdAt"]),
        sequence=int(data["sequence"]),
        webhook_url=data["webhookUrl"],
        status=data["status"],
        error_message=data["errorMessage"],
        started_at=_time_or_none(data["startedAt"]),
        completed_at=_time_or_none(data["completedAt"]),
    )


def record_to_state(record: RunRecord) -> dict[str, Any]:
    """A stats record as JSON (the shape GET /_sandbox/stats uses)."""
    return {
        "runId": record.run_id,
        "appId": record.app_id,
        "inputs": record.inputs,
        "createdAt": record.created_at,
    }


def record_from_state(data: Mapping[str, Any]) -> RunRecord:
    """The stats record `record_to_state` saved."""
    return RunRecord(
        data["runId"], data["appId"], dict(data["inputs"]), data["createdAt"]
    )


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_iso_time(text)


# -- reading -------------------------------------------------------------------------


def _load(folder: Path) -> SavedState:
    saved = SavedState()
    snapshot_file = folder / SNAPSHOT_FILE
    if snapshot_file.exists():
        _apply_snapshot(saved, _read_snapshot(snapshot_file))

    journal_file = folder / JOURNAL_FILE
    if not journal_file.exists():
        return saved
    with journal_file.open("r", encoding="utf-8", errors="replace") as journal:
        lines = iter(journal)
        header = _parse(next(lines, ""))
        if header is None or header.get("generation") != saved.generation:
            # Written before the snapshot was (a crash between the two renames):
            # the snapshot already holds all of it.
            logger.info("sandbox.state.stale_journal dir=%s (ignored)", folder)
            return saved
        for line in lines:
            entry = _parse(line)
            if entry is None or not _apply_entry(saved, entry):
                saved.skipped_lines += 1
    if saved.skipped_lines:
        logger.warning(
            "sandbox.state.skipped_lines dir=%s count=%d (torn or unreadable "
            "journal lines; the changes they held are lost)",
            folder,
            saved.skipped_lines,
        )
    return saved


def _read_snapshot(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SandboxStateError(
            f"{file} is not a readable sandbox snapshot ({exc}); "
            "move the state dir aside to start afresh"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise SandboxStateError(
            f"{file} has snapshot format {found!r}, this sandbox reads {FORMAT}; "
            "move the state dir aside to start afresh"
        )
    return data


def _apply_snapshot(saved: SavedState, data: dict[str, Any]) -> None:
    try:
        identity = data["identity"]
        saved.generation = int(data["generation"])
        saved.saved_at = float(data["savedAt"])
        saved.api_key = identity["apiKey"]
        saved.signing_key = base64.b64decode(identity["signingKey"])
        saved.storage_secret = base64.b64decode(identity["storageSecret"])
        saved.runs = {run["runId"]: run for run in data["runs"]}
        saved.stats_runs = {r["runId"]: r for r in data["statsRuns"]}
        saved.account = data["account"]
        saved.limiter = {
            key: (float(left), int(used))
            for key, (left, used) in data["limiter"].items()
        }
        saved.objects = dict(data["objects"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SandboxStateError(
            f"the sandbox snapshot is missing or garbling {exc}; "
            "move the state dir aside to start afresh"
        ) from exc


def _apply_entry(saved: SavedState, entry: dict[str, Any]) -> bool:
    """Replay one journal line; False if it is not one this module writes."""
    kind = entry.get("kind")
    try:
        if kind == "run":
            run = entry["run"]
            saved.runs[run["runId"]] = run  # a run's latest line wins
        elif kind == "created":
            record = entry["record"]
            # Keyed by run id: replaying a line twice must not make a run look
            # created twice, which is what stats.runs exists to catch.
            saved.stats_runs[record["runId"]] = record
            saved.account = dict(entry["account"])
        elif kind == "object":
            saved.objects[entry["path"]] = entry["contentType"]
        elif kind == "stats_reset":
            saved.stats_runs.clear()
        else:
            return False
    except (KeyError, TypeError):
        return False
    return True


def _parse(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None  # the torn tail of a write that never finished
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


# -- writing -------------------------------------------------------------------------


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _write_atomically(file: Path, text: str) -> None:
    """Replace `file` so that the next load sees the old or the new, never half."""
    temporary = file.with_name(f".{file.name}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, file)
