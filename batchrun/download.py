"""Fetching output files and uploading local inputs: storage hosts, never the API key.

Media URLs point at a storage/CDN host, not the API. Requests there go through their own
session that has never seen the key, so no header, redirect or cookie can carry it over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import aiohttp

from batchrun.errors import DownloadFailed
from batchrun.retries import RetryPolicy

log = logging.getLogger(__name__)

CHUNK = 1 << 16
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file on disk."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_atomically(dest: Path, data: bytes) -> tuple[int, str]:
    """Write bytes to `dest` via a temporary file and a rename; (size, sha256)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with part.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, dest)
    return len(data), hashlib.sha256(data).hexdigest()


async def download(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    retry: RetryPolicy,
    sleep=asyncio.sleep,
) -> tuple[int, str, str]:
    """Stream `url` into `dest` (atomically, checked); (size, sha256, content type)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _download_once(session, url, dest)
        except _Transient as exc:
            if attempt > retry.retries:
                raise DownloadFailed(f"{exc} ({attempt} attempts)") from None
            delay = retry.delay(attempt)
            log.warning(
                "download.retry url=%s attempt=%d reason=%s wait=%.1fs",
                _short(url),
                attempt,
                exc,
                delay,
            )
            await sleep(delay)


async def _download_once(
    session: aiohttp.ClientSession, url: str, dest: Path
) -> tuple[int, str, str]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        async with session.get(url, timeout=TIMEOUT) as response:
            if response.status >= 500:
                raise _Transient(f"{_short(url)} answered {response.status}")
            if response.status >= 400:
                raise DownloadFailed(f"{_short(url)} answered {response.status}")
            expected = response.content_length
            with part.open("wb") as handle:
                async for chunk in response.content.iter_chunked(CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            content_type = response.headers.get("Content-Type", "")
    except aiohttp.InvalidURL:
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"{_short(url)!r} is not a valid URL") from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        part.unlink(missing_ok=True)
        raise _Transient(
            f"{_short(url)}: {exc.__class__.__name__} after {size} bytes"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise

    if expected is not None and size != expected:
        part.unlink(missing_ok=True)
        raise _Transient(f"{_short(url)}: got {size} of {expected} bytes (truncated)")
    os.replace(part, dest)
    return size, digest.hexdigest(), content_type


async def upload(
    session: aiohttp.ClientSession,
    upload_url: str,
    path: Path,
    content_type: str,
    *,
    retry: RetryPolicy,
    sleep=asyncio.sleep,
) -> None:
    """PUT a local file to a presigned storage URL (no API key: the URL is a grant)."""
    data = path.read_bytes()
    attempt = 0
    while True:
        attempt += 1
        try:
            async with session.put(
                upload_url,
                data=data,
                headers={"Content-Type": content_type},
                timeout=TIMEOUT,
            ) as response:
                if response.status < 300:
                    return
                if response.status < 500:
                    raise DownloadFailed(
                        f"uploading {path}: the storage host answered {response.status}"
                    )
                reason = f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = exc.__class__.__name__
        if attempt > retry.retries:
            raise DownloadFailed(f"uploading {path} failed {attempt} times ({reason})")
        await sleep(retry.delay(attempt))


class _Transient(Exception):
    """Internal: a download attempt that may succeed if tried again."""


def _short(url: str) -> str:
    """A URL without its query string: presigned URLs carry grants in the query."""
    return url.split("?", 1)[0]
