"""A job entry's matrix: axes (lists, zipped groups, value files) and their expansion.

The combinations are the cartesian product of the axes in spec order, the last varying
fastest; each zip group and each file of rows counts as one axis. Then `exclude` and
`include` apply exactly as GitHub Actions documents for its job matrix
(docs.github.com/actions/using-jobs/using-a-matrix-for-your-jobs):

- exclude drops every original combination that matches all of an entry's key/values;
- each include entry is merged into every remaining combination where none of its
  key/values would overwrite an original matrix value (values added by earlier includes
  may be overwritten); an entry that merged nowhere becomes a new combination;
- a matrix with no axes runs its include entries as they are.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, product
from pathlib import Path
from typing import Any, Protocol

from batchrun.validate import ProblemLog, did_you_mean, format_path

PathParts = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Cell:
    """One value of a combination, with where it was written (for error messages)."""

    value: str
    where: str  # "spec.yaml:14:9"
    path: str  # "jobs[0].matrix.Style[2]"
    note: str = ""  # " (line 3 of styles.txt)" for values read from files


Row = tuple[tuple[str, Cell], ...]
Combination = dict[str, Cell]


@dataclass(frozen=True, slots=True)
class Axis:
    """One factor of the product: rows, each setting the same or similar keys."""

    name: str  # as written: "Style", "zip", "zip[1]", "products"
    where: str
    path: str
    keys: tuple[str, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Pattern:
    """An include or exclude entry."""

    where: str
    path: str
    cells: Row


@dataclass(frozen=True, slots=True)
class Declared:
    """A name written as a key in the YAML (axis, zip or include), for typo checks."""

    name: str
    where: str
    path: str


@dataclass(frozen=True)
class Matrix:
    """A parsed matrix, ready to count and expand."""

    axes: tuple[Axis, ...] = ()
    exclude: tuple[Pattern, ...] = ()
    include: tuple[Pattern, ...] = ()
    declared: tuple[Declared, ...] = ()
    keys: frozenset[str] = field(default=frozenset())

    def count(self) -> int:
        """Combinations before exclude and include (no axes: the includes, or 1)."""
        if not self.axes:
            return max(1, len(self.include))
        return math.prod(len(axis.rows) for axis in self.axes)


class Locator(Protocol):
    """Where nodes of the spec were written, by data path."""

    def at(self, parts: PathParts) -> str: ...

    def key(self, parts: PathParts) -> str: ...


def expand(matrix: Matrix) -> list[Combination]:
    """Every combination of `matrix`, in order (see the module docstring)."""
    if not matrix.axes:
        if matrix.include:
            return [dict(pattern.cells) for pattern in matrix.include]
        return [{}]
    combos = [
        dict(chain.from_iterable(rows))
        for rows in product(*(a.rows for a in matrix.axes))
    ]
    for pattern in matrix.exclude:
        wanted = [(k, cell.value) for k, cell in pattern.cells]
        combos = [c for c in combos if not _matches(c, wanted)]
    if not matrix.include:
        return combos
    originals = [{k: cell.value for k, cell in c.items()} for c in combos]
    added: list[Combination] = []
    for pattern in matrix.include:
        merged = False
        for original, combo in zip(originals, combos, strict=True):
            if all(
                original.get(k, cell.value) == cell.value for k, cell in pattern.cells
            ):
                combo.update(pattern.cells)
                merged = True
        if not merged:
            added.append(dict(pattern.cells))
    return combos + added


def _matches(combo: Combination, wanted: list[tuple[str, str]]) -> bool:
    for key, value in wanted:
        cell = combo.get(key)
        if cell is None or cell.value != value:
            return False
    return True


def parse_matrix(
    data: Mapping[str, Any],
    *,
    base: PathParts,
    locate: Locator,
    folder: Path,
    log: ProblemLog,
) -> Matrix:
    """Build a Matrix from schema-valid data (values already text), reading value files.

    Problems (unreadable files, zip lists of different lengths, a key set twice, exclude
    keys that are not matrix keys) go to `log`.
    """
    axes: list[Axis] = []
    declared: list[Declared] = []
    patterns: dict[str, list[Pattern]] = {"exclude": [], "include": []}
    for name, value in data.items():
        parts = (*base, name)
        if name == "zip":
            groups = value if isinstance(value, list) else [value]
            for i, group in enumerate(groups):
                group_parts = (*parts, i) if isinstance(value, list) else parts
                axis = _zip_axis(group, group_parts, locate, log)
                if axis is not None:
                    axes.append(axis)
                declared += [
                    Declared(k, locate.key((*group_parts, k)), format_path(group_parts))
                    for k in group
                ]
        elif name in patterns:
            patterns[name] = [
                _pattern(item, (*parts, i), locate) for i, item in enumerate(value)
            ]
        elif isinstance(value, list):
            rows = tuple(
                (
                    (
                        name,
                        Cell(str(v), locate.at((*parts, i)), format_path((*parts, i))),
                    ),
                )
                for i, v in enumerate(value)
            )
            axes.append(
                Axis(name, locate.key(parts), format_path(parts), (name,), rows)
            )
            declared.append(Declared(name, locate.key(parts), format_path(base)))
        else:
            axis = _file_axis(name, value, parts, locate, folder, log)
            if axis is not None:
                axes.append(axis)
                if axis.keys == (name,):
                    declared.append(
                        Declared(name, locate.key(parts), format_path(base))
                    )

    _check_overlaps(axes, log)
    axis_keys = {k for axis in axes for k in axis.keys}
    for pattern in patterns["exclude"]:
        for key, _cell in pattern.cells:
            if key not in axis_keys:
                hint = did_you_mean(key, sorted(axis_keys))
                log.add(
                    pattern.where,
                    pattern.path,
                    f"exclude key {key!r} is not a matrix axis{hint}",
                )
    for i, pattern in enumerate(patterns["include"]):
        declared += [
            Declared(k, locate.key((*base, "include", i, k)), pattern.path)
            for k, _cell in pattern.cells
            if k not in axis_keys
        ]
    include_keys = {k for p in patterns["include"] for k, _ in p.cells}
    return Matrix(
        axes=tuple(axes),
        exclude=tuple(patterns["exclude"]),
        include=tuple(patterns["include"]),
        declared=tuple(declared),
        keys=frozenset(axis_keys | include_keys),
    )


def _pattern(item: Mapping[str, Any], parts: PathParts, locate: Locator) -> Pattern:
    cells = tuple(
        (
            key,
            Cell(str(value), locate.at((*parts, key)), format_path((*parts, key))),
        )
        for key, value in item.items()
    )
    return Pattern(locate.at(parts), format_path(parts), cells)


def _zip_axis(
    group: Mapping[str, list[Any]], parts: PathParts, locate: Locator, log: ProblemLog
) -> Axis | None:
    lengths = {key: len(values) for key, values in group.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key}: {n}" for key, n in lengths.items())
        log.add(
            locate.at(parts),
            format_path(parts),
            f"zipped lists must have the same length, but they have {shown}",
        )
        return None
    keys = tuple(group)
    columns = [
        [
            Cell(str(v), locate.at((*parts, k, i)), format_path((*parts, k, i)))
            for i, v in enumerate(group[k])
        ]
        for k in keys
    ]
    rows = tuple(
        tuple(zip(keys, cells, strict=True)) for cells in zip(*columns, strict=True)
    )
    name = format_path(parts[-2:]) if isinstance(parts[-1], int) else "zip"
    return Axis(name, locate.at(parts), format_path(parts), keys, rows)


def _check_overlaps(axes: list[Axis], log: ProblemLog) -> None:
    owner: dict[str, Axis] = {}
    for axis in axes:
        for key in axis.keys:
            first = owner.setdefault(key, axis)
            if first is not axis:
                log.add(
                    axis.where,
                    axis.path,
                    f"{key!r} is already set by {first.path} ({first.where}); "
                    "a name may come from one axis only",
                )


# -- value files -----------------------------------------------------------------------


class _FileProblem(Exception):
    """A value file cannot be used; the message says why."""


def _file_axis(
    name: str,
    spec: Mapping[str, str],
    parts: PathParts,
    locate: Locator,
    folder: Path,
    log: ProblemLog,
) -> Axis | None:
    source = spec["from"]
    where = locate.at((*parts, "from"))
    path = format_path(parts)
    file = Path(folder / Path(source).expanduser()).resolve()
    suffix = file.suffix.lower()
    column, field_name = spec.get("column"), spec.get("field")
    try:
        if column is not None and suffix != ".csv":
            raise _FileProblem(
                "'column' applies to .csv files (use 'field' for .jsonl files)"
            )
        if field_name is not None and suffix != ".jsonl":
            raise _FileProblem(
                "'field' applies to .jsonl files (use 'column' for .csv files)"
            )
        if not file.is_file():
            raise _FileProblem(f"{source!r} is not a file (looked for {file})")
        try:
            text = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _FileProblem(f"{source!r} is not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:
            raise _FileProblem(f"cannot read {source!r}: {exc.strerror}") from exc
        if suffix == ".csv":
            records = _csv_records(text, source, column)
        elif suffix == ".jsonl":
            records = _jsonl_records(text, source, field_name)
        else:
            records = [(n, line) for n, line in _lines(text)]
        if not records:
            raise _FileProblem(f"{source!r} has no values")
    except _FileProblem as exc:
        log.add(where, path, str(exc))
        return None

    label = Path(source).name
    rows: list[Row] = []
    keys: dict[str, None] = {}
    for line, record in records:
        note = f" (line {line} of {label})"
        if isinstance(record, str):
            rows.append(((name, Cell(record, where, path, note)),))
            keys[name] = None
        else:
            rows.append(
                tuple((k, Cell(v, where, path, note)) for k, v in record.items())
            )
            keys.update(dict.fromkeys(record))
    return Axis(name, where, path, tuple(keys), tuple(rows))


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # Only the line break is removed: a trailing space may be part of a label
    # ("Standard "), and a wrong one is reported visibly by the checks.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip() and not line.startswith("#"):
            yield number, line


def _csv_records(
    text: str, source: str, column: str | None
) -> list[tuple[int, str | dict[str, str]]]:
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header:
        raise _FileProblem(f"{source!r} has no header row")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise _FileProblem(f"{source!r} has the column {duplicated[0]!r} twice")
    if column is not None and column not in header:
        hint = did_you_mean(column, header)
        shown = ", ".join(repr(c) for c in header)
        raise _FileProblem(
            f"{source!r} has no column {column!r}{hint} (columns: {shown})"
        )
    records: list[tuple[int, str | dict[str, str]]] = []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise _FileProblem(
                f"line {reader.line_num} of {source!r} has {len(fields)} fields but "
                f"the header has {len(header)}"
            )
        row = dict(zip(header, fields, strict=True))
        records.append((reader.line_num, row[column] if column is not None else row))
    return records


def _jsonl_records(
    text: str, source: str, field_name: str | None
) -> list[tuple[int, str | dict[str, str]]]:
    records: list[tuple[int, str | dict[str, str]]] = []
    kinds: set[bool] = set()
    for number, line in _lines(text):
        try:
            # Numbers keep their text: 1e3 stays "1e3", 007-style issues cannot arise.
            value = json.loads(line, parse_float=str, parse_int=str, parse_constant=str)
        except json.JSONDecodeError as exc:
            raise _FileProblem(
                f"line {number} of {source!r} is not JSON ({exc.msg})"
            ) from exc
        place = f"line {number} of {source!r}"
        if isinstance(value, dict):
            row = {
                str(k): _json_text(v, f"{place}, field {k!r}") for k, v in value.items()
            }
            if field_name is not None:
                if field_name not in row:
                    hint = did_you_mean(field_name, list(row))
                    raise _FileProblem(f"{place} has no field {field_name!r}{hint}")
                records.append((number, row[field_name]))
            else:
                records.append((number, row))
            kinds.add(True)
        else:
            if field_name is not None:
                raise _FileProblem(f"{place} is not an object, so it has no fields")
            records.append((number, _json_text(value, place)))
            kinds.add(False)
        if len(kinds) > 1:
            raise _FileProblem(
                f"{place}: lines must be all objects or all plain values, not a mix"
            )
    return records


def _json_text(value: object, place: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise _FileProblem(f'{place} is null; write "" if you mean an empty string')
    if isinstance(value, list | dict):
        raise _FileProblem(f"{place} is a list or object; expected text or a number")
    return str(value)
