"""Webhook verification and the receiver, with deliveries signed as Lamina signs them.

A scripted Lamina serves its JWKS over real HTTP on 127.0.0.1; the receiver fetches it
with a real GET, and every delivery is a real POST to the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from batchrun.webhooks import (
    WebhookReceiver,
    WebhookRejected,
    public_keys_from_jwks,
    verify_delivery,
)
from tests.conftest import FakeTime

NOW = 1_774_268_560


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def jwk(key: Ed25519PrivateKey, kid: str = "lamina-webhook-v1") -> dict[str, str]:
    x = base64.urlsafe_b64encode(raw_public(key)).rstrip(b"=").decode()
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": x,
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }


def run_body(run_id: str, status: str = "completed") -> bytes:
    # Indented, non-ASCII JSON: a receiver that re-serialized it to check would fail.
    run = {
        "runId": run_id,
        "workflowId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587",
        "status": status,
        "outputs": [
            {"label": "Caf\u00e9 \U0001f3a8", "value": "https://cdn.example/a.png"}
        ],
    }
    return json.dumps({"data": run}, indent=2, ensure_ascii=False).encode()


def sign(
    key: Ed25519PrivateKey, body: bytes, *, request_id: str, timestamp: int = NOW
) -> dict[str, str]:
    """Lamina's headers: Ed25519 over `<timestamp>.<raw body>`, in lowercase hex."""
    signature = key.sign(str(timestamp).encode() + b"." + body).hex()
    return {
        "X-Lamina-Webhook-Signature": signature,
        "X-Lamina-Webhook-Timestamp": str(timestamp),
        "X-Lamina-Webhook-Request-Id": request_id,
        "X-Lamina-Webhook-User-Id": "user-42",
        "Content-Type": "application/json",
    }


