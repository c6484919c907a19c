"""Config validation: defaults, one-line errors naming the key and file, cross-key checks."""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path

import pytest

from cinderseg.core.errors import ConfigError
from cinderseg.core.schema import section_schema
from cinderseg.workflow.config import (
    check_input_files,
    labelled_regions,
    load_config,
    load_schema,
    region_names,
    typed_overrides,
    validate_config,
)
from cinderseg.workflow.reference import render

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {"regions": {"a": {"source": "synthetic", "role": "train", "labels": "synthetic"}}}


def with_changes(**sections: object) -> dict:
    cfg = copy.deepcopy(MINIMAL)
    cfg.update(sections)
    return cfg


def test_defaults_are_filled_without_touching_the_input() -> None:
    raw = copy.deepcopy(MINIMAL)
    cfg = validate_config(raw)
    assert raw == MINIMAL
    assert cfg["tiling"]["size"] == 224 and cfg["tiling"]["step"] == 112
    assert cfg["features"]["channels"] == ["local_relief", "slope", "hillshade"]
    region = cfg["regions"]["a"]
    assert region["resolution_m"] == 30 and region["radius_field"] == "radius_m"
    assert region["synthetic"]["height_ratio"] == pytest.approx(0.18)


@pytest.mark.parametrize(
    "path",
    [
        "config.yaml",
        "config/tiny.yaml",
        "config/local_files.yaml",
        "config/hawaii.yaml",
        "config/crossval_synthetic.yaml",
        "config/mauna_kea_folds.yaml",
        "config/pretrain.yaml",
        "config/new_volcano.yaml",
        "config/fine_tune.yaml",
        "config/transfer_synthetic.yaml",
        "config/map_tiles.yaml",
    ],
)
def test_shipped_configs_are_valid(path: str) -> None:
    cfg = load_config(REPO / path)
    assert cfg["regions"]


