"""Checking values against app parameters, suggestions, and problem aggregation."""

import pytest

from batchrun.apps import App
from batchrun.errors import Problem
from batchrun.validate import (
    ProblemLog,
    ValueChecker,
    accepted_extensions,
    describe_difference,
    did_you_mean,
    suggest,
    unknown_parameter,
)

CARTOONIFY = {
    "appId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587",
    "name": "Cartoonify!",
    "description": "Just upload your photo and convert it into an Cartoon of your "
    "favorite style!",
    "parameters": [
        {"id": "4a45d4c6-808e-45e8-9f7c-6a06953583fb", "name": "Upload",
         "type": "url", "required": False, "accept": ["image"],
         "default": "https://media.getmason.io/api/assetlib/"
         "55e99714-d15d-43fe-9e9b-ead418b7ba67.png"},
        {"id": "1977e11b-d91b-4f65-802c-b37b597fa8d9", "name": "Style",
         "type": "options", "required": False,
         "options": ["Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk"]},
        {"id": "5c237908-e6ed-4d4b-bd1d-6253bf60a8a5", "name": "Aspect Ratio",
         "type": "options", "required": False,
         "options": ["1:1", "4:3", "3:4", "16:9", "9:16"], "default": "1:1"},
    ],
}  # fmt: skip

FULL_SET = {
    "appId": "173692dd-0258-41bd-8a56-2cf9bbe89910",
    "name": "Full Set Catalog Generation",
    "parameters": [
        {"name": "Front", "type": "url", "default": "https://cdn.example/f.png"},
        {"name": "Back", "type": "url", "default": "https://cdn.example/b.png"},
        {"name": "Model Gender", "type": "options", "options": ["Male", "Female"]},
        {"name": "Model  Ethnicity", "type": "options",
         "options": ["Caucasian", "Asian", "African", "Latin American", "South Asian",
                     "Middle Eastern"]},
        {"name": "Model Body type", "type": "options",
         "options": ["Standard ", "Plus Size", "Muscular"]},
        {"name": "Model Hair Style", "type": "options",
         "options": ["Straight ", "Curly"]},
    ],
}  # fmt: skip


@pytest.fixture
def cartoonify() -> App:
    return App.from_api(CARTOONIFY)


@pytest.fixture
def full_set() -> App:
    return App.from_api(FULL_SET)


def test_a_name_differing_only_in_spaces_is_suggested_with_spaces_visible(full_set):
    message = unknown_parameter("Model Ethnicity", full_set)

    assert message == (
        "'Model Ethnicity' is not a parameter of Full Set Catalog Generation; did you "
        "mean 'Model␣␣Ethnicity' (two spaces)?"
    )


def test_a_label_missing_its_trailing_space_is_suggested_visibly(full_set, tmp_path):
    checker = ValueChecker(full_set, tmp_path)

    checked = checker.check(full_set.parameter("Model Body type"), "Standard")

    assert checked.reason == (
        "is not an option of Full Set Catalog Generation; did you mean 'Standard␣' "
        "(trailing space)?"
    )


