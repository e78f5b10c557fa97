"""How long to wait before trying a request again."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; Retry-After wins if given."""

    retries: int = 5
    base: float = 0.5
    cap: float = 30.0
    jitter: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry)."""
        backoff = min(self.cap, self.base * 2 ** (attempt - 1)) * self.jitter()
        if retry_after is not None:
            # The server said when; a little jitter keeps waiting workers apart.
            return retry_after + backoff * 0.1
        return backoff
