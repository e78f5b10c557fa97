"""Verifying and receiving Lamina webhook deliveries.

When a run ends, Lamina POSTs `{"data": <run>}` to the run's webhook URL, signed with
Ed25519 over `<timestamp>.<raw body>`; the public keys are a JWKS served at
`GET /v1/webhooks/signing-key`. A delivery that fails (non-2xx, or no answer in 15 s) is
retried up to 3 times, each freshly signed, so the same run can arrive several times.

- `verify_delivery` is the pure check: headers + raw body + keys + the time -> the run,
  or `WebhookRejected` with a stable `reason`.
- `WebhookReceiver` is a small aiohttp server around it: it fetches and caches the keys,
  refetches them once when a signature fails (key rotation), deduplicates by request id
  and hands each genuine run to `on_run` exactly once.

Rejections are logged with their reason and request id, never with the body or the
signature: the body is a customer's run (prompts, output URLs), and a body with its
signature is a delivery anyone could replay for the next 300 s.

The `X-Lamina-Webhook-User-Id` header is not checked: it is not signed and batchrun has
no use for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batchrun.errors import BatchrunError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lamina-Webhook-Signature"
TIMESTAMP_HEADER = "X-Lamina-Webhook-Timestamp"
REQUEST_ID_HEADER = "X-Lamina-Webhook-Request-Id"

DEFAULT_TOLERANCE = 300.0
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_REMEMBER = 100_000
DEFAULT_REFETCH_INTERVAL = 60.0

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")  # 64 bytes, hex

# How each rejection is answered: 400 for a malformed delivery, 401 for one that is
# well formed but not provably Lamina's, right now.
_STATUS = {
    "missing_header": 400,
    "bad_timestamp": 400,
    "bad_body": 400,
    "request_id_mismatch": 400,
    "bad_signature": 401,
    "stale_timestamp": 401,
}


class WebhookRejected(BatchrunError):
    """A delivery that is not a genuine, fresh, well-formed Lamina webhook.

    `reason` is a short stable code (one of "missing_header", "bad_timestamp",
    "stale_timestamp", "bad_signature", "bad_body", "request_id_mismatch"); the message
    says what exactly, without quoting the body or the signature.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)

    @property
    def status(self) -> int:
        """The HTTP status a receiver answers this rejection with."""
        return _STATUS.get(self.reason, 400)


class _NoKeyMatched(WebhookRejected):
    """A well-formed, fresh delivery whose signature no key verifies: the one case in
    which fetching the keys again (after a rotation) can change the verdict."""