def test_a_wrong_label_suggests_the_label_containing_it(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(cartoonify.parameter("Style"), "Pixar")

    assert checked.reason == (
        "is not an option of Cartoonify!; did you mean 'Disney / Pixar'?"
    )


def test_a_label_with_no_close_match_lists_the_options(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(cartoonify.parameter("Style"), "Van Gogh")

    assert checked.reason == (
        "is not an option of Cartoonify! (options: 'Ghibli', 'Simpsons', "
        "'Disney / Pixar', 'Cyberpunk')"
    )


@pytest.mark.parametrize(
    ("word", "candidates", "expected"),
    [
        ("Stlye", ["Style", "Upload"], "Style"),
        ("ghibli", ["Ghibli", "Simpsons"], "Ghibli"),
        ("aspect ratio", ["Aspect Ratio", "Style"], "Aspect Ratio"),
        ("Pixar", ["Ghibli", "Disney / Pixar"], "Disney / Pixar"),
        ("zzz", ["Ghibli", "Simpsons"], None),
        ("Style", ["Style"], None),
    ],
    ids=["typo", "case", "case-and-space", "contained", "nothing-close", "itself"],
)
def test_suggest_finds_the_intended_name(word, candidates, expected):
    assert suggest(word, candidates) == expected


@pytest.mark.parametrize(
    ("given", "wanted", "described"),
    [
        ("Standard", "Standard ", "trailing space"),
        ("Standard  ", "Standard ", "trailing space"),
        ("Straight ", "Straight", "no trailing space"),
        ("Curly", " Curly", "leading space"),
        ("Model Ethnicity", "Model  Ethnicity", "two spaces"),
        ("ghibli", "Ghibli", "different case"),
        ("model ethnicity ", "Model  Ethnicity", "no trailing space, two spaces, "
         "different case"),
    ],
)  # fmt: skip
def test_describe_difference_names_what_differs(given, wanted, described):
    assert describe_difference(given, wanted) == described


def test_did_you_mean_is_plain_when_the_difference_is_visible():
    assert did_you_mean("Stlye", ["Style"]) == "; did you mean 'Style'?"
    assert did_you_mean("x", []) == ""


def test_http_urls_are_accepted_and_named_by_their_stem(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(
        cartoonify.parameter("Upload"), "https://ex.com/a/x.png?s=1"
    )

    assert checked.reason is None
    assert (checked.value, checked.name, checked.file) == (
        "https://ex.com/a/x.png?s=1",
        "x",
        None,
    )


def test_a_local_file_resolves_against_the_spec_folder(cartoonify, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mug.PNG").write_bytes(b"\x89PNG")
    checker = ValueChecker(cartoonify, tmp_path / "specs")

    checked = checker.check(cartoonify.parameter("Upload"), "../photos/mug.PNG")

    assert checked.reason is None
    assert checked.file == str(tmp_path / "photos" / "mug.PNG")
    assert (checked.value, checked.name) == (checked.file, "mug")


def test_a_missing_local_file_names_the_path_looked_for(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path / "specs")

    checked = checker.check(cartoonify.parameter("Upload"), "../examples/nope.png")

    assert checked.reason == (
        f"is not a file (looked for {tmp_path / 'examples' / 'nope.png'})"
    )


def test_a_folder_is_not_a_file(cartoonify, tmp_path):
    (tmp_path / "photos.png").mkdir()
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(cartoonify.parameter("Upload"), "photos.png")

    assert checked.reason == f"is not a file (looked for {tmp_path / 'photos.png'})"


def test_a_local_file_of_the_wrong_type_is_refused(cartoonify, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"....")
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(cartoonify.parameter("Upload"), "clip.mp4")

    assert checked.reason == (
        "is not a file Upload accepts (.mp4; image means .png, .jpg, .jpeg, .webp, "
        ".gif, .bmp)"
    )


def test_other_url_schemes_are_refused(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path)

    checked = checker.check(cartoonify.parameter("Upload"), "ftp://ex.com/x.png")

    assert checked.reason is not None
    assert checked.reason.startswith("is neither an http(s) URL nor a local file")


@pytest.mark.parametrize(
    ("accept", "allowed"),
    [
        ((), None),
        (("image",), ("png", "jpg", "jpeg", "webp", "gif", "bmp")),
        (("video/*",), ("mp4", "mov", "webm", "gif")),
        (("image/jpeg", ".webp"), ("jpg", "jpeg", "webp")),
        (("audio", "document"), None),
    ],
    ids=["none", "kind", "wildcard", "mime-and-ext", "unknown-kind"],
)
def test_accepted_extensions_understand_kinds_mime_types_and_extensions(
    accept, allowed
):
    assert accepted_extensions(accept) == allowed


def test_value_checks_are_cached_per_parameter_and_value(cartoonify, tmp_path):
    checker = ValueChecker(cartoonify, tmp_path)
    style = cartoonify.parameter("Style")

    first = checker.check(style, "Pixar")
    second = checker.check(style, "Pixar")

    assert first is second


def test_problem_log_counts_jobs_per_distinct_problem_and_sorts_by_position():
    log = ProblemLog()
    for _ in range(400):
        log.add("s.yaml:14:9", "jobs[0].matrix.Style[2]", "'Pixar' is wrong", jobs=1)
    log.add("s.yaml:3:1", "settings", "structural")
    log.add("s.yaml:14:9", "jobs[0].matrix.Style[2]", "one job", jobs=1)
    log.add("s.yaml:10:2", "jobs[0]", "ten", jobs=0)

    found = log.problems()

    style = "jobs[0].matrix.Style[2]"
    assert found == [
        Problem("s.yaml:3:1", "settings", "structural"),
        Problem("s.yaml:10:2", "jobs[0]", "ten"),
        Problem("s.yaml:14:9", style, "'Pixar' is wrong (affects 400 jobs)"),
        Problem("s.yaml:14:9", style, "one job"),
    ]


def test_problem_log_caps_lines_per_place():
    log = ProblemLog()
    for n in range(25):
        log.add("s.yaml:5:9", "jobs[0].matrix.Style", f"value {n:02d} is wrong")

    found = log.problems()

    assert len(found) == 21
    assert (
        str(found[-1])
        == "s.yaml:5:9: jobs[0].matrix.Style: ... and 5 more problems here"
    )
