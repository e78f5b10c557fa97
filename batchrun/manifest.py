"""The manifest: an append-only JSONL journal of everything a batch did.

The first line is a header (batchrun version, spec digest, the app schemas used); every
later line is one state change of one job, or an upload. Folding the lines in order
gives the state of every job, which is what `apply` resumes from and `status` prints.

Durability rules, which the resume logic relies on:

- every record is written with a single `write` and fsynced before batchrun acts on it,
  so
  "submitting" is on disk before the run start is sent;
- a crash can only tear the last line; `Manifest.open` cuts a torn line off (the action
  it
  described had not started yet, see above);
- an exclusive `flock` keeps two processes from applying the same manifest at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun import __version__
from batchrun.errors import ManifestError
from batchrun.times import now_iso

log = logging.getLogger(__name__)

FORMAT = 1

# The states a job record can announce, in the order a healthy job goes through them.
STATES = ("planned", "submitting", "submitted", "finished", "downloaded", "failed")


@dataclass(frozen=True)
class Download:
    """One output file on disk, as recorded."""

    path: str  # relative to the output folder
    size: int
    sha256: str


@dataclass
class JobState:
    """What the manifest knows about one job, folded from its records."""

    key: str
    app_id: str = ""
    entry: int = 0
    inputs: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    repeat: int = 0
    state: str = "planned"
    run_id: str | None = None
    created_at: str | None = None
    submitting_since: str | None = None
    run: dict[str, Any] | None = None
    downloads: dict[str, Download] = field(default_factory=dict)
    failure: dict[str, Any] | None = None

    @property
    def uncertain(self) -> bool:
        """A run start was sent (or about to be) and no answer was recorded."""
        return self.state == "submitting" and self.run_id is None

    @property
    def completed_outputs(self) -> list[dict[str, Any]]:
        """The outputs of the finished run that have something to download."""
        if not self.run:
            return []
        return [
            o for o in self.run.get("outputs") or [] if o.get("status") == "completed"
        ]

    @property
    def done(self) -> bool:
        """Finished and every completed output downloaded."""
        if self.state not in ("finished", "downloaded") or not self.run:
            return False
        if self.run.get("status") != "completed":
            return False
        return all(str(o.get("id")) in self.downloads for o in self.completed_outputs)


class Manifest:
    """An open, locked manifest. Use `Manifest.open`; close it (or use `with`)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd
        self.headers: list[dict[str, Any]] = []
        self.jobs: dict[str, JobState] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.run_ids: set[str] = set()
        self.records = 0

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> Manifest:
        """Open (creating it if needed) and lock a manifest for appending."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise ManifestError(
                f"{path}: cannot open the manifest: {exc.strerror}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ManifestError(
                f"{path}: another batchrun is applying this manifest; wait for it to "
                "finish, or pass a different --manifest"
            ) from None

        manifest = cls(path, fd)
        try:
            data = _read_all(fd)
            data = manifest._repair(data)
            manifest._fold(_lines(data))
        except BaseException:
            manifest.close()
            raise
        return manifest

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest without locking or changing it (for `status`)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(
                f"{path}: no manifest here; run `batchrun apply` first or pass its path"
            ) from None
        except OSError as exc:
            raise ManifestError(
                f"{path}: cannot read the manifest: {exc.strerror}"
            ) from exc
        manifest = cls(path, None)
        end = data.rfind(b"\n") + 1
        manifest._fold(_lines(data[:end]))
        return manifest

    def _repair(self, data: bytes) -> bytes:
        if not data or data.endswith(b"\n"):
            return data
        end = data.rfind(b"\n") + 1
        assert self._fd is not None
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        log.warning(
            "manifest.repaired path=%s dropped_bytes=%d (a torn last record from an "
            "interrupted run)",
            self.path,
            len(data) - end,
        )
        return data[:end]

    def _fold(self, lines: Iterator[tuple[int, bytes]]) -> None:
        for number, line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ManifestError(
                    f"{self.path}:{number}: not a JSON record; the manifest was edited "
                    "or damaged: restore it, or start over with another --manifest"
                ) from None
            if not isinstance(record, dict) or "type" not in record:
                raise ManifestError(
                    f"{self.path}:{number}: not a batchrun record (no 'type'); is this "
                    "file a batchrun manifest?"
                )
            if number == 1 and record["type"] != "header":
                raise ManifestError(
                    f"{self.path}:1: the first line is not a batchrun header; is this "
                    "file a batchrun manifest?"
                )
            self._apply(record, number)

    def _apply(self, record: dict[str, Any], number: int) -> None:
        self.records += 1
        kind = record["type"]
        if kind == "header":
            if record.get("format") != FORMAT:
                raise ManifestError(
                    f"{self.path}:{number}: manifest format {record.get('format')!r} "
                    f"is not {FORMAT}; it was written by another batchrun version"
                )
            self.headers.append(record)
        elif kind == "upload":
            self.uploads[record["sha256"]] = record  # the newest upload of a file wins
        elif kind == "job":
            self._apply_job(record, number)
        # Unknown record types come from newer versions; skipping them keeps resume
        # safe.

    def _apply_job(self, record: dict[str, Any], number: int) -> None:
        key = record.get("key")
        state = record.get("state")
        if not isinstance(key, str) or state not in (*STATES, "retrying"):
            raise ManifestError(
                f"{self.path}:{number}: a job record without a valid key or state"
            )
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = JobState(key=key)

        if state == "planned":
            job.app_id = record.get("app_id", job.app_id)
            job.entry = record.get("entry", job.entry)
            job.inputs = record.get("inputs", job.inputs)
            job.files = record.get("files", job.files)
            job.names = record.get("names", job.names)
            job.repeat = record.get("repeat", job.repeat)
            job.state = "planned"
        elif state == "retrying":
            job.state = "planned"
            job.run_id = job.created_at = job.submitting_since = None
            job.run = job.failure = None
            job.downloads = {}
        elif state == "submitting":
            job.state = "submitting"
            job.submitting_since = record.get("time")
        elif state == "submitted":
            job.state = "submitted"
            job.run_id = record["run_id"]
            job.created_at = record.get("created_at")
            self.run_ids.add(job.run_id)
        elif state == "finished":
            job.state = "finished"
            job.run_id = record.get("run_id", job.run_id)
            job.run = record.get("run")
        elif state == "downloaded":
            job.state = "downloaded"
            job.downloads[str(record["output"])] = Download(
                path=record["path"], size=record["size"], sha256=record["sha256"]
            )
        elif state == "failed":
            job.state = "failed"
            job.failure = {"code": record.get("code"), "reason": record.get("reason")}
            if record.get("run_id"):
                job.run_id = record["run_id"]
                self.run_ids.add(job.run_id)

    # -- writing -----------------------------------------------------------------------

    @property
    def header(self) -> dict[str, Any] | None:
        """The newest header."""
        return self.headers[-1] if self.headers else None

    def write_header(
        self, *, spec: str, spec_digest: str, apps: dict[str, dict[str, Any]]
    ) -> None:
        """Record which spec and app schemas this (part of the) batch ran with."""
        self.append(
            [
                {
                    "type": "header",
                    "format": FORMAT,
                    "batchrun": __version__,
                    "time": now_iso(),
                    "spec": spec,
                    "spec_digest": spec_digest,
                    "apps": apps,
                }
            ]
        )

    def job(self, key: str, state: str, **fields: Any) -> None:
        """Record one state change of one job (durably, before returning)."""
        self.append(
            [{"type": "job", "key": key, "state": state, "time": now_iso(), **fields}]
        )

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records in one go, fsync, then fold them into the state."""
        if self._fd is None:
            raise ManifestError(f"{self.path}: opened read-only")
        batch = list(records)
        if not batch:
            return
        data = b"".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for r in batch
        )
        _write_all(self._fd, data)
        os.fsync(self._fd)
        for record in batch:
            self._apply(record, self.records + 1)

    def close(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(data.split(b"\n")[:-1], start=1)
