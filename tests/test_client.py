"""The HTTP client against scripted servers: envelopes, retries, uncertainty."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from batchrun.client import LaminaClient
from batchrun.errors import (
    ApiError,
    QuotaExhausted,
    RateLimited,
    SubmissionUncertain,
    TransportError,
)
from batchrun.limits import RequestBudget
from batchrun.retries import RetryPolicy
from tests.conftest import FakeTime

KEY = "lma_test_secret_key_0123456789"
APP_ID = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"


def make_client(
    url: str, session: aiohttp.ClientSession, retries: int = 3
) -> LaminaClient:
    clock = FakeTime()
    return LaminaClient(
        url,
        KEY,
        session=session,
        budget=RequestBudget(60_000, clock=clock.clock, sleep=clock.sleep),
        retry=RetryPolicy(retries=retries, jitter=lambda: 0.0),
        sleep=clock.sleep,
    )


def run_body(run_id: str = "r1", status: str = "queued", key: str = "runId") -> dict:
    return {
        "data": {key: run_id, "workflowId": APP_ID, "status": status, "outputs": []}
    }


async def test_sends_the_key_as_x_api_key(serve, http):
    app = web.Application()
    app.router.add_get("/v1/runs/{id}", lambda r: web.json_response(run_body()))
    server = await serve(app)

    await make_client(server.url, http).get_run("r1")

    assert server.requests[0].headers["x-api-key"] == KEY


async def test_accepts_execution_id_for_run_id(serve, http):
    app = web.Application()
    app.router.add_get(
        "/v1/runs/{id}", lambda r: web.json_response(run_body("e1", key="executionId"))
    )
    server = await serve(app)

    run = await make_client(server.url, http).get_run("e1")

    assert run["runId"] == "e1"


async def test_retries_a_429_after_retry_after_then_succeeds(serve, http):
    answers = [
        web.json_response(
            {"error": "slow down", "code": "RATE_LIMITED", "retryable": True},
            status=429,
            headers={"Retry-After": "2"},
        ),
        web.json_response(run_body()),
    ]
    app = web.Application()
    app.router.add_get("/v1/runs/{id}", lambda r: answers.pop(0))
    server = await serve(app)
    client = make_client(server.url, http)

    run = await client.get_run("r1")

    assert run["runId"] == "r1"
    assert client.budget.rate_limited == 1
    assert len(server.requests) == 2


async def test_a_plain_text_429_from_an_old_server_is_understood(serve, http):
    app = web.Application()
    app.router.add_get(
        "/v1/runs/{id}", lambda r: web.Response(text="Too Many Requests", status=429)
    )
    server = await serve(app)

    with pytest.raises(RateLimited, match="429"):
        await make_client(server.url, http, retries=1).get_run("r1")

    assert len(server.requests) == 2


async def test_retries_a_500_on_reads(serve, http):
    answers = [
        web.json_response({"error": "boom", "code": "INTERNAL_ERROR"}, status=500),
        web.json_response(run_body()),
    ]
    app = web.Application()
    app.router.add_get("/v1/runs/{id}", lambda r: answers.pop(0))
    server = await serve(app)

    run = await make_client(server.url, http).get_run("r1")

    assert run["status"] == "queued"
    assert len(server.requests) == 2


async def test_a_500_on_a_run_start_is_uncertain_and_not_resent(serve, http):
    app = web.Application()
    app.router.add_post(
        "/v1/apps/{id}/runs",
        lambda r: web.json_response(
            {"error": "boom", "code": "INTERNAL_ERROR"}, status=500
        ),
    )
    server = await serve(app)

    with pytest.raises(SubmissionUncertain, match="a run may have been created"):
        await make_client(server.url, http).create_run(APP_ID, {"Style": "Ghibli"})

    assert len(server.requests) == 1


async def test_a_dropped_connection_on_a_run_start_is_uncertain(serve, http):
    async def drop(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/apps/{id}/runs", drop)
    server = await serve(app)

    with pytest.raises(SubmissionUncertain):
        await make_client(server.url, http).create_run(APP_ID, {})

    assert len(server.requests) == 1


async def test_a_429_on_a_run_start_is_retried(serve, http):
    answers = [
        web.json_response(
            {"error": "x", "code": "RATE_LIMITED"},
            status=429,
            headers={"Retry-After": "1"},
        ),
        web.json_response(run_body("new"), status=202),
    ]
    app = web.Application()
    app.router.add_post("/v1/apps/{id}/runs", lambda r: answers.pop(0))
    server = await serve(app)

    run = await make_client(server.url, http).create_run(APP_ID, {})

    assert run["runId"] == "new"
    assert len(server.requests) == 2


async def test_validation_errors_carry_their_details(serve, http):
    details = [{"field": "Style", "code": "invalid_option", "message": "not an option"}]
    app = web.Application()
    app.router.add_post(
        "/v1/apps/{id}/runs",
        lambda r: web.json_response(
            {
                "error": "Invalid inputs",
                "code": "VALIDATION_ERROR",
                "retryable": False,
                "requestId": "req-1",
                "details": details,
            },
            status=400,
        ),
    )
    server = await serve(app)

    with pytest.raises(ApiError) as caught:
        await make_client(server.url, http).create_run(APP_ID, {"Style": "Pixar"})

    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details == details
    assert caught.value.request_id == "req-1"


async def test_an_invalid_key_says_what_to_check_without_the_key(serve, http):
    app = web.Application()
    app.router.add_get(
        "/v1/apps/{id}",
        lambda r: web.json_response(
            {
                "error": "Invalid API key " + r.headers["x-api-key"],
                "code": "AUTH_INVALID_KEY",
            },
            status=401,
        ),
    )
    server = await serve(app)
    client = make_client(server.url, http)

    with pytest.raises(ApiError) as caught:
        await client.get_app(APP_ID)

    assert "LAMINA_API_KEY" in str(caught.value)
    assert KEY not in repr(client)


async def test_insufficient_credits_is_a_quota_error(serve, http):
    app = web.Application()
    app.router.add_post(
        "/v1/apps/{id}/runs",
        lambda r: web.json_response(
            {"error": "No credits", "code": "INSUFFICIENT_CREDITS", "retryable": False},
            status=402,
        ),
    )
    server = await serve(app)

    with pytest.raises(QuotaExhausted, match="add credits"):
        await make_client(server.url, http).create_run(APP_ID, {})


async def test_an_unreachable_api_is_a_transport_error(http):
    client = make_client("http://127.0.0.1:9", http, retries=1)

    with pytest.raises(TransportError, match="cannot connect"):
        await client.get_run("r1")


async def test_list_runs_passes_filters_and_reads_pagination(serve, http):
    async def listing(request: web.Request) -> web.Response:
        body = {
            "data": [{"runId": "a", "status": "completed"}],
            "pagination": {"total": 1, "limit": 100, "offset": 0},
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/runs", listing)
    server = await serve(app)

    runs, page = await make_client(server.url, http).list_runs(
        app_id=APP_ID, since="2026-01-01T00:00:00.000Z"
    )

    query = server.requests[0].query
    assert query["appId"] == APP_ID
    assert query["since"] == "2026-01-01T00:00:00.000Z"
    assert query["limit"] == "100"
    assert runs[0]["runId"] == "a"
    assert page["total"] == 1


async def test_a_body_that_is_not_json_names_the_base_url(serve, http):
    app = web.Application()
    app.router.add_get("/v1/runs/{id}", lambda r: web.Response(text="<html>hi</html>"))
    server = await serve(app)

    with pytest.raises(ApiError, match="LAMINA_BASE_URL"):
        await make_client(server.url, http).get_run("r1")


async def test_a_quota_429_stops_instead_of_waiting_for_hours(serve, http):
    app = web.Application()
    app.router.add_post(
        "/v1/apps/{id}/runs",
        lambda r: web.json_response(
            {"error": "Daily quota reached", "code": "RATE_LIMITED"},
            status=429,
            headers={"Retry-After": "36000"},
        ),
    )
    server = await serve(app)

    with pytest.raises(QuotaExhausted, match="wait 600 minutes"):
        await make_client(server.url, http).create_run(APP_ID, {})

    assert len(server.requests) == 1


async def test_a_429_with_a_quota_code_is_a_quota_error(serve, http):
    app = web.Application()
    app.router.add_post(
        "/v1/apps/{id}/runs",
        lambda r: web.json_response(
            {"error": "Out of credits", "code": "INSUFFICIENT_CREDITS"}, status=429
        ),
    )
    server = await serve(app)

    with pytest.raises(QuotaExhausted):
        await make_client(server.url, http).create_run(APP_ID, {})
