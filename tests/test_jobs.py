"""plan_jobs: from a spec to validated jobs, with stable keys and clear errors."""

import hashlib
import json
import textwrap
import time
from pathlib import Path

import pytest

from batchrun.apps import App
from batchrun.errors import SpecError
from batchrun.jobs import Job, job_key, plan_jobs
from batchrun.spec import load_spec

CARTOONIFY = {
    "appId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587",
    "name": "Cartoonify!",
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
        {"name": "Model Gender", "type": "options", "options": ["Male", "Female"],
         "default": "Female"},
        {"name": "Model  Ethnicity", "type": "options",
         "options": ["Caucasian", "Asian", "African", "Latin American", "South Asian",
                     "Middle Eastern"], "default": "Asian"},
        {"name": "Model Body type", "type": "options",
         "options": ["Standard ", "Plus Size", "Muscular"], "default": "Standard "},
    ],
}  # fmt: skip

CATALOG = {
    "appId": "0b7c5a34-6a1e-4d0c-9a57-1c2f3e4d5a6b",
    "name": "Example Catalog App",
    "parameters": [
        {"name": "Front", "type": "url", "required": True, "accept": ["image"]},
        {"name": "Location", "type": "options", "required": True,
         "options": ["Studio", "Urban", "Park"], "default": "Studio"},
        {"name": "Prompt", "type": "text", "required": True, "default": ""},
    ],
}  # fmt: skip

APPS = {
    "Cartoonify!": CARTOONIFY,
    "Full Set Catalog Generation": FULL_SET,
    "Example Catalog App": CATALOG,
}


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def plan(path: Path, **options) -> list[Job]:
    spec = load_spec(path)
    apps = {e.index: App.from_api(APPS[e.app]) for e in spec.entries}
    return plan_jobs(spec, apps, **options)


def plan_problems(path: Path, **options) -> list[str]:
    with pytest.raises(SpecError) as caught:
        plan(path, **options)
    return [str(p) for p in caught.value.problems]


def test_jobs_carry_exact_inputs_and_omit_defaults(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: [Ghibli, Simpsons]
        """,
    )

    jobs = plan(path)

    assert [j.inputs for j in jobs] == [{"Style": "Ghibli"}, {"Style": "Simpsons"}]
    assert jobs[0].app_id == CARTOONIFY["appId"]
    assert (jobs[0].entry, jobs[0].repeat, jobs[0].files) == (0, 0, {})
    assert jobs[0].names == {
        "Style": "Ghibli",
        "Aspect Ratio": "1:1",
        "Upload": "55e99714-d15d-43fe-9e9b-ead418b7ba67",
    }
    assert len(jobs[0].key) == 16
    assert int(jobs[0].key, 16) >= 0


def test_unquoted_16_9_arrives_as_the_option_label(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs:
              Aspect Ratio: 16:9
              Style: Ghibli
        """,
    )

    jobs = plan(path)

    assert jobs[0].inputs == {"Aspect Ratio": "16:9", "Style": "Ghibli"}


