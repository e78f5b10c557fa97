"""Jobs: one run of one app with exact inputs, planned from a spec and checked up front.

`plan_jobs` expands every entry's matrix, renders the templates, checks every value
against the app's parameters (each distinct value once) and returns the jobs, or raises
one SpecError listing every problem, before a single request is spent.

A job's key is a digest of what the run would receive (app, inputs with local files
replaced by their content hash, repeat index), so editing a spec (new axis values,
reordered keys, a moved file) keeps the keys, and so the manifest records, of the jobs
that did not change.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring

from batchrun.apps import App, Parameter
from batchrun.errors import SpecError
from batchrun.matrix import Cell, Combination, expand
from batchrun.spec import Entry, FixedInput, Spec
from batchrun.templates import FILENAME_BUILTINS, Template, parse_template
from batchrun.validate import (
    Checked,
    ProblemLog,
    ValueChecker,
    did_you_mean,
    suggest,
    unknown_parameter,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """One run to make: what is sent, and what names its output files."""

    key: str  # 16 hex chars, stable across spec edits (see job_key)
    app_id: str
    entry: int  # index in spec.entries
    inputs: dict[str, str]  # by exact parameter name; local files as absolute paths
    files: dict[str, str]  # parameter name -> absolute path, for local-file inputs
    names: dict[str, str]  # values for the file-name template (files: their stem)
    repeat: int


# (path, mtime_ns, size) -> sha256 hex: a file is hashed once while it is unchanged.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """The sha256 hex digest of the file at `path`, cached by path, mtime and size."""
    info = os.stat(path)
    cache_key = (path, info.st_mtime_ns, info.st_size)
    digest = _FILE_HASHES.get(cache_key)
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(block)
        digest = _FILE_HASHES[cache_key] = hasher.hexdigest()
    return digest


def job_key(
    app_id: str, inputs: Mapping[str, str], files: Mapping[str, str], repeat: int
) -> str:
    """The stable key of a job: 16 hex chars of sha256 over canonical JSON.

    Hashed: {app_id, inputs with each local file's value replaced by
    "sha256:<content hash>", repeat}. File contents, not paths, so moving a file keeps
    the key; sorted keys, so reordering a spec keeps it too.
    """
    hashed = {
        name: f"sha256:{file_sha256(files[name])}" if name in files else value
        for name, value in inputs.items()
    }
    return _digest(app_id, hashed, repeat)


def _digest(app_id: str, hashed_inputs: Mapping[str, str], repeat: int) -> str:
    members = ",".join(_member(k, hashed_inputs[k]) for k in sorted(hashed_inputs))
    return _digest_text(_key_prefix(app_id), members, repeat)


# The canonical JSON is json.dumps({"app_id", "inputs", "repeat"}, sort_keys=True,
# ensure_ascii=False, separators=(",", ":")), assembled by hand from pre-encoded
# members because planning 100,000 jobs through json.dumps costs a second.
def _key_prefix(app_id: str) -> str:
    return '{"app_id":' + encode_basestring(app_id) + ',"inputs":{'


def _member(name: str, value: str) -> str:
    return encode_basestring(name) + ":" + encode_basestring(value)


def _digest_text(prefix: str, members: str, repeat: int) -> str:
    text = prefix + members + '},"repeat":' + str(repeat) + "}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_jobs(
    spec: Spec, apps: Mapping[int, App], *, max_jobs: int | None = None
) -> list[Job]:
    """The jobs of `spec`, each checked against its app; raises SpecError otherwise.

    apps: entry index -> resolved App. Expands, renders templates, validates every job
    (and the file-name template) against its app; raises SpecError with every problem.
    max_jobs (e.g. from --max-jobs) overrides settings.max_jobs.
    """
    cap = spec.settings.max_jobs if max_jobs is None else max_jobs
    log = ProblemLog()
    filename = parse_template(spec.settings.filename)  # load_spec checked its syntax
    jobs: list[Job] = []
    seen: set[str] = set()
    duplicates = 0
    unnamed: dict[str, list[tuple[str, str]]] = {}
    for entry in spec.entries:
        app = apps.get(entry.index)
        if app is None:
            log.add(entry.where, entry.path, f"app {entry.app!r} was not resolved")
            continue
        planner = _EntryPlanner(spec, entry, app, filename, log, unnamed)
        for job in planner.plan(cap):
            if job.key in seen:
                duplicates += 1
                continue
            seen.add(job.key)
            jobs.append(job)
    for name, places in unnamed.items():
        # One line per field, naming every entry, rather than one line per entry.
        hints = {hint for _, hint in places}
        hint = hints.pop() if len(hints) == 1 else ""
        log.add(
            spec.where("settings.filename"),
            "settings.filename",
            f"{{{name}}} has no value in {_and(p for p, _ in places)}{hint}",
        )
    if len(jobs) > cap and not log:
        log.add(
            spec.display,
            "jobs",
            f"the spec expands to {len(jobs):,} jobs, more than max_jobs ({cap:,}); "
            "raise settings.max_jobs or pass --max-jobs",
        )
    if log:
        raise SpecError(log.problems())
    if duplicates:
        logger.warning(
            "%d combinations repeat earlier jobs exactly (same app and inputs); "
            "keeping the first of each",
            duplicates,
        )
    return jobs


# Stands in for the Cell of a rendered value that passed its check (only a failed
# check needs to say where the value came from).
_NO_CELL = Cell("", "", "")


class _Resolved:
    """A checked value plus what the job key hashes for it."""

    __slots__ = ("checked", "member")

    def __init__(self, checked: Checked, member: str) -> None:
        self.checked = checked
        self.member = member  # '"name":"value"' as the key's canonical JSON has it


@dataclass
class _Structure:
    """What checking an entry's names found, before any combination is looked at."""

    fixed: list[tuple[Parameter, FixedInput]] = field(default_factory=list)
    # Parameters not to report as missing: suggested for a misspelt name, or given by
    # a fixed input whose template is broken (both reported already).
    suggested: set[str] = field(default_factory=set)
    # Names suggested for a misspelt template field count as used by a template.
    used: set[str] = field(default_factory=set)

    def note_suggestion(
        self, name: str, candidates: Iterable[str], *, into: set[str] | None = None
    ) -> None:
        best = suggest(name, candidates)
        if best is not None:
            (self.suggested if into is None else into).add(best)


