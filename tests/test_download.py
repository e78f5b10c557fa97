"""Downloading outputs: atomic, checked, retried only when retrying can help."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web

from batchrun.download import download
from batchrun.errors import DownloadFailed
from batchrun.retries import RetryPolicy
from tests.conftest import FakeTime

BODY = b"\x89PNG fake image bytes" * 100


def fast_retry(retries: int = 3) -> tuple[RetryPolicy, FakeTime]:
    return RetryPolicy(retries=retries, jitter=lambda: 1.0), FakeTime()


async def test_a_download_lands_whole_with_its_checksum(serve, http, tmp_path):
    app = web.Application()
    app.router.add_get("/f.png", lambda r: web.Response(body=BODY))
    server = await serve(app)
    policy, clock = fast_retry()

    size, digest, _ = await download(
        http,
        server.url + "/f.png",
        tmp_path / "a/f.png",
        retry=policy,
        sleep=clock.sleep,
    )

    assert (tmp_path / "a/f.png").read_bytes() == BODY
    assert (size, digest) == (len(BODY), hashlib.sha256(BODY).hexdigest())
    assert not list(tmp_path.rglob("*.part"))


async def test_a_truncated_body_is_retried_then_reported(serve, http, tmp_path):
    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[:10])
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/f.png", truncated)
    server = await serve(app)
    policy, clock = fast_retry(retries=2)

    with pytest.raises(DownloadFailed, match="3 attempts"):
        await download(
            http,
            server.url + "/f.png",
            tmp_path / "f.png",
            retry=policy,
            sleep=clock.sleep,
        )

    assert len(server.requests) == 3
    assert not (tmp_path / "f.png").exists()
    assert not list(tmp_path.rglob("*.part"))


async def test_a_404_is_not_retried(serve, http, tmp_path):
    app = web.Application()
    server = await serve(app)
    policy, clock = fast_retry()

    with pytest.raises(DownloadFailed, match="answered 404"):
        await download(
            http,
            server.url + "/gone.png",
            tmp_path / "f.png",
            retry=policy,
            sleep=clock.sleep,
        )

    assert len(server.requests) == 1


async def test_an_invalid_url_fails_at_once(http, tmp_path):
    policy, clock = fast_retry()

    with pytest.raises(DownloadFailed, match="not a valid URL"):
        await download(
            http, "http://", tmp_path / "f.png", retry=policy, sleep=clock.sleep
        )

    assert clock.slept == []


async def test_the_query_string_never_reaches_an_error_message(serve, http, tmp_path):
    app = web.Application()
    server = await serve(app)
    policy, clock = fast_retry()

    with pytest.raises(DownloadFailed) as caught:
        await download(
            http,
            server.url + "/x.png?sig=secret-grant",
            tmp_path / "f.png",
            retry=policy,
            sleep=clock.sleep,
        )

    assert "secret-grant" not in str(caught.value)
