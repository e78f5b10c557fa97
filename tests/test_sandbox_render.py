"""The sandbox's renderers: real, deterministic files built from a run's inputs."""

from __future__ import annotations

import io
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from batchrun.sandbox.catalog import SandboxApp, load_catalog
from batchrun.sandbox.render import MAX_SIDE, Rendered, RenderError, render_output

STYLES = ["Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk"]

# One valid input per app: every parameter by exact name, as the server fills them in.
INPUTS: dict[str, dict[str, str]] = {
    "Cartoonify!": {
        "Upload": "https://x.test/a.png",
        "Style": "Ghibli",
        "Aspect Ratio": "1:1",
    },
    "Full Set Catalog Generation": {
        "Front": "https://x.test/front.png",
        "Back": "https://x.test/back.png",
        "Model Gender": "Female",
        "Model  Ethnicity": "South Asian",
        "Model Body type": "Standard ",
        "Model Hair color": "Black",
        "Model Hair Style": "Straight ",
    },
    "Example Catalog App": {
        "Front": "https://x.test/shoe.png",
        "Location": "Studio",
        "Prompt": "A red sneaker, side light",
    },
    "Product Copywriter": {
        "Product": "Aurora Lamp",
        "Language": "English",
        "Tone": "Friendly",
    },
    "Product Catalog": {
        "Product Image": "https://x.test/lamp.png",
        "Product Name": "Aurora Lamp",
        "Background": "White",
    },
    "Quick Reel Maker": {
        "Idea": "Morning coffee in a tiny flat",
        "Visual Style": "Cinematic",
    },
}


