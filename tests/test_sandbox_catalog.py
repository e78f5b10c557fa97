"""The sandbox's app catalog: the shipped apps.json and how bad catalogs are refused."""

from __future__ import annotations

import copy
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from batchrun.apps import App, is_app_id
from batchrun.sandbox.catalog import CatalogError, SandboxApp, load_catalog

# Pasted verbatim from /work/shared/lamina-api.md ("Documented example app").
CARTOONIFY_CONTRACT = json.loads(
    """
{"appId": "3f68debe-df0a-4fc9-bdd3-9d45a4160587", "name": "Cartoonify!",
 "description": "Just upload your photo and convert it into an Cartoon of your favorite style!",
 "parameters": [
  {"id": "4a45d4c6-808e-45e8-9f7c-6a06953583fb", "name": "Upload", "type": "url",
   "required": false, "accept": ["image"],
   "default": "https://media.getmason.io/api/assetlib/55e99714-d15d-43fe-9e9b-ead418b7ba67.png"},
  {"id": "1977e11b-d91b-4f65-802c-b37b597fa8d9", "name": "Style", "type": "options",
   "required": false, "options": ["Ghibli", "Simpsons", "Disney / Pixar", "Cyberpunk"]},
  {"id": "5c237908-e6ed-4d4b-bd1d-6253bf60a8a5", "name": "Aspect Ratio", "type": "options",
   "required": false, "options": ["1:1", "4:3", "3:4", "16:9", "9:16"], "default": "1:1"}]}
"""  # noqa: E501
)

FULL_SET_ID = "173692dd-0258-41bd-8a56-2cf9bbe89910"


@pytest.fixture(scope="module")
def catalog() -> dict[str, SandboxApp]:
    return {app.name: app for app in load_catalog()}


def shipped_document() -> dict[str, Any]:
    text = resources.files("batchrun.sandbox").joinpath("apps.json").read_text("utf-8")
    return json.loads(text)


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "apps.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_default_catalog_holds_the_documented_apps(catalog: dict[str, SandboxApp]):
    names = set(catalog)

    assert {
        "Cartoonify!",
        "Full Set Catalog Generation",
        "Example Catalog App",
        "Product Copywriter",
        "Product Catalog",
        "Quick Reel Maker",
    } <= names


def test_cartoonify_matches_the_contract_field_for_field(
    catalog: dict[str, SandboxApp],
):
    app = catalog["Cartoonify!"]

    served = {key: app.app[key] for key in CARTOONIFY_CONTRACT}

    assert served == CARTOONIFY_CONTRACT
    assert app.app_id == "3f68debe-df0a-4fc9-bdd3-9d45a4160587"
    assert [o.label for o in app.outputs] == ["AI Designer"]


def test_full_set_keeps_exact_names_and_labels(catalog: dict[str, SandboxApp]):
    app = App.from_api(catalog["Full Set Catalog Generation"].app)

    names = [p.name for p in app.parameters]

    assert app.app_id == FULL_SET_ID
    assert names == [
        "Front",
        "Back",
        "Model Gender",
        "Model  Ethnicity",
        "Model Body type",
        "Model Hair color",
        "Model Hair Style",
    ]
    assert app.parameter("Model  Ethnicity").options == (
        "Caucasian",
        "Asian",
        "African",
        "Latin American",
        "South Asian",
        "Middle Eastern",
    )
    assert app.parameter("Model Body type").options == (
        "Standard ",
        "Plus Size",
        "Muscular",
    )
    assert app.parameter("Model Hair Style").options == ("Straight ", "Curly")
    assert app.parameter("Front").has_default
    assert app.parameter("Back").has_default
    assert not any(p.has_default for p in app.parameters if p.type == "options")


def test_example_catalog_app_parameters(catalog: dict[str, SandboxApp]):
    app = App.from_api(catalog["Example Catalog App"].app)

    front, location, prompt = (
        app.parameter(n) for n in ("Front", "Location", "Prompt")
    )

    assert front.type == "url" and not front.has_default
    assert location.options == ("Studio", "Urban", "Park")
    assert location.default == "Studio"
    assert prompt.type == "text"


