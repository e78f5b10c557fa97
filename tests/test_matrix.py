"""Matrix expansion: product order, zip, value files, exclude/include as GitHub does."""

import json
import textwrap
from pathlib import Path

import pytest

from batchrun.errors import SpecError
from batchrun.matrix import expand
from batchrun.spec import load_spec


def matrix_spec(folder: Path, matrix: str) -> Path:
    body = textwrap.indent(textwrap.dedent(matrix).strip("\n"), " " * 6)
    path = folder / "spec.yaml"
    path.write_text(f"version: 1\njobs:\n  - app: Cartoonify!\n    matrix:\n{body}\n")
    return path


def combos(folder: Path, matrix: str) -> list[dict[str, str]]:
    entry = load_spec(matrix_spec(folder, matrix)).entries[0]
    return [{k: c.value for k, c in combo.items()} for combo in expand(entry.matrix)]


def problems(folder: Path, matrix: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(matrix_spec(folder, matrix))
    return [str(p) for p in caught.value.problems]


def test_product_follows_spec_order_with_the_last_axis_fastest(tmp_path):
    found = combos(tmp_path, "Style: [G, S]\nAspect Ratio: ['1:1', 16:9, 4:3]")

    assert found == [
        {"Style": "G", "Aspect Ratio": "1:1"},
        {"Style": "G", "Aspect Ratio": "16:9"},
        {"Style": "G", "Aspect Ratio": "4:3"},
        {"Style": "S", "Aspect Ratio": "1:1"},
        {"Style": "S", "Aspect Ratio": "16:9"},
        {"Style": "S", "Aspect Ratio": "4:3"},
    ]


def test_no_axes_gives_one_empty_combination(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\njobs:\n  - app: Cartoonify!\n")

    entry = load_spec(path).entries[0]

    assert expand(entry.matrix) == [{}]
    assert entry.matrix.count() == 1


def test_zip_pairs_lists_as_one_axis(tmp_path):
    found = combos(
        tmp_path,
        """
        Style: [G, S]
        zip:
          product: [mug, shirt]
          photo: [m.png, s.png]
        """,
    )

    assert found == [
        {"Style": "G", "product": "mug", "photo": "m.png"},
        {"Style": "G", "product": "shirt", "photo": "s.png"},
        {"Style": "S", "product": "mug", "photo": "m.png"},
        {"Style": "S", "product": "shirt", "photo": "s.png"},
    ]


def test_zip_may_be_a_list_of_paired_groups(tmp_path):
    found = combos(
        tmp_path,
        """
        zip:
          - {a: [1, 2], b: [x, y]}
          - {c: [p, q]}
        """,
    )

    assert found == [
        {"a": "1", "b": "x", "c": "p"},
        {"a": "1", "b": "x", "c": "q"},
        {"a": "2", "b": "y", "c": "p"},
        {"a": "2", "b": "y", "c": "q"},
    ]


def test_zip_lists_of_different_lengths_are_an_error(tmp_path):
    found = problems(
        tmp_path,
        """
        zip:
          product: [mug, shirt]
          photo: [m.png, s.png, t.png]
        """,
    )

    assert found == [
        f"{tmp_path / 'spec.yaml'}:6:9: jobs[0].matrix.zip: zipped lists must have "
        "the same length, but they have product: 2, photo: 3"
    ]


def test_a_name_set_by_two_axes_is_an_error(tmp_path):
    found = problems(
        tmp_path,
        """
        product: [mug]
        zip:
          product: [cup]
          photo: [c.png]
        """,
    )

    assert found == [
        f"{tmp_path / 'spec.yaml'}:7:9: jobs[0].matrix.zip: 'product' is already set "
        f"by jobs[0].matrix.product ({tmp_path / 'spec.yaml'}:5:7); a name may come "
        "from one axis only"
    ]


def test_exclude_removes_partial_matches_like_the_github_docs_example(tmp_path):
    found = combos(
        tmp_path,
        """
        os: [macos-latest, windows-latest, ubuntu-latest]
        version: [12, 14, 16]
        environment: [staging, production]
        exclude:
          - os: macos-latest
            version: 12
            environment: production
          - os: windows-latest
            version: 16
        """,
    )

    assert len(found) == 18 - 1 - 2
    assert {"os": "macos-latest", "version": "12", "environment": "staging"} in found
    assert not any(c["os"] == "windows-latest" and c["version"] == "16" for c in found)


def test_include_expands_like_the_github_docs_example(tmp_path):
    found = combos(
        tmp_path,
        """
        fruit: [apple, pear]
        animal: [cat, dog]
        include:
          - color: green
          - color: pink
            animal: cat
          - fruit: apple
            shape: circle
          - fruit: banana
          - fruit: banana
            animal: cat
        """,
    )

    assert found == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_include_adds_to_the_one_matching_combination_as_in_the_github_docs(tmp_path):
    found = combos(
        tmp_path,
        """
        os: [windows-latest, ubuntu-latest]
        node: [14, 16]
        include:
          - os: windows-latest
            node: 16
            npm: 6
        """,
    )

    assert found == [
        {"os": "windows-latest", "node": "14"},
        {"os": "windows-latest", "node": "16", "npm": "6"},
        {"os": "ubuntu-latest", "node": "14"},
        {"os": "ubuntu-latest", "node": "16"},
    ]


def test_include_applies_after_exclude(tmp_path):
    found = combos(
        tmp_path,
        """
        Style: [G, S]
        Aspect Ratio: ["1:1", "16:9"]
        exclude:
          - {Style: G, Aspect Ratio: "16:9"}
        include:
          - {Style: G, Aspect Ratio: "16:9", Upload: x.png}
          - {Style: C, Aspect Ratio: "9:16"}
        """,
    )

    assert found == [
        {"Style": "G", "Aspect Ratio": "1:1"},
        {"Style": "S", "Aspect Ratio": "1:1"},
        {"Style": "S", "Aspect Ratio": "16:9"},
        {"Style": "G", "Aspect Ratio": "16:9", "Upload": "x.png"},
        {"Style": "C", "Aspect Ratio": "9:16"},
    ]


def test_a_matrix_of_only_includes_runs_each_include(tmp_path):
    found = combos(
        tmp_path,
        """
        include:
          - {Style: G}
          - {Style: S, Aspect Ratio: "4:3"}
        """,
    )

    assert found == [{"Style": "G"}, {"Style": "S", "Aspect Ratio": "4:3"}]


def test_an_exclude_key_that_is_no_axis_is_a_typo(tmp_path):
    found = problems(
        tmp_path,
        """
        Style: [G, S]
        exclude:
          - {Stlye: G}
        """,
    )

    assert found == [
        f"{tmp_path / 'spec.yaml'}:7:11: jobs[0].matrix.exclude[0]: exclude key "
        "'Stlye' is not a matrix axis; did you mean 'Style'?"
    ]


def test_lines_file_axis_skips_blank_and_comment_lines(tmp_path):
    (tmp_path / "backgrounds.txt").write_text(
        "# colours\nred\n\n  \nblue sky\r\nStandard \n"
    )

    found = combos(tmp_path, "background: {from: backgrounds.txt}")

    assert found == [
        {"background": "red"},
        {"background": "blue sky"},
        {"background": "Standard "},
    ]


def test_csv_rows_set_every_column_together(tmp_path):
    (tmp_path / "products.csv").write_text(
        "product,sku,photo\nmug,007,m.png\nshirt,1e3,s.png\n"
    )

    found = combos(tmp_path, "Style: [G]\nproducts: {from: products.csv}")

    assert found == [
        {"Style": "G", "product": "mug", "sku": "007", "photo": "m.png"},
        {"Style": "G", "product": "shirt", "sku": "1e3", "photo": "s.png"},
    ]


def test_csv_column_is_a_plain_axis(tmp_path):
    (tmp_path / "products.csv").write_text("product,sku\nmug,A1\nshirt,B2\n")

    found = combos(tmp_path, "sku: {from: products.csv, column: sku}")

    assert found == [{"sku": "A1"}, {"sku": "B2"}]


def test_csv_unknown_column_is_an_error_with_suggestion(tmp_path):
    (tmp_path / "products.csv").write_text("product,sku\nmug,A1\n")

    found = problems(tmp_path, "sku: {from: products.csv, column: skus}")

    assert found == [
        f"{tmp_path / 'spec.yaml'}:5:19: jobs[0].matrix.sku: 'products.csv' has no "
        "column 'skus'; did you mean 'sku'? (columns: 'product', 'sku')"
    ]


def test_jsonl_objects_act_like_csv_rows_and_numbers_keep_their_text(tmp_path):
    lines = ['{"product": "mug", "size": 1e3}', '{"product": "cap", "size": 7.50}']
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")

    found = combos(tmp_path, "rows: {from: rows.jsonl}")

    assert found == [
        {"product": "mug", "size": "1e3"},
        {"product": "cap", "size": "7.50"},
    ]


def test_jsonl_scalars_and_field_make_plain_axes(tmp_path):
    (tmp_path / "styles.jsonl").write_text('"Ghibli"\n"Simpsons"\ntrue\n')
    rows = [json.dumps({"style": s, "n": i}) for i, s in enumerate(["G", "S"])]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows))

    plain = combos(tmp_path, "Style: {from: styles.jsonl}")
    picked = combos(tmp_path, "Style: {from: rows.jsonl, field: style}")

    assert plain == [{"Style": "Ghibli"}, {"Style": "Simpsons"}, {"Style": "true"}]
    assert picked == [{"Style": "G"}, {"Style": "S"}]