@dataclass
class Lamina:
    """The scripted Lamina side: its signing keys and its signing-key endpoint."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    jwks: dict[str, Any] = field(default_factory=dict)
    fetches: int = 0
    down: bool = False
    url: str = ""

    def __post_init__(self) -> None:
        self.jwks = {"keys": [jwk(self.key)]}

    async def signing_key(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.down:
            return web.json_response(
                {"error": "down", "code": "INTERNAL_ERROR"}, status=500
            )
        return web.json_response(self.jwks)


Serve = Callable[[web.Application], Awaitable[Any]]  # conftest's `serve` fixture


@pytest.fixture
async def lamina(serve: Serve) -> Lamina:
    lamina = Lamina()
    app = web.Application()
    app.router.add_get("/v1/webhooks/signing-key", lamina.signing_key)
    server = await serve(app)
    lamina.url = server.url + "/v1/webhooks/signing-key"
    return lamina


@pytest.fixture
def clock(fake_time: FakeTime) -> FakeTime:
    fake_time.now = NOW
    return fake_time


@pytest.fixture
def runs() -> list[dict[str, Any]]:
    return []


Start = Callable[..., Awaitable[WebhookReceiver]]


@pytest.fixture
async def start(
    lamina: Lamina,
    http: aiohttp.ClientSession,
    clock: FakeTime,
    runs: list[dict[str, Any]],
) -> AsyncIterator[Start]:
    async def fetch_keys() -> dict[str, Any]:
        async with http.get(lamina.url) as response:
            response.raise_for_status()
            return dict(await response.json())

    async with AsyncExitStack() as stack:

        async def start(**options: Any) -> WebhookReceiver:
            options.setdefault("on_run", runs.append)
            receiver = WebhookReceiver(
                fetch_keys=fetch_keys, clock=clock.clock, **options
            )
            return await stack.enter_async_context(receiver)

        yield start


async def post(
    http: aiohttp.ClientSession,
    receiver: WebhookReceiver,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, str]:
    async with http.post(receiver.local_url, data=body, headers=headers) as response:
        return response.status, await response.text()


# -- the receiver over HTTP ------------------------------------------------------------


async def test_a_genuine_delivery_is_accepted_and_passed_on_once(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start()
    body = run_body("run-1")

    status, _ = await post(
        http, receiver, body, sign(lamina.key, body, request_id="run-1")
    )

    assert status == 200
    assert runs == [json.loads(body)["data"]]
    assert (receiver.stats.accepted, receiver.stats.duplicates) == (1, 0)


async def test_an_async_on_run_is_awaited(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession
) -> None:
    seen: list[str] = []

    async def on_run(run: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(run["runId"])

    receiver = await start(on_run=on_run)
    body = run_body("run-1")

    status, _ = await post(
        http, receiver, body, sign(lamina.key, body, request_id="run-1")
    )

    assert (status, seen) == (200, ["run-1"])


async def test_a_signature_by_another_key_is_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start()
    body = run_body("run-1")
    forged = sign(Ed25519PrivateKey.generate(), body, request_id="run-1")

    status, _ = await post(http, receiver, body, forged)

    assert (status, runs) == (401, [])
    assert receiver.stats.rejected == {"bad_signature": 1}


async def test_a_tampered_body_is_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start()
    signed = run_body("run-1", status="failed")
    headers = sign(lamina.key, signed, request_id="run-1")
    tampered = signed.replace(b'"failed"', b'"completed"')

    status, _ = await post(http, receiver, tampered, headers)

    assert (status, runs) == (401, [])
    assert receiver.stats.rejected == {"bad_signature": 1}


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(-301, 401), (301, 401), (-300, 200), (300, 200)],
    ids=["301s-old", "301s-ahead", "300s-old", "300s-ahead"],
)
async def test_timestamps_more_than_300s_from_now_are_rejected(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    runs: list[Any],
    offset: int,
    expected: int,
) -> None:
    receiver = await start()
    body = run_body("run-1")
    headers = sign(lamina.key, body, request_id="run-1", timestamp=NOW + offset)

    status, _ = await post(http, receiver, body, headers)

    assert (status, len(runs)) == (expected, 1 if expected == 200 else 0)
    assert receiver.stats.rejected == (
        {} if expected == 200 else {"stale_timestamp": 1}
    )


async def test_a_replayed_or_retried_delivery_is_acknowledged_but_not_passed_on(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    runs: list[Any],
    clock: FakeTime,
) -> None:
    receiver = await start()
    body = run_body("run-1")
    first = sign(lamina.key, body, request_id="run-1")
    retry = sign(lamina.key, body, request_id="run-1", timestamp=NOW + 30)

    statuses = [(await post(http, receiver, body, first))[0]]
    statuses.append((await post(http, receiver, body, first))[0])
    clock.now = NOW + 31
    statuses.append((await post(http, receiver, body, retry))[0])

    assert statuses == [200, 200, 200]
    assert len(runs) == 1
    assert (receiver.stats.accepted, receiver.stats.duplicates) == (1, 2)


async def test_a_forged_delivery_of_a_seen_run_is_still_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession
) -> None:
    receiver = await start()
    body = run_body("run-1")
    await post(http, receiver, body, sign(lamina.key, body, request_id="run-1"))
    forged = sign(Ed25519PrivateKey.generate(), body, request_id="run-1")

    status, _ = await post(http, receiver, body, forged)

    assert status == 401
    assert receiver.stats.duplicates == 0


async def test_a_request_id_other_than_the_run_id_is_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start()
    body = run_body("run-1")

    status, _ = await post(
        http, receiver, body, sign(lamina.key, body, request_id="run-2")
    )

    assert (status, runs) == (400, [])
    assert receiver.stats.rejected == {"request_id_mismatch": 1}


def rotate(lamina: Lamina) -> None:
    lamina.key = Ed25519PrivateKey.generate()
    lamina.jwks = {"keys": [jwk(lamina.key, kid="lamina-webhook-v2")]}


async def test_a_rotated_key_is_refetched_once_and_then_accepted(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    runs: list[Any],
    clock: FakeTime,
) -> None:
    receiver = await start()
    old_body = run_body("run-1")
    old_headers = sign(lamina.key, old_body, request_id="run-1")
    await post(http, receiver, old_body, old_headers)
    rotate(lamina)
    clock.now = NOW + 60
    body = run_body("run-2")
    headers = sign(lamina.key, body, request_id="run-2", timestamp=NOW + 60)

    status, _ = await post(http, receiver, body, headers)

    assert status == 200
    assert [run["runId"] for run in runs] == ["run-1", "run-2"]
    assert lamina.fetches == 2


async def test_keys_are_refetched_at_most_once_per_minute(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, clock: FakeTime
) -> None:
    receiver = await start()
    await receiver.load_keys()
    body = run_body("run-1")
    stranger = Ed25519PrivateKey.generate()

    statuses = []
    for now in (NOW + 59, NOW + 61, NOW + 62, NOW + 120, NOW + 122):
        clock.now = now
        headers = sign(stranger, body, request_id="run-1", timestamp=now)
        statuses.append((await post(http, receiver, body, headers))[0])

    assert statuses == [401] * 5
    assert lamina.fetches == 3  # load_keys, then at +61 and +122 only


async def test_a_stale_or_malformed_delivery_does_not_trigger_a_refetch(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, clock: FakeTime
) -> None:
    receiver = await start()
    await receiver.load_keys()
    clock.now = NOW + 3600
    body = run_body("run-1")
    stale = sign(Ed25519PrivateKey.generate(), body, request_id="run-1")
    garbled = sign(lamina.key, body, request_id="run-1", timestamp=NOW + 3600)
    garbled["X-Lamina-Webhook-Signature"] = "zz"

    statuses = [(await post(http, receiver, body, h))[0] for h in (stale, garbled)]

    assert statuses == [401, 401]
    assert receiver.stats.rejected == {"stale_timestamp": 1, "bad_signature": 1}
    assert lamina.fetches == 1


async def test_concurrent_deliveries_with_a_new_key_share_one_refetch(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    runs: list[Any],
    clock: FakeTime,
) -> None:
    receiver = await start()
    await receiver.load_keys()
    rotate(lamina)
    clock.now = NOW + 60
    deliveries = []
    for run_id in ("run-0", "run-1", "run-2"):
        body = run_body(run_id)
        headers = sign(lamina.key, body, request_id=run_id, timestamp=NOW + 60)
        deliveries.append(post(http, receiver, body, headers))

    results = await asyncio.gather(*deliveries)

    assert [status for status, _ in results] == [200, 200, 200]
    assert (len(runs), lamina.fetches) == (3, 2)


async def test_a_jwks_with_several_keys_accepts_a_signature_by_the_second(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    second = Ed25519PrivateKey.generate()
    lamina.jwks = {
        "keys": [
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            jwk(lamina.key, kid="v1"),
            jwk(second, kid="v2"),
        ]
    }
    receiver = await start()
    body = run_body("run-1")

    status, _ = await post(http, receiver, body, sign(second, body, request_id="run-1"))

    assert (status, len(runs), lamina.fetches) == (200, 1, 1)


@pytest.mark.parametrize(
    "header",
    [
        "X-Lamina-Webhook-Signature",
        "X-Lamina-Webhook-Timestamp",
        "X-Lamina-Webhook-Request-Id",
    ],
    ids=["signature", "timestamp", "request-id"],
)
async def test_a_delivery_missing_a_header_is_rejected(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    runs: list[Any],
    header: str,
) -> None:
    receiver = await start()
    body = run_body("run-1")
    headers = sign(lamina.key, body, request_id="run-1")
    del headers[header]

    status, _ = await post(http, receiver, body, headers)

    assert (status, runs) == (400, [])
    assert receiver.stats.rejected == {"missing_header": 1}


@pytest.mark.parametrize("timestamp", ["soon", "1774268560.5", "-1", ""], ids=repr)
async def test_a_timestamp_that_is_not_unix_seconds_is_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, timestamp: str
) -> None:
    receiver = await start()
    body = run_body("run-1")
    headers = {**sign(lamina.key, body, request_id="run-1")}
    headers["X-Lamina-Webhook-Timestamp"] = timestamp

    status, _ = await post(http, receiver, body, headers)

    reason = "missing_header" if not timestamp else "bad_timestamp"
    assert (status, receiver.stats.rejected) == (400, {reason: 1})


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"run": {}}', b'{"data": {"status": "completed"}}'],
    ids=["not-json", "array", "no-data", "no-run-id"],
)
async def test_a_signed_but_malformed_body_is_rejected(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, body: bytes
) -> None:
    receiver = await start()

    status, _ = await post(http, receiver, body, sign(lamina.key, body, request_id="r"))

    assert (status, receiver.stats.rejected) == (400, {"bad_body": 1})


async def test_a_body_over_the_size_cap_is_rejected_413(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start(max_body=1024)
    body = run_body("run-1") + b" " * 2048
    headers = sign(lamina.key, body, request_id="run-1")

    status, _ = await post(http, receiver, body, headers)

    assert (status, runs) == (413, [])
    assert receiver.stats.rejected == {"too_large": 1}


async def test_rejections_are_logged_without_the_body_or_signature(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = await start()
    body = run_body("run-1").replace(b"completed", b"SECRET-CUSTOMER-OUTPUT")
    forged = sign(Ed25519PrivateKey.generate(), body, request_id="run-1")
    mismatched = sign(lamina.key, body, request_id="run-9")

    answers = [await post(http, receiver, body, h) for h in (forged, mismatched)]

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [status for status, _ in answers] == [401, 400]
    assert "reason=bad_signature request_id=run-1" in warnings[0]
    assert "reason=request_id_mismatch request_id=run-9" in warnings[1]
    for secret in ("SECRET-CUSTOMER-OUTPUT", forged["X-Lamina-Webhook-Signature"]):
        assert secret not in caplog.text
        assert all(secret not in text for _, text in answers)


async def test_an_on_run_failure_is_answered_500_and_the_retry_is_passed_on(
    start: Start,
    lamina: Lamina,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def on_run(run: dict[str, Any]) -> None:
        calls.append(run["runId"])
        if len(calls) == 1:
            raise OSError("disk full")

    receiver = await start(on_run=on_run)
    body = run_body("run-1")
    headers = sign(lamina.key, body, request_id="run-1")

    first = await post(http, receiver, body, headers)
    retry = await post(http, receiver, body, headers)

    assert (first[0], retry[0], calls) == (500, 200, ["run-1", "run-1"])
    assert (receiver.stats.failed, receiver.stats.accepted) == (1, 1)
    assert "webhook.on_run_failed run_id=run-1" in caplog.text


async def test_a_retry_arriving_while_on_run_is_busy_is_not_passed_on_again(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def on_run(run: dict[str, Any]) -> None:
        calls.append(run["runId"])
        entered.set()
        await release.wait()

    receiver = await start(on_run=on_run)
    body = run_body("run-1")
    headers = sign(lamina.key, body, request_id="run-1")
    first = asyncio.create_task(post(http, receiver, body, headers))
    await entered.wait()
    retry = asyncio.create_task(post(http, receiver, body, headers))
    await asyncio.sleep(0.05)  # let the retry reach the receiver while on_run waits
    release.set()

    statuses = [(await first)[0], (await retry)[0]]

    assert (statuses, calls) == ([200, 200], ["run-1"])
    assert (receiver.stats.accepted, receiver.stats.duplicates) == (1, 1)


async def test_the_dedup_memory_is_bounded(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, runs: list[Any]
) -> None:
    receiver = await start(remember=2)

    for run_id in ("run-1", "run-2", "run-3", "run-1", "run-3"):
        body = run_body(run_id)
        await post(http, receiver, body, sign(lamina.key, body, request_id=run_id))

    assert [run["runId"] for run in runs] == ["run-1", "run-2", "run-3", "run-1"]
    assert receiver.stats.duplicates == 1


async def test_keys_are_fetched_lazily_on_the_first_delivery_then_cached(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession
) -> None:
    receiver = await start()
    fetches_before = lamina.fetches

    for run_id in ("run-1", "run-2"):
        body = run_body(run_id)
        await post(http, receiver, body, sign(lamina.key, body, request_id=run_id))

    assert (fetches_before, lamina.fetches, receiver.stats.accepted) == (0, 1, 2)


async def test_deliveries_are_answered_503_until_the_keys_can_be_fetched(
    start: Start, lamina: Lamina, http: aiohttp.ClientSession, clock: FakeTime
) -> None:
    lamina.down = True
    receiver = await start()
    body = run_body("run-1")

    down = await post(http, receiver, body, sign(lamina.key, body, request_id="run-1"))
    still_down = await post(
        http, receiver, body, sign(lamina.key, body, request_id="run-1")
    )
    lamina.down = False
    clock.now = NOW + 60
    later = sign(lamina.key, body, request_id="run-1", timestamp=NOW + 60)
    back = await post(http, receiver, body, later)

    assert [down[0], still_down[0], back[0]] == [503, 503, 200]
    assert lamina.fetches == 2  # not refetched for the second delivery, within 60 s
    assert receiver.stats.rejected == {"keys_unavailable": 2}


async def test_load_keys_raises_when_the_jwks_has_no_usable_key(
    start: Start, lamina: Lamina
) -> None:
    lamina.jwks = {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}
    receiver = await start()

    with pytest.raises(ValueError, match="usable Ed25519 key"):
        await receiver.load_keys()


async def test_local_url_names_the_bound_port_and_path(start: Start) -> None:
    receiver = await start(path="/hooks/lamina")

    url = receiver.local_url

    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/hooks/lamina")
    assert receiver.port != 0


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost:http", ":"], ids=repr)
def test_listen_must_be_host_and_port(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        WebhookReceiver(fetch_keys=dict, on_run=print, listen=listen)  # type: ignore[arg-type]


# -- verify_delivery and public_keys_from_jwks, without HTTP ---------------------------


def test_verify_delivery_returns_the_run_and_matches_header_names_in_any_case() -> None:
    key = Ed25519PrivateKey.generate()
    body = run_body("run-1")
    headers = {k.lower(): v for k, v in sign(key, body, request_id="run-1").items()}

    run = verify_delivery(headers, body, [key.public_key()], now=NOW)

    assert run == json.loads(body)["data"]


def test_verify_delivery_ignores_whitespace_around_header_values() -> None:
    key = Ed25519PrivateKey.generate()
    body = run_body("run-1")
    headers = {k: f" {v} " for k, v in sign(key, body, request_id="run-1").items()}

    run = verify_delivery(headers, body, [key.public_key()], now=NOW)

    assert run["runId"] == "run-1"


def test_verify_delivery_accepts_the_legacy_execution_id() -> None:
    key = Ed25519PrivateKey.generate()
    body = json.dumps(
        {"data": {"executionId": "run-1", "status": "completed"}}
    ).encode()
    headers = sign(key, body, request_id="run-1")

    run = verify_delivery(headers, body, [key.public_key()], now=NOW)

    assert run["executionId"] == "run-1"


def test_verify_delivery_honours_a_custom_tolerance() -> None:
    key = Ed25519PrivateKey.generate()
    body = run_body("run-1")
    headers = sign(key, body, request_id="run-1", timestamp=NOW - 11)

    with pytest.raises(WebhookRejected) as raised:
        verify_delivery(headers, body, [key.public_key()], now=NOW, tolerance=10)

    assert (raised.value.reason, raised.value.status) == ("stale_timestamp", 401)


def test_verify_delivery_rejects_a_signature_over_the_body_alone() -> None:
    # The timestamp is part of what is signed: without it a replay could be re-dated.
    key = Ed25519PrivateKey.generate()
    body = run_body("run-1")
    headers = sign(key, body, request_id="run-1")
    headers["X-Lamina-Webhook-Signature"] = key.sign(body).hex()

    with pytest.raises(WebhookRejected) as raised:
        verify_delivery(headers, body, [key.public_key()], now=NOW)

    assert raised.value.reason == "bad_signature"


def test_public_keys_from_jwks_skips_entries_that_are_not_ed25519_signing_keys() -> (
    None
):
    good = Ed25519PrivateKey.generate()
    x25519 = base64.urlsafe_b64encode(raw_public(X25519PrivateKey.generate())).decode()
    jwks = {
        "keys": [
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "x": x25519.rstrip("=")},
            {**jwk(Ed25519PrivateKey.generate()), "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},  # 3 bytes
            {"kty": "OKP", "crv": "Ed25519", "x": "A" * 44},  # 33 bytes
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64url!"},
            {"kty": "OKP", "crv": "Ed25519"},
            "not an object",
            jwk(good),
        ]
    }

    keys = public_keys_from_jwks(jwks)

    assert [k.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in keys] == [
        raw_public(good)
    ]


@pytest.mark.parametrize(
    "jwks",
    [{"keys": []}, {}, {"keys": "nope"}, {"keys": [{"kty": "EC", "crv": "P-256"}]}],
    ids=["empty", "no-keys", "not-a-list", "only-ec"],
)
def test_public_keys_from_jwks_raises_when_no_key_is_usable(jwks: Any) -> None:
    with pytest.raises(ValueError):
        public_keys_from_jwks(jwks)
