"""Output file names: from the spec's template to a safe path inside the output folder.

Values substituted into the template are made safe on their own (no separators, no `..`,
no control characters), so only the template's literal text decides the folder layout,
and every component is kept within common file-system limits.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from batchrun.templates import Template

MAX_COMPONENT_BYTES = 200

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
_SPACES = re.compile(r"\s+")

_DEFAULT_EXT = {"image": ".png", "video": ".mp4", "text": ".txt", "audio": ".mp3"}


def slug(value: str) -> str:
    """A value made safe to stand inside one path component."""
    text = unicodedata.normalize("NFC", str(value))
    text = _UNSAFE.sub("-", text)
    text = _SPACES.sub(" ", text).strip(" .")
    return text or "_"


def output_ext(output: Mapping[str, object]) -> str:
    """The file extension for an output: from its URL, else from its type."""
    kind = str(output.get("type") or "")
    if kind == "text":
        return ".txt"
    value = str(output.get("value") or "")
    suffix = PurePosixPath(urlsplit(value).path).suffix.lower()
    if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        return suffix
    return _DEFAULT_EXT.get(kind, ".bin")


def ext_for_content_type(content_type: str) -> str | None:
    """An extension for a Content-Type, when the URL had none."""
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip())
    return ".jpg" if guessed == ".jpe" else guessed


def output_path(template: Template, values: Mapping[str, str]) -> PurePosixPath:
    """The relative path of one output file: never absolute, never outside."""
    # `ext` is ours (".png"), not the user's, and slug() would strip its dot.
    safe = {name: v if name == "ext" else slug(v) for name, v in values.items()}
    rendered = template.render(safe)
    ext = values.get("ext", "")
    if rendered.startswith("/"):
        raise ValueError(f"the file name template gives an absolute path: {rendered!r}")
    parts = [p for p in rendered.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"the file name template gives an unsafe path: {rendered!r}")
    parts = [_fit(p) for p in parts[:-1]] + [_fit(parts[-1], keep=ext)]
    return PurePosixPath(*parts)


def with_suffix_number(path: PurePosixPath, number: int) -> PurePosixPath:
    """`a/b.png` -> `a/b-2.png`: the name used when `path` is already taken."""
    suffixes = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(_fit(f"{stem}-{number}{suffixes}", keep=suffixes))


def _fit(component: str, keep: str = "") -> str:
    """Shorten a component to MAX_COMPONENT_BYTES of UTF-8, keeping its extension."""
    if len(component.encode()) <= MAX_COMPONENT_BYTES:
        return component
    if keep and component.endswith(keep):
        stem = component[: -len(keep)]
    else:
        keep, stem = "", component
    budget = MAX_COMPONENT_BYTES - len(keep.encode())
    cut = stem.encode()[:budget].decode(errors="ignore")
    return cut + keep