@pytest.mark.parametrize(
    ("files", "axis", "message"),
    [
        (
            {},
            "{from: nope.txt}",
            "'nope.txt' is not a file (looked for {folder}/nope.txt)",
        ),
        (
            {"empty.txt": "# only a comment\n\n"},
            "{from: empty.txt}",
            "'empty.txt' has no values",
        ),
        ({"e.csv": ""}, "{from: e.csv}", "'e.csv' has no header row"),
        ({"h.csv": "a,b\n"}, "{from: h.csv}", "'h.csv' has no values"),
        (
            {"x.txt": "a\n"},
            "{from: x.txt, column: a}",
            "'column' applies to .csv files (use 'field' for .jsonl files)",
        ),
        (
            {"bad.jsonl": '"a"\n{oops\n'},
            "{from: bad.jsonl}",
            "line 2 of 'bad.jsonl' is not JSON (Expecting property name enclosed in "
            "double quotes)",
        ),
        (
            {"mix.jsonl": '"a"\n{"b": "c"}\n'},
            "{from: mix.jsonl}",
            "line 2 of 'mix.jsonl': lines must be all objects or all plain values, "
            "not a mix",
        ),
        (
            {"n.jsonl": '{"a": null}\n'},
            "{from: n.jsonl}",
            "line 1 of 'n.jsonl', field 'a' is null; write \"\" if you mean an empty "
            "string",
        ),
        (
            {"r.csv": "a,b\n1\n"},
            "{from: r.csv}",
            "line 2 of 'r.csv' has 1 fields but the header has 2",
        ),
    ],
    ids=[
        "missing",
        "empty-lines",
        "empty-csv",
        "header-only",
        "column-on-txt",
        "bad-json",
        "mixed-jsonl",
        "null-jsonl",
        "short-csv-row",
    ],
)
def test_unusable_value_files_are_errors_at_the_from_key(
    tmp_path, files, axis, message
):
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    found = problems(tmp_path, f"Style: {axis}")

    where = f"{tmp_path / 'spec.yaml'}:5:"
    assert len(found) == 1
    assert found[0].startswith(where)
    assert found[0].endswith(
        "jobs[0].matrix.Style: " + message.format(folder=tmp_path.resolve())
    )


def test_count_is_the_product_before_exclude(tmp_path):
    entry = load_spec(
        matrix_spec(tmp_path, "a: [1, 2, 3]\nb: [x, y]\nexclude:\n  - {a: 1}")
    ).entries[0]

    assert entry.matrix.count() == 6
    assert len(expand(entry.matrix)) == 4
