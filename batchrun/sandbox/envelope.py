"""Lamina's response envelopes: `{"data": ...}` and the error body, with request ids."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

# code -> (HTTP status, retryable), as the contract's error table says.
ERROR_CODES: dict[str, tuple[int, bool]] = {
    "AUTH_MISSING_KEY": (401, False),
    "AUTH_INVALID_KEY": (401, False),
    "INSUFFICIENT_CREDITS": (402, False),
    "FORBIDDEN": (403, False),
    "NOT_FOUND": (404, False),
    "METHOD_NOT_ALLOWED": (405, False),
    "VALIDATION_ERROR": (400, False),
    "WEBHOOK_INVALID_URL": (400, False),
    "RATE_LIMITED": (429, True),
    "RESOURCE_UNAVAILABLE": (503, True),
    "INTERNAL_ERROR": (500, True),
}

REQUEST_ID = web.RequestKey("request_id", str)


class ApiFailure(Exception):
    """Raised inside a handler to answer with the error envelope."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def new_request_id() -> str:
    """A fresh id for X-Request-Id and the error body's requestId."""
    return str(uuid.uuid4())


def request_id(request: web.Request) -> str:
    """The id assigned to `request`, assigning one if no middleware did yet."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = new_request_id()
        request[REQUEST_ID] = rid
    return rid


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response, compact and with non-ASCII text kept readable."""
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/json",
        charset="utf-8",
    )


def error_response(
    request: web.Request, code: str, message: str, **extra: Any
) -> web.Response:
    """The documented error body for `code`; `extra` adds retryAfter or details."""
    status, retryable = ERROR_CODES[code]
    body: dict[str, Any] = {
        "error": message,
        "code": code,
        "retryable": retryable,
        "requestId": request_id(request),
    }
    body.update(extra)
    return json_response(body, status=status)


def iso_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a Z, e.g. 2026-03-23T12:22:40.552Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso_time(text: str) -> datetime:
    """Parse an ISO-8601 time as clients send it (Z or an offset; naive means UTC)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def now_ms() -> datetime:
    """The current UTC time, truncated to milliseconds (the API's precision)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
