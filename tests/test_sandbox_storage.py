"""The storage host: presigned uploads, served assets, key-leak accounting."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image

from batchrun.sandbox import Sandbox, SandboxConfig

CARTOONIFY_ID = "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UPLOAD_FIELDS = {
    "filename",
    "mediaType",
    "contentTypeHint",
    "uploadUrl",
    "assetUrl",
    "assetId",
    "expiresAt",
}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(queue_seconds=0.01, run_seconds=(0.03, 0.05))
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
async def http(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"x-api-key": sandbox.api_key}
    async with aiohttp.ClientSession(sandbox.base_url, headers=headers) as session:
        yield session


@pytest.fixture
async def storage() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends no key, as a client must talk to the storage host."""
    async with aiohttp.ClientSession() as session:
        yield session


async def upload_urls(
    http: aiohttp.ClientSession, *files: tuple[str, str]
) -> list[dict[str, Any]]:
    body = {"files": [{"filename": f, "mediaType": m} for f, m in files]}
    async with http.post("/v1/assets/upload-urls", json=body) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["data"]["uploads"])


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_upload_urls_have_the_documented_fields(sandbox, http):
    [upload] = await upload_urls(http, ("a.png", "image"))

    assert set(upload) == UPLOAD_FIELDS
    assert (upload["filename"], upload["mediaType"]) == ("a.png", "image")
    assert upload["contentTypeHint"] == "image/png"
    assert UUID.match(upload["assetId"])
    assert upload["uploadUrl"].startswith(sandbox.storage_url + "/")
    assert "signature=" in urlsplit(upload["uploadUrl"]).query
    assert upload["assetUrl"].startswith(sandbox.storage_url + "/")
    assert upload["assetId"] in upload["assetUrl"]
    expires = datetime.fromisoformat(upload["expiresAt"].replace("Z", "+00:00"))
    assert expires > datetime.now(UTC)
    assert urlsplit(sandbox.storage_url).port != urlsplit(sandbox.base_url).port


async def test_an_uploaded_file_is_served_back_with_its_type(http, storage):
    [upload] = await upload_urls(http, ("shot.jpg", "image"))
    data = b"\xff\xd8\xff not really a jpeg"

    async with storage.put(upload["uploadUrl"], data=data) as put:
        pass
    async with storage.get(upload["assetUrl"]) as got:
        body = await got.read()

    assert put.status == 200
    assert got.status == 200
    assert body == data
    assert got.headers["Content-Type"] == "image/jpeg"
    assert got.headers["Content-Length"] == str(len(data))


async def test_several_files_get_distinct_urls(http):
    uploads = await upload_urls(http, ("a.png", "image"), ("b.mp4", "video"))

    assert len({u["assetId"] for u in uploads}) == 2
    assert uploads[1]["contentTypeHint"] == "video/mp4"


async def test_a_forged_signature_is_refused(http, storage):
    [upload] = await upload_urls(http, ("a.png", "image"))
    forged = re.sub(
        r"signature=[0-9a-f]+", "signature=" + "0" * 64, upload["uploadUrl"]
    )
    unsigned = upload["uploadUrl"].split("?")[0]

    async with storage.put(forged, data=b"x") as bad:
        body = await bad.json()
    async with storage.put(unsigned, data=b"x") as missing:
        pass
    async with storage.get(upload["assetUrl"]) as got:
        pass

    assert bad.status == 403
    assert body["code"] == "FORBIDDEN"
    assert missing.status == 403
    assert got.status == 404


async def test_unknown_objects_are_404_in_the_envelope(sandbox, storage):
    async with storage.get(f"{sandbox.storage_url}/assets/nope/a.png") as response:
        body = await response.json()

    assert response.status == 404
    assert body["code"] == "NOT_FOUND"
    assert body["requestId"] == response.headers["X-Request-Id"]


async def test_path_components_of_a_filename_are_dropped(http):
    [upload] = await upload_urls(http, ("../../etc/passwd.png", "image"))

    assert urlsplit(upload["assetUrl"]).path.endswith(
        f"/{upload['assetId']}/passwd.png"
    )


async def test_unicode_filenames_round_trip(http, storage):
    [upload] = await upload_urls(http, ("photo é 1.png", "image"))

    async with storage.put(upload["uploadUrl"], data=photo()) as put:
        pass
    async with storage.get(upload["assetUrl"]) as got:
        body = await got.read()

    assert put.status == 200
    assert body == photo()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"files": []},
        {"files": [{"filename": "a.png", "mediaType": "document"}]},
        {"files": [{"filename": "", "mediaType": "image"}]},
    ],
    ids=["no-files", "empty", "bad-media-type", "empty-filename"],
)
async def test_bad_upload_requests_are_validation_errors(http, body):
    async with http.post("/v1/assets/upload-urls", json=body) as response:
        answer = await response.json()

    assert response.status == 400
    assert answer["code"] == "VALIDATION_ERROR"
    assert answer["details"]


async def test_an_uploaded_asset_works_as_a_url_input(sandbox, http, storage):
    [upload] = await upload_urls(http, ("me.png", "image"))
    async with storage.put(upload["uploadUrl"], data=photo()):
        pass
    inputs = {"Upload": upload["assetUrl"], "Style": "Ghibli"}

    async with http.post(
        f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": inputs}
    ) as r:
        run_id = (await r.json())["data"]["runId"]
    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "10"}) as r:
        run = (await r.json())["data"]

    assert run["status"] == "completed"
    # The sandbox reads its own storage directly, not over HTTP.
    assert sandbox.stats.requests["storage_get"] == 0
    assert sandbox.stats.requests["storage_put"] == 1


async def test_a_url_on_the_storage_host_that_was_never_uploaded_errors(sandbox, http):
    missing = f"{sandbox.storage_url}/assets/00000000-0000-4000-8000-000000000000/x.png"
    inputs = {"Upload": missing, "Style": "Ghibli"}

    async with http.post(
        f"/v1/apps/{CARTOONIFY_ID}/runs", json={"inputs": inputs}
    ) as r:
        run_id = (await r.json())["data"]["runId"]
    async with http.get(f"/v1/runs/{run_id}/wait", params={"timeout": "10"}) as r:
        run = (await r.json())["data"]

    assert run["status"] == "failed"
    assert "never uploaded" in run["outputs"][0]["error"]


async def test_requests_carrying_the_key_to_storage_are_counted_as_leaks(
    sandbox, http, storage
):
    [upload] = await upload_urls(http, ("a.png", "image"))
    async with storage.put(upload["uploadUrl"], data=photo()):
        pass
    clean = sandbox.stats.key_leaks

    async with storage.get(upload["assetUrl"], headers={"x-api-key": sandbox.api_key}):
        pass
    async with storage.get(
        upload["assetUrl"], headers={"Authorization": f"Bearer {sandbox.api_key}"}
    ):
        pass

    assert clean == 0
    assert sandbox.stats.key_leaks == 2
    assert sandbox.stats.requests["storage_get"] == 2


async def test_storage_is_not_rate_limited():
    config = SandboxConfig(rate_limit=1, queue_seconds=0.01)
    async with Sandbox(config) as sandbox, aiohttp.ClientSession() as storage:
        statuses = []
        for _ in range(5):
            async with storage.get(f"{sandbox.storage_url}/assets/x/y.png") as r:
                statuses.append(r.status)
                assert "RateLimit-Limit" not in r.headers

    assert statuses == [404] * 5