def test_quick_reel_maker_has_six_outputs_and_cinematic_default(
    catalog: dict[str, SandboxApp],
):
    app = catalog["Quick Reel Maker"]

    style = App.from_api(app.app).parameter("Visual Style")

    assert len(app.outputs) == 6
    assert style.default == "Cinematic"
    assert style.options == (
        "Cinematic",
        "Minimalist",
        "Vibrant",
        "Vintage",
        "Nature",
        "Studio",
        "Lifestyle",
    )


def test_product_catalog_has_duplicate_labels_and_a_video(
    catalog: dict[str, SandboxApp],
):
    outputs = catalog["Product Catalog"].outputs

    labels = Counter(o.label for o in outputs)

    assert len(outputs) >= 4
    assert {"Front View", "Back View", "Side View", "Catalog Video"} <= set(labels)
    assert labels["AI Designer"] == 2
    assert [o.type for o in outputs if o.label == "Catalog Video"] == ["video"]


def test_text_app_has_one_text_output(catalog: dict[str, SandboxApp]):
    app = catalog["Product Copywriter"]

    language = App.from_api(app.app).parameter("Language")

    assert [o.type for o in app.outputs] == ["text"]
    assert language.options == ("English", "French", "German", "Spanish", "Japanese")
    assert language.default == "English"


def test_every_id_is_a_unique_uuid(catalog: dict[str, SandboxApp]):
    app_ids = [app.app_id for app in catalog.values()]
    parameter_ids = [p["id"] for app in catalog.values() for p in app.app["parameters"]]

    assert all(is_app_id(i) for i in app_ids + parameter_ids)
    assert len(set(app_ids)) == len(app_ids)
    assert len(set(parameter_ids)) == len(parameter_ids)


def test_summary_is_the_app_without_parameters(catalog: dict[str, SandboxApp]):
    app = catalog["Example Catalog App"]

    summary = app.summary()

    assert "parameters" not in summary
    assert summary["appId"] == app.app_id
    assert summary["isPublic"] is True
    assert summary["modality"] == ["image"]
    assert summary["inputSummary"] == {
        "required": [
            {"name": "Front", "type": "url"},
            {"name": "Prompt", "type": "text"},
        ],
        "optional": [{"name": "Location", "type": "options"}],
        "total": 3,
    }


def test_summary_is_a_copy_the_server_may_change(catalog: dict[str, SandboxApp]):
    app = catalog["Cartoonify!"]

    app.summary()["capabilities"].append("mutated")

    assert "mutated" not in app.app["capabilities"]


def test_derived_fields_fill_in_when_absent(tmp_path: Path):
    document = shipped_document()
    entry = document["apps"][4]  # Product Catalog: image and video outputs
    for key in ("capabilities", "modality", "outputFormats", "isPublic"):
        entry.pop(key, None)

    (app, *_) = [
        a for a in load_catalog(write(tmp_path, document)) if a.name == entry["name"]
    ]

    assert app.app["modality"] == ["image", "video"]
    assert app.app["outputFormats"] == ["gif", "png"]
    assert app.app["isPublic"] is True


def test_bare_list_catalog_is_accepted(tmp_path: Path):
    document = shipped_document()["apps"][:1]

    apps = load_catalog(write(tmp_path, document))

    assert [a.name for a in apps] == ["Cartoonify!"]


def _drop_name(d: dict[str, Any]) -> None:
    del d["apps"][2]["name"]


def _unknown_renderer(d: dict[str, Any]) -> None:
    d["apps"][0]["outputs"][0]["renderer"] = "watercolour"


def _duplicate_app_id(d: dict[str, Any]) -> None:
    d["apps"][3]["appId"] = d["apps"][0]["appId"]