def public_keys_from_jwks(jwks: Mapping[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys in a JWKS, in order; other kinds of key are skipped.

    Raises ValueError if the set holds no usable Ed25519 key.
    """
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("the webhook signing-key answer has no 'keys' list")

    keys: list[Ed25519PublicKey] = []
    for entry in entries:
        key = _ed25519_from_jwk(entry)
        if key is not None:
            keys.append(key)
    if not keys:
        raise ValueError(
            f"none of the {len(entries)} webhook signing keys is a usable Ed25519 key"
        )
    return keys


def _ed25519_from_jwk(entry: object) -> Ed25519PublicKey | None:
    if not isinstance(entry, Mapping):
        return None
    kid = entry.get("kid")
    if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
        logger.debug("skipping webhook key kid=%r: not an Ed25519 key", kid)
        return None
    if entry.get("use", "sig") != "sig":
        logger.debug("skipping webhook key kid=%r: not a signing key", kid)
        return None

    x = entry.get("x")
    if not isinstance(x, str):
        logger.debug("skipping webhook key kid=%r: no 'x'", kid)
        return None
    try:
        # JWKs use base64url without padding (RFC 7515 section 2).
        raw = base64.b64decode(x + "=" * (-len(x) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        logger.debug("skipping webhook key kid=%r: 'x' is not base64url", kid)
        return None
    if len(raw) != 32:
        logger.debug("skipping webhook key kid=%r: 'x' is not 32 bytes", kid)
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[Ed25519PublicKey],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The run object (`data`) of a genuine delivery, or raise WebhookRejected.

    `body` must be the raw bytes exactly as received: the signature covers them, not
    any re-serialization. Header names are matched case-insensitively. The timestamp is
    checked before the signature, so a stale replay is reported as stale.
    """
    signature = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    request_id = _header(headers, REQUEST_ID_HEADER)

    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookRejected("bad_timestamp", "the timestamp is not unix seconds")
    skew = now - int(timestamp)
    if abs(skew) > tolerance:
        when = "old" if skew > 0 else "in the future"
        raise WebhookRejected(
            "stale_timestamp",
            f"the timestamp is {abs(skew):.0f} s {when} (tolerance {tolerance:.0f} s)",
        )

    if not _SIGNATURE.fullmatch(signature):
        raise WebhookRejected("bad_signature", "the signature is not 64 bytes of hex")
    message = timestamp.encode("ascii") + b"." + body
    if not _signed_by_any(bytes.fromhex(signature), message, keys):
        raise _NoKeyMatched(
            "bad_signature", f"the signature matches none of the {len(keys)} keys"
        )

    run = _run_from_body(body)
    if _run_id_of(run) != request_id:
        raise WebhookRejected(
            "request_id_mismatch", "the request id header differs from data.runId"
        )
    return run


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        # aiohttp's headers are case-insensitive already; a plain dict is not.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if not value:
        raise WebhookRejected("missing_header", f"the {name} header is missing")
    return value.strip()


def _signed_by_any(
    signature: bytes, message: bytes, keys: Sequence[Ed25519PublicKey]
) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def _run_from_body(body: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected("bad_body", "the body is not JSON") from None
    run = envelope.get("data") if isinstance(envelope, dict) else None
    if not isinstance(run, dict):
        raise WebhookRejected("bad_body", "the body has no 'data' object")
    if _run_id_of(run) is None:
        raise WebhookRejected("bad_body", "the run in the body has no runId")
    return run


def _run_id_of(run: Mapping[str, Any]) -> str | None:
    # Older servers called it executionId (see lamina-api.md).
    run_id = run.get("runId") or run.get("executionId")
    return run_id if isinstance(run_id, str) else None


@dataclass
class ReceiverStats:
    """What a WebhookReceiver has seen so far (mutable counters)."""

    accepted: int = 0  # genuine deliveries passed to on_run
    duplicates: int = 0  # genuine deliveries of a run already passed on; answered 200
    failed: int = 0  # on_run raised; answered 500 so that Lamina retries
    rejected: Counter[str] = field(default_factory=Counter)  # by reason


OnRun = Callable[[dict[str, Any]], Awaitable[None] | None]
FetchKeys = Callable[[], Awaitable[Mapping[str, Any]]]


class WebhookReceiver:
    """An aiohttp.web server receiving Lamina webhook deliveries; a context manager.

    ::

        async with WebhookReceiver(fetch_keys=client.signing_keys, on_run=record) as rx:
            start_runs(webhook=public_url_for(rx.local_url))

    Each genuine delivery's run is passed to `on_run` once, however often Lamina
    delivers it; retries are answered 200 without calling it again. If `on_run` raises,
    the delivery is answered 500 and the run is not remembered, so Lamina's retry is
    passed on again; keep it quick, as Lamina gives up on an answer after 15 s. Keys are
    fetched on the first delivery (or by `load_keys()`, better done before runs start)
    and refetched at most once per `refetch_interval` seconds when no key verifies a
    signature.
    """

    def __init__(
        self,
        *,
        fetch_keys: FetchKeys,
        on_run: OnRun,
        listen: str = "127.0.0.1:0",
        path: str = "/lamina-webhook",
        clock: Callable[[], float] = time.time,
        tolerance: float = DEFAULT_TOLERANCE,
        max_body: int = DEFAULT_MAX_BODY,
        remember: int = DEFAULT_REMEMBER,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
    ) -> None:
        self.host, self.port = _parse_listen(listen)
        self.path = path
        self.stats = ReceiverStats()
        self._fetch_keys = fetch_keys
        self._on_run = on_run
        self._clock = clock
        self._tolerance = tolerance
        self._max_body = max_body
        self._remember = remember
        self._refetch_interval = refetch_interval
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None  # clock time of the last fetch attempt
        self._key_generation = 0  # bumped by every successful fetch
        self._key_lock: asyncio.Lock | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()  # oldest first, bounded
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def local_url(self) -> str:
        """The URL the receiver listens on, e.g. http://127.0.0.1:54321/lamina-webhook."""
        if self._runner is None:
            raise RuntimeError("the WebhookReceiver is not running; use `async with`")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def __aenter__(self) -> WebhookReceiver:
        self._key_lock = asyncio.Lock()
        # aiohttp answers 413 itself when a body exceeds client_max_size.
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        logger.info("webhook receiver listening on %s", self.local_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def load_keys(self) -> list[Ed25519PublicKey]:
        """Fetch the signing keys now and cache them; errors from fetch_keys propagate.

        Raises ValueError if the key set holds no usable Ed25519 key.
        """
        self._fetched_at = self._clock()
        keys = public_keys_from_jwks(await self._fetch_keys())
        self._keys = keys
        self._key_generation += 1
        logger.info("loaded %d webhook signing key(s)", len(keys))
        return keys

    async def _handle(self, request: web.Request) -> web.Response:
        request_id = request.headers.get(REQUEST_ID_HEADER, "")  # for logs only
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(request_id, "too_large", "the body is too large", 413)

        try:
            run = await self._verify(request.headers, body)
        except WebhookRejected as exc:
            return self._reject(request_id, exc.reason, str(exc), exc.status)
        except _KeysUnavailable as exc:
            return self._reject(request_id, "keys_unavailable", str(exc), 503)

        run_id = _run_id_of(run)
        assert run_id is not None, "verify_delivery checked that the run has an id"
        return await self._pass_on(run_id, run)

    async def _verify(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        generation = self._key_generation
        if not self._keys:
            await self._refresh_keys(generation)
            if not self._keys:
                raise _KeysUnavailable("no webhook signing keys could be fetched yet")
            generation = self._key_generation

        try:
            return self._check(headers, body)
        except _NoKeyMatched:
            # Maybe signed with a key Lamina rotated in since we fetched ours.
            if not await self._refresh_keys(generation):
                raise
        return self._check(headers, body)

    def _check(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        return verify_delivery(
            headers, body, self._keys, now=self._clock(), tolerance=self._tolerance
        )

    async def _refresh_keys(self, generation: int) -> bool:
        """Refetch the keys if they are still `generation` and the last attempt is old
        enough; True if the keys now differ from `generation`'s."""
        assert self._key_lock is not None, "keys are fetched only while running"
        async with self._key_lock:
            if self._key_generation != generation:
                return True  # another delivery refetched them while we waited
            last = self._fetched_at
            if last is not None and self._clock() - last < self._refetch_interval:
                return False
            try:
                await self.load_keys()
            except Exception as exc:
                # fetch_keys is the caller's (an HTTP GET, usually): whatever it raises
                # means the same here, no new keys to check with for now.
                logger.warning(
                    "webhook.keys_unavailable: cannot fetch the signing keys (%s: %s); "
                    "trying again in %.0f s at the earliest",
                    exc.__class__.__name__,
                    exc,
                    self._refetch_interval,
                )
                return False
        return True

    async def _pass_on(self, run_id: str, run: dict[str, Any]) -> web.Response:
        if run_id in self._seen:
            self.stats.duplicates += 1
            logger.debug("webhook duplicate run_id=%s acknowledged", run_id)
            return _answer(200, "duplicate")

        # A retry can arrive while on_run is still busy with the first delivery: it
        # waits for that outcome rather than calling on_run a second time.
        pending = self._in_flight.get(run_id)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except Exception:
                return _answer(500, "on_run_failed")
            self.stats.duplicates += 1
            return _answer(200, "duplicate")

        pending = asyncio.get_running_loop().create_future()
        self._in_flight[run_id] = pending
        try:
            result = self._on_run(run)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.stats.failed += 1
            logger.exception(
                "webhook.on_run_failed run_id=%s; answered 500 so Lamina retries",
                run_id,
            )
            pending.set_exception(exc)
            pending.exception()  # retrieved here; waiters re-raise it themselves
            return _answer(500, "on_run_failed")
        else:
            self._remember_id(run_id)
            self.stats.accepted += 1
            pending.set_result(None)
            logger.info("webhook accepted run_id=%s", run_id)
            return _answer(200, "accepted")
        finally:
            del self._in_flight[run_id]
            if not pending.done():  # on_run was cancelled: so are its waiters
                pending.cancel()

    def _remember_id(self, run_id: str) -> None:
        self._seen[run_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    def _reject(
        self, request_id: str, reason: str, message: str, status: int
    ) -> web.Response:
        self.stats.rejected[reason] += 1
        logger.warning(
            "webhook.rejected reason=%s request_id=%s status=%d: %s",
            reason,
            _printable(request_id),
            status,
            message,
        )
        return _answer(status, reason)


class _KeysUnavailable(Exception):
    """No signing keys could be fetched, so no delivery can be checked yet."""


def _answer(status: int, outcome: str) -> web.Response:
    # Never echo anything from the request: the outcome is one of our own codes.
    return web.json_response({"status": outcome}, status=status)


def _printable(value: str, limit: int = 80) -> str:
    # The request id is whatever the sender put in the header: keep log lines one line.
    value = value[:limit]
    if not value:
        return "-"
    return value if value.isprintable() else repr(value)


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
