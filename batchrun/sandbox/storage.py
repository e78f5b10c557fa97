"""The storage/CDN host: presigned uploads, uploaded assets and run output files.

It is a separate aiohttp site on its own port, as Lamina's media host is a different
host from its API: a client that sends its API key here is leaking it, and every such
request is counted in `stats.key_leaks`. No key is needed or checked; uploads are
authorised by an HMAC signature in the URL, as presigned object-store URLs are.

Objects live in memory, or on disk under `root` when the sandbox keeps a state dir.
Either way an object is named by its path ("/assets/<id>/a.png"), never by host and
port: a restarted sandbox serves on a new port, and URLs handed out before it must
still resolve (see `path_of`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import mimetypes
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from batchrun.sandbox.envelope import error_response, iso_time, request_id
from batchrun.sandbox.faults import Faults
from batchrun.sandbox.stats import SandboxStats

logger = logging.getLogger(__name__)

UPLOAD_TTL = timedelta(hours=1)
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
MEDIA_TYPES = ("image", "video", "audio")
_FALLBACK_TYPES = {
    "image": "image/png",
    "video": "video/mp4",
    "audio": "audio/mpeg",
}


@dataclass(frozen=True)
class StoredObject:
    """Bytes held by the storage host and the Content-Type they are served with."""

    data: bytes
    content_type: str


class Storage:
    """The object store behind the storage host: in memory, or on disk under `root`.

    With a `root`, bytes are written there (atomically) and read back on each GET,
    and `on_put(path, content_type)` is told of every new object so the sandbox can
    journal its index; without one, everything stays in memory.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        root: Path | None = None,
        on_put: Callable[[str, str], None] | None = None,
    ) -> None:
        self.base_url = ""  # set once the site is bound to a port
        self.secret = secret or uuid.uuid4().bytes
        self._root = root
        self._on_put = on_put
        self._objects: dict[str, StoredObject] = {}  # in-memory mode only
        self._types: dict[str, str] = {}  # path -> Content-Type, every object

    def presign_upload(self, filename: str, media_type: str) -> dict[str, str]:
        """One entry of `POST /v1/assets/upload-urls`: where to PUT, where to read."""
        asset_id = str(uuid.uuid4())
        name = _safe_filename(filename)
        expires = int(time.time() + UPLOAD_TTL.total_seconds())
        signature = self._sign(asset_id, name, expires)
        quoted = quote(name)
        return {
            "filename": filename,
            "mediaType": media_type,
            "contentTypeHint": guess_content_type(name, media_type),
            "uploadUrl": (
                f"{self.base_url}/uploads/{asset_id}/{quoted}"
                f"?expires={expires}&signature={signature}"
            ),
            "assetUrl": f"{self.base_url}/assets/{asset_id}/{quoted}",
            "assetId": asset_id,
            "expiresAt": iso_time(datetime.fromtimestamp(expires, UTC)),
        }

    def put_output(
        self, run_id: str, output_id: str, ext: str, data: bytes, content_type: str
    ) -> str:
        """Store one run output file; returns its storage path (see `url_for`)."""
        path = f"/outputs/{run_id}/{output_id}{ext}"
        self._store(path, data, content_type)
        return path

    def url_for(self, path: str) -> str:
        """The public URL of the object at `path`, on the host as bound right now."""
        return f"{self.base_url}{quote(path)}"

    def path_of(self, url: str) -> str | None:
        """The path of `url` if it names this host's storage, else None.

        A URL on the current host:port is ours whether or not its object exists. On
        any other loopback host:port it is ours only if its path names an object we
        hold: that is how asset URLs handed out before a restart (on the old port)
        keep working as inputs, without claiming other local servers' URLs.
        """
        parts = urlsplit(url)
        path = unquote(parts.path)
        if f"{parts.scheme}://{parts.netloc}" == self.base_url:
            return path
        if path in self._types and is_loopback_url(url):
            return path
        return None

    def lookup(self, url: str) -> StoredObject | None:
        """The object behind `url` if it is one of this host's URLs, else None."""
        path = self.path_of(url)
        return None if path is None else self.get(path)

    def owns(self, url: str) -> bool:
        """Whether `url` points at this storage host (whether or not it exists)."""
        return self.path_of(url) is not None

    def get(self, path: str) -> StoredObject | None:
        """The object stored at `path` (e.g. "/assets/<id>/a.png"), or None."""
        content_type = self._types.get(path)
        if content_type is None:
            return None
        if self._root is None:
            return self._objects.get(path)
        try:
            return StoredObject(self._file(path).read_bytes(), content_type)
        except OSError as exc:
            # The index outlived the file (deleted by hand): answer 404, not 500.
            logger.warning("sandbox.storage.missing path=%s error=%s", path, exc)
            return None

    def index(self) -> dict[str, str]:
        """Every object's path and Content-Type (what a state snapshot keeps)."""
        return dict(self._types)

    def restore(self, index: Mapping[str, str]) -> None:
        """Know the objects a previous run of the sandbox left under `root`."""
        for path, content_type in index.items():
            if self._root is not None and _is_object_path(path):
                self._types[path] = content_type

    def check_upload(
        self, asset_id: str, name: str, expires: str, signature: str
    ) -> str | None:
        """Why a PUT's presigned query is not acceptable, or None when it is."""
        try:
            expires_at = int(expires)
        except ValueError:
            return "the upload URL has no valid 'expires'; request a new one"
        expected = self._sign(asset_id, name, expires_at)
        if not hmac.compare_digest(signature, expected):
            return "the upload URL's signature does not match; request a new one"
        if expires_at < time.time():
            return "the upload URL has expired; request a new one"
        return None

    async def put_asset(
        self, asset_id: str, name: str, data: bytes, sent_type: str
    ) -> None:
        """Store uploaded bytes under their asset URL's path."""
        content_type = guess_content_type(name)
        if content_type == "application/octet-stream" and sent_type:
            content_type = sent_type
        path = f"/assets/{asset_id}/{name}"
        if self._root is not None:
            # Uploads may be large: write them off the event loop.
            await asyncio.to_thread(_write_atomically, self._file(path), data)
        self._store(path, data, content_type, written=True)

    def _store(
        self, path: str, data: bytes, content_type: str, *, written: bool = False
    ) -> None:
        if self._root is None:
            self._objects[path] = StoredObject(data, content_type)
        elif not written:
            _write_atomically(self._file(path), data)
        self._types[path] = content_type
        if self._on_put is not None:
            self._on_put(path, content_type)

    def _file(self, path: str) -> Path:
        assert self._root is not None
        return self._root / path.lstrip("/")

    def _sign(self, asset_id: str, name: str, expires: int) -> str:
        message = f"PUT\n{asset_id}\n{name}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def _is_object_path(path: str) -> bool:
    """Whether `path` has the shape this host gives objects, so it stays under root.

    Checked by shape, not by resolving it on disk: it is cheap for thousands of
    paths, and a saved index edited to say "/assets/../../x" is refused all the same.
    """
    parts = PurePosixPath(path).parts
    return (
        len(parts) == 4
        and parts[:2] in (("/", "assets"), ("/", "outputs"))
        and all(part not in ("", ".", "..") for part in parts[2:])
    )


