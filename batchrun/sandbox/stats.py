"""What the sandbox saw: requests by route, 429s, faults, runs created, key leaks.

Tests and benchmarks read these numbers to prove things a client cannot see for itself:
that no run was created twice, that the API key never reached the storage host, how many
requests a batch really cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """One run the sandbox created, including runs whose 202 was never delivered."""

    run_id: str
    app_id: str
    inputs: dict[str, Any]  # as the client sent them, before defaults were filled in
    created_at: str  # ISO-8601, as in the run's createdAt


@dataclass(frozen=True)
class WebhookAttempt:
    """One delivery attempt of a run's webhook: an HTTP status, or an error text."""

    run_id: str
    attempt: int  # 1 for the first delivery, 2..4 for the retries
    status: int | None
    error: str | None
    at: float  # the sandbox clock (monotonic seconds) when the attempt ended

    @property
    def ok(self) -> bool:
        """Whether the receiver accepted this attempt (a 2xx answer)."""
        return self.status is not None and 200 <= self.status < 300


@dataclass
class SandboxStats:
    """Counters kept by a running sandbox; `reset()` starts them again from zero."""

    requests: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    runs: list[RunRecord] = field(default_factory=list)
    key_leaks: int = 0
    webhook_attempts: list[WebhookAttempt] = field(default_factory=list)
    # Told of every reset (a state dir journals it, so `runs` stays reset on reload).
    on_reset: list[Callable[[], None]] = field(
        default_factory=list, repr=False, compare=False
    )

    def reset(self) -> None:
        """Forget everything counted so far (runs themselves stay in the sandbox)."""
        for listener in self.on_reset:
            listener()
        self.requests.clear()
        self.rate_limited = 0
        self.faults_injected.clear()
        self.runs.clear()
        self.key_leaks = 0
        self.webhook_attempts.clear()

    def to_dict(self) -> dict[str, Any]:
        """The counters as JSON-ready data, as `GET /_sandbox/stats` answers them."""
        return {
            "requests": dict(self.requests),
            "rateLimited": self.rate_limited,
            "faultsInjected": dict(self.faults_injected),
            "runs": [
                {
                    "runId": r.run_id,
                    "appId": r.app_id,
                    "inputs": r.inputs,
                    "createdAt": r.created_at,
                }
                for r in self.runs
            ],
            "keyLeaks": self.key_leaks,
            "webhookAttempts": [
                {
                    "runId": a.run_id,
                    "attempt": a.attempt,
                    "status": a.status,
                    "error": a.error,
                }
                for a in self.webhook_attempts
            ],
        }
