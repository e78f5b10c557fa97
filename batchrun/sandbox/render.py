"""Real, deterministic output files for the sandbox's apps (pure: no I/O).

Every output in the catalog names a renderer here and gives it options; most options
name the app parameter a renderer reads (``"image": "Upload"``), so a user's own
catalog can reuse a renderer with other parameter names. `render_output` is the one
entry point the server calls; `option_problems` is what the catalog loader uses to
reject a catalog whose options a renderer could not honour.

Determinism is a contract: the same app, index, inputs and media give byte-identical
files. Nothing here reads the clock or an unseeded random source, and every encoder
runs with fixed settings and no metadata. Variation between inputs (a backdrop colour,
a sentence variant) comes from a SHA-256 of the inputs themselves.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import gcd
from typing import TYPE_CHECKING, Any, Final, cast

from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageEnhance,
    ImageFilter,
    ImageFont,
    ImageOps,
    UnidentifiedImageError,
)

if TYPE_CHECKING:
    from batchrun.sandbox.catalog import SandboxApp

logger = logging.getLogger(__name__)

#: Inputs are shrunk to this longest side before any work, so a huge upload costs the
#: server one decode and a resize, not seconds of filtering.
MAX_SIDE: Final = 768
#: Refuse to decode anything bigger than this (pixels); Pillow's own bomb guard only
#: triggers at about 179 MP, far more than a sandbox should chew on.
MAX_PIXELS: Final = 40_000_000
#: A fixed zlib level: 1 encodes a 512 px photo in a third of the default level's
#: time for about 15% more bytes, which a local sandbox does not mind. PNGs carry no
#: metadata.
PNG_COMPRESS_LEVEL: Final = 1

#: Animations are kept small enough to download in a blink from the sandbox.
MAX_VIDEO_BYTES: Final = 190_000

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Rendered:
    """One finished output file."""

    data: bytes
    content_type: str
    ext: str
    text: str | None = None


class RenderError(Exception):
    """These inputs cannot produce the output (e.g. the media is not an image)."""


# -- options schema ---------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """One option a renderer accepts in the catalog.

    kind is "parameter" (names one app parameter), "parameters" (a list of names),
    or a literal value kind: "str", "int", "float", "bool". `bounds` keeps numbers
    in a range the sandbox can render quickly.
    """

    kind: str
    required: bool = False
    param_types: tuple[str, ...] = ("text", "options", "url")
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None


@dataclass(frozen=True)
class Renderer:
    """A named way to produce one output of one type."""

    name: str
    output_type: str
    options: Mapping[str, OptionSpec]
    produce: Callable[[Mapping[str, Any], _Inputs], Rendered] = field(repr=False)


def option_problems(
    renderer: str, options: Mapping[str, Any], parameters: Mapping[str, str]
) -> list[str]:
    """What is wrong with `options` for `renderer`, given the app's parameter types.

    `parameters` maps each parameter name to its type. Returns one short message per
    problem (empty when the options are usable).
    """
    spec = RENDERERS.get(renderer)
    if spec is None:
        known = ", ".join(sorted(RENDERERS))
        return [f"unknown renderer {renderer!r} (known: {known})"]

    problems: list[str] = []
    for key in options:
        if key not in spec.options:
            allowed = ", ".join(sorted(spec.options))
            problems.append(f"options.{key}: not an option of {renderer} ({allowed})")
    for key, option in spec.options.items():
        if key not in options:
            if option.required:
                problems.append(f"options.{key}: required by renderer {renderer}")
            continue
        problems.extend(
            f"options.{key}: {p}"
            for p in _value_problems(option, options[key], parameters)
        )
    return problems


def _value_problems(
    option: OptionSpec, value: Any, parameters: Mapping[str, str]
) -> list[str]:
    if option.kind in ("parameter", "parameters"):
        names = [value] if option.kind == "parameter" else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            wanted = (
                "a parameter name"
                if option.kind == "parameter"
                else "a list of parameter names"
            )
            return [f"expected {wanted}, got {value!r}"]
        problems = []
        for name in names:
            if name not in parameters:
                problems.append(f"{name!r} is not a parameter of this app")
            elif parameters[name] not in option.param_types:
                wanted = "/".join(option.param_types)
                problems.append(
                    f"{name!r} is a {parameters[name]} parameter, not {wanted}"
                )
        return problems

    expected: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "float": (int, float),
        "bool": bool,
    }
    # bool is an int subclass; a JSON `true` must not pass as a frame count.
    if not isinstance(value, expected[option.kind]) or (
        option.kind != "bool" and isinstance(value, bool)
    ):
        return [f"expected a {option.kind}, got {value!r}"]
    if option.choices and value not in option.choices:
        return [f"{value!r} is not one of {list(option.choices)}"]
    if option.bounds:
        low, high = option.bounds
        if not low <= cast(float, value) <= high:
            return [f"{value!r} is outside {low:g}..{high:g}"]
    return []


# -- inputs -----------------------------------------------------------------------


class _Inputs:
    """The run's inputs and fetched media, with decoding cached per call."""

    def __init__(self, inputs: Mapping[str, str], media: Mapping[str, bytes]) -> None:
        self.inputs = inputs
        self.media = media
        self._images: dict[str, Image.Image] = {}

    def value(self, name: str) -> str:
        if name not in self.inputs:
            raise RenderError(f"input {name!r} is missing")
        return str(self.inputs[name])

    def image(self, name: str) -> Image.Image:
        """The named url input, decoded, upright, RGBA, longest side <= MAX_SIDE."""
        if name not in self._images:
            self._images[name] = _decode(name, self.media.get(name))
        return self._images[name].copy()

    def seed(self, *names: str) -> bytes:
        """A digest of the named inputs (media by content), for stable variation."""
        digest = hashlib.sha256()
        for name in names:
            digest.update(name.encode())
            digest.update(b"\0")
            if name in self.media:
                digest.update(hashlib.sha256(self.media[name]).digest())
            else:
                digest.update(str(self.inputs.get(name, "")).encode())
            digest.update(b"\0")
        return digest.digest()


