"""Fetching a run's url inputs: from the sandbox's own storage, loopback, or a stand-in.

Catalog defaults point at public hosts a sandbox usually cannot (or should not) reach,
so an unfetchable *default* is replaced by a built-in placeholder image; an unfetchable
URL the user gave makes the run's outputs error, as a real server's would.
"""

from __future__ import annotations

import colorsys
import functools
import io
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from PIL import Image, ImageDraw

from batchrun.apps import App
from batchrun.sandbox.storage import Storage, is_loopback_url

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0
MAX_MEDIA_BYTES = 50 * 1024 * 1024
PLACEHOLDER_SIZE = 512


@dataclass(frozen=True)
class FetchedMedia:
    """The bytes of each url input, and why some could not be had."""

    data: Mapping[str, bytes] = field(default_factory=dict)
    problems: Mapping[str, str] = field(default_factory=dict)  # parameter -> reason


class MediaFetcher:
    """Gets the bytes behind url inputs, never leaving loopback unless allowed to."""

    def __init__(
        self, storage: Storage, session: aiohttp.ClientSession, *, allow_remote: bool
    ) -> None:
        self._storage = storage
        self._session = session
        self._allow_remote = allow_remote

    async def fetch(self, app: App, inputs: Mapping[str, str]) -> FetchedMedia:
        """The media of every url parameter of `app` (`inputs` has defaults in)."""
        data: dict[str, bytes] = {}
        problems: dict[str, str] = {}
        for parameter in app.parameters:
            if parameter.type != "url" or parameter.name not in inputs:
                continue
            url = inputs[parameter.name]
            try:
                data[parameter.name] = await self._get(url)
            except MediaUnavailable as exc:
                if url == parameter.default:
                    logger.debug(
                        "sandbox.media.placeholder parameter=%r reason=%s",
                        parameter.name,
                        exc,
                    )
                    data[parameter.name] = placeholder_image(parameter.name)
                else:
                    problems[parameter.name] = f"cannot fetch {parameter.name!r}: {exc}"
        return FetchedMedia(data, problems)

    async def _get(self, url: str) -> bytes:
        if self._storage.owns(url):
            stored = self._storage.lookup(url)
            if stored is None:
                raise MediaUnavailable(f"{url} was never uploaded (or has no object)")
            return stored.data
        if not (self._allow_remote or is_loopback_url(url)):
            raise MediaUnavailable(
                f"{url} is not on this machine, and the sandbox fetches only loopback "
                "and its own storage URLs (allow_remote / --allow-remote lifts this)"
            )
        return await self._download(url)

    async def _download(self, url: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        try:
            async with self._session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    raise MediaUnavailable(f"{url} answered HTTP {response.status}")
                if (response.content_length or 0) > MAX_MEDIA_BYTES:
                    raise MediaUnavailable(
                        f"{url} is larger than {MAX_MEDIA_BYTES} bytes"
                    )
                return await response.read()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise MediaUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc


class MediaUnavailable(Exception):
    """A url input's bytes could not be had; the message says why."""


@functools.lru_cache(maxsize=64)
def placeholder_image(name: str) -> bytes:
    """A deterministic stand-in photo for parameter `name` (its hue follows the name).

    Soft gradients and a few shapes give the style filters something to work on, so
    outputs made from a placeholder still differ visibly between styles.
    """
    hue = (zlib.crc32(name.encode()) % 360) / 360
    size = PLACEHOLDER_SIZE
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        r, g, b = colorsys.hsv_to_rgb(
            hue, 0.35 + 0.4 * y / size, 0.95 - 0.35 * y / size
        )
        draw.line([(0, y), (size, y)], fill=(int(r * 255), int(g * 255), int(b * 255)))

    r, g, b = colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.7, 0.9)
    accent = (int(r * 255), int(g * 255), int(b * 255))
    draw.ellipse((size * 0.3, size * 0.15, size * 0.7, size * 0.55), fill=accent)
    draw.rectangle((size * 0.2, size * 0.6, size * 0.8, size * 0.95), fill=(40, 40, 48))
    draw.polygon(
        [(0, size), (size * 0.25, size * 0.7), (size * 0.5, size)], fill=(250, 250, 245)
    )
    draw.text((12, 12), f"sandbox placeholder: {name}", fill=(20, 20, 20))

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
