"""The sandbox's Lamina-compatible API: routes, auth, rate limit, faults, validation.

`build_api_app` makes the aiohttp application; `Sandbox` (batchrun.sandbox.service)
wires it to the run simulator, the storage host and the webhook sender. Every /v1
request passes, in order: request id -> rate limit (per presented key) -> auth ->
injected faults -> the handler. Admin routes under /_sandbox/ skip all of that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from batchrun.apps import App
from batchrun.sandbox.catalog import SandboxApp
from batchrun.sandbox.config import SandboxConfig
from batchrun.sandbox.envelope import (
    ApiFailure,
    error_response,
    iso_time,
    json_response,
    parse_iso_time,
    request_id,
)
from batchrun.sandbox.faults import Faults, FaultsError
from batchrun.sandbox.ratelimit import FixedWindowLimiter, Verdict
from batchrun.sandbox.resolver import InputProblem, is_http_url, resolve_inputs
from batchrun.sandbox.runs import (
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Run,
    RunSimulator,
    RunStore,
)
from batchrun.sandbox.stats import RunRecord, SandboxStats
from batchrun.sandbox.storage import MEDIA_TYPES, Storage
from batchrun.sandbox.webhooks import WebhookSigner

if TYPE_CHECKING:
    from batchrun.sandbox.state import StateDir

logger = logging.getLogger(__name__)

SSE_PING_SECONDS = 15.0
SSE_TIMEOUT_SECONDS = 600.0
WAIT_DEFAULT, WAIT_MIN, WAIT_MAX = 60.0, 1.0, 120.0
LIST_DEFAULT, LIST_MAX = 25, 100
MAX_UPLOAD_FILES = 50

RATE_VERDICT = web.RequestKey("rate_verdict", Verdict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Account:
    """The credit balance of the sandbox's one workspace (None: unlimited)."""

    balance: int | None
    used: int = 0

    def can_afford(self, cost: int) -> bool:
        """Whether a run costing `cost` may start."""
        return self.balance is None or self.balance >= cost

    def charge(self, cost: int) -> None:
        """Spend `cost` credits on a run that was just created."""
        self.used += cost
        if self.balance is not None:
            self.balance -= cost


@dataclass
class ApiContext:
    """Everything the API handlers read and change."""

    config: SandboxConfig
    api_key: str
    workspace_id: str
    apps: dict[str, SandboxApp]
    store: RunStore
    simulator: RunSimulator
    storage: Storage
    signer: WebhookSigner
    stats: SandboxStats
    faults: Callable[[], Faults]
    limiter: FixedWindowLimiter
    account: Account
    rng: random.Random = field(default_factory=random.Random)
    state: StateDir | None = None  # journals new runs' records and credits
    # Set when the sandbox stops, so long-polls answer and streams end at once.
    closing: asyncio.Event = field(default_factory=asyncio.Event)


