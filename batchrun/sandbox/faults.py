"""Faults the sandbox injects on purpose, so clients can prove they survive them.

Every kind has a probability (drawn from the sandbox's seeded RNG) and a deterministic
counter, "the next N requests". A counter wins over the probability and counts down, so
a test can say "fail exactly the next two run submissions" and get exactly that.

`Faults` is deliberately mutable: tests change `sandbox.faults` mid-batch, and another
process changes it through `POST /_sandbox/faults`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any

# The kinds that have a `<kind>_rate` and a `<kind>_next` field.
FAULT_KINDS = ("error", "drop", "lost_response", "truncate", "webhook_loss")


class FaultsError(ValueError):
    """A fault setting sent to the sandbox has an unknown name or a wrong type."""


@dataclass
class Faults:
    """The live fault settings of a sandbox. All zero: a well-behaved server.

    Rates are probabilities in 0..1; `*_next` counters override them for exactly the
    next N eligible requests. `error_routes` / `drop_routes` restrict those kinds to
    route names such as "create_run" (empty: every /v1 route). `delay` is in real
    seconds, NOT multiplied by `time_scale`: it exists to trip a client's own
    (unscaled) timeouts.
    """

    error_rate: float = 0.0
    error_next: int = 0
    error_routes: set[str] = field(default_factory=set)
    drop_rate: float = 0.0
    drop_next: int = 0
    drop_routes: set[str] = field(default_factory=set)
    lost_response_rate: float = 0.0
    lost_response_next: int = 0
    truncate_rate: float = 0.0
    truncate_next: int = 0
    delay: float = 0.0
    sse_chunk_size: int | None = None
    sse_crlf: bool = False
    sse_comments: bool = False
    webhook_loss_rate: float = 0.0
    webhook_loss_next: int = 0

    def trip(self, kind: str, rng: random.Random, route: str | None = None) -> bool:
        """Whether fault `kind` fires now; spends one unit of its counter if it does."""
        routes: set[str] = getattr(self, f"{kind}_routes", set())
        if routes and route not in routes:
            return False

        counter = f"{kind}_next"
        remaining: int = getattr(self, counter)
        if remaining > 0:
            setattr(self, counter, remaining - 1)
            return True
        rate: float = getattr(self, f"{kind}_rate")
        return rate > 0 and rng.random() < rate

    def update(self, changes: dict[str, Any]) -> None:
        """Merge `changes` (JSON-shaped: lists for route sets) into these settings.

        Everything is checked before anything is applied, so a bad request changes
        nothing.
        """
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise FaultsError(f"unknown fault setting(s): {', '.join(unknown)}")

        checked = {name: _coerce(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """These settings as JSON-ready data (route sets as sorted lists)."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = sorted(value) if isinstance(value, set) else value
        return data


def _coerce(name: str, value: Any) -> Any:
    """Check one setting's JSON value and convert it to the field's Python type."""
    if name.endswith("_routes"):
        if not isinstance(value, list | set | tuple) or not all(
            isinstance(v, str) for v in value
        ):
            raise FaultsError(f"{name} must be a list of route names")
        return set(value)
    if name.endswith("_next"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FaultsError(f"{name} must be a whole number >= 0")
        return value
    if name.endswith("_rate"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FaultsError(f"{name} must be a number in 0..1")
        if not 0 <= value <= 1:
            raise FaultsError(f"{name} must be a number in 0..1")
        return float(value)
    if name == "delay":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise FaultsError("delay must be a number of seconds >= 0")
        return float(value)
    if name == "sse_chunk_size":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FaultsError("sse_chunk_size must be null or a whole number >= 1")
        return value
    # sse_crlf, sse_comments
    if not isinstance(value, bool):
        raise FaultsError(f"{name} must be true or false")
    return value
