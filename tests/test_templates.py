"""Templates: `{name}` fields, literal braces, clear errors."""

import pytest

from batchrun.templates import FILENAME_BUILTINS, parse_template


def test_render_replaces_fields_whose_names_contain_spaces():
    template = parse_template("{app}/{photo}-{Aspect Ratio}{ext}")

    text = template.render(
        {"app": "Cartoonify!", "photo": "mug", "Aspect Ratio": "16:9", "ext": ".png"}
    )

    assert text == "Cartoonify!/mug-16:9.png"
    assert template.fields == {"app", "photo", "Aspect Ratio", "ext"}


def test_doubled_braces_are_literal_braces():
    template = parse_template("{{literal}} {name} }}{{")

    text = template.render({"name": "x"})

    assert text == "{literal} x }{"
    assert template.fields == {"name"}


def test_template_without_fields_renders_its_text():
    template = parse_template("A plain prompt")

    assert template.render({}) == "A plain prompt"
    assert template.fields == frozenset()


def test_values_containing_braces_are_not_reinterpreted():
    template = parse_template("<{a}>")

    assert template.render({"a": "{b}"}) == "<{b}>"


def test_field_names_are_exact_including_whitespace_and_case():
    template = parse_template("{Model  Ethnicity}")

    assert template.fields == {"Model  Ethnicity"}
    with pytest.raises(KeyError):
        template.render({"Model Ethnicity": "Asian"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a {b", "unclosed '{' at column 3; write '{{' for a literal brace"),
        ("a } b", "single '}' at column 3; write '}}' for a literal brace"),
        ("x {}", "empty field '{}' at column 3; write '{{}}' for literal braces"),
        ("{a{b}", "'{' inside a field at column 3; write '{{' for a literal brace"),
    ],
    ids=["unclosed", "lone-closing", "empty", "nested"],
)
def test_malformed_templates_raise_value_error_saying_where(text, message):
    with pytest.raises(ValueError) as caught:
        parse_template(text)

    assert str(caught.value) == message


def test_filename_builtins_are_the_documented_ones():
    documented = {
        "app",
        "app_id",
        "key",
        "repeat",
        "run_id",
        "output",
        "index",
        "ext",
    }

    assert documented == FILENAME_BUILTINS