def test_every_schema_key_is_documented_with_a_default() -> None:
    schema = load_schema()
    missing: list[str] = []

    def walk(node: dict, path: str, required: set[str]) -> None:
        for name, sub in node.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            if "description" not in sub:
                missing.append(f"{key}: description")
            has_children = "properties" in sub
            if "default" not in sub and name not in required and not has_children:
                # Keys without a default are optional inputs whose absence means "not set".
                if name not in {"dem", "labels", "crs", "nodata", "bbox"}:
                    missing.append(f"{key}: default")
            walk(sub, key, set(sub.get("required", [])))

    walk(schema, "", set(schema.get("required", [])))
    region = schema["definitions"]["region"]
    walk(region, "regions.<name>", set(region.get("required", [])))
    assert not missing


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (with_changes(tiling={"size": 200}), "tiling.size: 200 is not a multiple of 32"),
        (with_changes(tiling={"size": 0}), "tiling.size: 0 must be >= 32"),
        (with_changes(tiling={"size": 64, "step": 100}), "tiling.step: 100 is larger than tiling.size"),
        (with_changes(tiling={"size": 256, "split_block_px": 128}), "tiling.split_block_px: 128 is smaller"),
        (with_changes(tilng={}), "unknown key 'tilng'"),
        (with_changes(tiling={"sise": 3}), "tiling: unknown key 'sise'"),
        (with_changes(tiling={"size": "224"}), "tiling.size: '224' is not of type integer"),
        (
            with_changes(train={"relief_exaggeration": [1.6, 0.4]}),
            "train.relief_exaggeration: expected [lo, hi] with lo <= hi, got [1.6, 0.4]",
        ),
        (with_changes(train={"resolution_scale": [0.7]}), "train.resolution_scale: [0.7] is too short"),
        (
            with_changes(train={"resolution_scale": [0.1, 1.4]}),
            "train.resolution_scale.0: 0.1 must be >= 0.25",
        ),
        (
            with_changes(features={"channels": ["elevation", "sobol"]}),
            "features.channels.1: 'sobol' is not one of",
        ),
        ({"regions": {"a/b": {"source": "synthetic"}}}, "region name 'a/b' may contain only"),
        ({"regions": {"..": {"source": "synthetic"}}}, "region name '..' may contain only"),
        ({"regions": {}}, "regions: {} should be non-empty"),
        ({}, "'regions' is a required property"),
        ({"regions": {"a": {"role": "train"}}}, "regions.a: 'source' is a required property"),
        (
            {"regions": {"a": {"source": "synthetic", "resolution_m": -3}}},
            "regions.a.resolution_m: -3 must be > 0",
        ),
        ({"regions": {"a": {"source": "ftp"}}}, "regions.a.source: 'ftp' is not one of"),
        ({"regions": {"a": {"source": "file"}}}, "regions.a.dem: required for source 'file'"),
        ({"regions": {"a": {"source": "synthetic", "role": "train"}}}, "regions.a.labels: required for role"),
        (
            {"regions": {"a": {"source": "file", "dem": "x.tif", "labels": "synthetic", "role": "test"}}},
            "regions.a.labels: 'synthetic' labels need source 'synthetic'",
        ),
        (
            {"regions": {"a": {"source": "file", "dem": "x.tif", "synthetic": {"seed": 1}}}},
            "regions.a.synthetic: only allowed with source 'synthetic'",
        ),
        (
            {"regions": {"a": {"source": "synthetic", "synthetic": {"diameter_min_m": 2000}}}},
            "regions.a.synthetic.diameter_min_m: 2000 is larger than synthetic.diameter_max_m",
        ),
        (
            {"regions": {"a": {"source": "file", "dem": "x.tif", "bbox": [10, 5, 0, 6]}}},
            "regions.a.bbox: [10, 5, 0, 6] is not [west, south, east, north]",
        ),
    ],
)
def test_invalid_config_gives_one_line_naming_file_and_key(cfg: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    assert expected in message


def test_region_selection() -> None:
    cfg = validate_config(
        {
            "regions": {
                "t": {"source": "synthetic", "role": "train", "labels": "synthetic"},
                "p": {"source": "file", "dem": "p.tif"},
                "v": {"source": "synthetic", "role": "test", "labels": "synthetic"},
            }
        }
    )
    assert region_names(cfg) == ["t", "p", "v"]
    assert region_names(cfg, source="synthetic") == ["t", "v"]
    assert region_names(cfg, role="predict") == ["p"]
    assert labelled_regions(cfg) == ["t", "v"]


def test_missing_input_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "dem1.tif").write_bytes(b"x")
    cfg = validate_config(
        {
            "regions": {
                "r": {"source": "file", "dem": ["dem1.tif", "dem2.tif"], "role": "test", "labels": "l.gpkg"}
            }
        }
    )
    with pytest.raises(ConfigError, match=r"c.yaml: regions.r.dem\[1\]: DEM file not found: dem2.tif"):
        check_input_files(cfg, source="c.yaml", base=tmp_path)
    (tmp_path / "dem2.tif").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"regions\.r\.labels: labels file not found: l\.gpkg"):
        check_input_files(cfg, source="c.yaml", base=tmp_path)
    (tmp_path / "l.gpkg").write_bytes(b"x")
    check_input_files(cfg, source="c.yaml", base=tmp_path)


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "none.yaml")


def test_command_line_values_are_typed_by_the_schema() -> None:
    """What Snakemake's --config gives for nested values (strings), typed where the schema expects
    no string; strings the schema allows, and values YAML cannot read as the type, stay."""
    given = {
        "train": {"epochs": "2", "max_minutes": "1.5", "calibrate": "false", "resolution_scale": "null",
                  "relief_exaggeration": ["0.8", "1.25"]},
        "regions": {"a": {"bbox": ["-155.5", "19.5", "-155.4", "19.6"], "dem": "1.tif", "product": "1",
                          "synthetic": {"seed": "7"}}},
        "crossval": {"spatial_folds": {"a": {"rows": "1", "cols": "2"}}, "leave_one_region_out": "[a, b]"},
        "tiling": {"size": "sixty-four"},
        "unknown": {"key": "3"},
    }  # fmt: skip
    assert typed_overrides(given) == {
        "train": {"epochs": 2, "max_minutes": 1.5, "calibrate": False, "resolution_scale": None,
                  "relief_exaggeration": [0.8, 1.25]},
        "regions": {"a": {"bbox": [-155.5, 19.5, -155.4, 19.6], "dem": "1.tif", "product": "1",
                          "synthetic": {"seed": 7}}},
        "crossval": {"spatial_folds": {"a": {"rows": 1, "cols": 2}}, "leave_one_region_out": ["a", "b"]},
        "tiling": {"size": "sixty-four"},
        "unknown": {"key": "3"},
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"tiling\.size: 'sixty-four' is not of type integer"):
        validate_config({**MINIMAL, **typed_overrides({"tiling": {"size": "sixty-four"}})})


