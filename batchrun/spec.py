"""Loading a spec file: YAML with positions, no silent value changes, a schema check.

The YAML is composed (not constructed) with a YAML 1.2 core-style resolver, and the
values are built here from the nodes so that every value keeps the position it
was written at. Under `jobs[*].inputs` and `jobs[*].matrix` every scalar is kept as
the exact text written (`16:9`, `yes`, `007`, `1e3`, `2026-12-03` all stay strings),
because YAML 1.1 would quietly turn them into numbers, booleans and dates. Everything
wrong is reported together, as one SpecError.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from batchrun.errors import Problem, SpecError
from batchrun.matrix import Matrix, PathParts, parse_matrix
from batchrun.schemas import load_schema
from batchrun.templates import Template, parse_template
from batchrun.validate import ProblemLog, did_you_mean, format_path

logger = logging.getLogger(__name__)

SCHEMA_NAME = "spec.schema.json"
# An alias-expansion bomb must not eat the machine; no honest spec gets near this.
MAX_NODES = 5_000_000

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _CoreLoader(yaml.SafeLoader):
    """SafeLoader resolving plain scalars by the YAML 1.2 core schema (decimal only)."""

    # Our own table, so that add_implicit_resolver below does not touch SafeLoader's.
    yaml_implicit_resolvers = {}  # noqa: RUF012


for _tag, _pattern, _first in (
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_INT, r"^[-+]?[0-9]+$", "-+0123456789"),
    (
        _FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
):
    _CoreLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


@dataclass(frozen=True)
class Settings:
    """Batch-wide settings; paths are absolute, resolved against the spec's folder."""

    output_dir: Path | None = None
    manifest: Path | None = None
    concurrency: int = 8
    rate: int | None = None
    retries: int = 5
    filename: str = "{app}/{key}-{output}{ext}"
    max_jobs: int = 10_000
    results: str = "auto"
    webhook_url: str | None = None
    webhook_listen: str | None = None


@dataclass(frozen=True)
class FixedInput:
    """One entry of a job entry's `inputs`: a parameter name and its template."""

    name: str
    template: Template
    where: str  # position of the value
    key_where: str  # position of the name
    path: str  # "jobs[0].inputs.Prompt"


@dataclass(frozen=True)
class Entry:
    """One item of `jobs:`, parsed but not yet expanded."""

    index: int
    app: str  # as written: a name or an appId
    where: str  # "file:line:col" of the app value
    inputs: tuple[FixedInput, ...] = ()
    matrix: Matrix = field(default_factory=Matrix)
    repeat: int = 1

    @property
    def path(self) -> str:
        """ "jobs[3]"."""
        return f"jobs[{self.index}]"


@dataclass(frozen=True)
class Spec:
    """A loaded, schema-valid spec."""

    path: Path  # absolute
    folder: Path  # absolute: the folder relative paths start from
    digest: str  # sha256 hex of the file bytes
    settings: Settings
    entries: tuple[Entry, ...]
    display: str = ""  # the path as the user gave it, used in error positions
    # "settings.filename" -> "spec.yaml:3:13": where each setting was written
    locations: Mapping[str, str] = field(default_factory=dict)

    def where(self, dotted: str) -> str:
        """Where the setting `dotted` was written, or the file itself."""
        return self.locations.get(dotted, self.display)


def load_spec(path: str | Path) -> Spec:
    """Read, parse and check the spec at `path`; SpecError lists every problem."""
    display = str(path)
    file = Path(path).expanduser().resolve()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise SpecError(
            Problem(display, "", f"cannot read the spec: {exc.strerror}")
        ) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            Problem(display, "", f"the spec is not UTF-8 text (byte {exc.start})")
        ) from exc

    log = ProblemLog()
    builder = _Builder(display, log)
    data = builder.load(text)
    if data is None:
        raise SpecError(log.problems() or [Problem(display, "", "the spec is empty")])
    _check_schema(data, builder, log)
    if log:
        raise SpecError(log.problems())

    folder = file.parent
    settings = _settings(data.get("settings") or {}, folder, builder, log)
    entries = tuple(
        _entry(i, item, folder, builder, log) for i, item in enumerate(data["jobs"])
    )
    if log:
        raise SpecError(log.problems())
    locations = {
        f"settings.{key}": builder.at(("settings", key))
        for key in data.get("settings") or {}
    }
    logger.debug("loaded spec %s: %d entries", display, len(entries))
    return Spec(
        path=file,
        folder=folder,
        digest=hashlib.sha256(raw).hexdigest(),
        settings=settings,
        entries=entries,
        display=display,
        locations=locations,
    )


# -- YAML to values with positions -----------------------------------------------------


