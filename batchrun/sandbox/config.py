"""How a sandbox behaves: key, catalog, timings, failure rates, budget and faults."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.sandbox.faults import Faults

KEY_PREFIX = "lma_sandbox_"


@dataclass(frozen=True)
class SandboxConfig:
    """Settings for one sandbox. Durations are in seconds before `time_scale`.

    `time_scale` multiplies every duration the sandbox itself waits: queue and run
    times, wait timeouts, the SSE ping (15 s) and stream timeout (10 min), webhook retry
    delays (5 s, 30 s, 2 min) and delivery timeout (15 s), and `rate_window`. With 1/6,
    a run of 1-2 minutes takes 10-20 s. `faults.delay` is the exception (see Faults).

    `faults` is used live, not copied: the sandbox's `faults` attribute IS this object,
    so changing it later takes effect at once and `*_next` counters count down in it.
    Give each sandbox its own Faults.

    `allow_remote` lets the sandbox fetch input URLs and deliver webhooks to hosts other
    than loopback; off by default so a sandbox never reaches the internet unasked.

    `state_dir` makes the sandbox persistent, as a real account is: runs, uploaded
    assets, output files, credits, the rate-limit windows, the API key (generated once
    when `api_key` is None), the webhook signing key and `stats.runs` are kept there
    and loaded on the next start, whatever port that start binds. One sandbox at a
    time may use a state dir (see batchrun.sandbox.state).
    """

    api_key: str | None = None
    apps_file: str | Path | None = None
    queue_seconds: float = 0.2
    run_seconds: tuple[float, float] = (1.0, 2.0)
    failure_rate: float = 0.0
    output_error_rate: float = 0.0
    rate_limit: int = 100
    rate_window: float = 60.0
    time_scale: float = 1.0
    credits: int | None = None
    credit_cost: int = 1
    seed: int = 0
    faults: Faults = field(default_factory=Faults)
    allow_remote: bool = False
    state_dir: str | Path | None = None

    def __post_init__(self) -> None:
        low, high = self.run_seconds
        if not 0 <= low <= high:
            raise ValueError(
                f"run_seconds must be MIN,MAX with 0 <= MIN <= MAX: {low},{high}"
            )
        for name in ("failure_rate", "output_error_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in 0..1, not {value}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, not {self.time_scale}")
        if self.rate_limit < 1 or self.rate_window <= 0:
            raise ValueError("rate_limit must be >= 1 and rate_window > 0")
        if self.api_key is not None and not self.api_key.startswith("lma_"):
            raise ValueError("api_key must start with 'lma_', as Lamina keys do")

    def scaled(self, seconds: float) -> float:
        """`seconds` of simulated time, in real seconds."""
        return seconds * self.time_scale


def generate_api_key() -> str:
    """A fresh sandbox key: recognisable by its prefix, unguessable by its tail."""
    return KEY_PREFIX + secrets.token_hex(12)
