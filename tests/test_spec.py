"""load_spec: YAML with positions, no silent value changes, every problem at once."""

import hashlib
import textwrap
from pathlib import Path

import jsonschema
import pytest

from batchrun.errors import SpecError
from batchrun.schemas import load_schema, schema_path
from batchrun.spec import Settings, load_spec


def write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def messages(error: SpecError) -> list[str]:
    return [str(problem) for problem in error.problems]


def load_error(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return messages(caught.value)


def test_settings_paths_resolve_against_the_spec_folder(tmp_path):
    (tmp_path / "specs").mkdir()
    path = write(
        tmp_path / "specs",
        """
        version: 1
        settings:
          output_dir: ../out/cartoons
          concurrency: 3
          rate: 40
          results: poll
        jobs:
          - app: Cartoonify!
        """,
    )

    spec = load_spec(path)

    assert spec.folder == (tmp_path / "specs").resolve()
    assert spec.settings.output_dir == (tmp_path / "out" / "cartoons").resolve()
    assert spec.settings.manifest == spec.settings.output_dir / "manifest.jsonl"
    assert (spec.settings.concurrency, spec.settings.rate) == (3, 40)
    assert spec.settings.results == "poll"
    assert spec.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_omitted_settings_take_the_documented_defaults(tmp_path):
    path = write(tmp_path, "version: 1\njobs:\n  - app: Cartoonify!\n")

    spec = load_spec(path)

    assert spec.settings == Settings()
    assert spec.settings.filename == "{app}/{key}-{output}{ext}"
    assert spec.settings.max_jobs == 10_000
    assert spec.entries[0].app == "Cartoonify!"
    assert spec.entries[0].where == f"{path}:3:10"


@pytest.mark.parametrize(
    "written",
    [
        "16:9",
        "4:3",
        "yes",
        "off",
        "No",
        "007",
        "1e3",
        "2026-12-03",
        "true",
        "0x10",
        "1_000",
        ".5",
        "+1",
        "12:30:00",
        ".inf",
        "'quoted'",
        '"16:9"',
    ],
)
def test_yaml_pitfall_values_arrive_as_the_text_written(tmp_path, written):
    path = write(
        tmp_path,
        f"""
        version: 1
        jobs:
          - app: Cartoonify!
            inputs:
              Prompt: {written}
            matrix:
              Aspect Ratio: [{written}]
              include:
                - {{Style: {written}}}
        """,
    )
    expected = written.strip("'\"")

    entry = load_spec(path).entries[0]

    assert entry.inputs[0].template.render({}) == expected
    assert entry.matrix.axes[0].rows[0][0][1].value == expected
    assert entry.matrix.include[0].cells[0][1].value == expected


def test_yaml_typing_outside_inputs_and_matrix_follows_yaml_1_2_core(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        settings:
          webhook_listen: 127.0.0.1:8787
          retries: 0
        jobs:
          - app: yes
        """,
    )

    spec = load_spec(path)

    assert spec.settings.webhook_listen == "127.0.0.1:8787"
    assert spec.settings.retries == 0
    assert spec.entries[0].app == "yes"


def test_empty_input_value_is_an_error_asking_for_quotes(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs:
              Prompt:
              Style: ~
            matrix:
              Aspect Ratio: [null, ""]
        """,
    )

    found = load_error(path)

    hint = "empty value; quote it if you mean an empty string"
    assert found == [
        f"{path}:5:14: jobs[0].inputs.Prompt: {hint}",
        f"{path}:6:14: jobs[0].inputs.Style: {hint}",
        f"{path}:8:22: jobs[0].matrix.Aspect Ratio[0]: {hint}",
    ]


def test_duplicate_keys_are_reported_with_both_positions(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: [Ghibli]
              Aspect Ratio: ["1:1"]
              Style: [Simpsons]
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:7:7: jobs[0].matrix: duplicate key 'Style' (first at line 5, "
        "column 7); keep one"
    ]


def test_anchors_and_aliases_are_allowed(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: &styles [Ghibli, Simpsons]
          - app: Cartoonify!
            matrix:
              Style: *styles
        """,
    )

    spec = load_spec(path)

    second = spec.entries[1].matrix.axes[0]
    assert [row[0][1].value for row in second.rows] == ["Ghibli", "Simpsons"]


def test_merge_keys_are_an_error(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        base: &base {Style: [Ghibli]}
        jobs:
          - app: Cartoonify!
            matrix:
              <<: *base
        """,
    )

    found = load_error(path)

    assert (
        f"{path}:6:7: jobs[0].matrix: merge keys ('<<') are not supported; "
        in (found[-1])
    )


def test_a_tab_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\njobs:\n\t- app: x\n")

    found = load_error(path)

    assert found == [
        f"{path}:3:1: a tab character; YAML indents with spaces only (replace the tab)"
    ]


def test_a_syntax_error_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\njobs: [\n  {app: x\n")

    found = load_error(path)

    assert len(found) == 1
    assert found[0].startswith(f"{path}:4:1: YAML syntax error: ")


def test_schema_errors_are_all_reported_in_plain_english(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        settings:
          concurrency: eight
          results: sometimes
          colour: blue
        jobs:
          - app: Cartoonify!
            matirx:
              Style: [Ghibli]
          - inputs: {Style: Ghibli}
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:3:16: settings.concurrency: expected an integer from 1 to 1000, "
        "got 'eight'",
        f"{path}:4:12: settings.results: expected one of auto, webhook, poll, wait, "
        "stream, got 'sometimes'",
        f"{path}:5:3: settings: unknown key 'colour' (known keys: output_dir, "
        "manifest, concurrency, rate, retries, filename, max_jobs, results, "
        "webhook_url, webhook_listen)",
        f"{path}:8:5: jobs[0]: unknown key 'matirx'; did you mean 'matrix'?",
        f"{path}:10:5: jobs[1]: missing required key 'app'",
    ]


def test_a_wrong_axis_shape_says_what_an_axis_may_be(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: Ghibli
              Aspect Ratio: []
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:5:14: jobs[0].matrix.Style: expected a list of values or "
        "{from: FILE}, got 'Ghibli'",
        f"{path}:6:21: jobs[0].matrix.Aspect Ratio: an empty list; give at least one "
        "value",
    ]


def test_a_wrong_version_is_reported(tmp_path):
    path = write(tmp_path, "version: 2\njobs:\n  - app: x\n")

    assert load_error(path) == [f"{path}:1:10: version: expected 1, got 2"]


def test_a_missing_spec_file_is_a_spec_error(tmp_path):
    path = tmp_path / "nope.yaml"

    assert load_error(path) == [
        f"{path}: cannot read the spec: No such file or directory"
    ]


def test_an_empty_spec_file_is_a_spec_error(tmp_path):
    path = write(tmp_path, "# nothing here\n")

    assert load_error(path) == [f"{path}: the spec is empty"]


def test_a_name_both_fixed_and_in_the_matrix_is_ambiguous(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            inputs:
              Style: Ghibli
            matrix:
              Style: [Simpsons]
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:5:7: jobs[0].inputs.Style: 'Style' is both a fixed input and a matrix "
        "key; keep one (a combination never overrides a fixed input)"
    ]


def test_template_syntax_errors_point_at_the_value(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        settings:
          filename: "{app}/{key"
        jobs:
          - app: Cartoonify!
            inputs:
              Prompt: "A {product on a table"
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:3:13: settings.filename: unclosed '{{' at column 7; write '{{{{' for "
        "a literal brace",
        f"{path}:7:15: jobs[0].inputs.Prompt: unclosed '{{' at column 3; write '{{{{' "
        "for a literal brace",
    ]


def test_setting_positions_are_available_for_later_messages(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        settings:
          filename: "{app}/{key}{ext}"
        jobs:
          - app: Cartoonify!
        """,
    )

    spec = load_spec(path)

    assert spec.where("settings.filename") == f"{path}:3:13"
    assert spec.where("settings.rate") == str(path)


def test_the_spec_schema_is_valid_json_schema_2020_12():
    schema = load_schema("spec.schema.json")

    jsonschema.Draft202012Validator.check_schema(schema)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_path("spec.schema.json").parent.name == "schemas"


def test_the_schema_accepts_the_documented_example_as_editors_parse_it():
    example = {
        "version": 1,
        "settings": {
            "output_dir": "../out",
            "concurrency": 8,
            "rate": 100,
            "retries": 5,
            "filename": "{app}/{key}{ext}",
            "max_jobs": 1000,
            "results": "auto",
            "webhook_url": None,
            "webhook_listen": None,
        },
        "jobs": [
            {
                "app": "Cartoonify!",
                "inputs": {"Prompt": "A {product}"},
                "matrix": {
                    "Style": ["Ghibli", "Simpsons"],
                    "Aspect Ratio": [
                        "1:1",
                        969,
                    ],  # an editor's YAML 1.1 reads 16:9 as 969
                    "background": {"from": "backgrounds.txt"},
                    "sku": {"from": "products.csv", "column": "sku"},
                    "zip": {"product": ["mug", "shirt"], "photo": ["m.png", "s.png"]},
                    "exclude": [{"Style": "Ghibli", "Aspect Ratio": "16:9"}],
                    "include": [{"Style": "Cyberpunk"}],
                },
                "repeat": 2,
            }
        ],
    }

    errors = list(
        jsonschema.Draft202012Validator(load_schema("spec.schema.json")).iter_errors(
            example
        )
    )

    assert errors == []


def test_sections_left_empty_by_comments_are_allowed(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        settings:
          # concurrency: 8
        jobs:
          - app: Cartoonify!
            inputs:
              # Style: Ghibli
            matrix:
        """,
    )

    spec = load_spec(path)

    assert spec.settings == Settings()
    assert spec.entries[0].inputs == ()
    assert spec.entries[0].matrix.axes == ()


def test_a_wrong_value_file_key_is_explained_inside_the_axis(tmp_path):
    path = write(
        tmp_path,
        """
        version: 1
        jobs:
          - app: Cartoonify!
            matrix:
              Style: {form: styles.txt}
        """,
    )

    found = load_error(path)

    assert found == [
        f"{path}:5:14: jobs[0].matrix.Style: missing required key 'from'",
        f"{path}:5:15: jobs[0].matrix.Style: unknown key 'form'; did you mean 'from'?",
    ]
