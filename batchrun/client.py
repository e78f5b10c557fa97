"""The Lamina HTTP client: every API request batchrun makes goes through here.

This is the one place where aiohttp's exceptions and the API's error envelopes become
batchrun errors. Requests are paced by a shared `RequestBudget`, retried with backoff
when that is safe, and logged one line each without the key.

Retrying a run start is never "safe" by itself: a POST whose answer was lost may have
created (and billed) a run. `create_run` therefore retries only answers that prove
nothing was created (429, a connection that was never made) and raises
`SubmissionUncertain` for the rest, so the runner can look for the run before it submits
again.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from batchrun.apps import App
from batchrun.errors import (
    ApiError,
    QuotaExhausted,
    RateLimited,
    SubmissionUncertain,
    TransportError,
)
from batchrun.limits import RequestBudget, parse_retry_after
from batchrun.retries import RetryPolicy
from batchrun.sse import Event, iter_events

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://app.uselamina.ai"
USER_AGENT = "batchrun"
REQUEST_TIMEOUT = 60.0
# A Retry-After longer than this is treated as an exhausted quota, not a burst.
MAX_RETRY_AFTER = 900.0

Sleep = Callable[[float], Awaitable[None]]


def normalize_run(data: Mapping[str, Any]) -> dict[str, Any]:
    """A run object with `runId` set, whichever name the server used for it."""
    run = dict(data)
    if "runId" not in run and "executionId" in run:
        run["runId"] = run["executionId"]
    return run


class LaminaClient:
    """A thin async client for the parts of the Lamina API that batchrun uses."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession,
        budget: RequestBudget | None = None,
        retry: RetryPolicy | None = None,
        workspace_id: str | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required")
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._session = session
        self.budget = budget or RequestBudget()
        self.retry = retry or RetryPolicy()
        self._workspace_id = workspace_id
        self._sleep = sleep
        self.requests = 0
        # Server clock minus ours, in seconds, learned from the Date header (None until
        # an answer had one). Lets a lost run start be looked for in a narrow window.
        self.clock_offset: float | None = None

    def server_time(self, local: datetime) -> datetime | None:
        """What the server's clock read at local time `local`, if we know its offset."""
        if self.clock_offset is None:
            return None
        return local + timedelta(seconds=self.clock_offset)

    def _learn_clock(self, date_header: str | None) -> None:
        if not date_header:
            return
        try:
            server = email.utils.parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            return
        # Date has whole seconds, truncated: the server's clock was in [date, date + 1).
        self.clock_offset = server + 0.5 - time.time()

    def __repr__(self) -> str:
        # Never show the key, not even in a debugger or a traceback.
        return f"LaminaClient({self.base_url!r})"

    # -- apps --------------------------------------------------------------------------

    async def get_app(self, app_id: str) -> App:
        """The app with this ID and its parameters."""
        body = await self._json("GET", f"/v1/apps/{app_id}")
        return App.from_api(body["data"])

    async def list_apps(
        self, search: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """App summaries whose name or description matches `search`."""
        params = {"limit": str(limit)}
        if search:
            params["search"] = search
        body = await self._json("GET", "/v1/apps", params=params)
        return list(body.get("data") or [])

    # -- account -----------------------------------------------------------------------

    async def usage(self) -> dict[str, Any]:
        """Credits and the rate limit, as `GET /v1/account/usage` reports them."""
        body = await self._json("GET", "/v1/account/usage")
        return dict(body.get("data") or {})

    async def signing_keys(self) -> dict[str, Any]:
        """The webhook signing keys (a JWKS)."""
        return await self._json("GET", "/v1/webhooks/signing-key")

    # -- runs --------------------------------------------------------------------------

    async def create_run(
        self, app_id: str, inputs: Mapping[str, str], *, webhook: str | None = None
    ) -> dict[str, Any]:
        """Start one run; SubmissionUncertain when a run may have been created."""
        params = {"webhook": webhook} if webhook else None
        body = await self._json(
            "POST",
            f"/v1/apps/{app_id}/runs",
            params=params,
            json_body={"inputs": dict(inputs)},
            idempotent=False,
        )
        return normalize_run(body["data"])

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run with its outputs."""
        body = await self._json("GET", f"/v1/runs/{run_id}")
        return normalize_run(body["data"])

    async def wait_run(
        self, run_id: str, timeout: int = 60
    ) -> tuple[dict[str, Any], bool]:
        """Long-poll a run: (run, timed_out)."""
        body = await self._json(
            "GET",
            f"/v1/runs/{run_id}/wait",
            params={"timeout": str(timeout)},
            timeout=timeout + REQUEST_TIMEOUT,
        )
        return normalize_run(body["data"]), bool(body.get("timeout"))

    async def list_runs(
        self,
        *,
        app_id: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of run summaries, newest first: (runs, pagination)."""
        params = {"limit": str(limit), "offset": str(offset)}
        if app_id:
            params["appId"] = app_id
        if status:
            params["status"] = status
        if since:
            params["since"] = since
        body = await self._json("GET", "/v1/runs", params=params)
        runs = [normalize_run(r) for r in body.get("data") or []]
        return runs, dict(body.get("pagination") or {})

    async def stream_run(self, run_id: str) -> AsyncIterator[Event]:
        """The run's server-sent events until the stream ends."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=90)
        try:
            async with self._send(
                "GET", f"/v1/runs/{run_id}/stream", timeout=timeout, stream=True
            ) as response:
                async for event in iter_events(response.content):
                    yield event
        except _Retryable as exc:
            raise exc.final() from None
        except _ServerError as exc:
            raise exc.api_error from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransportError(
                f"the event stream of run {run_id} broke off ({exc.__class__.__name__})"
            ) from exc

    # -- assets ------------------------------------------------------------------------

    async def upload_urls(self, files: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Presigned upload URLs for `files` ([{filename, mediaType}])."""
        body = await self._json(
            "POST", "/v1/assets/upload-urls", json_body={"files": files}
        )
        return list(body["data"]["uploads"])

    # -- the request loop --------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        idempotent: bool = True,
        timeout: float = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        attempt = 0
        while True:
            attempt += 1
            last = attempt > self.retry.retries
            retry_after: float | None = None
            try:
                async with self._send(
                    method,
                    path,
                    params=params,
                    json_body=json_body,
                    timeout=client_timeout,
                ) as response:
                    return await _read_json(response, method, path)
            except _Retryable as exc:
                # A 429: the request had no effect, so even a run start may be resent.
                if last:
                    raise exc.final() from exc
                reason, retry_after = exc.reason, exc.retry_after
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                # The connection was never made, so nothing was sent: safe to retry.
                if last:
                    raise TransportError(
                        f"cannot connect to {self.base_url}: {exc.__class__.__name__}; "
                        "check LAMINA_BASE_URL and your network"
                    ) from exc
                reason = "connect"
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = exc.__class__.__name__
                if not idempotent:
                    raise SubmissionUncertain(
                        f"{method} {path}: the answer was lost ({reason}); "
                        "a run may have been created"
                    ) from exc
                if last:
                    raise TransportError(
                        f"{method} {path} failed {attempt} times ({reason}); "
                        "the API is unreachable or unstable, try again later"
                    ) from exc
            except _ServerError as exc:
                if not idempotent:
                    raise SubmissionUncertain(
                        f"{method} {path}: the API answered {exc.status} "
                        f"({exc.code}); a run may have been created"
                    ) from exc.api_error
                if last:
                    raise exc.api_error from None
                reason, retry_after = str(exc.status), exc.retry_after

            delay = self.retry.delay(attempt, retry_after)
            log.warning(
                "http.retry %s %s attempt=%d reason=%s wait=%.1fs",
                method,
                path,
                attempt,
                reason,
                delay,
            )
            await self._sleep(delay)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: aiohttp.ClientTimeout,
        stream: bool = False,
    ) -> _Exchange:
        headers = {"x-api-key": self._key, "User-Agent": USER_AGENT}
        if self._workspace_id:
            headers["x-workspace-id"] = self._workspace_id
        if stream:
            headers["Accept"] = "text/event-stream"
        return _Exchange(
            self, method, path, params, json_body, headers, timeout, stream=stream
        )


