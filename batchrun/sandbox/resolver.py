"""The server-side input resolver: check a run's inputs and fill in defaults (pure).

It follows Lamina's resolver as the official CLI mirrors it: inputs are keyed by exact
parameter name; a parameter may be left out only when it has a default (its `required`
flag does not decide); options take one label exactly; url values must be http(s).
Every problem is reported, not just the first, as `VALIDATION_ERROR.details` items.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchrun.apps import App, Parameter


@dataclass(frozen=True)
class InputProblem:
    """One entry of `details`: which input, which rule, and a sentence for a person."""

    field: str
    code: str
    message: str

    def to_api(self) -> dict[str, str]:
        """The `{"field", "code", "message"}` object of Decision 7."""
        return {"field": self.field, "code": self.code, "message": self.message}


def resolve_inputs(
    app: App, inputs: dict[str, Any]
) -> tuple[dict[str, str], list[InputProblem]]:
    """Check `inputs` against `app`; return (every parameter's value, problems).

    The resolved mapping holds each parameter by exact name with defaults filled in;
    it is only meaningful when the problem list is empty.
    """
    problems: list[InputProblem] = []
    resolved: dict[str, str] = {}
    names = [p.name for p in app.parameters]

    for name in inputs:
        if app.parameter(name) is None:
            problems.append(
                InputProblem(
                    name, "unknown_parameter", _unknown_message(app, name, names)
                )
            )

    for parameter in app.parameters:
        if parameter.name not in inputs:
            if parameter.has_default:
                resolved[parameter.name] = str(parameter.default)
            else:
                problems.append(
                    InputProblem(
                        parameter.name,
                        "missing_no_default",
                        f"{parameter.name!r} has no default, so it must be given",
                    )
                )
            continue

        value = inputs[parameter.name]
        problem = _check_value(parameter, value)
        if problem is None:
            resolved[parameter.name] = value
        else:
            problems.append(problem)
    return resolved, problems


def is_http_url(value: str) -> bool:
    """Whether `value` is an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_value(parameter: Parameter, value: Any) -> InputProblem | None:
    name = parameter.name
    if parameter.type == "options":
        if isinstance(value, str) and value in parameter.options:
            return None
        choices = ", ".join(repr(o) for o in parameter.options)
        hint = _suggest(value, parameter.options) if isinstance(value, str) else None
        suffix = f"; did you mean {hint!r}?" if hint else ""
        return InputProblem(
            name,
            "invalid_option",
            f"{value!r} is not an option of {name!r} (one of {choices}){suffix}",
        )
    if parameter.type == "url":
        if isinstance(value, str) and is_http_url(value):
            return None
        return InputProblem(
            name, "invalid_media", f"{name!r} needs a public http(s) URL, got {value!r}"
        )
    if not isinstance(value, str):
        return InputProblem(
            name,
            "invalid_type",
            f"{name!r} expects a string, got {type(value).__name__}",
        )
    return None


def _unknown_message(app: App, name: str, names: list[str]) -> str:
    hint = _suggest(name, names)
    suffix = f"; did you mean {hint!r}?" if hint else ""
    return f"{app.name} has no parameter {name!r}{suffix}"


def _suggest(value: str, choices: list[str] | tuple[str, ...]) -> str | None:
    # Compare loosely (case and spacing) because that is how people get names wrong:
    # "model ethnicity" for "Model  Ethnicity", "Standard" for "Standard ".
    def loose(text: str) -> str:
        return " ".join(text.lower().split())

    by_loose = {loose(c): c for c in choices}
    if loose(value) in by_loose:
        return by_loose[loose(value)]
    containing = [
        c for key, c in by_loose.items() if loose(value) and loose(value) in key
    ]
    if len(containing) == 1:
        return containing[0]  # "Pixar" -> "Disney / Pixar"
    close = difflib.get_close_matches(loose(value), list(by_loose), n=1, cutoff=0.6)
    return by_loose[close[0]] if close else None