def test_repeat_makes_distinct_jobs_with_repeat_indexes(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {Style: Ghibli}
            repeat: 3
        """,
    )

    jobs = plan(path)

    assert [j.repeat for j in jobs] == [0, 1, 2]
    assert len({j.key for j in jobs}) == 3
    assert jobs[1].inputs is not jobs[0].inputs


def test_a_wrong_label_is_one_line_with_suggestion_and_job_count(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Aspect Ratio: ["1:1", "4:3", "3:4", "16:9", "9:16"]
              Style: [Ghibli, Simpsons, Pixar]
            repeat: 4
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:33: jobs[0].matrix.Style[2]: 'Pixar' is not an option of "
        "Cartoonify!; did you mean 'Disney / Pixar'? (affects 20 jobs)"
    ]


def test_a_wrong_label_from_a_file_names_the_line(tmp_path):
    (tmp_path / "styles.txt").write_text("Ghibli\nsimpsons\n")
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: {from: styles.txt}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:5:21: jobs[0].matrix.Style: 'simpsons' (line 2 of styles.txt) is "
        "not an option of Cartoonify!; did you mean 'Simpsons' (different case)?"
    ]


def test_an_unknown_input_suggests_the_name_with_whitespace_visible(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {Style: Ghibli}
          - app: Full Set Catalog Generation
            inputs:
              Model Gender: Female
              Model Ethnicity: Asian
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:8:7: jobs[1].inputs: 'Model Ethnicity' is not a parameter of Full "
        "Set Catalog Generation; did you mean 'Model␣␣Ethnicity' (two spaces)?"
    ]


def test_a_label_without_its_trailing_space_is_caught(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Full Set Catalog Generation
            inputs:
              Model Body type: Standard
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:5:24: jobs[0].inputs.Model Body type: 'Standard' is not an option of "
        "Full Set Catalog Generation; did you mean 'Standard␣' (trailing space)?"
    ]


def test_a_missing_input_without_default_is_reported_once(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Example Catalog App
            matrix:
              Location: [Studio, Urban, Park]
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:3:10: jobs[0]: missing input 'Front' of Example Catalog App (it has "
        "no default); add it to inputs or the matrix"
    ]


def test_a_missing_local_file_names_the_resolved_path(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "ok.png").write_bytes(b"png")
    path = write_spec(
        tmp_path / "specs",
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {Style: Ghibli}
            matrix:
              Upload: [../examples/ok.png, ../examples/nope.png]
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:36: jobs[0].matrix.Upload[1]: '../examples/nope.png' is not a file "
        f"(looked for {tmp_path / 'examples' / 'nope.png'})"
    ]


def test_a_local_file_of_the_wrong_kind_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {Upload: notes.txt, Style: Ghibli}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:4:22: jobs[0].inputs.Upload: 'notes.txt' is not a file Upload "
        "accepts (.txt; image means .png, .jpg, .jpeg, .webp, .gif, .bmp)"
    ]


def test_local_files_are_sent_as_absolute_paths_and_named_by_stem(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mug.png").write_bytes(b"mug")
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {Upload: photos/mug.png, Style: Ghibli}
        """,
    )

    jobs = plan(path)

    absolute = str(tmp_path / "photos" / "mug.png")
    assert jobs[0].inputs == {"Upload": absolute, "Style": "Ghibli"}
    assert jobs[0].files == {"Upload": absolute}
    assert jobs[0].names["Upload"] == "mug"


def test_over_the_cap_is_refused_before_expanding(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings:
          max_jobs: 1000
          filename: "{seed}-{key}{ext}"
        jobs:
          - app: Cartoonify!
            matrix:
              Style: [Ghibli, Simpsons, Cyberpunk]
              Aspect Ratio: ["1:1", "4:3", "3:4", "16:9"]
              seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
            repeat: 10
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:10: jobs[0]: expands to 1,200 jobs, more than max_jobs (1,000); "
        "raise settings.max_jobs or pass --max-jobs"
    ]


def test_a_huge_matrix_is_refused_at_once(tmp_path):
    axes = "\n".join(
        f"      v{n}: [{', '.join(map(str, range(100)))}]" for n in range(6)
    )
    path = tmp_path / "spec.yaml"
    path.write_text(f"version: 1\njobs:\n  - app: Cartoonify!\n    matrix:\n{axes}\n")
    started = time.perf_counter()

    found = plan_problems(path)

    assert time.perf_counter() - started < 2
    assert found[0].endswith(
        "jobs[0]: expands to 1,000,000,000,000 jobs, more than max_jobs (10,000); "
        "raise settings.max_jobs or pass --max-jobs"
    )


