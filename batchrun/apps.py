"""Lamina apps and their parameters, as the API describes them (pure: no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)

PARAMETER_TYPES = ("text", "options", "url")


@dataclass(frozen=True)
class Parameter:
    """One input of an app. `name` is the key inputs are sent under, exactly."""

    name: str
    type: str
    id: str | None = None
    required: bool = False
    default: str | None = None
    options: tuple[str, ...] = ()
    accept: tuple[str, ...] = ()
    key: str | None = None
    description: str | None = None
    multiple: bool = False

    @property
    def has_default(self) -> bool:
        """Whether the parameter may be omitted (the resolver's rule)."""
        return self.default is not None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Parameter:
        default = data.get("default")
        return cls(
            name=str(data["name"]),
            type=str(data.get("type", "text")),
            id=data.get("id"),
            required=bool(data.get("required", False)),
            default=None if default is None else str(default),
            options=tuple(str(o) for o in data.get("options") or ()),
            accept=tuple(str(a) for a in data.get("accept") or ()),
            key=data.get("key"),
            description=data.get("description"),
            multiple=bool(data.get("multiple", False)),
        )


@dataclass(frozen=True)
class App:
    """An app as `GET /v1/apps/{appId}` returns it."""

    app_id: str
    name: str
    description: str = ""
    parameters: tuple[Parameter, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> App:
        return cls(
            app_id=str(data["appId"]),
            name=str(data.get("name", "")),
            description=str(data.get("description") or ""),
            parameters=tuple(
                Parameter.from_api(p) for p in data.get("parameters") or ()
            ),
            raw=data,
        )

    def parameter(self, name: str) -> Parameter | None:
        """The parameter called exactly `name`, or None."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        return None

    @property
    def schema(self) -> list[dict[str, Any]]:
        """The parameters as plain data, as recorded in the manifest header."""
        return [
            {
                "name": p.name,
                "type": p.type,
                "default": p.default,
                "options": list(p.options),
                "accept": list(p.accept),
            }
            for p in self.parameters
        ]

    @property
    def digest(self) -> str:
        """A digest of the parameters, to notice when an app changed under a batch."""
        text = json.dumps(self.schema, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_app_id(text: str) -> bool:
    """Whether `text` looks like an app ID rather than an app name."""
    return bool(UUID_RE.match(text))
