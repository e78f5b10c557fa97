"""Webhook signing (Ed25519) and delivery with Lamina's retry schedule.

The signed message is the timestamp string, a ".", then the raw body bytes exactly as
sent; the signature travels as lowercase hex. A delivery fails on a non-2xx answer or
after 15 s and is retried 3 times, after 5 s, 30 s and 2 min, freshly signed each time
(all durations times `time_scale`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from batchrun.sandbox.config import SandboxConfig
from batchrun.sandbox.faults import Faults
from batchrun.sandbox.stats import SandboxStats, WebhookAttempt
from batchrun.sandbox.storage import is_loopback_url

logger = logging.getLogger(__name__)

KEY_ID = "lamina-webhook-v1"
RETRY_DELAYS = (5.0, 30.0, 120.0)
DELIVERY_TIMEOUT = 15.0


class WebhookSigner:
    """Holds the sandbox's Ed25519 key; signs bodies and publishes the JWK set."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self._private_key = private_key or Ed25519PrivateKey.generate()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> WebhookSigner:
        """A signer with the raw 32-byte key `private_bytes` gave (a state dir's)."""
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key receivers verify with."""
        return self._private_key.public_key()

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, so a restarted sandbox signs with it again."""
        return self._private_key.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )

    def sign(self, timestamp: int, body: bytes) -> str:
        """The lowercase-hex signature over f"{timestamp}." + body."""
        return self._private_key.sign(f"{timestamp}.".encode() + body).hex()

    def jwks(self) -> dict[str, Any]:
        """`GET /v1/webhooks/signing-key`: the key set, one OKP Ed25519 key."""
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": x,
                    "kid": KEY_ID,
                    "use": "sig",
                    "alg": "EdDSA",
                }
            ]
        }

    def headers(self, run_id: str, user_id: str, body: bytes) -> dict[str, str]:
        """The four X-Lamina-Webhook-* headers for one delivery attempt."""
        timestamp = int(time.time())
        return {
            "Content-Type": "application/json",
            "X-Lamina-Webhook-Signature": self.sign(timestamp, body),
            "X-Lamina-Webhook-Timestamp": str(timestamp),
            "X-Lamina-Webhook-Request-Id": run_id,
            "X-Lamina-Webhook-User-Id": user_id,
        }


class WebhookSender:
    """Delivers each finished run's webhook in the background, retrying on failure."""

    def __init__(
        self,
        signer: WebhookSigner,
        session: aiohttp.ClientSession,
        config: SandboxConfig,
        stats: SandboxStats,
        faults: Callable[[], Faults],
        rng: random.Random,
        user_id: str,
    ) -> None:
        self._signer = signer
        self._session = session
        self._config = config
        self._stats = stats
        self._faults = faults
        self._rng = rng
        self._user_id = user_id
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, url: str, run: dict[str, Any]) -> None:
        """Schedule delivery of `{"data": run}` to `url` (unless a fault loses it)."""
        if self._faults().trip("webhook_loss", self._rng):
            self._stats.faults_injected["webhook_loss"] += 1
            logger.info("sandbox.webhook.lost run=%s (fault injected)", run["runId"])
            return

        task = asyncio.create_task(self._deliver(url, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Abandon deliveries still waiting or in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(self, url: str, run: dict[str, Any]) -> None:
        run_id = str(run["runId"])
        # One body for every attempt; only the timestamp and signature change.
        body = json.dumps({"data": run}, ensure_ascii=False).encode()
        if not (self._config.allow_remote or is_loopback_url(url)):
            self._record(
                run_id,
                1,
                None,
                "not sent: the sandbox delivers webhooks only "
                "to loopback hosts unless allow_remote is set",
            )
            return

        delays = (0.0, *RETRY_DELAYS)
        for attempt, delay in enumerate(delays, start=1):
            await asyncio.sleep(self._config.scaled(delay))
            if await self._attempt(url, run_id, body, attempt):
                return
        logger.warning(
            "sandbox.webhook.gave_up run=%s url=%s attempts=%d",
            run_id,
            url,
            len(delays),
        )

    async def _attempt(self, url: str, run_id: str, body: bytes, attempt: int) -> bool:
        headers = self._signer.headers(run_id, self._user_id, body)
        timeout = aiohttp.ClientTimeout(total=self._config.scaled(DELIVERY_TIMEOUT))
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._record(run_id, attempt, None, f"{type(exc).__name__}: {exc}")
            return False

        self._record(run_id, attempt, status, None)
        return 200 <= status < 300

    def _record(
        self, run_id: str, attempt: int, status: int | None, error: str | None
    ) -> None:
        self._stats.webhook_attempts.append(
            WebhookAttempt(run_id, attempt, status, error, time.monotonic())
        )
        level = (
            logging.DEBUG
            if status is not None and 200 <= status < 300
            else logging.INFO
        )
        logger.log(
            level,
            "sandbox.webhook.attempt run=%s attempt=%d status=%s error=%s",
            run_id,
            attempt,
            status,
            error,
        )