class _Builder:
    """Turns composed YAML nodes into plain values, remembering each node's position."""

    def __init__(self, display: str, log: ProblemLog) -> None:
        self.display = display
        self.log = log
        self.marks: dict[PathParts, yaml.Mark] = {}
        self.key_marks: dict[PathParts, yaml.Mark] = {}
        self._nodes = 0
        self._active: set[int] = set()

    def load(self, text: str) -> Any:
        """The document's value, or None (problems logged) if it has none."""
        try:
            node = yaml.compose(text, Loader=_CoreLoader)
        except yaml.MarkedYAMLError as exc:
            self.log.add(*self._syntax_problem(exc))
            return None
        except yaml.YAMLError as exc:
            self.log.add(self.display, "", f"invalid YAML: {exc}")
            return None
        if node is None:
            return None
        try:
            return self._value(node, ())
        except _TooLarge:
            self.log.add(
                self.display,
                "",
                f"the spec expands to more than {MAX_NODES:,} YAML nodes (aliases?)",
            )
            return None

    def at(self, parts: PathParts) -> str:
        """ "file:line:col" of the node at `parts` (its parent's, if it has none)."""
        while parts and parts not in self.marks:
            parts = parts[:-1]
        return self._where(self.marks.get(parts))

    def key(self, parts: PathParts) -> str:
        """Where the key naming `parts` was written (else the value's position)."""
        mark = self.key_marks.get(parts)
        return self._where(mark) if mark is not None else self.at(parts)

    def _where(self, mark: yaml.Mark | None) -> str:
        if mark is None:
            return self.display
        return f"{self.display}:{mark.line + 1}:{mark.column + 1}"

    def _syntax_problem(self, exc: yaml.MarkedYAMLError) -> tuple[str, str, str]:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if "'\\t'" in problem:
            message = "a tab character; YAML indents with spaces only (replace the tab)"
        else:
            context = f" ({exc.context})" if exc.context else ""
            message = f"YAML syntax error: {problem}{context}"
        return self._where(mark), "", message

    def _value(self, node: yaml.Node, parts: PathParts) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _TooLarge
        self.marks[parts] = node.start_mark
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, parts)
        if id(node) in self._active:
            self.log.add(
                self._where(node.start_mark), format_path(parts), "recursive alias"
            )
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                self._check_tag(node, _SEQ, parts)
                return [
                    self._value(item, (*parts, i)) for i, item in enumerate(node.value)
                ]
            self._check_tag(node, _MAP, parts)
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, parts)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, parts: PathParts) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value:
            where = self._where(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.log.add(where, format_path(parts), "a key must be plain text")
                continue
            key = key_node.value
            if key == "<<" and key_node.style is None:
                self.log.add(
                    where,
                    format_path(parts),
                    "merge keys ('<<') are not supported; repeat the keys, or use an "
                    "alias for a whole value",
                )
                continue
            if key_node.tag == _NULL and key_node.style is None and not key:
                self.log.add(where, format_path(parts), "empty key")
                continue
            if key in first:
                seen = first[key]
                self.log.add(
                    where,
                    format_path(parts),
                    f"duplicate key {key!r} (first at line {seen.line + 1}, column "
                    f"{seen.column + 1}); keep one",
                )
                continue
            first[key] = key_node.start_mark
            child = (*parts, key)
            self.key_marks[child] = key_node.start_mark
            out[key] = self._value(value_node, child)
        return out

    def _scalar(self, node: yaml.ScalarNode, parts: PathParts) -> Any:
        tag, text = node.tag, node.value
        if tag not in (_STR, _INT, _FLOAT, _BOOL, _NULL):
            self._check_tag(node, _STR, parts)
            return text
        if _is_text_zone(parts):
            if tag == _NULL:
                self.log.add(
                    self._where(node.start_mark),
                    format_path(parts),
                    "empty value; quote it if you mean an empty string",
                )
            # The exact text written: YAML typing must never change a value here.
            return text
        if tag == _STR:
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return text.lower() == "true"
        try:
            return int(text, 10) if tag == _INT else float(text.replace(".inf", "inf"))
        except ValueError:
            self.log.add(
                self._where(node.start_mark),
                format_path(parts),
                f"{text!r} is not a valid {tag.rsplit(':', 1)[-1]}",
            )
            return text

    def _check_tag(self, node: yaml.Node, expected: str, parts: PathParts) -> None:
        if node.tag != expected:
            self.log.add(
                self._where(node.start_mark),
                format_path(parts),
                f"unsupported YAML tag {node.tag!r}; remove it",
            )


class _TooLarge(Exception):
    pass


def _is_text_zone(parts: PathParts) -> bool:
    return len(parts) > 3 and parts[0] == "jobs" and parts[2] in ("inputs", "matrix")


# -- schema ----------------------------------------------------------------------------


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema(SCHEMA_NAME)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _check_schema(data: Any, builder: _Builder, log: ProblemLog) -> None:
    for error in _validator().iter_errors(data):
        for where, path, message in _explain(error, builder):
            log.add(where, path, message)


def _explain(
    error: jsonschema.ValidationError, builder: _Builder
) -> list[tuple[str, str, str]]:
    parts = tuple(error.absolute_path)
    where, path = builder.at(parts), format_path(parts) or "(top level)"
    schema, instance, kind = error.schema, error.instance, error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        out = []
        for key in instance:
            if key not in known:
                hint = did_you_mean(key, known)
                if not hint and known:
                    hint = f" (known keys: {', '.join(known)})"
                out.append(
                    (builder.key((*parts, key)), path, f"unknown key {key!r}{hint}")
                )
        return out
    if kind == "required":
        missing = [k for k in error.validator_value if k not in instance]
        return [(where, path, f"missing required key {k!r}") for k in missing]
    if kind in ("anyOf", "oneOf") and error.context:
        return _explain_branches(error, builder)
    if kind == "const":
        return [
            (where, path, f"expected {error.validator_value!r}, got {_shown(instance)}")
        ]
    if kind == "minItems" and not instance:
        return [(where, path, "an empty list; give at least one value")]
    if kind == "minProperties" and not instance:
        return [(where, path, "an empty mapping; give at least one key")]
    if kind == "pattern":
        what = schema.get("description", f"text matching {error.validator_value}")
        return [
            (where, path, f"expected {_first_sentence(what)}, got {_shown(instance)}")
        ]
    return [(where, path, f"expected {_expected(schema)}, got {_shown(instance)}")]


def _explain_branches(
    error: jsonschema.ValidationError, builder: _Builder
) -> list[tuple[str, str, str]]:
    """anyOf/oneOf: the errors of the one branch whose type fits, if only one does."""
    by_branch: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or ():
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        subs
        for subs in by_branch.values()
        if not any(s.validator == "type" and not s.relative_path for s in subs)
    ]
    if len(fitting) == 1:
        return [item for sub in fitting[0] for item in _explain(sub, builder)]
    parts = tuple(error.absolute_path)
    branches = [_expected(_resolve(b)) for b in error.validator_value]
    return [
        (
            builder.at(parts),
            format_path(parts),
            f"expected {' or '.join(branches)}, got {_shown(error.instance)}",
        )
    ]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = load_schema(SCHEMA_NAME)["$defs"][ref[8:]]
        return resolved
    return schema


