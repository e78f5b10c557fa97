"""Output file names: safe, bounded, collision-free."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from batchrun.naming import (
    MAX_COMPONENT_BYTES,
    output_ext,
    output_path,
    slug,
    with_suffix_number,
)
from batchrun.templates import parse_template


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Disney / Pixar", "Disney - Pixar"),
        ("16:9", "16-9"),
        ("../../etc/passwd", "-..-etc-passwd"),
        ("a\x00b\nc", "a-b-c"),
        ("..", "_"),
        ("  Standard  ", "Standard"),
    ],
    ids=["slash", "colon", "traversal", "control", "dots", "spaces"],
)
def test_slug_makes_values_safe(value, expected):
    assert slug(value) == expected


def test_values_cannot_escape_the_output_folder():
    template = parse_template("{app}/{Upload}{ext}")

    path = output_path(template, {"app": "..", "Upload": "../../x", "ext": ".png"})

    assert ".." not in path.parts
    assert not path.is_absolute()


def test_a_template_that_climbs_out_is_refused():
    with pytest.raises(ValueError, match="unsafe path"):
        output_path(parse_template("../{key}{ext}"), {"key": "k", "ext": ".png"})


def test_long_names_are_cut_to_the_file_system_limit_keeping_the_extension():
    template = parse_template("{Prompt}{ext}")

    path = output_path(template, {"Prompt": "é" * 400, "ext": ".png"})

    assert len(path.name.encode()) <= MAX_COMPONENT_BYTES
    assert path.suffix == ".png"


def test_a_taken_name_gets_a_number():
    assert with_suffix_number(PurePosixPath("a/b.png"), 2) == PurePosixPath("a/b-2.png")


@pytest.mark.parametrize(
    ("output", "ext"),
    [
        ({"type": "image", "value": "http://h/x/a.webp?sig=1"}, ".webp"),
        ({"type": "image", "value": "http://h/x/noext"}, ".png"),
        ({"type": "video", "value": "http://h/x/v"}, ".mp4"),
        ({"type": "text", "value": "Hello world."}, ".txt"),
    ],
    ids=["from-url", "image-default", "video-default", "text"],
)
def test_output_ext(output, ext):
    assert output_ext(output) == ext
