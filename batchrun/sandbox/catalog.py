"""The sandbox's app catalog: loading and validating an apps.json file (no HTTP).

A catalog file is a JSON object ``{"apps": [...]}`` (a bare list is accepted too).
Each entry is exactly what ``GET /v1/apps/{appId}`` returns under ``data``, plus one
sandbox-only key, ``outputs``: the list of outputs a run produces, each naming a
renderer in `batchrun.sandbox.render` and that renderer's options::

    {"appId": "...", "name": "Cartoonify!", "description": "...", "isPublic": true,
     "parameters": [...],
     "outputs": [{"label": "AI Designer", "type": "image", "renderer": "cartoonify",
                  "options": {"image": "Upload", "style": "Style"}}]}

`capabilities`, `modality`, `outputFormats` and `inputSummary` may be written out;
when absent they are derived from the parameters and outputs. `inputSummary` lists as
required the parameters without a default, since those are what the resolver refuses
to leave out (the `required` flag itself varies between server generations).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from batchrun.apps import PARAMETER_TYPES, is_app_id
from batchrun.sandbox.render import RENDERERS, option_problems

OUTPUT_TYPES = ("image", "video", "text")
_FORMATS = {"image": "png", "video": "gif", "text": "txt"}


@dataclass(frozen=True)
class OutputSpec:
    """One output a sandbox run produces, and how to render it."""

    label: str
    type: str
    renderer: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class SandboxApp:
    """One app the sandbox serves: its API object and its outputs."""

    app: dict[str, Any]
    outputs: tuple[OutputSpec, ...]

    @property
    def app_id(self) -> str:
        return str(self.app["appId"])

    @property
    def name(self) -> str:
        return str(self.app["name"])

    def summary(self) -> dict[str, Any]:
        """The app as an item of `GET /v1/apps` (everything but the parameters)."""
        return {k: copy.deepcopy(v) for k, v in self.app.items() if k != "parameters"}


class CatalogError(ValueError):
    """A catalog file is unreadable or invalid (message: file, app and field)."""


def load_catalog(path: str | Path | None = None) -> list[SandboxApp]:
    """Load and validate a catalog file.

    Default: the apps.json shipped beside this module. Raises CatalogError, with a
    one-line message naming the file, the app and the field, on the first problem.
    """
    if path is None:
        source = "apps.json"
        try:
            text = resources.files(__package__).joinpath("apps.json").read_text("utf-8")
        except OSError as exc:
            raise CatalogError(
                f"{source}: cannot read the built-in catalog: {exc}"
            ) from exc
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{source}: cannot read catalog: {exc}") from exc
    return parse_catalog(text, source)


def parse_catalog(text: str, source: str = "<catalog>") -> list[SandboxApp]:
    """Validate catalog JSON `text`; `source` names it in error messages."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from None

    entries = document.get("apps") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise CatalogError(
            f'{source}: expected {{"apps": [...]}} with at least one app'
        )

    apps: list[SandboxApp] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        app = _parse_app(entry, f"{source}: apps[{index}]")
        if app.app_id in seen:
            raise CatalogError(
                f"{source}: apps[{index}] ({app.name}): appId {app.app_id} is already "
                f"used by {seen[app.app_id]}"
            )
        seen[app.app_id] = app.name
        apps.append(app)
    return apps


def _parse_app(entry: Any, where: str) -> SandboxApp:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"{where}: name: required, a non-empty string")
    where = f"{where} ({name})"

    app_id = entry.get("appId")
    if not isinstance(app_id, str) or not is_app_id(app_id):
        raise CatalogError(f"{where}: appId: required, a UUID (got {app_id!r})")
    if not isinstance(entry.get("description", ""), str):
        raise CatalogError(f"{where}: description: must be a string")
    if not isinstance(entry.get("isPublic", True), bool):
        raise CatalogError(f"{where}: isPublic: must be true or false")
    for key in ("capabilities", "modality", "outputFormats"):
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CatalogError(f"{where}: {key}: must be a list of strings")

    parameters = entry.get("parameters")
    if not isinstance(parameters, list):
        raise CatalogError(f"{where}: parameters: required, a list")
    types: dict[str, str] = {}
    ids: set[str] = set()
    for index, parameter in enumerate(parameters):
        _check_parameter(parameter, f"{where}: parameters[{index}]", types, ids)

    raw_outputs = entry.get("outputs")
    if not isinstance(raw_outputs, list) or not raw_outputs:
        raise CatalogError(f"{where}: outputs: required, a non-empty list")
    outputs = tuple(
        _parse_output(output, f"{where}: outputs[{index}]", types)
        for index, output in enumerate(raw_outputs)
    )

    app = {k: copy.deepcopy(v) for k, v in entry.items() if k != "outputs"}
    app.setdefault("description", "")
    app.setdefault("isPublic", True)
    app.setdefault("capabilities", [])
    app.setdefault("modality", sorted({o.type for o in outputs}))
    app.setdefault("outputFormats", sorted({_FORMATS[o.type] for o in outputs}))
    app.setdefault("inputSummary", _input_summary(parameters))
    return SandboxApp(app=app, outputs=outputs)