def test_the_max_jobs_argument_overrides_the_setting(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: [Ghibli, Simpsons, Cyberpunk]
        """,
    )

    found = plan_problems(path, max_jobs=2)

    assert found == [
        f"{path}:3:10: jobs[0]: expands to 3 jobs, more than max_jobs (2); raise "
        "settings.max_jobs or pass --max-jobs"
    ]


def test_the_cap_also_applies_to_the_whole_spec(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings: {max_jobs: 3}
        jobs:
          - app: Cartoonify!
            matrix: {Style: [Ghibli, Simpsons]}
          - app: Cartoonify!
            matrix: {Style: [Cyberpunk, Disney / Pixar]}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}: jobs: the spec expands to 4 jobs, more than max_jobs (3); raise "
        "settings.max_jobs or pass --max-jobs"
    ]


def test_an_unused_variable_is_a_typo_of_a_parameter(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Stlye: [Ghibli, Simpsons]
              include:
                - {aspect ratio: "4:3"}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:5:7: jobs[0].matrix: 'Stlye' is not a parameter of Cartoonify! and no "
        "template uses it; did you mean 'Style'?",
        f"{path}:7:12: jobs[0].matrix.include[0]: 'aspect ratio' is not a parameter "
        "of Cartoonify! and no template uses it; did you mean 'Aspect␣Ratio' "
        "(different case)?",
    ]


def test_variables_fill_templates_and_unused_file_columns_are_fine(tmp_path):
    (tmp_path / "products.csv").write_text(
        "product,sku,colour\nmug,A1,red\ncap,B2,blue\n"
    )
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings:
          filename: "{app}/{sku}-{Style}-{output}{ext}"
        jobs:
          - app: Example Catalog App
            inputs:
              Front: https://cdn.example/front.png
              Prompt: "A {product} in {{curly}} braces, {Style} style"
            matrix:
              rows: {from: products.csv}
              Style: [bold]
        """,
    )

    jobs = plan(path)

    assert [j.inputs["Prompt"] for j in jobs] == [
        "A mug in {curly} braces, bold style",
        "A cap in {curly} braces, bold style",
    ]
    assert jobs[0].names["sku"] == "A1"
    assert jobs[0].names["Front"] == "front"
    assert "Style" not in jobs[0].inputs


def test_an_unknown_template_field_suggests_the_matrix_key(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Example Catalog App
            inputs:
              Front: https://cdn.example/front.png
              Prompt: "A {prodcut} on a table"
            matrix:
              product: [mug, cap]
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:15: jobs[0].inputs.Prompt: {{prodcut}} is not a matrix key; did "
        "you mean 'product'?"
    ]


def test_an_unknown_filename_field_is_reported_at_the_setting(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings:
          filename: "{app}/{phto}-{Style}{ext}"
        jobs:
          - app: Cartoonify!
            matrix:
              photo: [a, b]
              Style: [Ghibli]
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:3:13: settings.filename: {{phto}} has no value in jobs[0] "
        "(Cartoonify!); did you mean 'photo'?"
    ]


def test_a_variable_named_like_a_builtin_is_refused(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings: {filename: "{index}-{key}{ext}"}
        jobs:
          - app: Cartoonify!
            inputs: {Style: Ghibli}
            matrix: {index: [a, b]}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:14: jobs[0].matrix: 'index' is a built-in file-name field (app, "
        "app_id, ext, index, key, output, repeat, run_id); rename the variable"
    ]


def test_an_include_without_a_template_variable_is_reported(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Example Catalog App
            inputs:
              Front: https://cdn.example/front.png
              Prompt: "A {product}"
            matrix:
              product: [mug]
              Location: [Studio]
              include:
                - {Location: Park}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:6:15: jobs[0].inputs.Prompt: {{product}} has no value in some "
        "combinations of jobs[0] (added by include?); give every combination a value"
    ]


def test_identical_combinations_keep_the_first_job(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: [Ghibli, Simpsons]
          - app: Cartoonify!
            inputs: {Style: Ghibli}
        """,
    )

    jobs = plan(path)

    assert [(j.entry, j.inputs) for j in jobs] == [
        (0, {"Style": "Ghibli"}),
        (0, {"Style": "Simpsons"}),
    ]


def test_problems_from_every_entry_are_reported_together_in_file_order(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Example Catalog App
          - app: Cartoonify!
            inputs: {Style: Pixar, Colour: red}
          - app: Cartoonify!
            matrix:
              Stlye: [Ghibli]
        """,
    )

    found = plan_problems(path)

    assert [line.split(": ", 2)[1] for line in found] == [
        "jobs[0]",
        "jobs[1].inputs.Style",
        "jobs[1].inputs",
        "jobs[2].matrix",
    ]


def test_an_unresolved_app_is_a_problem_not_a_crash(tmp_path):
    path = write_spec(tmp_path, "version: 1\njobs:\n  - app: Cartoonify!\n")

    with pytest.raises(SpecError) as caught:
        plan_jobs(load_spec(path), {})

    assert str(caught.value) == (
        f"{path}:3:10: jobs[0]: app 'Cartoonify!' was not resolved"
    )


CARTOON_SPEC = """
version: 1
jobs:
  - app: Cartoonify!
    matrix:
{axes}
"""


def keys_by_inputs(path: Path) -> dict[tuple[tuple[str, str], ...], str]:
    jobs = plan(path)
    return {
        tuple(sorted((k, v) for k, v in j.inputs.items() if k not in j.files))
        + tuple(sorted(j.files)): j.key
        for j in jobs
    }


def test_job_keys_survive_new_values_reordering_and_moved_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "cat.png").write_bytes(b"a cat")
    (tmp_path / "b" / "cat.png").write_bytes(b"a cat")
    before = write_spec(
        tmp_path,
        CARTOON_SPEC.format(
            axes="      Style: [Ghibli, Simpsons]\n      Upload: [a/cat.png]"
        ),
        "before.yaml",
    )
    after = write_spec(
        tmp_path,
        CARTOON_SPEC.format(
            axes="      Upload: [b/cat.png]\n      Style: [Cyberpunk, Simpsons, Ghibli]"
        ),
        "after.yaml",
    )

    old, new = keys_by_inputs(before), keys_by_inputs(after)

    assert len(old) == 2
    assert len(new) == 3
    assert all(new[inputs] == key for inputs, key in old.items())