def test_the_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md is generated from the schema: `make docs` after changing the schema."""
    written = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == render(), "docs/configuration.md is out of date: run `make docs`"


def test_the_reference_lists_every_key_of_every_section() -> None:
    text = render()
    schema = load_schema()
    chunks = dict(chunk.split("\n", 1) for chunk in text.split("\n## ")[1:])
    assert list(chunks) == list(schema["properties"])
    region = schema["definitions"]["region"]["properties"]
    keys = {name: list(section.get("properties", {})) for name, section in schema["properties"].items()}
    keys["regions"] = [
        *region,
        *region["tiles"]["properties"],
        *region["synthetic"]["properties"],
        *region["scene"]["properties"],
    ]
    keys["crossval"] += ["rows", "cols", "gap_m"]
    for name, chunk in chunks.items():
        rows = [line for line in chunk.splitlines() if line.startswith("| `")]
        assert [row.split("`")[1] for row in rows] == keys[name], name
    assert "| `size` | integer | ≥ 32; multiple of 32 | `224` | Tile size in pixels;" in chunks["tiling"]
    assert (
        "| `relief_exaggeration` | list of number or null | exactly 2 items; each ≥ 0.1 and ≤ 10 | `null` |"
        in (chunks["train"])
    )
    source_row = "| `source` | string | one of `synthetic`, `scene`, `file`, `usgs3dep` | required |"
    assert source_row in chunks["regions"]


# Every settings class: its fields are its schema section's keys, with the schema's defaults. The
# exceptions are the fields that come from elsewhere and the keys that are inputs, not settings.
SETTINGS_CLASSES = [
    ("cinderseg.terrain.features", "FeatureSettings", "features", set(), set()),
    ("cinderseg.data.tiles", "TilingSettings", "tiling", set(), set()),
    ("cinderseg.terrain.download", "DownloadSettings", "download", set(), set()),
    # resolution_m: the region's own key (regions.<name>.resolution_m)
    ("cinderseg.terrain.synthetic", "SyntheticParams", "region.synthetic", {"resolution_m"}, set()),
    # resolution_m: the region's own key (regions.<name>.resolution_m)
    ("cinderseg.data.scenes", "SceneParams", "region.scene", {"resolution_m"}, set()),
    ("cinderseg.nn.settings", "ModelSettings", "model", set(), set()),
    ("cinderseg.nn.settings", "TrainSettings", "train", set(), set()),
    ("cinderseg.nn.settings", "PredictSettings", "predict", set(), set()),
    ("cinderseg.cones.settings", "VectorizeSettings", "vectorize", set(), set()),
    ("cinderseg.cones.detector", "BaselineSettings", "baseline", set(), set()),
    ("cinderseg.assess.settings", "EvaluateSettings", "evaluate", set(), set()),
]


def _plain(value: object) -> object:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize(
    ("module", "name", "section", "extra", "missing"), SETTINGS_CLASSES, ids=[c[1] for c in SETTINGS_CLASSES]
)
def test_settings_classes_have_the_keys_and_defaults_of_their_schema_section(
    module: str, name: str, section: str, extra: set[str], missing: set[str]
) -> None:
    cls = getattr(importlib.import_module(module), name)
    properties = section_schema(section)["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == (set(properties) | extra) - missing, f"{name} vs the schema's {section}"
    for key in set(properties) - missing:
        field = fields[key]
        default = (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        )
        expected = properties[key].get("default", None)
        assert _plain(default) == _plain(expected), f"{name}.{key}: {default!r}, schema: {expected!r}"
