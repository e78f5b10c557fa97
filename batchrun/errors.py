"""The errors batchrun raises, each knowing the exit code the CLI maps it to.

    BatchrunError                 1  the root; never raised bare
    ├── UsageError                2  bad flags or arguments
    ├── SpecError                 2  the spec is invalid (carries every problem found)
    ├── ManifestError             3  the manifest is unreadable, foreign or locked
    ├── ApiError                  4  the API refused a request (auth, not found, ...)
    │   ├── RateLimited           4  429 after every retry was spent
    │   └── QuotaExhausted        4  credits or a daily quota ran out
    ├── TransportError            5  the API could not be reached after retries
    │   └── SubmissionUncertain   5  a run start may or may not have created a run
    ├── RunFailed                 1  one run ended failed (recorded per job)
    └── DownloadFailed            1  one output could not be downloaded (per job)

Messages are one line a person can act on; they never contain the API key.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchrunError(Exception):
    """The root of every error batchrun raises on purpose."""

    exit_code = 1


class UsageError(BatchrunError):
    """A flag, argument or environment variable is missing or wrong."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located as precisely as we can."""

    where: str  # "spec.yaml:14:9" or "spec.yaml"
    path: str  # "jobs[2].matrix.Style[1]"
    message: str

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        path = f"{self.path}: " if self.path else ""
        return f"{prefix}{path}{self.message}"


class SpecError(BatchrunError):
    """The spec is invalid; `problems` lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ManifestError(BatchrunError):
    """The manifest cannot be used: unreadable, from another spec's batch, or locked."""

    exit_code = 3


class ApiError(BatchrunError):
    """The API answered with an error that retrying will not fix."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: list[object] | None = None,
        retryable: bool = False,
    ) -> None:
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details or []
        self.retryable = retryable
        super().__init__(message)


class RateLimited(ApiError):
    """The API kept answering 429 after every retry was spent."""


class QuotaExhausted(ApiError):
    """Credits or a daily quota are exhausted; new submissions stop."""


class TransportError(BatchrunError):
    """The API could not be reached (connection refused, reset, timed out)."""

    exit_code = 5


class SubmissionUncertain(TransportError):
    """A run start's answer was lost: a run may exist. Never resend it blindly."""


class RunFailed(BatchrunError):
    """A run ended `failed` or `cancelled`."""


class DownloadFailed(BatchrunError):
    """An output could not be downloaded intact."""