def _decode(name: str, data: bytes | None) -> Image.Image:
    if data is None:
        raise RenderError(f"input {name!r}: no media bytes were fetched for it")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise RenderError(
                    f"input {name!r}: image is {opened.width}x{opened.height}, "
                    f"over the sandbox's {MAX_PIXELS:,}-pixel limit"
                )
            # JPEG can decode at a fraction of full size, which is most of the win
            # for big photos; other formats ignore the hint.
            opened.draft("RGB", (MAX_SIDE, MAX_SIDE))
            image = ImageOps.exif_transpose(opened)
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            return image.convert("RGBA")
    except RenderError:
        raise
    except UnidentifiedImageError:
        # Pillow's own message embeds a BytesIO repr (a memory address): useless to
        # the user and different on every run.
        raise RenderError(
            f"input {name!r}: media is not a readable image "
            f"(unrecognised format, {len(data)} bytes)"
        ) from None
    except (Image.DecompressionBombError, OSError, ValueError) as exc:
        raise RenderError(
            f"input {name!r}: media is not a readable image ({exc})"
        ) from exc


def _flatten(image: Image.Image, background: RGB = (255, 255, 255)) -> Image.Image:
    """RGBA to RGB over a solid background (transparent cut-outs become white)."""
    base = Image.new("RGB", image.size, background)
    base.paste(image, mask=image.getchannel("A"))
    return base


# -- encoding ---------------------------------------------------------------------


def _png(image: Image.Image) -> Rendered:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return Rendered(buffer.getvalue(), "image/png", ".png")


def _gif(frames: Sequence[Image.Image], duration_ms: int) -> Rendered:
    """An animated GIF under MAX_VIDEO_BYTES, with fewer colours if it must."""
    rgb = [f.convert("RGB") for f in frames]
    for colors in (96, 48, 24):
        data = _encode_gif(rgb, duration_ms, colors)
        if len(data) <= MAX_VIDEO_BYTES:
            break
    return Rendered(data, "image/gif", ".gif")