def photo(
    width: int = 512, height: int = 512, fmt: str = "PNG", seed: int = 0
) -> bytes:
    """A synthetic photo: colour gradients with a few solid shapes (real edges)."""
    red = Image.linear_gradient("L").resize((width, height))
    green = red.rotate(90).resize((width, height))
    blue = Image.radial_gradient("L").resize((width, height))
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4),
        fill=(230, 180 - seed * 40, 140),
    )
    draw.rectangle(
        (width // 12, height // 2, width // 3, height * 9 // 10), fill=(30, 90, 200)
    )
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


PHOTO = photo()


@pytest.fixture(scope="module")
def catalog() -> dict[str, SandboxApp]:
    return {app.name: app for app in load_catalog()}


def media_for(app: SandboxApp, data: bytes = PHOTO) -> dict[str, bytes]:
    return {p["name"]: data for p in app.app["parameters"] if p["type"] == "url"}


_rendered: dict[tuple[str, int, tuple[tuple[str, str], ...]], Rendered] = {}


def render(
    catalog: dict[str, SandboxApp], name: str, index: int = 0, **changes: str
) -> Rendered:
    """Output `index` of app `name` for its standard inputs with `changes` applied.

    Results are memoised (rendering is pure, and the determinism test below proves
    that), so tests comparing the same outputs do not pay for them twice.
    """
    key = (name, index, tuple(sorted(changes.items())))
    if key not in _rendered:
        app = catalog[name]
        inputs = {**INPUTS[name], **changes}
        _rendered[key] = render_output(app, index, inputs, media_for(app))
    return _rendered[key]


def opened(rendered: Rendered) -> Image.Image:
    image = Image.open(io.BytesIO(rendered.data))
    image.load()
    return image


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel (0..255), after matching sizes."""
    a, b = a.convert("RGB"), b.convert("RGB").resize(a.size)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def every_output() -> list[tuple[str, int]]:
    return [
        (app.name, index) for app in load_catalog() for index in range(len(app.outputs))
    ]


@pytest.mark.parametrize(("name", "index"), every_output(), ids=lambda v: str(v))
def test_same_inputs_give_identical_bytes(
    catalog: dict[str, SandboxApp], name: str, index: int
):
    app = catalog[name]

    first = render(catalog, name, index)
    second = render_output(app, index, dict(INPUTS[name]), media_for(app, bytes(PHOTO)))

    assert first.data == second.data
    assert first.content_type == second.content_type
    assert len(first.data) > 0


@pytest.mark.parametrize(("name", "index"), every_output(), ids=lambda v: str(v))
def test_output_file_matches_its_declared_type(
    catalog: dict[str, SandboxApp], name: str, index: int
):
    spec = catalog[name].outputs[index]

    rendered = render(catalog, name, index)

    if spec.type == "text":
        assert rendered.content_type == "text/plain; charset=utf-8"
        assert rendered.ext == ".txt"
        assert rendered.text and rendered.data == rendered.text.encode()
    else:
        image = opened(rendered)
        assert rendered.content_type == Image.MIME[image.format]
        assert rendered.ext == "." + image.format.lower()
        assert rendered.text is None
        assert getattr(image, "n_frames", 1) > 1 if spec.type == "video" else True


def test_cartoonify_output_differs_from_the_input(catalog: dict[str, SandboxApp]):
    source = Image.open(io.BytesIO(PHOTO))

    results = [opened(render(catalog, "Cartoonify!", Style=s)) for s in STYLES]

    for style, result in zip(STYLES, results, strict=True):
        assert mean_difference(source, result) > 8, style


@pytest.mark.parametrize(
    ("one", "other"), list(itertools.combinations(STYLES, 2)), ids=lambda s: s
)
def test_each_cartoonify_style_differs_from_every_other(
    catalog: dict[str, SandboxApp], one: str, other: str
):
    first = opened(render(catalog, "Cartoonify!", Style=one))

    second = opened(render(catalog, "Cartoonify!", Style=other))

    # Re-encoding noise is 0 (PNG is lossless); styles differ by tens of levels.
    assert mean_difference(first, second) > 8


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (512, 512)),
        ("4:3", (512, 384)),
        ("3:4", (384, 512)),
        ("16:9", (512, 288)),
        ("9:16", (288, 512)),
    ],
)
def test_aspect_ratio_crops_a_square_photo_to_exact_size(
    catalog: dict[str, SandboxApp], ratio: str, size: tuple[int, int]
):
    rendered = render(catalog, "Cartoonify!", **{"Aspect Ratio": ratio})

    assert opened(rendered).size == size


@pytest.mark.parametrize("ratio", ["1:1", "4:3", "3:4", "16:9", "9:16"])
def test_aspect_ratio_is_exact_for_an_odd_sized_photo(
    catalog: dict[str, SandboxApp], ratio: str
):
    app = catalog["Cartoonify!"]
    inputs = {**INPUTS["Cartoonify!"], "Aspect Ratio": ratio}
    a, b = (int(x) for x in ratio.split(":"))

    rendered = render_output(app, 0, inputs, {"Upload": photo(701, 433)})

    width, height = opened(rendered).size
    assert width * b == height * a
    assert max(width, height) >= 400  # the largest such box, not a token crop


def test_large_input_is_downscaled_before_rendering(catalog: dict[str, SandboxApp]):
    app = catalog["Cartoonify!"]
    big = photo(3000, 2000, fmt="JPEG")

    rendered = render_output(app, 0, INPUTS["Cartoonify!"], {"Upload": big})

    assert max(opened(rendered).size) <= MAX_SIDE


def test_cartoonify_renders_well_under_100_ms(catalog: dict[str, SandboxApp]):
    app = catalog["Cartoonify!"]
    timings = {}

    for style in STYLES:
        inputs = {**INPUTS["Cartoonify!"], "Style": style}
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            render_output(app, 0, inputs, {"Upload": PHOTO})
            best = min(best, time.perf_counter() - start)
        timings[style] = best

    # Best of three, so another process stealing the CPU once does not fail the test.
    assert max(timings.values()) < 0.100, timings


@pytest.mark.parametrize(
    ("name", "label"),
    [("Product Catalog", "Catalog Video"), ("Quick Reel Maker", "Reel")],
)
def test_video_output_is_a_real_multi_frame_animation(
    catalog: dict[str, SandboxApp], name: str, label: str
):
    index = [o.label for o in catalog[name].outputs].index(label)

    rendered = render(catalog, name, index)

    animation = opened(rendered)
    assert animation.is_animated
    assert animation.n_frames > 1
    assert len(rendered.data) < 200_000
    frames = []
    for i in (0, animation.n_frames - 1):
        animation.seek(i)
        frames.append(animation.convert("RGB"))
    assert mean_difference(*frames) > 2


def test_catalog_video_is_built_from_the_input_image(catalog: dict[str, SandboxApp]):
    app = catalog["Product Catalog"]
    index = [o.label for o in app.outputs].index("Catalog Video")

    one = render_output(app, index, INPUTS[app.name], media_for(app, photo(seed=0)))
    other = render_output(app, index, INPUTS[app.name], media_for(app, photo(seed=3)))

    assert one.data != other.data


def test_copy_mentions_the_product_and_tone(catalog: dict[str, SandboxApp]):
    rendered = render(catalog, "Product Copywriter", Tone="Playful")

    assert rendered.text is not None
    assert rendered.text.count("Aurora Lamp") >= 2
    assert "Tone: playful" in rendered.text


def test_copy_depends_on_the_product(catalog: dict[str, SandboxApp]):
    lamp = render(catalog, "Product Copywriter")

    kettle = render(catalog, "Product Copywriter", Product="Nimbus Kettle")

    assert "Nimbus Kettle" in (kettle.text or "")
    assert "Aurora Lamp" not in (kettle.text or "")
    assert lamp.text != kettle.text


@pytest.mark.parametrize(
    ("language", "marker"),
    [
        ("French", "Ton : amical"),
        ("German", "Ton: freundlich"),
        ("Spanish", "Tono: amable"),
        ("Japanese", "「Aurora Lamp」"),
    ],
)
def test_copy_is_written_in_the_chosen_language(
    catalog: dict[str, SandboxApp], language: str, marker: str
):
    english = render(catalog, "Product Copywriter")

    other = render(catalog, "Product Copywriter", Language=language)

    assert other.text != english.text
    assert marker in (other.text or "")


def test_backdrop_depends_on_location(catalog: dict[str, SandboxApp]):
    studio = opened(render(catalog, "Example Catalog App", Location="Studio"))

    park = opened(render(catalog, "Example Catalog App", Location="Park"))

    assert mean_difference(studio, park) > 20


def test_prompt_is_drawn_on_the_image(catalog: dict[str, SandboxApp]):
    one = render(catalog, "Example Catalog App")

    other = render(catalog, "Example Catalog App", Prompt="A blue boot in the snow")

    assert one.data != other.data


@pytest.mark.parametrize(
    "change",
    [
        {"Model Hair Style": "Curly"},
        {"Model Body type": "Plus Size"},
        {"Model Hair color": "Red"},
        {"Model  Ethnicity": "Latin American"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_full_set_front_look_depends_on_model_options(
    catalog: dict[str, SandboxApp], change: dict[str, str]
):
    base = render(catalog, "Full Set Catalog Generation")

    changed = render(catalog, "Full Set Catalog Generation", **change)

    assert base.data != changed.data


def test_quick_reel_scenes_differ_and_follow_the_style(catalog: dict[str, SandboxApp]):
    scenes = [opened(render(catalog, "Quick Reel Maker", i)) for i in range(5)]

    vintage = opened(
        render(catalog, "Quick Reel Maker", 0, **{"Visual Style": "Vintage"})
    )

    assert all(mean_difference(a, b) > 0.5 for a, b in itertools.pairwise(scenes))
    assert mean_difference(scenes[0], vintage) > 20


@pytest.mark.parametrize(
    "data",
    [
        b"<html>404 Not Found</html>",
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        PHOTO[: len(PHOTO) // 2],
    ],
    ids=["html", "empty", "png-signature-only", "png-cut-in-half"],
)
def test_non_image_media_raises_render_error(
    catalog: dict[str, SandboxApp], data: bytes
):
    app = catalog["Cartoonify!"]

    with pytest.raises(RenderError, match="'Upload': media is not a readable image"):
        render_output(app, 0, INPUTS["Cartoonify!"], {"Upload": data})


def test_missing_media_raises_render_error(catalog: dict[str, SandboxApp]):
    app = catalog["Example Catalog App"]

    with pytest.raises(RenderError, match="'Front': no media bytes"):
        render_output(app, 0, INPUTS["Example Catalog App"], {})


def test_unknown_output_index_raises_index_error(catalog: dict[str, SandboxApp]):
    app = catalog["Cartoonify!"]

    with pytest.raises(IndexError):
        render_output(app, -1, INPUTS["Cartoonify!"], media_for(app))


def test_parallel_renders_match_serial_ones(catalog: dict[str, SandboxApp]):
    jobs = [
        (catalog["Cartoonify!"], {**INPUTS["Cartoonify!"], "Style": style})
        for style in STYLES
    ] + [(catalog["Example Catalog App"], INPUTS["Example Catalog App"])]
    serial = [
        render_output(app, 0, inputs, media_for(app)).data for app, inputs in jobs
    ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(
            pool.map(
                lambda job: render_output(job[0], 0, job[1], media_for(job[0])).data,
                jobs * 2,
            )
        )

    assert parallel == serial * 2


def test_transparent_cutout_sits_on_the_backdrop(catalog: dict[str, SandboxApp]):
    app = catalog["Example Catalog App"]
    cutout = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).ellipse((100, 100, 300, 300), fill=(200, 30, 30, 255))
    buffer = io.BytesIO()
    cutout.save(buffer, "PNG")

    rendered = render_output(
        app, 0, INPUTS["Example Catalog App"], {"Front": buffer.getvalue()}
    )

    shot = opened(rendered).convert("RGB")
    # Inside the pasted box but outside the disc, the backdrop shows through: same
    # colour as the backdrop beside the box on that row, not a black or white square.
    assert shot.getpixel((110, 110)) == shot.getpixel((20, 110))
    assert shot.getpixel((20, 110))[0] > 200  # Studio is a light grey
    assert shot.getpixel((320, 320)) == (200, 30, 30)  # the product, centred


def test_renderers_serve_a_user_catalog_with_other_names(tmp_path: Path):
    document = {
        "apps": [
            {
                "appId": "0b7d0f1e-5a77-4c1e-9f51-3a8f0c6f2d11",
                "name": "Turntable",
                "parameters": [
                    {"name": "Photo", "type": "url", "required": True},
                    {"name": "Look", "type": "options", "options": ["Cyberpunk"]},
                ],
                "outputs": [
                    {
                        "label": "Spin",
                        "type": "video",
                        "renderer": "animation",
                        "options": {"image": "Photo", "format": "webp", "frames": 4},
                    },
                    {
                        "label": "Still",
                        "type": "image",
                        "renderer": "cartoonify",
                        "options": {"image": "Photo", "style": "Look"},
                    },
                ],
            }
        ]
    }
    path = tmp_path / "apps.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    (app,) = load_catalog(path)
    inputs = {"Photo": "https://x.test/p.png", "Look": "Cyberpunk"}

    spin = render_output(app, 0, inputs, {"Photo": PHOTO})
    still = render_output(app, 1, inputs, {"Photo": PHOTO})

    assert (spin.content_type, spin.ext) == ("image/webp", ".webp")
    assert opened(spin).n_frames == 4
    assert spin.data == render_output(app, 0, inputs, {"Photo": PHOTO}).data
    assert opened(still).size == (512, 512)
