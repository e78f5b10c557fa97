"""Checking inputs against an app's parameters, and saying what is wrong like a person.

Three pieces: `suggest` / `did_you_mean` (the closest name or label, with whitespace
made visible when that is the only difference), `ValueChecker` (one cached verdict per
distinct parameter and value) and `ProblemLog` (one line per distinct place and
problem, with the number of jobs it affects).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from batchrun.apps import App, Parameter
from batchrun.errors import Problem

# What a url parameter's `accept` kinds allow a local file to be, by extension.
ACCEPT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": ("png", "jpg", "jpeg", "webp", "gif", "bmp"),
    "video": ("mp4", "mov", "webm", "gif"),
    "audio": ("mp3", "wav", "m4a", "ogg"),
}

_GLYPHS = {" ": "␣", "\t": "␉", "\u00a0": "⍽"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_NUMBERS = {2: "two", 3: "three", 4: "four"}
PER_PLACE_LIMIT = 20


def format_path(parts: Iterable[str | int]) -> str:
    """("jobs", 0, "matrix", "Style", 2) -> "jobs[0].matrix.Style[2]"."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def visible(text: str) -> str:
    """`text` with spaces, tabs and no-break spaces drawn as ␣, ␉ and ⍽."""
    return "".join(_GLYPHS.get(char, char) for char in text)


def _loose(text: str) -> str:
    return " ".join(text.split()).casefold()


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate `word` was most likely meant to be, or None.

    Order: equal ignoring case and whitespace (the invisible mistakes), then difflib on
    the exact text, then difflib ignoring case, then containment ("Pixar" ->
    "Disney / Pixar"), which difflib's ratio misses for short words in long labels.
    """
    pool = [c for c in dict.fromkeys(candidates) if c != word]
    if not pool:
        return None
    loose = _loose(word)
    for candidate in pool:
        if _loose(candidate) == loose:
            return candidate
    close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if close:
        return close[0]
    by_loose = {_loose(c): c for c in pool}
    close = difflib.get_close_matches(loose, list(by_loose), n=1, cutoff=0.6)
    if close:
        return by_loose[close[0]]
    if len(loose) >= 3:
        containing = [c for c in pool if loose in _loose(c) or _loose(c) in loose]
        if containing:
            return min(containing, key=len)
    return None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """The "; did you mean 'X'?" suffix (whitespace made visible if need be), or ""."""
    best = suggest(word, candidates)
    if best is None:
        return ""
    if _loose(best) != _loose(word):
        return f"; did you mean {best!r}?"
    return f"; did you mean '{visible(best)}' ({describe_difference(word, best)})?"


def describe_difference(given: str, wanted: str) -> str:
    """How `wanted` differs from `given` when only whitespace or case differ."""
    notes: list[str] = []
    notes += _edge_note(
        len(given) - len(given.rstrip()), len(wanted) - len(wanted.rstrip()), "trailing"
    )
    notes += _edge_note(
        len(given) - len(given.lstrip()), len(wanted) - len(wanted.lstrip()), "leading"
    )
    inner_given = re.findall(r"\s+", given.strip())
    inner_wanted = re.findall(r"\s+", wanted.strip())
    if inner_given != inner_wanted:
        widest = max((len(run) for run in inner_wanted), default=0)
        if widest > 1 and all(set(run) == {" "} for run in inner_wanted):
            notes.append(f"{_NUMBERS.get(widest, str(widest))} spaces")
        else:
            notes.append("different spacing")
    if given.split() != wanted.split():
        notes.append("different case")
    return ", ".join(notes) or "different whitespace"


def _edge_note(given: int, wanted: int, side: str) -> list[str]:
    if wanted == given:
        return []
    if wanted == 0:
        return [f"no {side} space"]
    if wanted == 1:
        return [f"{side} space"]
    return [f"{wanted} {side} spaces"]


def _listing(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def unknown_parameter(name: str, app: App) -> str:
    """The message for an input name the app does not have."""
    names = [p.name for p in app.parameters]
    hint = did_you_mean(name, names)
    if not hint:
        hint = f" (its parameters: {_listing(names)})" if names else " (it has none)"
    return f"{name!r} is not a parameter of {app.name}{hint}"


@dataclass(frozen=True, slots=True)
class Checked:
    """The verdict on one (parameter, value): what to send, or why it is wrong."""

    value: str  # what is sent (local files: the absolute path)
    name: str  # the value for file-name templates (local files and URLs: the stem)
    file: str | None = None  # absolute path of a local file
    reason: str | None = None  # why the value is wrong, to follow the quoted value


class ValueChecker:
    """Checks values against one app's parameters, once per distinct (name, value)."""

    def __init__(self, app: App, folder: Path) -> None:
        self.app = app
        self.folder = folder
        self._cache: dict[tuple[str, str], Checked] = {}

    def check(self, parameter: Parameter, value: str) -> Checked:
        """The verdict on sending `value` as `parameter`."""
        key = (parameter.name, value)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._check(parameter, value)
        return found

    def _check(self, parameter: Parameter, value: str) -> Checked:
        if parameter.type == "options":
            return self._check_option(parameter, value)
        if parameter.type == "url":
            return self._check_url(parameter, value)
        return Checked(value=value, name=value)

    def _check_option(self, parameter: Parameter, value: str) -> Checked:
        options = list(parameter.options)
        if value in options or not options:
            return Checked(value=value, name=value)
        hint = did_you_mean(value, options)
        if not hint:
            hint = f" (options: {_listing(options)})"
        reason = f"is not an option of {self.app.name}{hint}"
        return Checked(value=value, name=value, reason=reason)

    def _check_url(self, parameter: Parameter, value: str) -> Checked:
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            if not parts.netloc:
                return Checked(value, value, reason="is not a valid http(s) URL")
            return Checked(value=value, name=PurePosixPath(parts.path).stem or value)
        if _SCHEME.match(value) and not _WINDOWS_DRIVE.match(value):
            return Checked(
                value,
                value,
                reason=f"is neither an http(s) URL nor a local file ({parameter.name} "
                "takes an image or video URL, or a path relative to the spec)",
            )
        path = Path(os.path.normpath(self.folder / Path(value).expanduser()))
        if not path.is_file():
            return Checked(value, value, reason=f"is not a file (looked for {path})")
        allowed = accepted_extensions(parameter.accept)
        ext = path.suffix.lower().lstrip(".")
        if allowed is not None and ext not in allowed:
            kinds = "/".join(parameter.accept)
            shown = ", ".join(f".{e}" for e in allowed)
            got = f".{ext}" if ext else "no extension"
            return Checked(
                value,
                value,
                reason=f"is not a file {parameter.name} accepts ({got}; {kinds} "
                f"means {shown})",
            )
        return Checked(value=str(path), name=path.stem, file=str(path))