_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _expected(schema: dict[str, Any]) -> str:
    schema = _resolve(schema)
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_expected(b) for b in schema["anyOf"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if set(types) >= {"string", "number", "boolean"}:
        return "a single value (text or a number)"
    if "object" in types and "from" in schema.get("properties", {}):
        return "{from: FILE}"
    words = (
        " or ".join(_TYPE_WORDS.get(t, t) for t in types if t != "null") or "a value"
    )
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    if "array" in types:
        items = _resolve(schema.get("items", {}))
        words += " of mappings" if items.get("type") == "object" else " of values"
    if "null" in types:
        words += " (or null)"
    return words


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _first_sentence(text: str) -> str:
    sentence = text.split(";")[0].rstrip(".")
    return sentence[:1].lower() + sentence[1:]


# -- typed values to Settings and Entries ----------------------------------------------


def _settings(
    data: dict[str, Any], folder: Path, builder: _Builder, log: ProblemLog
) -> Settings:
    def resolve(key: str) -> Path | None:
        value = data.get(key)
        return None if value is None else (folder / Path(value).expanduser()).resolve()

    output_dir = resolve("output_dir")
    manifest = resolve("manifest")
    if manifest is None and output_dir is not None:
        manifest = output_dir / "manifest.jsonl"
    filename = data.get("filename", Settings.filename)
    try:
        parse_template(filename)
    except ValueError as exc:
        log.add(builder.at(("settings", "filename")), "settings.filename", str(exc))
    rate = data.get("rate")
    return Settings(
        output_dir=output_dir,
        manifest=manifest,
        concurrency=int(data.get("concurrency", Settings.concurrency)),
        rate=None if rate is None else int(rate),
        retries=int(data.get("retries", Settings.retries)),
        filename=filename,
        max_jobs=int(data.get("max_jobs", Settings.max_jobs)),
        results=data.get("results", Settings.results),
        webhook_url=data.get("webhook_url"),
        webhook_listen=data.get("webhook_listen"),
    )


def _entry(
    index: int, data: dict[str, Any], folder: Path, builder: _Builder, log: ProblemLog
) -> Entry:
    base: PathParts = ("jobs", index)
    inputs: list[FixedInput] = []
    for name, text in (data.get("inputs") or {}).items():
        parts = (*base, "inputs", name)
        try:
            template = parse_template(str(text))
        except ValueError as exc:
            log.add(builder.at(parts), format_path(parts), str(exc))
            continue
        inputs.append(
            FixedInput(
                name,
                template,
                builder.at(parts),
                builder.key(parts),
                format_path(parts),
            )
        )
    matrix = parse_matrix(
        data.get("matrix") or {},
        base=(*base, "matrix"),
        locate=builder,
        folder=folder,
        log=log,
    )
    for fixed in inputs:
        if fixed.name in matrix.keys:
            log.add(
                fixed.key_where,
                fixed.path,
                f"{fixed.name!r} is both a fixed input and a matrix key; keep one "
                "(a combination never overrides a fixed input)",
            )
    return Entry(
        index=index,
        app=data["app"],
        where=builder.at((*base, "app")),
        inputs=tuple(inputs),
        matrix=matrix,
        repeat=int(data.get("repeat", 1)),
    )