def _encode_gif(frames: Sequence[Image.Image], duration_ms: int, colors: int) -> bytes:
    # One shared palette, taken from the middle frame, without dithering: frames stay
    # consistent and LZW compresses them to a fraction of a dithered GIF. The palette
    # comes from a 96x96 sample: median cut over every pixel would cost 60 ms.
    sample = frames[len(frames) // 2].resize((96, 96))
    palette = sample.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buffer = io.BytesIO()
    indexed[0].save(
        buffer,
        "GIF",
        save_all=True,
        append_images=indexed[1:],
        duration=duration_ms,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return buffer.getvalue()


def _webp(frames: Sequence[Image.Image], duration_ms: int) -> Rendered:
    buffer = io.BytesIO()
    rgb = [f.convert("RGB") for f in frames]
    rgb[0].save(
        buffer,
        "WEBP",
        save_all=True,
        append_images=rgb[1:],
        duration=duration_ms,
        loop=0,
        quality=70,
        method=4,
        minimize_size=False,
        allow_mixed=False,
    )
    return Rendered(buffer.getvalue(), "image/webp", ".webp")


# -- text drawing -----------------------------------------------------------------

_fonts = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # FreeType faces are not safe to share between threads, and render_output runs
    # in a thread pool; one small cache per thread costs a few KB.
    cache: dict[int, Any] | None = getattr(_fonts, "cache", None)
    if cache is None:
        cache = _fonts.cache = {}
    if size not in cache:
        cache[size] = ImageFont.load_default(size)
    return cache[size]


def _safe_text(font: Any, text: str) -> str:
    # Pillow's bitmap fallback font (no FreeType) can only encode Latin-1.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, max_lines: int
) -> list[str]:
    """Greedy word wrap to `width` pixels, at most `max_lines` (the last gets '...')."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "..."
    return lines


def _caption(image: Image.Image, text: str, *, size: int = 20) -> None:
    """Draw `text` in a dark band along the bottom of `image` (in place)."""
    text = " ".join(text.split())
    if not text:
        return
    font = _font(size)
    text = _safe_text(font, text)
    draw = ImageDraw.Draw(image, "RGBA")
    lines = _wrap(draw, text, font, image.width - 2 * size, max_lines=3)
    line_height = int(size * 1.3)
    band = line_height * len(lines) + size
    draw.rectangle(
        (0, image.height - band, image.width, image.height), fill=(0, 0, 0, 150)
    )
    y = image.height - band + size // 2
    for line in lines:
        draw.text((size, y), line, font=font, fill=(255, 255, 255, 255))
        y += line_height


def _color_from(seed: bytes, offset: int = 0) -> RGB:
    r, g, b = seed[offset % 30 : offset % 30 + 3]
    return (r, g, b)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    """A vertical gradient, built as a 1-pixel column and stretched (fast)."""
    column = Image.new("RGB", (1, 256))
    column.putdata([_mix(top, bottom, y / 255) for y in range(256)])
    # Interpolate down the column only; copying it across needs no filtering.
    column = column.resize((1, size[1]), Image.Resampling.BILINEAR)
    return column.resize(size, Image.Resampling.NEAREST)


# -- cartoonify -------------------------------------------------------------------


def _aspect_ratio(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.split(":"))
    except ValueError:
        raise RenderError(f"aspect ratio {text!r} is not of the form W:H") from None
    if width <= 0 or height <= 0:
        raise RenderError(f"aspect ratio {text!r} must have positive sides")
    return width, height


def crop_to_ratio(image: Image.Image, ratio: tuple[int, int]) -> Image.Image:
    """Centre-crop `image` to the largest box whose sides are exactly `ratio`.

    The sides are whole multiples of the reduced ratio, so 16:9 from 512x512 is
    512x288 exactly, never 512x289.
    """
    a, b = ratio
    divisor = gcd(a, b)
    a, b = a // divisor, b // divisor
    k = min(image.width // a, image.height // b)
    if k == 0:
        raise RenderError(
            f"image {image.width}x{image.height} is too small for {a}:{b}"
        )
    width, height = k * a, k * b
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _ghibli(image: Image.Image) -> Image.Image:
    # Soft pastel: smooth away detail, posterize lightly, then wash towards a warm
    # cream so shadows never go dark.
    poster = ImageOps.posterize(image.filter(ImageFilter.GaussianBlur(2.5)), 4)
    muted = ImageEnhance.Color(poster).enhance(0.75)
    cream = Image.new("RGB", image.size, (250, 240, 215))
    return Image.blend(muted, cream, 0.35)


def _simpsons(image: Image.Image) -> Image.Image:
    # Flat colour (2-bit posterize) washed with yellow, with thick black outlines.
    flat = ImageOps.posterize(image.filter(ImageFilter.GaussianBlur(2)), 2)
    toon = Image.blend(flat, Image.new("RGB", image.size, (255, 217, 15)), 0.35)
    # Edges of the posterized image are the borders between flat regions, so photo
    # grain and texture never turn into outlines. Blurring the edge map before the
    # threshold thickens the lines at a third of a MaxFilter's cost.
    edges = flat.convert("L").filter(ImageFilter.FIND_EDGES)
    outline = edges.filter(ImageFilter.GaussianBlur(1)).point(
        lambda v: 255 if v > 24 else 0
    )
    toon.paste((20, 20, 20), mask=outline)
    return toon


def _pixar(image: Image.Image) -> Image.Image:
    # Glossy: smooth, strongly saturated, brighter, a touch more contrast.
    smooth = image.filter(ImageFilter.GaussianBlur(1.5))
    vivid = ImageEnhance.Color(smooth).enhance(2.0)
    bright = ImageEnhance.Brightness(vivid).enhance(1.2)
    return ImageOps.posterize(ImageEnhance.Contrast(bright).enhance(1.15), 5)


def _cyberpunk(image: Image.Image) -> Image.Image:
    # Magenta/cyan duotone, then a blurred copy screened on top for neon glow.
    gray = ImageOps.autocontrast(
        image.convert("L").filter(ImageFilter.GaussianBlur(1)), cutoff=1
    )
    duo = ImageOps.colorize(
        gray, black=(15, 0, 35), mid=(230, 0, 160), white=(0, 255, 255), midpoint=110
    )
    glow = duo.filter(ImageFilter.GaussianBlur(6))
    return ImageChops.screen(duo, ImageEnhance.Brightness(glow).enhance(0.7))


STYLES: Final[Mapping[str, Callable[[Image.Image], Image.Image]]] = {
    "Ghibli": _ghibli,
    "Simpsons": _simpsons,
    "Disney / Pixar": _pixar,
    "Cyberpunk": _cyberpunk,
}


def _style_for(name: str) -> Callable[[Image.Image], Image.Image]:
    if name in STYLES:
        return STYLES[name]
    # A user's catalog may offer other style labels: map each one to a fixed style
    # rather than failing the run.
    index = hashlib.sha256(name.encode()).digest()[0] % len(STYLES)
    return list(STYLES.values())[index]


def _cartoonify(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    image = _flatten(inputs.image(options["image"]))
    style = _choose(options, inputs, "style", "Ghibli")
    aspect = _choose(options, inputs, "aspect", "")
    if aspect:
        image = crop_to_ratio(image, _aspect_ratio(aspect))
    return _png(_style_for(style)(image))


def _choose(
    options: Mapping[str, Any], inputs: _Inputs, key: str, fallback: str
) -> str:
    """The value of parameter options[key], else literal options[key_value]."""
    if key in options:
        return inputs.value(options[key])
    return str(options.get(f"{key}_value", fallback))


# -- showcase (catalog shots) -----------------------------------------------------

BACKDROPS: Final[Mapping[str, tuple[RGB, RGB]]] = {
    "Studio": ((245, 245, 245), (200, 200, 205)),
    "Urban": ((70, 80, 95), (30, 32, 38)),
    "Park": ((150, 205, 250), (70, 150, 60)),
    "White": ((255, 255, 255), (235, 235, 235)),
    "Grey": ((190, 190, 195), (120, 120, 128)),
    "Lifestyle": ((250, 225, 200), (180, 130, 100)),
}

HAIR_COLORS: Final[Mapping[str, RGB]] = {
    "Black": (25, 22, 20),
    "Brown": (100, 60, 30),
    "Blonde": (230, 200, 120),
    "Red": (170, 60, 30),
    "Grey": (160, 160, 160),
}

CANVAS: Final = (640, 640)


def _backdrop(values: Sequence[str], seed: bytes) -> Image.Image:
    for value in values:
        if value.strip() in BACKDROPS:
            top, bottom = BACKDROPS[value.strip()]
            break
    else:
        top, bottom = (
            _mix(_color_from(seed), (255, 255, 255), 0.5),
            _color_from(seed, 3),
        )
    canvas = _gradient(CANVAS, top, bottom)
    places = {value.strip() for value in values}
    if "Urban" in places:
        # A skyline, so Urban reads as a place and not just a dark colour.
        draw = ImageDraw.Draw(canvas)
        x = 0
        for i, byte in enumerate(seed[:12]):
            width = 40 + byte % 30
            height = 180 + (byte * 7 + i * 13) % 300
            draw.rectangle(
                (x, CANVAS[1] - height, x + width, CANVAS[1]), fill=(22, 24, 30)
            )
            x += width + 4
    if "Park" in places:
        draw = ImageDraw.Draw(canvas)
        draw.rectangle(
            (0, CANVAS[1] * 2 // 3, CANVAS[0], CANVAS[1]), fill=(80, 160, 70)
        )
        draw.ellipse((520, 40, 590, 110), fill=(255, 230, 120))
    return canvas


def _figure(canvas: Image.Image, body: str, hair: RGB, curly: bool) -> None:
    """A neutral mannequin behind the garment: width by body type, hair by style."""
    draw = ImageDraw.Draw(canvas)
    cx = CANVAS[0] // 2
    half = {"Plus Size": 150, "Muscular": 135}.get(body.strip(), 105)
    skin = (205, 195, 185)  # one mannequin tone for everyone, on purpose
    draw.rounded_rectangle((cx - half, 190, cx + half, 620), radius=60, fill=skin)
    draw.ellipse((cx - 55, 60, cx + 55, 180), fill=skin)
    if curly:
        for i in range(9):
            x = cx - 64 + i * 16
            draw.ellipse((x - 14, 40, x + 14, 80), fill=hair)
        draw.ellipse((cx - 75, 60, cx - 40, 150), fill=hair)
        draw.ellipse((cx + 40, 60, cx + 75, 150), fill=hair)
    else:
        draw.chord((cx - 60, 45, cx + 60, 150), 180, 360, fill=hair)
        draw.rectangle((cx - 62, 95, cx - 45, 200), fill=hair)
        draw.rectangle((cx + 45, 95, cx + 62, 200), fill=hair)


def _view(image: Image.Image, view: str) -> Image.Image:
    if view == "back":
        # Darken the colour only: ImageEnhance on RGBA would fade the alpha too.
        darker = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.85)
        darker.putalpha(image.getchannel("A"))
        return ImageOps.mirror(darker)
    if view == "side":
        # A side view is narrower and slightly sheared, like a turned product.
        narrow = image.resize((max(1, image.width * 11 // 20), image.height))
        return narrow.transform(
            narrow.size,
            Image.Transform.AFFINE,
            (1, 0, 0, -0.12, 1, narrow.width * 0.06),
            resample=Image.Resampling.BILINEAR,
        )
    if view == "detail":
        w, h = image.size
        return image.crop((w // 4, h // 4, w * 3 // 4, h * 3 // 4))
    return image


def _showcase(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    image_name = options["image"]
    backdrop_names: list[str] = list(options.get("backdrop", []))
    caption_names: list[str] = list(options.get("caption", []))
    seed = inputs.seed(image_name, *backdrop_names, *caption_names)
    backdrop_values = [inputs.value(n) for n in backdrop_names]
    if "backdrop_value" in options:
        backdrop_values.append(options["backdrop_value"])

    canvas = _backdrop(backdrop_values, seed)
    figure = {
        key: inputs.value(options[f"figure_{key}"]).strip()
        if f"figure_{key}" in options
        else ""
        for key in ("body", "hair_color", "hair_style")
    }
    if any(figure.values()):
        hair = HAIR_COLORS.get(figure["hair_color"], _color_from(seed, 6))
        _figure(canvas, figure["body"], hair, curly=figure["hair_style"] == "Curly")

    product = _view(inputs.image(image_name), str(options.get("view", "front")))
    box = (int(CANVAS[0] * float(options.get("scale", 0.7))),) * 2
    product = ImageOps.contain(product, box)
    x = (CANVAS[0] - product.width) // 2
    y = (CANVAS[1] - product.height) // 2 + int(options.get("offset_y", 0))
    # The soft shadow is blurred at quarter size: same look, a sixteenth of the work.
    small = product.getchannel("A").reduce(4).point(lambda a: a * 90 // 255)
    alpha = small.filter(ImageFilter.GaussianBlur(2)).resize(product.size)
    shadow = Image.new("RGBA", product.size, (0, 0, 0, 0))
    shadow.putalpha(alpha)
    canvas.paste(shadow, (x + 10, y + 14), shadow)
    canvas.paste(product, (x, y), product)

    parts = [str(options["title"])] if "title" in options else []
    parts += [inputs.value(n).strip() for n in caption_names]
    _caption(canvas, " · ".join(p for p in parts if p))
    return _png(canvas)


# -- animation --------------------------------------------------------------------


def _animation(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    count = int(options.get("frames", 8))
    side = int(options.get("size", 240))
    base = _flatten(inputs.image(options["image"]))
    base = crop_to_ratio(base, (1, 1)).resize((side, side), Image.Resampling.BICUBIC)
    # Photo grain compresses badly in GIF and adds nothing to a 240 px preview.
    base = base.filter(ImageFilter.GaussianBlur(0.8))

    # A slow push-in with a light sweep: cheap, obviously moving, built from the input.
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        inset = round(side * 0.18 * t)
        frame = base.crop((inset, inset, side - inset, side - inset)).resize(
            (side, side), Image.Resampling.BILINEAR
        )
        sweep = Image.new("L", (side, side), 0)
        x = round(-side * 0.3 + side * 1.6 * t)
        ImageDraw.Draw(sweep).polygon(
            [
                (x, 0),
                (x + side // 5, 0),
                (x - side // 5, side),
                (x - side * 2 // 5, side),
            ],
            fill=90,
        )
        frame.paste((255, 255, 255), mask=sweep)
        frames.append(frame)
    if "caption" in options:
        for frame in frames:
            _caption(frame, inputs.value(options["caption"]), size=14)

    duration = int(options.get("duration_ms", 120))
    if options.get("format", "gif") == "webp":
        return _webp(frames, duration)
    return _gif(frames, duration)


# -- reel (text to title cards) ---------------------------------------------------

REEL_STYLES: Final[Mapping[str, tuple[RGB, RGB, RGB]]] = {
    # top, bottom, accent
    "Cinematic": ((10, 40, 50), (60, 30, 10), (255, 160, 60)),
    "Minimalist": ((250, 250, 250), (230, 230, 230), (20, 20, 20)),
    "Vibrant": ((255, 0, 140), (255, 200, 0), (0, 220, 255)),
    "Vintage": ((200, 170, 120), (110, 80, 50), (250, 235, 200)),
    "Nature": ((120, 190, 120), (30, 90, 40), (250, 240, 170)),
    "Studio": ((180, 180, 185), (90, 90, 95), (255, 255, 255)),
    "Lifestyle": ((255, 210, 180), (200, 120, 110), (255, 250, 240)),
}

SCENE_WORDS: Final = ("Hook", "Problem", "Reveal", "Proof", "Call to action")


def _title_card(
    text: str, style: str, scene: int, size: tuple[int, int]
) -> Image.Image:
    seed = hashlib.sha256(f"{text}\0{style}\0{scene}".encode()).digest()
    top, bottom, accent = REEL_STYLES.get(
        style, (_color_from(seed), _color_from(seed, 3), _color_from(seed, 6))
    )
    card = _gradient(size, top, bottom)
    draw = ImageDraw.Draw(card)
    w, h = size
    # A shape whose place and size come from the idea, so scenes differ visibly.
    r = w // 8 + seed[0] % (w // 6)
    cx, cy = w // 6 + seed[1] * (w * 2 // 3) // 255, h // 6 + seed[2] * (h // 3) // 255
    draw.ellipse(
        (cx - r, cy - r, cx + r, cy + r), outline=accent, width=max(2, w // 60)
    )
    if style == "Cinematic":
        bar = h // 10
        draw.rectangle((0, 0, w, bar), fill=(0, 0, 0))
        draw.rectangle((0, h - bar, w, h), fill=(0, 0, 0))
    font = _font(max(12, w // 18))
    label = SCENE_WORDS[(scene - 1) % len(SCENE_WORDS)]
    draw.text(
        (w // 12, h // 2), _safe_text(font, f"{scene}. {label}"), font=font, fill=accent
    )
    _caption(card, text, size=max(12, w // 24))
    return card


def _reel_frame(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    text = inputs.value(options["text"])
    style = _choose(options, inputs, "style", "Cinematic")
    return _png(_title_card(text, style, int(options.get("scene", 1)), (540, 960)))


def _reel(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    text = inputs.value(options["text"])
    style = _choose(options, inputs, "style", "Cinematic")
    scenes = int(options.get("scenes", 5))
    frames = [_title_card(text, style, i + 1, (180, 320)) for i in range(scenes)]
    return _gif(frames, int(options.get("duration_ms", 600)))


# -- copywriter (text) ------------------------------------------------------------

COPY: Final[Mapping[str, Mapping[str, Any]]] = {
    "English": {
        "open": {
            "Friendly": "Say hello to {p}, the easy-going favourite for every day.",
            "Professional": "Introducing {p}: dependable performance, built to last.",
            "Playful": "Psst, {p} is here, and your routine just got a lot more fun!",
            "Luxurious": "Indulge in {p}, where every detail is crafted to delight.",
        },
        "body": (
            "Made with care and designed to last, {p} fits right into your life.",
            "From the first use, {p} shows why the little things matter.",
        ),
        "close": ("Try {p} today.", "Discover {p} now."),
        "tone_line": "Tone: {t}",
        "tones": {},
    },
    "French": {
        "open": {
            "Friendly": "Dites bonjour à {p}, le compagnon sympathique du quotidien.",
            "Professional": "Voici {p} : des performances fiables et exigeantes.",
            "Playful": "Psst, {p} est arrivé : la vie devient plus amusante !",
            "Luxurious": "Offrez-vous {p}, où chaque détail est pensé pour séduire.",
        },
        "body": (
            "Fabriqué avec soin et conçu pour durer, {p} s'intègre à votre vie.",
            "Dès la première utilisation, {p} montre que les détails comptent.",
        ),
        "close": ("Essayez {p} dès aujourd'hui.", "Découvrez {p} maintenant."),
        "tone_line": "Ton : {t}",
        "tones": {
            "Friendly": "amical",
            "Professional": "professionnel",
            "Playful": "ludique",
            "Luxurious": "luxueux",
        },
    },
    "German": {
        "open": {
            "Friendly": "Sag hallo zu {p}, deinem freundlichen Begleiter.",
            "Professional": "Wir präsentieren {p}: zuverlässige Leistung.",
            "Playful": "Psst, {p} ist da, und dein Alltag wird gleich viel lustiger!",
            "Luxurious": "Gönnen Sie sich {p}, bei dem jedes Detail begeistert.",
        },
        "body": (
            "Mit Sorgfalt gefertigt und langlebig gebaut, passt {p} in Ihr Leben.",
            "Schon beim ersten Gebrauch zeigt {p}, worauf es ankommt.",
        ),
        "close": ("Probieren Sie {p} noch heute.", "Entdecken Sie {p} jetzt."),
        "tone_line": "Ton: {t}",
        "tones": {
            "Friendly": "freundlich",
            "Professional": "professionell",
            "Playful": "verspielt",
            "Luxurious": "luxuriös",
        },
    },
    "Spanish": {
        "open": {
            "Friendly": "Saluda a {p}, el compañero amable para todos tus días.",
            "Professional": "Presentamos {p}: un rendimiento fiable y exigente.",
            "Playful": "Psst, ¡{p} ya está aquí y tu rutina será mucho más divertida!",
            "Luxurious": "Disfruta de {p}, donde cada detalle enamora.",
        },
        "body": (
            "Hecho con cuidado y pensado para durar, {p} encaja en tu vida.",
            "Desde el primer uso, {p} demuestra que los detalles importan.",
        ),
        "close": ("Prueba {p} hoy mismo.", "Descubre {p} ahora."),
        "tone_line": "Tono: {t}",
        "tones": {
            "Friendly": "amable",
            "Professional": "profesional",
            "Playful": "divertido",
            "Luxurious": "lujoso",
        },
    },
    "Japanese": {
        "open": {
            "Friendly": "毎日に寄り添う、やさしい相棒「{p}」をご紹介します。",
            "Professional": "「{p}」は、高い基準で作られた信頼の性能をお届けします。",
            "Playful": "じゃーん！「{p}」が登場して、毎日がもっと楽しくなります！",  # noqa: RUF001
            "Luxurious": "細部まで美しく仕上げた「{p}」で、特別なひとときを。",
        },
        "body": (
            "丁寧に作られ、長く使える「{p}」は、あなたの暮らしになじみます。",
            "初めて使ったその瞬間から、「{p}」の違いを感じられます。",
        ),
        "close": ("今すぐ「{p}」をお試しください。", "「{p}」を今日から始めましょう。"),
        "tone_line": "トーン：{t}",  # noqa: RUF001
        "tones": {
            "Friendly": "フレンドリー",
            "Professional": "プロフェッショナル",
            "Playful": "遊び心",
            "Luxurious": "ラグジュアリー",
        },
    },
}


def _copywriter(options: Mapping[str, Any], inputs: _Inputs) -> Rendered:
    product = " ".join(inputs.value(options["product"]).split()) or "this product"
    language = _choose(options, inputs, "language", "English").strip()
    tone = _choose(options, inputs, "tone", "Friendly").strip()
    seed = inputs.seed(
        options["product"], *(options.get(k, "") for k in ("language", "tone"))
    )

    copy = COPY.get(language, COPY["English"])
    opening = copy["open"].get(tone, copy["open"]["Friendly"])
    body = copy["body"][seed[0] % len(copy["body"])]
    close = copy["close"][seed[1] % len(copy["close"])]
    tone_word = copy["tones"].get(tone, tone.lower())
    separator = "" if language == "Japanese" else " "
    text = separator.join(s.format(p=product) for s in (opening, body, close))
    text = f"{text}\n\n{copy['tone_line'].format(t=tone_word)}\n"
    return Rendered(text.encode(), "text/plain; charset=utf-8", ".txt", text=text)


# -- registry ---------------------------------------------------------------------

_URL = ("url",)
_CHOICE = ("options", "text")

RENDERERS: Final[Mapping[str, Renderer]] = {
    r.name: r
    for r in (
        Renderer(
            "cartoonify",
            "image",
            {
                "image": OptionSpec("parameter", required=True, param_types=_URL),
                "style": OptionSpec("parameter", param_types=_CHOICE),
                "style_value": OptionSpec("str"),
                "aspect": OptionSpec("parameter", param_types=_CHOICE),
                "aspect_value": OptionSpec("str"),
            },
            _cartoonify,
        ),
        Renderer(
            "showcase",
            "image",
            {
                "image": OptionSpec("parameter", required=True, param_types=_URL),
                "backdrop": OptionSpec("parameters", param_types=_CHOICE),
                "backdrop_value": OptionSpec("str"),
                "caption": OptionSpec("parameters", param_types=_CHOICE),
                "title": OptionSpec("str"),
                "view": OptionSpec("str", choices=("front", "back", "side", "detail")),
                "scale": OptionSpec("float", bounds=(0.1, 1.0)),
                "offset_y": OptionSpec("int", bounds=(-320, 320)),
                "figure_body": OptionSpec("parameter", param_types=_CHOICE),
                "figure_hair_color": OptionSpec("parameter", param_types=_CHOICE),
                "figure_hair_style": OptionSpec("parameter", param_types=_CHOICE),
            },
            _showcase,
        ),
        Renderer(
            "animation",
            "video",
            {
                "image": OptionSpec("parameter", required=True, param_types=_URL),
                "caption": OptionSpec("parameter", param_types=_CHOICE),
                "frames": OptionSpec("int", bounds=(2, 24)),
                "size": OptionSpec("int", bounds=(32, 512)),
                "duration_ms": OptionSpec("int", bounds=(20, 5000)),
                "format": OptionSpec("str", choices=("gif", "webp")),
            },
            _animation,
        ),
        Renderer(
            "reel_frame",
            "image",
            {
                "text": OptionSpec("parameter", required=True, param_types=_CHOICE),
                "style": OptionSpec("parameter", param_types=_CHOICE),
                "style_value": OptionSpec("str"),
                "scene": OptionSpec("int", bounds=(1, 99)),
            },
            _reel_frame,
        ),
        Renderer(
            "reel",
            "video",
            {
                "text": OptionSpec("parameter", required=True, param_types=_CHOICE),
                "style": OptionSpec("parameter", param_types=_CHOICE),
                "style_value": OptionSpec("str"),
                "scenes": OptionSpec("int", bounds=(2, 12)),
                "duration_ms": OptionSpec("int", bounds=(20, 5000)),
            },
            _reel,
        ),
        Renderer(
            "copywriter",
            "text",
            {
                "product": OptionSpec("parameter", required=True, param_types=_CHOICE),
                "language": OptionSpec("parameter", param_types=_CHOICE),
                "language_value": OptionSpec("str"),
                "tone": OptionSpec("parameter", param_types=_CHOICE),
                "tone_value": OptionSpec("str"),
            },
            _copywriter,
        ),
    )
}


def render_output(
    app: SandboxApp,
    index: int,
    inputs: Mapping[str, str],
    media: Mapping[str, bytes],
) -> Rendered:
    """Output number `index` of `app` for these inputs.

    `inputs` holds every parameter by exact name, defaults already filled in; `media`
    holds, for each url parameter, the bytes fetched from its URL. The same arguments
    always give a byte-identical result. Safe to call from several threads at once.
    Raises RenderError when the inputs cannot produce this output (e.g. the media is
    not an image) and IndexError for an index the app does not have.
    """
    if not 0 <= index < len(app.outputs):
        raise IndexError(f"{app.name} has no output {index}")
    output = app.outputs[index]
    renderer = RENDERERS.get(output.renderer)
    if renderer is None:
        raise RenderError(
            f"{app.name}: output {index} names unknown renderer {output.renderer!r}"
        )

    rendered = renderer.produce(output.options, _Inputs(inputs, media))
    logger.debug(
        "sandbox.render app=%s output=%d renderer=%s bytes=%d",
        app.app_id,
        index,
        output.renderer,
        len(rendered.data),
    )
    return rendered
