"""Safe loading: no pickle where user data passes, Keras safe mode, YAML's safe loader, http(s) only
from the configured base URLs, and nothing written outside results/ and resources/.

An audit of the source (the library, the scripts, the benchmarks, the Snakefile and rules) by its
syntax tree, and the same properties shown on hostile files.
"""

from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cinderseg.core.errors import ConfigError, InputError
from cinderseg.data.tiles import load_tiles
from cinderseg.terrain.fetch import url_allowed
from cinderseg.workflow import paths
from cinderseg.workflow.config import load_yaml
from tests.workflow_helpers import REPO, snakemake, write_config

SOURCES = [
    *sorted(p for folder in ("cinderseg", "scripts", "bench") for p in (REPO / folder).rglob("*.py")),
    REPO / "Snakefile",
    *sorted((REPO / "rules").glob("*.smk")),
]
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}
#: The modules that open network connections, and the network packages each may import: the 3DEP
#: downloader's HTTP layer (requests and urllib3, only under the configured base URLs), and the
#: encoders, whose keras.applications models fetch ImageNet weights over https only when
#: model.encoder_weights asks for them (it sets a socket timeout for that).
NETWORK_MODULES = {
    "cinderseg/terrain/fetch.py": {"requests", "urllib3"},
    "cinderseg/nn/encoders.py": {"socket"},
}


def smk_python(text: str) -> str:
    """The plain Python of a Snakemake file: its top-level imports and functions (rules are not Python)."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        starts = re.match(r"^(import |from |def |[A-Z_]+ = |try:|except |    )", line) is not None
        if re.match(r"^(import |from |def |try:)", line):
            inside = True
        elif line and not line[0].isspace() and not line.startswith((")", "]")):
            inside = re.match(r"^([A-Z_]+ = |except )", line) is not None
        if inside and (starts or line.startswith((")", "]")) or not line.strip()):
            kept.append(line)
    return "\n".join(kept) or "pass"


def python_sources() -> list[tuple[str, ast.Module]]:
    """(path, syntax tree) of every Python source; Snakemake files by their Python lines only."""
    trees = []
    for path in SOURCES:
        rel = str(path.relative_to(REPO))
        text = path.read_text()
        if path.suffix == ".py":
            trees.append((rel, ast.parse(text, rel)))
        else:
            trees.append((rel, ast.parse(smk_python(text), rel)))
    return trees


def dotted(node: ast.AST) -> str:
    """``np.load`` for the call target ``np.load``; '' for targets that are not plain names."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