def build_api_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application serving /v1 and the /_sandbox admin routes."""
    api = _Api(ctx)
    app = web.Application(middlewares=[api.middleware])
    app.on_response_prepare.append(api.add_headers)
    routes = [
        ("GET", "/v1/apps", api.list_apps, "list_apps"),
        ("GET", "/v1/apps/{app_id}", api.get_app, "get_app"),
        ("POST", "/v1/apps/{app_id}/runs", api.create_run, "create_run"),
        ("GET", "/v1/runs", api.list_runs, "list_runs"),
        ("GET", "/v1/runs/{run_id}", api.get_run, "get_run"),
        ("GET", "/v1/runs/{run_id}/wait", api.wait_run, "wait_run"),
        ("GET", "/v1/runs/{run_id}/stream", api.stream_run, "stream_run"),
        ("GET", "/v1/webhooks/signing-key", api.signing_key, "signing_key"),
        ("GET", "/v1/account/usage", api.usage, "usage"),
        ("POST", "/v1/assets/upload-urls", api.upload_urls, "upload_urls"),
        ("GET", "/_sandbox/stats", api.admin_stats, "admin_stats"),
        ("POST", "/_sandbox/stats/reset", api.admin_reset, "admin_reset"),
        ("GET", "/_sandbox/faults", api.admin_faults, "admin_faults"),
        ("POST", "/_sandbox/faults", api.admin_set_faults, "admin_set_faults"),
        ("POST", "/_sandbox/runs/{run_id}/cancel", api.admin_cancel, "admin_cancel"),
    ]
    for method, path, handler, name in routes:
        app.router.add_route(method, path, handler, name=name)
    return app


def route_name(request: web.Request) -> str:
    """The stats name of the route `request` matched ("unknown" for none)."""
    name = request.match_info.route.name
    return name or "unknown"


def presented_key(request: web.Request) -> str | None:
    """The API key the client sent, from x-api-key or Authorization: Bearer."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class _Api:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    # -- the request pipeline -------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        request_id(request)
        started = time.monotonic()
        try:
            if request.path.startswith("/v1/"):
                response = await self._v1(request, handler)
            else:
                response = await handler(request)  # admin routes, or a 404
        except ApiFailure as failure:
            response = error_response(
                request, failure.code, failure.message, **failure.extra
            )
        except web.HTTPMethodNotAllowed:
            response = error_response(
                request,
                "METHOD_NOT_ALLOWED",
                f"{request.method} is not allowed on {request.path}",
            )
        except web.HTTPNotFound:
            response = error_response(
                request, "NOT_FOUND", f"no route {request.method} {request.path}"
            )
        except web.HTTPException as exc:
            # e.g. 413 for an oversized body: still answered in the envelope.
            code = "VALIDATION_ERROR" if exc.status < 500 else "INTERNAL_ERROR"
            response = error_response(request, code, exc.reason, details=[])
            response.set_status(exc.status)
        except Exception:
            # The envelope holds even for a sandbox bug; the traceback goes to the log.
            logger.exception(
                "sandbox.api.crash method=%s path=%s", request.method, request.path
            )
            response = error_response(
                request, "INTERNAL_ERROR", "sandbox internal error"
            )

        logger.debug(
            "sandbox.api.request method=%s path=%s status=%s ms=%.1f",
            request.method,
            request.path,
            response.status,
            (time.monotonic() - started) * 1000,
        )
        return response

    async def _v1(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = self.ctx
        route = route_name(request)
        ctx.stats.requests[route] += 1

        key = presented_key(request)
        verdict = ctx.limiter.hit(key or f"anonymous:{request.remote}")
        request[RATE_VERDICT] = verdict
        if not verdict.allowed:
            ctx.stats.rate_limited += 1
            retry_after = verdict.reset_header
            response = error_response(
                request,
                "RATE_LIMITED",
                f"Rate limit of {verdict.limit} requests per window exceeded; "
                f"retry in {retry_after} s",
                retryAfter=retry_after,
            )
            response.headers["Retry-After"] = str(retry_after)
            return response

        self._authenticate(request, key)
        faults = ctx.faults()
        if faults.delay > 0:
            ctx.stats.faults_injected["delay"] += 1
            await asyncio.sleep(faults.delay)
        if faults.trip("drop", ctx.rng, route):
            ctx.stats.faults_injected["drop"] += 1
            return _hang_up(request)
        if faults.trip("error", ctx.rng, route):
            ctx.stats.faults_injected["error"] += 1
            return error_response(
                request, "INTERNAL_ERROR", "Injected internal error (sandbox fault)"
            )
        return await handler(request)

    def _authenticate(self, request: web.Request, key: str | None) -> None:
        if key is None:
            raise ApiFailure(
                "AUTH_MISSING_KEY",
                "No API key: send x-api-key or Authorization: Bearer",
            )
        if key != self.ctx.api_key:
            raise ApiFailure("AUTH_INVALID_KEY", "Unknown or revoked API key")
        workspace = request.headers.get("x-workspace-id")
        if workspace is not None and workspace != self.ctx.workspace_id:
            raise ApiFailure(
                "FORBIDDEN", f"The key does not belong to workspace {workspace!r}"
            )

    async def add_headers(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        """Every response: X-Request-Id; every /v1 response: the RateLimit-* trio."""
        response.headers["X-Request-Id"] = request_id(request)
        verdict = request.get(RATE_VERDICT)
        if verdict is not None:
            response.headers.update(verdict.headers())

    # -- apps -----------------------------------------------------------------------

    async def list_apps(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("search", "").strip().lower()
        limit = _int_param(request, "limit", default=None, low=1, high=None)

        apps = [
            app
            for app in self.ctx.apps.values()
            if not search
            or search in app.name.lower()
            or search in str(app.app.get("description", "")).lower()
        ]
        if limit is not None:
            apps = apps[:limit]
        return json_response({"data": [app.summary() for app in apps]})

    async def get_app(self, request: web.Request) -> web.StreamResponse:
        app = self._app(request.match_info["app_id"])
        return json_response({"data": app.app})

    def _app(self, app_id: str) -> SandboxApp:
        app = self.ctx.apps.get(app_id)
        if app is None:
            raise ApiFailure("NOT_FOUND", f"App {app_id} not found")
        return app

    # -- runs -----------------------------------------------------------------------

    async def create_run(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        app = self._app(request.match_info["app_id"])
        webhook = request.query.get("webhook")
        if webhook is not None and not is_http_url(webhook):
            raise ApiFailure(
                "WEBHOOK_INVALID_URL", f"Webhook URL must be http(s), got {webhook!r}"
            )
        inputs = await _inputs_of(request)
        resolved, problems = resolve_inputs(App.from_api(app.app), inputs)
        if problems:
            raise _validation_failure(f"Invalid inputs for {app.name}", problems)
        if not ctx.account.can_afford(ctx.config.credit_cost):
            return error_response(
                request,
                "INSUFFICIENT_CREDITS",
                f"Not enough credits: a run costs {ctx.config.credit_cost}, "
                f"the balance is {ctx.account.balance}",
            )

        run = ctx.store.create(app, resolved, webhook)
        ctx.account.charge(ctx.config.credit_cost)
        record = RunRecord(run.run_id, app.app_id, inputs, iso_time(run.created_at))
        ctx.stats.runs.append(record)
        if ctx.state is not None:
            ctx.state.record_created(record, ctx.account.balance, ctx.account.used)
        ctx.simulator.start(run)
        logger.info("sandbox.run.created run=%s app=%s", run.run_id, app.name)
        if ctx.faults().trip("lost_response", ctx.rng, "create_run"):
            # The run exists and will proceed; only the 202 is lost on the way.
            ctx.stats.faults_injected["lost_response"] += 1
            return _hang_up(request)
        return json_response({"data": run.to_created()}, status=202)

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request.match_info["run_id"])
        return json_response({"data": run.to_api()})

    def _run(self, run_id: str) -> Run:
        run = self.ctx.store.get(run_id)
        if run is None:
            raise ApiFailure("NOT_FOUND", f"Run {run_id} not found")
        return run

    async def wait_run(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request.match_info["run_id"])
        seconds = _float_param(request, "timeout", WAIT_DEFAULT, WAIT_MIN, WAIT_MAX)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.config.scaled(seconds)
        while not run.terminal and not self.ctx.closing.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await run.changed_since(run.version, remaining)
        return json_response({"data": run.to_api(), "timeout": not run.terminal})

    async def stream_run(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request.match_info["run_id"])
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
            }
        )
        queue = run.subscribe()
        try:
            await response.prepare(request)
            await self._stream(response, run, queue)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            logger.debug("sandbox.sse.client_gone run=%s", run.run_id)
        finally:
            run.unsubscribe(queue)
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        run: Run,
        queue: asyncio.Queue[dict[str, Any] | None],
    ) -> None:
        config = self.ctx.config
        if run.terminal:
            await self._event(response, _final_event(run.status), run.to_api())
            return
        await self._event(response, "progress", run.to_api())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.scaled(SSE_TIMEOUT_SECONDS)
        next_ping = loop.time() + config.scaled(SSE_PING_SECONDS)
        while True:
            now = loop.time()
            if now >= deadline:
                await self._event(
                    response, "timeout", {"message": "Stream timeout after 10 minutes"}
                )
                return
            if now >= next_ping:
                await self._event(response, "ping", int(time.time() * 1000))
                next_ping += config.scaled(SSE_PING_SECONDS)
                continue
            try:
                snapshot = await asyncio.wait_for(
                    queue.get(), min(deadline, next_ping) - now
                )
            except TimeoutError:
                continue
            if snapshot is None:
                return  # the sandbox is stopping
            if snapshot["status"] in TERMINAL_STATUSES:
                await self._event(response, _final_event(snapshot["status"]), snapshot)
                return
            await self._event(response, "progress", snapshot)

    async def _event(self, response: web.StreamResponse, name: str, data: Any) -> None:
        """Write one SSE event, framed as the live faults say (chunks, CRLF, notes)."""
        faults = self.ctx.faults()
        lines = [f"event: {name}", f"data: {json.dumps(data, ensure_ascii=False)}"]
        if faults.sse_comments:
            lines = [": sandbox comment", lines[0], ": keep reading", lines[1]]
        eol = "\r\n" if faults.sse_crlf else "\n"
        payload = (eol.join(lines) + eol + eol).encode()

        size = faults.sse_chunk_size
        if not size:
            await response.write(payload)
            return
        for start in range(0, len(payload), size):
            await response.write(payload[start : start + size])
            # Yield so each chunk leaves as its own write, splitting lines and even
            # UTF-8 sequences across reads on the client side.
            await asyncio.sleep(0)

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        status = request.query.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            raise _validation_failure(
                "Invalid status filter",
                [
                    InputProblem(
                        "status",
                        "invalid_value",
                        f"status must be one of {', '.join(RUN_STATUSES)}",
                    )
                ],
            )
        app_id = request.query.get("appId") or None
        limit = _int_param(request, "limit", default=LIST_DEFAULT, low=1, high=LIST_MAX)
        offset = _int_param(request, "offset", default=0, low=0, high=None)
        since = _since_param(request)

        runs, total = self.ctx.store.query(
            status=status, app_id=app_id, since=since, limit=limit, offset=offset
        )
        return json_response(
            {
                "data": [run.to_summary() for run in runs],
                "pagination": {"total": total, "limit": limit, "offset": offset},
            }
        )

    # -- keys, account, uploads -----------------------------------------------------

    async def signing_key(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.ctx.signer.jwks())

    async def usage(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        return json_response(
            {
                "data": {
                    "credits": {
                        "balance": ctx.account.balance,
                        "used": ctx.account.used,
                    },
                    "rateLimit": {
                        "limit": ctx.limiter.limit,
                        "windowMs": round(ctx.limiter.window * 1000),
                    },
                }
            }
        )

    async def upload_urls(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list) or not files or len(files) > MAX_UPLOAD_FILES:
            raise _validation_failure(
                "Invalid upload request",
                [
                    InputProblem(
                        "files",
                        "invalid_value",
                        f"files must be a list of 1..{MAX_UPLOAD_FILES} objects",
                    )
                ],
            )
        problems: list[InputProblem] = []
        for index, entry in enumerate(files):
            where = f"files[{index}]"
            if not isinstance(entry, dict):
                problems.append(
                    InputProblem(where, "invalid_value", "expected an object")
                )
                continue
            filename = entry.get("filename")
            if not isinstance(filename, str) or not filename.strip():
                problems.append(
                    InputProblem(
                        f"{where}.filename",
                        "invalid_value",
                        "filename must be a non-empty string",
                    )
                )
            if entry.get("mediaType") not in MEDIA_TYPES:
                problems.append(
                    InputProblem(
                        f"{where}.mediaType",
                        "invalid_value",
                        f"mediaType must be one of {', '.join(MEDIA_TYPES)}",
                    )
                )
        if problems:
            raise _validation_failure("Invalid upload request", problems)

        uploads = [
            self.ctx.storage.presign_upload(entry["filename"], entry["mediaType"])
            for entry in files
        ]
        return json_response({"data": {"uploads": uploads}})

    # -- admin (no key, no rate limit, no faults) -----------------------------------

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.ctx.stats.to_dict())

    async def admin_reset(self, request: web.Request) -> web.StreamResponse:
        self.ctx.stats.reset()
        return json_response(self.ctx.stats.to_dict())

    async def admin_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.ctx.faults().to_dict())

    async def admin_set_faults(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _validation_failure("Faults must be a JSON object", [])
        faults = self.ctx.faults()
        try:
            faults.update(body)
        except FaultsError as exc:
            raise _validation_failure(str(exc), []) from None
        logger.info("sandbox.faults.changed %s", body)
        return json_response(faults.to_dict())

    async def admin_cancel(self, request: web.Request) -> web.StreamResponse:
        run = self._run(request.match_info["run_id"])
        self.ctx.simulator.cancel(run)
        return json_response({"data": run.to_api()})


def _final_event(status: str) -> str:
    return "complete" if status == "completed" else "error"


def _hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection with nothing written (the response returned is not sent)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def _validation_failure(message: str, problems: list[InputProblem]) -> ApiFailure:
    return ApiFailure(
        "VALIDATION_ERROR", message, details=[p.to_api() for p in problems]
    )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _validation_failure(
            "Request body is not valid JSON",
            [InputProblem("body", "invalid_json", "send a JSON object")],
        ) from None


async def _inputs_of(request: web.Request) -> dict[str, Any]:
    body = await _json_body(request)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, dict):
        raise _validation_failure(
            'Request body must be {"inputs": {...}}',
            [
                InputProblem(
                    "inputs", "invalid_body", 'send {"inputs": {<name>: <value>}}'
                )
            ],
        )
    return inputs


def _int_param(
    request: web.Request, name: str, *, default: int | None, low: int, high: int | None
) -> Any:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise _validation_failure(
            f"Invalid {name}",
            [
                InputProblem(
                    name,
                    "invalid_value",
                    f"{name} must be a whole number {bounds}, got {text!r}",
                )
            ],
        )
    return value


def _float_param(
    request: web.Request, name: str, default: float, low: float, high: float
) -> float:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise _validation_failure(
            f"Invalid {name}",
            [
                InputProblem(
                    name,
                    "invalid_value",
                    f"{name} must be seconds in {low:g}..{high:g}, got {text!r}",
                )
            ],
        )
    return value


def _since_param(request: web.Request) -> datetime | None:
    text = request.query.get("since")
    if not text:
        return None
    try:
        return parse_iso_time(text)
    except ValueError:
        raise _validation_failure(
            "Invalid since",
            [
                InputProblem(
                    "since",
                    "invalid_value",
                    f"since must be an ISO-8601 time, got {text!r}",
                )
            ],
        ) from None