class _Exchange:
    """One paced request: waits for the budget, sends, logs, and reads the headers."""

    def __init__(
        self,
        client: LaminaClient,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        *,
        stream: bool,
    ) -> None:
        self._client = client
        self._method = method
        self._path = path
        self._params = params
        self._json = json_body
        self._headers = headers
        self._timeout = timeout
        self._stream = stream
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self._client
        await client.budget.acquire()
        client.requests += 1
        started = time.monotonic()
        response = await client._session.request(
            self._method,
            client.base_url + self._path,
            params=self._params,
            json=self._json,
            headers=self._headers,
            timeout=self._timeout,
            allow_redirects=False,
        )
        self._response = response
        log.debug(
            "http.request %s %s status=%d ms=%d request_id=%s",
            self._method,
            self._path,
            response.status,
            (time.monotonic() - started) * 1000,
            response.headers.get("X-Request-Id", "-"),
        )
        client._learn_clock(response.headers.get("Date"))
        retry_after = client.budget.observe(response.status, response.headers)
        if response.status == 429:
            text = await response.text(errors="replace")
            response.release()
            error = api_error(429, text, response.headers, self._method, self._path)
            if isinstance(error, QuotaExhausted):
                raise error
            if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                # A wait this long is a quota, not a burst: stop and say so.
                raise QuotaExhausted(
                    f"{self._method} {self._path}: the API asks to wait "
                    f"{retry_after / 60:.0f} minutes (a quota is exhausted?); "
                    "re-run later to resume",
                    status=429,
                    code=error.code,
                    request_id=error.request_id,
                )
            raise _Retryable("429", retry_after, _rate_limited(response, retry_after))
        if self._stream and response.status >= 400:
            await _read_json(response, self._method, self._path)
        return response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.release()