def pickle_findings(rel: str, tree: ast.Module) -> list[str]:
    """Pickling modules, pandas pickles, and numpy loads or writes without ``allow_pickle=False``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{rel}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"{rel}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            parts = name.split(".")
            if parts[-1] in {"read_pickle", "to_pickle"}:
                found.append(f"{rel}:{node.lineno}: {name}")
            numpy_io = parts[0] in {"np", "numpy"} and parts[-1] in {"load", "read_array", "write_array"}
            if numpy_io and not keyword_is(node, "allow_pickle", False):
                found.append(f"{rel}:{node.lineno}: {name} without allow_pickle=False")
    return found


def yaml_findings(rel: str, tree: ast.Module) -> list[str]:
    """YAML loads other than ``yaml.safe_load``, and the unsafe loader classes."""
    found = []
    for node in ast.walk(tree):
        name = dotted(node.func) if isinstance(node, ast.Call) else ""
        if name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
            found.append(f"{rel}:{node.lineno}: {name}")
        if isinstance(node, ast.Attribute) and dotted(node) in {
            "yaml.Loader",
            "yaml.UnsafeLoader",
            "yaml.FullLoader",
        }:
            found.append(f"{rel}:{node.lineno}: {dotted(node)}")
    return found


def keras_findings(rel: str, tree: ast.Module) -> list[str]:
    """Keras loads without ``safe_mode=True`` (cinderseg.nn.model.load_model is the safe wrapper)."""
    wrapper = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "cinderseg.nn.model"
        for a in node.names
        if a.name == "load_model"
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "enable_unsafe_deserialization":
            found.append(f"{rel}:{node.lineno}: enable_unsafe_deserialization")
        name = dotted(node.func) if isinstance(node, ast.Call) else ""
        if (
            name.endswith(("load_model", "model_from_json", "deserialize_keras_object"))
            and name not in wrapper
        ):
            if not keyword_is(node, "safe_mode", True):
                found.append(f"{rel}:{node.lineno}: {name} without safe_mode=True")
    return found


def network_and_eval_findings(rel: str, tree: ast.Module) -> list[str]:
    """Network modules outside NETWORK_MODULES, and eval/exec/compile/__import__ anywhere."""
    found = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        for module in modules:
            network = module.split(".")[0] in {
                "requests",
                "urllib3",
                "httpx",
                "socket",
                "ftplib",
            } or module in {
                "urllib.request",
                "http.client",
            }
            allowed = module.split(".")[0] in NETWORK_MODULES.get(rel, set())
            if network and not allowed:
                found.append(f"{rel}: imports {module}")
        if isinstance(node, ast.Call) and dotted(node.func) in {"eval", "exec", "compile", "__import__"}:
            found.append(f"{rel}:{node.lineno}: {dotted(node.func)}")
    return found


AUDITS = {
    "pickle": pickle_findings,
    "yaml": yaml_findings,
    "keras": keras_findings,
    "network-and-eval": network_and_eval_findings,
}


def test_the_audit_reads_every_source() -> None:
    names = {rel for rel, _ in python_sources()}
    assert {
        "cinderseg/data/tiles.py",
        "cinderseg/nn/model.py",
        "scripts/train.py",
        "rules/common.smk",
    } <= names


@pytest.mark.parametrize("audit", list(AUDITS))
def test_the_sources_pass_the_audit(audit: str) -> None:
    assert [f for rel, tree in python_sources() for f in AUDITS[audit](rel, tree)] == []


def test_the_library_loads_keras_models_in_safe_mode() -> None:
    tree = dict(python_sources())["cinderseg/nn/model.py"]
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and dotted(n.func) == "keras.saving.load_model"
    ]
    assert calls and all(keyword_is(c, "safe_mode", True) for c in calls)


@pytest.mark.parametrize(
    ("audit", "source"),
    [
        ("pickle", "import pickle"),
        ("pickle", "from joblib import load"),
        ("pickle", "np.load(path)"),
        ("pickle", "numpy.load(path, allow_pickle=True)"),
        ("pickle", "pd.read_pickle(path)"),
        ("yaml", "yaml.load(text)"),
        ("yaml", "yaml.load(text, Loader=yaml.FullLoader)"),
        ("keras", "keras.saving.load_model(path)"),
        ("keras", "keras.models.load_model(path, safe_mode=False)"),
        ("keras", "keras.config.enable_unsafe_deserialization()"),
        ("network-and-eval", "import requests"),
        ("network-and-eval", "from urllib.request import urlopen"),
        ("network-and-eval", "eval(text)"),
    ],
)
def test_the_audit_finds_what_it_looks_for(audit: str, source: str) -> None:
    assert AUDITS[audit]("cinderseg/x.py", ast.parse(source))
    safe = {
        "pickle": "np.load(path, allow_pickle=False)",
        "yaml": "yaml.safe_load(text)",
        "keras": "keras.saving.load_model(path, safe_mode=True)",
        "network-and-eval": "import json",
    }
    assert AUDITS[audit]("cinderseg/x.py", ast.parse(safe[audit])) == []


# --- the same properties on hostile files -----------------------------------------------------------


def test_a_tiles_file_holding_a_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(
        path, x=np.zeros((1, 32, 32, 1), "f2"), y=np.array([{"a": 1}], dtype=object), channels=np.array(["a"])
    )
    with zipfile.ZipFile(path) as zf:
        assert b"pickle" not in zf.read("x.npy")[:10]
    with pytest.raises(InputError) as info:
        load_tiles(path)
    assert str(path) in str(info.value)


def test_a_keras_model_with_code_in_it_is_refused(tmp_path: Path) -> None:
    import keras

    from cinderseg.nn.model import load_model

    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(
        InputError, match=r"lambda\.keras: not a readable Keras model .*arbitrary code execution"
    ):
        load_model(path)


@pytest.mark.parametrize(
    "text",
    [
        "regions: !!python/object/apply:os.system ['echo owned']\n",
        "regions: !!python/name:os.system\n",
    ],
)
def test_yaml_with_python_tags_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
        load_yaml(path)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://prd-tnm.s3.amazonaws.com/StagedProducts/x.tif",
        "https://prd-tnm.s3.amazonaws.com.evil.example/StagedProducts/x.tif",
        "https://evil.example/StagedProducts/x.tif",
        "https://prd-tnm.s3.amazonaws.com/StagedProducts/../../x.tif",
    ],
)
def test_downloads_only_over_http_from_the_configured_bases(url: str) -> None:
    bases = ("https://tnmaccess.nationalmap.gov/api/v1", "https://prd-tnm.s3.amazonaws.com/StagedProducts")
    assert url_allowed("https://prd-tnm.s3.amazonaws.com/StagedProducts/Elevation/x.tif", bases)
    assert not url_allowed(url, bases)


@pytest.mark.workflow
def test_every_file_the_workflow_writes_is_under_results_or_resources(tmp_path: Path) -> None:
    """Every output, log and benchmark of every job of a run with all kinds of region (a dry run)."""
    tiny = load_yaml(REPO / "config" / "tiny.yaml")
    regions = {
        **tiny["regions"],
        "hill": {"source": "usgs3dep", "bbox": [-155.5, 19.5, -155.4, 19.6], "role": "predict"},
    }
    proc = snakemake(
        tmp_path, "--dry-run", "--configfile", write_config(tmp_path, "c.yaml", {**tiny, "regions": regions})
    )
    written = []
    for line in (proc.stdout + proc.stderr).splitlines():
        match = re.match(r"^\s+(output|log|benchmark): (.+)$", line)
        if match:
            written += [p.strip() for p in match.group(2).split(",")]
    assert len(written) > 30 and paths.DEM_TILE.format(product="13", tile="n20w156") in written
    inside = re.compile(rf"^({paths.RESULTS}|{paths.RESOURCES})/[\w./-]+$")
    outside = [p for p in written if not inside.match(p) or ".." in p.split("/")]
    assert outside == [] and (paths.RESULTS, paths.RESOURCES) == ("results", "resources")