def accepted_extensions(accept: Sequence[str]) -> tuple[str, ...] | None:
    """Extensions a local file may have for `accept`; None when anything goes.

    Kinds ("image"), wildcards ("image/*"), MIME types ("image/png") and extensions
    (".png") are understood; an entry we do not know lifts the restriction rather than
    refusing files the server might take.
    """
    if not accept:
        return None
    allowed: list[str] = []
    for item in accept:
        text = item.strip().lower()
        kind, _, sub = text.partition("/")
        if text.startswith("."):
            allowed.append(text[1:])
        elif kind in ACCEPT_EXTENSIONS and sub in ("", "*"):
            allowed.extend(ACCEPT_EXTENSIONS[kind])
        elif kind in ACCEPT_EXTENSIONS and sub:
            allowed.append(
                {"jpeg": "jpg", "quicktime": "mov", "mpeg": "mp3"}.get(sub, sub)
            )
            if sub == "jpeg":
                allowed.append("jpeg")
        else:
            return None
    return tuple(dict.fromkeys(allowed))


class ProblemLog:
    """Problems collected across a spec: one per distinct (place, path, message).

    `add(..., jobs=n)` counts affected jobs, so a wrong label used by 400 jobs becomes
    one line ending "(affects 400 jobs)".
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, where: str, path: str, message: str, *, jobs: int = 0) -> None:
        """Record a problem; `jobs` adds to the count of jobs it affects."""
        key = (where, path, message)
        self._counts[key] = self._counts.get(key, 0) + jobs

    def extend(self, problems: Iterable[Problem]) -> None:
        """Record problems found elsewhere (e.g. another SpecError)."""
        for problem in problems:
            self.add(problem.where, problem.path, problem.message)

    def problems(self) -> list[Problem]:
        """Every problem, sorted by file position, at most PER_PLACE_LIMIT per place."""
        ordered = sorted(self._counts.items(), key=lambda item: _order(*item[0]))
        out: list[Problem] = []
        per_place: dict[tuple[str, str], int] = {}
        for (where, path, message), jobs in ordered:
            seen = per_place[(where, path)] = per_place.get((where, path), 0) + 1
            if seen > PER_PLACE_LIMIT:
                continue
            if jobs > 1:
                message = f"{message} (affects {jobs:,} jobs)"
            out.append(Problem(where, path, message))
        for (where, path), seen in per_place.items():
            if seen > PER_PLACE_LIMIT:
                hidden = seen - PER_PLACE_LIMIT
                out.append(
                    Problem(where, path, f"... and {hidden:,} more problems here")
                )
        out.sort(key=lambda p: _order(p.where, p.path, p.message))
        return out


def _order(where: str, path: str, message: str) -> tuple[int, int, str, bool, str]:
    line, column = 0, 0
    pieces = where.rsplit(":", 2)
    if len(pieces) == 3 and pieces[1].isdigit() and pieces[2].isdigit():
        line, column = int(pieces[1]), int(pieces[2])
    # "... and N more" sorts after the problems it summarises.
    return (line, column, path, message.startswith("... and "), message)