class _Retryable(Exception):
    """Internal: an answer that proves the request had no effect (a 429)."""

    def __init__(self, reason: str, retry_after: float | None, error: ApiError) -> None:
        self.reason = reason
        self.retry_after = retry_after
        self._error = error

    def final(self) -> ApiError:
        return self._error


class _ServerError(Exception):
    """Internal: a 5xx answer; retryable for reads, uncertain for a run start."""

    def __init__(self, api_error: ApiError, retry_after: float | None) -> None:
        self.api_error = api_error
        self.status = api_error.status
        self.code = api_error.code
        self.retry_after = retry_after


def _rate_limited(
    response: aiohttp.ClientResponse, retry_after: float | None
) -> ApiError:
    wait = f" (the server asked for {retry_after:.0f} s)" if retry_after else ""
    return RateLimited(
        f"the API kept answering 429 Too Many Requests{wait}; "
        "lower --rate or try later",
        status=429,
        code="RATE_LIMITED",
        request_id=response.headers.get("X-Request-Id"),
        retryable=True,
    )


async def _read_json(
    response: aiohttp.ClientResponse, method: str, path: str
) -> dict[str, Any]:
    """The decoded success body, or the API's error as a batchrun error."""
    text = await response.text(errors="replace")
    if response.status < 400:
        try:
            body = json.loads(text)
        except ValueError:
            raise ApiError(
                f"{method} {path}: the API answered {response.status} with a body that "
                "is not JSON; is LAMINA_BASE_URL right?",
                status=response.status,
            ) from None
        if not isinstance(body, dict):
            raise ApiError(f"{method} {path}: unexpected answer {text[:80]!r}")
        return body

    error = api_error(response.status, text, response.headers, method, path)
    if response.status >= 500:
        raise _ServerError(
            error, parse_retry_after(response.headers.get("Retry-After"))
        )
    raise error


def api_error(
    status: int, text: str, headers: Mapping[str, str], method: str, path: str
) -> ApiError:
    """An ApiError from an error answer, whichever envelope the server used."""
    try:
        body = json.loads(text)
    except ValueError:
        body = {"error": text.strip()[:200] or f"HTTP {status}"}
    if not isinstance(body, dict):
        body = {"error": str(body)[:200]}
    code = str(body.get("code") or "")
    message = str(body.get("error") or body.get("message") or f"HTTP {status}")
    request_id = body.get("requestId") or headers.get("X-Request-Id")
    details = body.get("details") if isinstance(body.get("details"), list) else []
    hint = _HINTS.get(code) or _HINTS.get(str(status), "")
    text_out = f"{method} {path}: {status} {code or 'error'}: {message}"
    if hint:
        text_out += f"; {hint}"
    kind = QuotaExhausted if status == 402 or code in _QUOTA_CODES else ApiError
    return kind(
        text_out,
        status=status,
        code=code or None,
        request_id=request_id,
        details=details,
        retryable=bool(body.get("retryable", status >= 500)),
    )


_QUOTA_CODES = {"INSUFFICIENT_CREDITS", "QUOTA_EXCEEDED", "CREDITS_EXHAUSTED"}

_HINTS = {
    "AUTH_MISSING_KEY": "set LAMINA_API_KEY or pass --api-key",
    "AUTH_INVALID_KEY": "check LAMINA_API_KEY (the key is unknown or revoked)",
    "FORBIDDEN": "the key's workspace cannot use this app",
    "INSUFFICIENT_CREDITS": "add credits to the workspace, then re-run to resume",
    "401": "check LAMINA_API_KEY",
}