def test_job_keys_change_with_file_content_values_and_repeat(tmp_path):
    photo = tmp_path / "cat.png"
    photo.write_bytes(b"one")
    first = job_key(
        "app", {"Upload": str(photo), "Style": "G"}, {"Upload": str(photo)}, 0
    )
    photo.write_bytes(b"two!")

    second = job_key(
        "app", {"Upload": str(photo), "Style": "G"}, {"Upload": str(photo)}, 0
    )

    assert first != second
    assert job_key("app", {"Style": "G"}, {}, 0) != job_key(
        "app", {"Style": "S"}, {}, 0
    )
    assert job_key("app", {"Style": "G"}, {}, 0) != job_key(
        "app", {"Style": "G"}, {}, 1
    )
    assert job_key("app", {"Style": "G"}, {}, 0) != job_key("b", {"Style": "G"}, {}, 0)


def test_planned_keys_equal_job_key(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"cat")
    path = write_spec(
        tmp_path,
        CARTOON_SPEC.format(axes="      Upload: [cat.png]\n      Style: [Ghibli]"),
    )

    job = plan(path)[0]

    assert job.key == job_key(job.app_id, job.inputs, job.files, job.repeat)


def test_a_misspelt_required_name_is_reported_once(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs: {style: Ghibli}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:4:14: jobs[0].inputs: 'style' is not a parameter of Cartoonify!; did "
        "you mean 'Style' (different case)?"
    ]


def test_a_filename_field_missing_in_several_entries_is_one_line(tmp_path):
    path = write_spec(
        tmp_path,
        """
        version: 1
        settings: {filename: "{photo}{ext}"}
        jobs:
          - app: Cartoonify!
            inputs: {Style: Ghibli}
          - app: Cartoonify!
            inputs: {Style: Simpsons}
        """,
    )

    found = plan_problems(path)

    assert found == [
        f"{path}:2:22: settings.filename: {{photo}} has no value in jobs[0] "
        "(Cartoonify!) and jobs[1] (Cartoonify!)"
    ]


def test_the_key_is_sha256_of_the_documented_canonical_json(tmp_path):
    photo = tmp_path / "café.png"
    photo.write_bytes(b"bytes")
    inputs = {"Upload": str(photo), "Style": "Disney / Pixar", "Prompt": 'a "q" é'}
    canonical = json.dumps(
        {
            "app_id": "app-1",
            "inputs": {
                **inputs,
                "Upload": "sha256:" + hashlib.sha256(b"bytes").hexdigest(),
            },
            "repeat": 2,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )

    key = job_key("app-1", inputs, {"Upload": str(photo)}, 2)

    assert key == hashlib.sha256(canonical.encode()).hexdigest()[:16]