class _EntryPlanner:
    """Plans the jobs of one entry: structure first, then every combination."""

    def __init__(
        self,
        spec: Spec,
        entry: Entry,
        app: App,
        filename: Template,
        log: ProblemLog,
        unnamed: dict[str, list[tuple[str, str]]],
    ) -> None:
        self.spec = spec
        # file-name field -> (entry, suggestion) for each entry that cannot fill it
        self.unnamed = unnamed
        self.entry = entry
        self.app = app
        self.filename = filename
        self.log = log
        self.params = {p.name: p for p in app.parameters}
        self.checker = ValueChecker(app, spec.folder)
        self._resolved: dict[tuple[str, str], _Resolved] = {}

    def plan(self, cap: int) -> list[Job]:
        """The entry's jobs (problems go to the log; then the jobs are not usable)."""
        entry = self.entry
        structure = self._check_structure()
        raw = entry.matrix.count() * entry.repeat
        if raw > cap:
            counted = " (counted before exclude)" if entry.matrix.exclude else ""
            self.log.add(
                entry.where,
                entry.path,
                f"expands to {raw:,} jobs{counted}, more than max_jobs ({cap:,}); "
                "raise settings.max_jobs or pass --max-jobs",
            )
            return []
        return self._plan_combinations(
            expand(entry.matrix), structure.fixed, structure.suggested
        )

    def _check_structure(self) -> _Structure:
        entry, app, log = self.entry, self.app, self.log
        keys = entry.matrix.keys
        structure = _Structure()
        for item in entry.inputs:
            parameter = self.params.get(item.name)
            if parameter is None:
                log.add(
                    item.key_where,
                    f"{entry.path}.inputs",
                    unknown_parameter(item.name, app),
                )
                structure.note_suggestion(item.name, self.params)
                continue
            unknown = sorted(item.template.fields - keys)
            for name in unknown:
                log.add(item.where, item.path, self._unknown_field(name, sorted(keys)))
                structure.note_suggestion(name, keys, into=structure.used)
            if unknown:
                # Reported once here, rather than once per combination.
                structure.suggested.add(parameter.name)
            else:
                structure.fixed.append((parameter, item))

        # A parameter in the file name is fine: if a job lacks it, "missing input"
        # says so.
        known = (
            FILENAME_BUILTINS | keys | {i.name for i in entry.inputs} | set(self.params)
        )
        for name in sorted(self.filename.fields - known):
            hint = did_you_mean(name, sorted(known))
            self.unnamed.setdefault(name, []).append(
                (f"{entry.path} ({app.name})", hint)
            )
            structure.note_suggestion(name, known, into=structure.used)

        used = structure.used | self.filename.fields
        for item in entry.inputs:
            used |= item.template.fields
        for declared in entry.matrix.declared:
            if declared.name in self.params:
                continue
            if declared.name in FILENAME_BUILTINS & self.filename.fields:
                # The runner fills built-ins; a variable of that name would be ignored.
                log.add(
                    declared.where,
                    declared.path,
                    f"{declared.name!r} is a built-in file-name field "
                    f"({', '.join(sorted(FILENAME_BUILTINS))}); rename the variable",
                )
            elif declared.name not in used:
                hint = did_you_mean(declared.name, list(self.params)) or (
                    "; use it in a template (an input or settings.filename) or "
                    "remove it"
                )
                log.add(
                    declared.where,
                    declared.path,
                    f"{declared.name!r} is not a parameter of {app.name} and no "
                    f"template uses it{hint}",
                )
                structure.note_suggestion(declared.name, self.params)
        return structure

    def _unknown_field(self, name: str, keys: list[str]) -> str:
        hint = did_you_mean(name, keys)
        if not hint:
            hint = (
                f" (matrix keys: {', '.join(keys)})"
                if keys
                else " (the matrix is empty)"
            )
        return f"{{{name}}} is not a matrix key{hint}"

    def _resolve(self, parameter: Parameter, value: str) -> _Resolved:
        cache_key = (parameter.name, value)
        found = self._resolved.get(cache_key)
        if found is None:
            checked = self.checker.check(parameter, value)
            hashed = checked.value
            if checked.file is not None:
                hashed = f"sha256:{file_sha256(checked.file)}"
            found = _Resolved(checked, _member(parameter.name, hashed))
            self._resolved[cache_key] = found
        return found

    def _plan_combinations(
        self,
        combos: list[Combination],
        fixed: list[tuple[Parameter, FixedInput]],
        suggested: set[str],
    ) -> list[Job]:
        entry, app, log, params = self.entry, self.app, self.log, self.params
        repeat = entry.repeat
        templated = [(p, i) for p, i in fixed if i.template.fields]
        constant: list[tuple[Parameter, Cell, _Resolved]] = []
        for parameter, item in fixed:
            if not item.template.fields:
                text = item.template.render({})
                cell = Cell(text, item.where, item.path)
                constant.append((parameter, cell, self._resolve(parameter, text)))
        required = [
            p for p in app.parameters if not p.has_default and p.name not in suggested
        ]
        defaults = {
            p.name: self._resolve(p, p.default).checked.name
            for p in app.parameters
            if p.default is not None
        }
        # Variables only: include-added combinations may lack them. (Unknown names
        # and parameters are reported elsewhere.)
        filename_fields = (self.filename.fields & entry.matrix.keys) - (
            FILENAME_BUILTINS | params.keys()
        )
        missing: dict[str, int] = {}
        jobs: list[Job] = []
        prefix = _key_prefix(app.app_id)
        # Cells are shared by every combination using that axis value, so their
        # verdict is cached by identity; rendered templates go by (name, value).
        by_cell: dict[int, _Resolved] = {}
        for combo in combos:
            given: list[tuple[Parameter, Cell, _Resolved]] = list(constant)
            names = dict(defaults)
            for key, cell in combo.items():
                target = params.get(key)
                if target is None:
                    names[key] = cell.value
                    continue
                resolved = by_cell.get(id(cell))
                if resolved is None:
                    resolved = by_cell[id(cell)] = self._resolve(target, cell.value)
                given.append((target, cell, resolved))
            valid = True
            if templated:
                context = {k: c.value for k, c in combo.items()}
                for parameter, item in templated:
                    absent = item.template.fields - context.keys()
                    if absent:
                        self._report_absent(item.where, item.path, absent, repeat)
                        valid = False
                        continue
                    text = item.template.render(context)
                    resolved = self._resolve(parameter, text)
                    if resolved.checked.reason is None:
                        given.append((parameter, _NO_CELL, resolved))
                    else:
                        cell = Cell(text, item.where, item.path)
                        given.append((parameter, cell, resolved))

            inputs: dict[str, str] = {}
            files: dict[str, str] = {}
            members: list[tuple[str, str]] = []
            for parameter, cell, resolved in given:
                checked = resolved.checked
                names[parameter.name] = checked.name
                if checked.reason is not None:
                    log.add(
                        cell.where,
                        cell.path,
                        f"{cell.value!r}{cell.note} {checked.reason}",
                        jobs=repeat,
                    )
                    valid = False
                    continue
                inputs[parameter.name] = checked.value
                members.append((parameter.name, resolved.member))
                if checked.file is not None:
                    files[parameter.name] = checked.file
            if valid:
                for parameter in required:
                    if parameter.name not in inputs:
                        missing[parameter.name] = (
                            missing.get(parameter.name, 0) + repeat
                        )
                        valid = False
            if filename_fields:
                absent_names = filename_fields - names.keys()
                if absent_names:
                    self._report_absent(
                        self.spec.where("settings.filename"),
                        "settings.filename",
                        absent_names,
                        repeat,
                    )
                    valid = False
            if not valid:
                continue
            members.sort()
            body = ",".join([member for _, member in members])
            for r in range(repeat):
                # Repeats get their own dicts: a caller may edit one job's inputs
                # (e.g. swap a local path for an uploaded asset URL).
                jobs.append(
                    Job(
                        key=_digest_text(prefix, body, r),
                        app_id=app.app_id,
                        entry=entry.index,
                        inputs=inputs if r == 0 else dict(inputs),
                        files=files if r == 0 else dict(files),
                        names=names if r == 0 else dict(names),
                        repeat=r,
                    )
                )
        total = len(combos) * repeat
        for name, count in missing.items():
            share = "" if count == total else f" (affects {count:,} of {total:,} jobs)"
            log.add(
                entry.where,
                entry.path,
                f"missing input {name!r} of {app.name} (it has no default); add it to "
                f"inputs or the matrix{share}",
            )
        return jobs

    def _report_absent(
        self, where: str, path: str, absent: frozenset[str] | set[str], jobs: int
    ) -> None:
        names = _and(f"{{{n}}}" for n in sorted(absent))
        verb = "has" if len(absent) == 1 else "have"
        self.log.add(
            where,
            path,
            f"{names} {verb} no value in some combinations of {self.entry.path} "
            "(added by include?); give every combination a value",
            jobs=jobs,
        )


def _and(items: Iterable[str]) -> str:
    listed = list(items)
    if len(listed) < 3:
        return " and ".join(listed)
    return ", ".join(listed[:-1]) + f" and {listed[-1]}"
