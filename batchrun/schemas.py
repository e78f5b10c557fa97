"""Locating the JSON Schemas batchrun ships.

They live in schemas/ in the repository and in batchrun/schemas/ inside a wheel.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    """The path of schema `name` (e.g. "spec.schema.json").

    The packaged copy (batchrun/schemas/<name>, force-included by the wheel build)
    wins; from a source checkout it is <repo>/schemas/<name>.
    """
    for candidate in (_PACKAGE / "schemas" / name, _PACKAGE.parent / "schemas" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"schema {name!r} is not installed with batchrun")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Schema `name` parsed from JSON (cached: treat the result as read-only)."""
    with schema_path(name).open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema
