"""The sandbox's /v1 API over real HTTP: shapes from lamina-api.md, auth, validation."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from batchrun.sandbox import Sandbox, SandboxConfig

CARTOONIFY_ID = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
CATALOG_ID = "67b50933-5ef8-4092-a481-b172df24e498"  # Product Catalog: all defaults
COPYWRITER_ID = "dd782e43-4e2b-421a-96e8-d3be2ba51d2c"
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NODE_ID = re.compile(r"^[a-z][A-Za-z0-9]*Node-\d{13}-[0-9a-z]{9}$")

# Pasted from lamina-api.md, "Documented example app".
CARTOONIFY_DOC = {
    "appId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587",
    "name": "Cartoonify!",
    "description": "Just upload your photo and convert it into an Cartoon of your "
    "favorite style!",
    "parameters": [
        {
            "id": "4a45d4c6-808e-45e8-9f7c-6a06953583fb",
            "name": "Upload",
            "type": "url",
            "required": False,
            "accept": ["image"],
            "default": "https://media.getmason.io/api/assetlib/"
            "55e99714-d15d-43fe-9e9b-ead418b7ba67.png",
        },
        {
            "id": "1977e11b-d91b-4f65-802c-b37b597fa8d9",
            "name": "Style",
            "type": "options",
            "required": False,
            "options": ["Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk"],
        },
        {
            "id": "5c237908-e6ed-4d4b-bd1d-6253bf60a8a5",
            "name": "Aspect Ratio",
            "type": "options",
            "required": False,
            "options": ["1:1", "4:3", "3:4", "16:9", "9:16"],
            "default": "1:1",
        },
    ],
}
# The documented 202 of run start, to compare shapes (its values are another app's).
CREATED_DOC = {
    "runId": "fc32ae7d-6840-4be3-8fb1-539a60e33fc3",
    "workflowId": "80d4d454-8844-489f-b903-2ad65a414482",
    "workflowName": "test sync",
    "status": "queued",
    "webhookUrl": None,
    "outputs": [
        {
            "id": "aiDesignerNode-1773051929782-5yzqjkwpm",
            "label": "AI Designer",
            "type": "pending",
            "value": None,
            "status": "pending",
            "error": None,
        }
    ],
}
RUN_FIELDS = {
    "runId",
    "workflowId",
    "status",
    "outputs",
    "errorMessage",
    "startedAt",
    "completedAt",
    "createdAt",
}
SUMMARY_FIELDS = RUN_FIELDS - {"outputs"} | {"source"}
ERROR_FIELDS = {"error", "code", "retryable", "requestId"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.06))
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"x-api-key": sandbox.api_key}
    async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as session:
        yield session


async def start_run(
    http: aiohttp.ClientSession, app_id: str, inputs: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"/v1/apps/{app_id}/runs", json={"inputs": inputs}) as r:
        assert r.status == 202, await r.text()
        return (await r.json())["data"]


def assert_error(body: dict[str, Any], code: str, retryable: bool = False) -> None:
    assert set(body) >= ERROR_FIELDS
    assert body["code"] == code
    assert body["retryable"] is retryable
    assert isinstance(body["error"], str) and body["error"]


# -- the documented payloads, field for field ---------------------------------------


async def test_cartoonify_is_served_exactly_as_documented(http):
    async with http.get(f"/v1/apps/{CARTOONIFY_ID}") as response:
        body = await response.json()

    assert response.status == 200
    data = body["data"]
    assert {k: data[k] for k in CARTOONIFY_DOC} == CARTOONIFY_DOC


async def test_run_start_answers_202_with_the_documented_shape(http):
    async with http.post(
        f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": {"Style": "Ghibli"}}
    ) as response:
        body = await response.json()

    assert response.status == 202
    data = body["data"]
    assert set(body) == {"data"}
    assert set(data) == set(CREATED_DOC)
    assert UUID.match(data["runId"])
    assert data["workflowId"] == CARTOONIFY_ID
    assert data["workflowName"] == "Cartoonify!"
    assert data["status"] == "queued"
    assert data["webhookUrl"] is None
    [output] = data["outputs"]
    assert set(output) == set(CREATED_DOC["outputs"][0])
    assert NODE_ID.match(output["id"]), output["id"]
    assert output["id"].startswith("aiDesignerNode-")
    assert {k: v for k, v in output.items() if k != "id"} == {
        "label": "AI Designer",
        "type": "pending",
        "value": None,
        "status": "pending",
        "error": None,
    }


async def test_run_start_echoes_the_webhook_url(http):
    hook = "http://127.0.0.1:9/hook"

    async with http.post(
        f"/v1/apps/{CATALOG_ID}/runs", params={"webhook": hook}, json={"inputs": {}}
    ) as response:
        body = await response.json()

    assert response.status == 202
    assert body["data"]["webhookUrl"] == hook


async def test_get_run_has_exactly_the_documented_fields(http):
    run = await start_run(http, CATALOG_ID, {})

    async with http.get(f"/v1/runs/{run['runId']}") as response:
        body = await response.json()

    assert response.status == 200
    assert set(body["data"]) == RUN_FIELDS
    assert body["data"]["status"] in ("queued", "running")
    assert ISO_MS.match(body["data"]["createdAt"])
    assert body["data"]["errorMessage"] is None


async def test_error_envelope_carries_the_request_id_header(http):
    async with http.get("/v1/runs/00000000-0000-4000-8000-000000000000") as response:
        body = await response.json()

    assert response.status == 404
    assert set(body) == ERROR_FIELDS
    assert_error(body, "NOT_FOUND")
    assert body["requestId"] == response.headers["X-Request-Id"]


async def test_signing_key_is_a_jwks_with_one_ed25519_key(http):
    async with http.get("/v1/webhooks/signing-key") as response:
        body = await response.json()

    assert response.status == 200
    [key] = body["keys"]
    assert set(body) == {"keys"}
    assert {k: key[k] for k in ("kty", "crv", "kid", "use", "alg")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": "lamina-webhook-v1",
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "=" not in key["x"]
    assert len(base64.urlsafe_b64decode(key["x"] + "=")) == 32


async def test_usage_reports_credits_and_the_rate_limit(http):
    async with http.get("/v1/account/usage") as response:
        body = await response.json()

    assert response.status == 200
    assert body == {
        "data": {
            "credits": {"balance": None, "used": 0},
            "rateLimit": {"limit": 100, "windowMs": 60000},
        }
    }


async def test_list_runs_envelope_has_summaries_and_pagination(http):
    await start_run(http, CATALOG_ID, {})

    async with http.get("/v1/runs") as response:
        body = await response.json()

    assert response.status == 200
    assert set(body) == {"data", "pagination"}
    assert body["pagination"] == {"total": 1, "limit": 25, "offset": 0}
    [summary] = body["data"]
    assert set(summary) == SUMMARY_FIELDS
    assert summary["source"] == "api_app"


# -- auth and headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "AUTH_MISSING_KEY"),
        ({"x-api-key": "lma_wrong"}, 401, "AUTH_INVALID_KEY"),
        ({"Authorization": "Bearer lma_wrong"}, 401, "AUTH_INVALID_KEY"),
    ],
    ids=["no-key", "wrong-x-api-key", "wrong-bearer"],
)
async def test_requests_without_the_key_are_refused(sandbox, headers, status, code):
    async with (
        aiohttp.ClientSession(sandbox.base_url) as anonymous,
        anonymous.get("/v1/apps", headers=headers) as response,
    ):
        body = await response.json()

    assert response.status == status
    assert_error(body, code)


async def test_bearer_authorization_is_accepted(sandbox):
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}

    async with (
        aiohttp.ClientSession(sandbox.base_url) as session,
        session.get("/v1/apps", headers=headers) as response,
    ):
        pass

    assert response.status == 200


async def test_workspace_mismatch_is_forbidden_and_a_match_is_fine(sandbox, http):
    async with http.get("/v1/apps", headers={"x-workspace-id": "other"}) as response:
        body = await response.json()
    async with http.get(
        "/v1/apps", headers={"x-workspace-id": sandbox.workspace_id}
    ) as matching:
        pass

    assert response.status == 403
    assert_error(body, "FORBIDDEN")
    assert matching.status == 200


async def test_every_v1_response_has_request_id_and_rate_limit_headers(http):
    responses = []
    for method, path in [
        ("GET", "/v1/apps"),
        ("GET", "/v1/nowhere"),
        ("GET", "/v1/runs/missing"),
        ("POST", "/v1/apps/missing/runs"),
    ]:
        async with http.request(method, path, json={}) as response:
            responses.append(response)

    for response in responses:
        assert response.headers["X-Request-Id"]
        assert response.headers["RateLimit-Limit"] == "100"
        assert int(response.headers["RateLimit-Remaining"]) < 100
        assert int(response.headers["RateLimit-Reset"]) >= 1


async def test_unknown_routes_answer_404_in_the_envelope(http):
    async with http.get("/v1/no/such/route") as response:
        body = await response.json()

    assert response.status == 404
    assert_error(body, "NOT_FOUND")


async def test_paths_outside_v1_are_404_even_without_a_key(sandbox):
    async with (
        aiohttp.ClientSession(sandbox.base_url) as anonymous,
        anonymous.get("/") as response,
    ):
        body = await response.json()

    assert response.status == 404
    assert_error(body, "NOT_FOUND")
    assert body["requestId"] == response.headers["X-Request-Id"]


async def test_an_oversized_body_is_refused_in_the_envelope(http):
    huge = {"inputs": {"Product Name": "x" * 2_000_000}}

    async with http.post(f"/v1/apps/{CATALOG_ID}/runs", json=huge) as response:
        body = await response.json()

    assert response.status == 413
    assert_error(body, "VALIDATION_ERROR")


# -- apps ---------------------------------------------------------------------------


async def test_list_apps_searches_name_and_description_case_insensitively(http):
    async with http.get("/v1/apps", params={"search": "CARTOON"}) as by_name:
        names = [a["name"] for a in (await by_name.json())["data"]]
    async with http.get("/v1/apps", params={"search": "favorite style"}) as by_text:
        described = [a["name"] for a in (await by_text.json())["data"]]

    assert names == ["Cartoonify!"]
    assert described == ["Cartoonify!"]


async def test_list_apps_items_have_no_parameters_and_honour_limit(http):
    async with http.get("/v1/apps", params={"limit": "2"}) as response:
        body = await response.json()

    assert len(body["data"]) == 2
    for item in body["data"]:
        assert {"appId", "name", "description", "isPublic"} <= set(item)
        assert "parameters" not in item


async def test_unknown_app_is_404(http):
    async with http.get("/v1/apps/00000000-0000-4000-8000-000000000000") as response:
        body = await response.json()

    assert response.status == 404
    assert_error(body, "NOT_FOUND")


# -- input validation -------------------------------------------------------------


async def test_validation_reports_every_problem_with_its_code(http):
    inputs = {"Stlye": "Ghibli", "Aspect Ratio": "2:1", "Upload": "ftp://x/y.png"}

    async with http.post(
        f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": inputs}
    ) as response:
        body = await response.json()

    assert response.status == 400
    assert_error(body, "VALIDATION_ERROR")
    found = {(d["field"], d["code"]) for d in body["details"]}
    assert found == {
        ("Stlye", "unknown_parameter"),
        ("Style", "missing_no_default"),
        ("Aspect Ratio", "invalid_option"),
        ("Upload", "invalid_media"),
    }
    assert all(set(d) == {"field", "code", "message"} for d in body["details"])


async def test_text_inputs_must_be_strings(http):
    async with http.post(
        f"/v1/apps/{COPYWRITER_ID}/runs", json={"inputs": {"Product": 42}}
    ) as response:
        body = await response.json()

    assert response.status == 400
    assert body["details"] == [
        {
            "field": "Product",
            "code": "invalid_type",
            "message": "'Product' expects a string, got int",
        }
    ]


async def test_options_match_labels_exactly_and_suggest_the_right_one(http):
    async with http.post(
        f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": {"Style": "Pixar"}}
    ) as response:
        body = await response.json()

    [detail] = body["details"]
    assert detail["code"] == "invalid_option"
    assert "did you mean 'Disney / Pixar'?" in detail["message"]


async def test_names_with_odd_spacing_are_matched_exactly(http):
    app_id = "173692dd-0258-41bd-8a56-2cf9bbe89910"
    good = {
        "Model Gender": "Female",
        "Model  Ethnicity": "Asian",
        "Model Body type": "Standard ",
        "Model Hair color": "Black",
        "Model Hair Style": "Straight ",
    }
    bad = {**good, "Model Body type": "Standard"}
    bad["Model Ethnicity"] = bad.pop("Model  Ethnicity")

    async with http.post(f"/v1/apps/{app_id}/runs", json={"inputs": good}) as ok:
        pass
    async with http.post(f"/v1/apps/{app_id}/runs", json={"inputs": bad}) as refused:
        body = await refused.json()

    assert ok.status == 202
    assert refused.status == 400
    assert {(d["field"], d["code"]) for d in body["details"]} == {
        ("Model Ethnicity", "unknown_parameter"),
        ("Model  Ethnicity", "missing_no_default"),
        ("Model Body type", "invalid_option"),
    }


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"input": {}}', b'{"inputs": ["Style"]}'],
    ids=["not-json", "a-list", "no-inputs", "inputs-not-object"],
)
async def test_malformed_bodies_are_validation_errors(http, body):
    async with http.post(
        f"/v1/apps/{CATALOG_ID}/runs",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as response:
        answer = await response.json()

    assert response.status == 400
    assert_error(answer, "VALIDATION_ERROR")
    assert isinstance(answer["details"], list)


@pytest.mark.parametrize(
    "hook", ["ftp://example/hook", "not a url", "http://", ""], ids=str
)
async def test_bad_webhook_urls_are_refused(http, hook):
    async with http.post(
        f"/v1/apps/{CATALOG_ID}/runs", params={"webhook": hook}, json={"inputs": {}}
    ) as response:
        body = await response.json()

    assert response.status == 400
    assert_error(body, "WEBHOOK_INVALID_URL")


async def test_refused_runs_create_nothing(sandbox, http):
    async with http.post(f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": {}}):
        pass

    assert sandbox.stats.runs == []


# -- credits ------------------------------------------------------------------------


async def test_runs_beyond_the_credit_balance_get_402():
    config = SandboxConfig(credits=2, credit_cost=1, queue_seconds=0.01)
    async with Sandbox(config) as sandbox:
        headers = {"x-api-key": sandbox.api_key}
        async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as http:
            statuses = []
            for _ in range(3):
                async with http.post(
                    f"/v1/apps/{CATALOG_ID}/runs", json={"inputs": {}}
                ) as response:
                    statuses.append(response.status)
                    last = await response.json()
            async with http.get("/v1/account/usage") as usage:
                credits = (await usage.json())["data"]["credits"]

    assert statuses == [202, 202, 402]
    assert_error(last, "INSUFFICIENT_CREDITS")
    assert credits == {"balance": 0, "used": 2}
    assert len(sandbox.stats.runs) == 2


# -- list runs --------------------------------------------------------------------


async def test_list_runs_filters_pages_and_is_newest_first(http):
    first = await start_run(http, CATALOG_ID, {})
    second = await start_run(http, COPYWRITER_ID, {"Product": "Mug"})
    third = await start_run(http, CATALOG_ID, {})

    async with http.get("/v1/runs") as everything:
        ids = [r["runId"] for r in (await everything.json())["data"]]
    async with http.get("/v1/runs", params={"appId": CATALOG_ID}) as by_app:
        app_body = await by_app.json()
    async with http.get("/v1/runs", params={"limit": "1", "offset": "1"}) as page:
        page_body = await page.json()

    assert ids == [third["runId"], second["runId"], first["runId"]]
    assert [r["runId"] for r in app_body["data"]] == [third["runId"], first["runId"]]
    assert app_body["pagination"]["total"] == 2
    assert [r["runId"] for r in page_body["data"]] == [second["runId"]]
    assert page_body["pagination"] == {"total": 3, "limit": 1, "offset": 1}


async def test_list_runs_since_is_exclusive(http):
    first = await start_run(http, CATALOG_ID, {})
    async with http.get(f"/v1/runs/{first['runId']}") as response:
        created = (await response.json())["data"]["createdAt"]
    while True:  # the next run must land in a later millisecond
        second = await start_run(http, CATALOG_ID, {})
        async with http.get(f"/v1/runs/{second['runId']}") as response:
            if (await response.json())["data"]["createdAt"] != created:
                break

    async with http.get("/v1/runs", params={"since": created}) as response:
        body = await response.json()

    assert first["runId"] not in [r["runId"] for r in body["data"]]
    assert second["runId"] in [r["runId"] for r in body["data"]]


async def test_list_runs_filters_by_status(sandbox, http):
    run = await start_run(http, CATALOG_ID, {})
    async with http.get(f"/v1/runs/{run['runId']}/wait", params={"timeout": "5"}):
        pass
    await start_run(http, CATALOG_ID, {})

    async with http.get("/v1/runs", params={"status": "completed"}) as response:
        body = await response.json()

    assert [r["runId"] for r in body["data"]] == [run["runId"]]
    assert body["pagination"]["total"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "101"},
        {"limit": "0"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"since": "yesterday"},
        {"status": "done"},
    ],
    ids=["limit-101", "limit-0", "limit-text", "offset-negative", "since", "status"],
)
async def test_list_runs_rejects_bad_parameters(http, params):
    async with http.get("/v1/runs", params=params) as response:
        body = await response.json()

    assert response.status == 400
    assert_error(body, "VALIDATION_ERROR")


async def test_list_runs_accepts_limit_100(http):
    async with http.get("/v1/runs", params={"limit": "100"}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["pagination"]["limit"] == 100


# -- stats --------------------------------------------------------------------------


async def test_stats_count_requests_by_route_and_record_runs(sandbox, http):
    run = await start_run(http, CATALOG_ID, {})
    async with http.get(f"/v1/runs/{run['runId']}"):
        pass
    async with http.get("/v1/apps"):
        pass

    stats = sandbox.stats

    assert stats.requests == {"create_run": 1, "get_run": 1, "list_apps": 1}
    [record] = stats.runs
    assert (record.run_id, record.app_id, record.inputs) == (
        run["runId"],
        CATALOG_ID,
        {},
    )
    assert ISO_MS.match(record.created_at)


async def test_admin_stats_route_needs_no_key_and_reset_clears(sandbox, http):
    await start_run(http, CATALOG_ID, {})

    async with aiohttp.ClientSession(sandbox.base_url) as anonymous:
        async with anonymous.get("/_sandbox/stats") as response:
            before = await response.json()
        async with anonymous.post("/_sandbox/stats/reset") as response:
            after = await response.json()

    assert before["requests"] == {"create_run": 1}
    assert len(before["runs"]) == 1
    assert before["keyLeaks"] == 0
    assert after["requests"] == {}
    assert after["runs"] == []
    assert sandbox.stats.requests == {}