def _default_not_an_option(d: dict[str, Any]) -> None:
    d["apps"][2]["parameters"][1]["default"] = "Beach"


def _bad_parameter_type(d: dict[str, Any]) -> None:
    d["apps"][3]["parameters"][0]["type"] = "number"


def _option_names_missing_parameter(d: dict[str, Any]) -> None:
    d["apps"][0]["outputs"][0]["options"]["style"] = "Styles"


def _renderer_of_wrong_type(d: dict[str, Any]) -> None:
    d["apps"][3]["outputs"][0]["type"] = "image"


def _duplicate_parameter_name(d: dict[str, Any]) -> None:
    d["apps"][2]["parameters"][2]["name"] = "Front"


def _no_outputs(d: dict[str, Any]) -> None:
    d["apps"][1]["outputs"] = []


def _app_id_not_uuid(d: dict[str, Any]) -> None:
    d["apps"][1]["appId"] = "full-set"


def _frames_out_of_bounds(d: dict[str, Any]) -> None:
    d["apps"][4]["outputs"][5]["options"]["frames"] = 5000


def _unknown_option(d: dict[str, Any]) -> None:
    d["apps"][0]["outputs"][0]["options"]["sytle"] = "Style"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        pytest.param(_drop_name, r"apps\[2\]: name: required", id="missing-name"),
        pytest.param(
            _unknown_renderer,
            r"apps\[0\] \(Cartoonify!\): outputs\[0\] \('AI Designer'\): renderer: "
            r"unknown 'watercolour'",
            id="unknown-renderer",
        ),
        pytest.param(
            _duplicate_app_id,
            r"apps\[3\] \(Product Copywriter\): appId 3f68debe-.* already used by "
            r"Cartoonify!",
            id="duplicate-app-id",
        ),
        pytest.param(
            _default_not_an_option,
            r"parameters\[1\] \('Location'\): default: 'Beach' is not one of",
            id="default-not-an-option",
        ),
        pytest.param(
            _bad_parameter_type,
            r"parameters\[0\] \('Product'\): type: 'number' is not one of text",
            id="bad-parameter-type",
        ),
        pytest.param(
            _option_names_missing_parameter,
            r"options.style: 'Styles' is not a parameter of this app",
            id="option-names-missing-parameter",
        ),
        pytest.param(
            _renderer_of_wrong_type,
            r"renderer copywriter makes text outputs, not image",
            id="renderer-of-wrong-type",
        ),
        pytest.param(
            _duplicate_parameter_name,
            r"parameters\[2\] \('Front'\): name: another parameter already has",
            id="duplicate-parameter-name",
        ),
        pytest.param(
            _no_outputs, r"outputs: required, a non-empty list", id="no-outputs"
        ),
        pytest.param(
            _app_id_not_uuid, r"appId: required, a UUID", id="app-id-not-uuid"
        ),
        pytest.param(
            _frames_out_of_bounds,
            r"\('Catalog Video'\): options.frames: 5000 is outside 2..24",
            id="frames-out-of-bounds",
        ),
        pytest.param(
            _unknown_option,
            r"options.sytle: not an option of cartoonify",
            id="unknown-option",
        ),
    ],
)
def test_broken_catalog_raises_catalog_error_naming_the_problem(
    tmp_path: Path, breakage: Any, message: str
):
    document = copy.deepcopy(shipped_document())
    breakage(document)
    path = write(tmp_path, document)

    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog(path)

    text = str(caught.value)
    assert text.startswith(str(path))
    assert "\n" not in text


def test_invalid_json_names_line_and_column(tmp_path: Path):
    path = tmp_path / "apps.json"
    path.write_text('{"apps": [\n  {"name": "x",}\n]}', encoding="utf-8")

    with pytest.raises(CatalogError, match=r"apps.json:2:\d+: invalid JSON"):
        load_catalog(path)


def test_missing_file_raises_catalog_error(tmp_path: Path):
    path = tmp_path / "nope.json"

    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(path)