def _write_atomically(file: Path, data: bytes) -> None:
    """Write `data` to `file` so a reader sees the old file or the whole new one."""
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, file)


def is_loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def guess_content_type(filename: str, media_type: str | None = None) -> str:
    """The Content-Type for a file name, falling back on its media type."""
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return _FALLBACK_TYPES.get(media_type or "", "application/octet-stream")


def _safe_filename(filename: str) -> str:
    # Only the last path component: "../../etc/passwd" must not become a path.
    name = PurePosixPath(filename.replace("\\", "/")).name
    return name or "file"


def build_storage_app(
    storage: Storage,
    stats: SandboxStats,
    faults: Callable[[], Faults],
    rng: random.Random,
) -> web.Application:
    """The aiohttp application of the storage host."""
    app = web.Application(
        middlewares=[_storage_middleware(stats)], client_max_size=MAX_UPLOAD_BYTES
    )

    async def put_upload(request: web.Request) -> web.StreamResponse:
        asset_id = request.match_info["asset_id"]
        name = request.match_info["filename"]
        problem = storage.check_upload(
            asset_id,
            name,
            request.query.get("expires", ""),
            request.query.get("signature", ""),
        )
        if problem is not None:
            return error_response(request, "FORBIDDEN", problem)

        data = await request.read()
        await storage.put_asset(
            asset_id, name, data, request.headers.get("Content-Type", "")
        )
        logger.debug("sandbox.storage.put asset=%s bytes=%d", asset_id, len(data))
        return web.Response(status=200)

    async def get_object(request: web.Request) -> web.StreamResponse:
        stored = storage.get(request.path)
        if stored is None:
            return error_response(request, "NOT_FOUND", f"no object at {request.path}")

        if request.method == "GET" and faults().trip("truncate", rng):
            stats.faults_injected["truncate"] += 1
            return await _truncated(request, stored)
        return web.Response(body=stored.data, headers=_type(stored))

    app.router.add_put("/uploads/{asset_id}/{filename}", put_upload, name="upload")
    app.router.add_get("/assets/{asset_id}/{filename}", get_object, name="asset")
    app.router.add_get("/outputs/{run_id}/{filename}", get_object, name="output")
    app.on_response_prepare.append(_add_request_id)
    return app


def _type(stored: StoredObject) -> dict[str, str]:
    return {"Content-Type": stored.content_type}


async def _truncated(request: web.Request, stored: StoredObject) -> web.StreamResponse:
    """Promise the whole body, send half of it, then hang up (a torn download)."""
    response = web.StreamResponse(headers=_type(stored))
    response.content_length = len(stored.data) + max(1, len(stored.data) // 2)
    await response.prepare(request)
    await response.write(stored.data[: len(stored.data) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _storage_middleware(
    stats: SandboxStats,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        request_id(request)
        route = "storage_put" if request.method == "PUT" else "storage_get"
        stats.requests[route] += 1
        if "x-api-key" in request.headers or "Authorization" in request.headers:
            # The storage host never needs the key; seeing it means a client leaked it.
            stats.key_leaks += 1
            logger.warning(
                "sandbox.storage.key_leak method=%s path=%s",
                request.method,
                request.path,
            )

        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = error_response(
                request, "NOT_FOUND", f"no object at {request.path}"
            )
        except web.HTTPMethodNotAllowed:
            response = error_response(
                request, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here"
            )
        return response

    return middleware


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Request-Id"] = request_id(request)