def _check_parameter(
    parameter: Any, where: str, types: dict[str, str], ids: set[str]
) -> None:
    if not isinstance(parameter, dict):
        raise CatalogError(f"{where}: expected an object")
    name = parameter.get("name")
    # Names are kept exactly, spaces and all ("Model  Ethnicity"): inputs match them
    # byte for byte, so only emptiness is an error.
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{where}: name: required, a non-empty string")
    where = f"{where} ({name!r})"
    if name in types:
        raise CatalogError(f"{where}: name: another parameter already has this name")
    kind = parameter.get("type")
    if kind not in PARAMETER_TYPES:
        raise CatalogError(
            f"{where}: type: {kind!r} is not one of {', '.join(PARAMETER_TYPES)}"
        )
    if "id" in parameter:
        if not isinstance(parameter["id"], str) or not parameter["id"]:
            raise CatalogError(f"{where}: id: must be a non-empty string")
        if parameter["id"] in ids:
            raise CatalogError(f"{where}: id: {parameter['id']} is already used")
        ids.add(parameter["id"])
    if not isinstance(parameter.get("required", False), bool):
        raise CatalogError(f"{where}: required: must be true or false")
    accept = parameter.get("accept", [])
    if not isinstance(accept, list) or not all(isinstance(a, str) for a in accept):
        raise CatalogError(f"{where}: accept: must be a list of strings")

    options = parameter.get("options")
    if kind == "options":
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(o, str) for o in options)
        ):
            raise CatalogError(
                f"{where}: options: required, a non-empty list of strings"
            )
        if len(set(options)) != len(options):
            raise CatalogError(f"{where}: options: labels must be unique")
    elif options not in (None, []):
        # Real servers send "options": [] on text parameters; anything more is a slip.
        raise CatalogError(f"{where}: options: only an options parameter has options")

    default = parameter.get("default")
    if default is not None:
        if not isinstance(default, str):
            raise CatalogError(f"{where}: default: must be a string or null")
        if kind == "options" and default not in (options or []):
            raise CatalogError(
                f"{where}: default: {default!r} is not one of its options {options}"
            )
        if kind == "url" and not default.startswith(("http://", "https://")):
            raise CatalogError(f"{where}: default: {default!r} is not an http(s) URL")
    types[name] = kind


def _parse_output(output: Any, where: str, types: Mapping[str, str]) -> OutputSpec:
    if not isinstance(output, dict):
        raise CatalogError(f"{where}: expected an object")
    label = output.get("label")
    if not isinstance(label, str) or not label:
        raise CatalogError(f"{where}: label: required, a non-empty string")
    where = f"{where} ({label!r})"
    kind = output.get("type")
    if kind not in OUTPUT_TYPES:
        raise CatalogError(
            f"{where}: type: {kind!r} is not one of {', '.join(OUTPUT_TYPES)}"
        )
    renderer = output.get("renderer")
    if not isinstance(renderer, str) or renderer not in RENDERERS:
        known = ", ".join(sorted(RENDERERS))
        raise CatalogError(f"{where}: renderer: unknown {renderer!r} (known: {known})")
    if RENDERERS[renderer].output_type != kind:
        raise CatalogError(
            f"{where}: renderer {renderer} makes {RENDERERS[renderer].output_type} "
            f"outputs, not {kind}"
        )
    options = output.get("options", {})
    if not isinstance(options, dict):
        raise CatalogError(f"{where}: options: must be an object")
    problems = option_problems(renderer, options, types)
    if problems:
        raise CatalogError(f"{where}: {problems[0]}")
    return OutputSpec(
        label=label,
        type=kind,
        renderer=renderer,
        options=MappingProxyType(copy.deepcopy(options)),
    )


def _input_summary(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    required = [
        {"name": p["name"], "type": p["type"]}
        for p in parameters
        if p.get("default") is None
    ]
    optional = [
        {"name": p["name"], "type": p["type"]}
        for p in parameters
        if p.get("default") is not None
    ]
    return {"required": required, "optional": optional, "total": len(parameters)}
