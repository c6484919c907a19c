"""Config validation: defaults, one-line errors naming the key and file, cross-key checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from cinderseg.config import (
    check_input_files,
    labelled_regions,
    load_config,
    load_schema,
    region_names,
    validate_config,
)
from cinderseg.errors import ConfigError

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
        "config/synthetic_pretrain.yaml",
        "config/new_volcano.yaml",
        "config/fine_tune.yaml",
        "config/transfer_synthetic.yaml",
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
            "train.relief_exaggeration: [1.6, 0.4] must be",
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
            "regions.a.synthetic.diameter_min_m: 2000 is larger than diameter_max_m",
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
