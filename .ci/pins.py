"""The one lock file and what is derived from it (``make lock``; tests/test_envs.py checks them).

``requirements.lock`` holds the exact version of every package of a tested environment: the runtime
(pyproject.toml's dependencies and theirs) and development (its ``dev`` extra and build requirements,
and theirs). Derived from it: ``requirements.txt`` (runtime), ``requirements-dev.txt``
(development) and the versions pinned in ``envs/*.yaml``.

    python .ci/pins.py freeze   # write requirements.lock from this environment (after testing it)
    python .ci/pins.py write    # write the derived files from requirements.lock
    python .ci/pins.py check    # exit 1 naming each derived file that disagrees with the lock
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
RUNTIME, DEV = "runtime", "development"
SECTION = re.compile(r"^# (runtime|development):")
ENV_PIN = re.compile(r"^(?P<lead>\s+- )(?P<name>[A-Za-z0-9_.-]+)(?P<op>==?)(?P<version>[^\s#]+)(?P<rest>.*)$")
GENERATED = "# Generated from requirements.lock by `make lock` (.ci/pins.py): do not edit by hand.\n"


def norm(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def top_requirements() -> dict[str, list[Requirement]]:
    """pyproject.toml's requirements: runtime (dependencies), development (dev extra, build)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = project["project"]["dependencies"]
    dev = project["project"]["optional-dependencies"]["dev"] + project["build-system"]["requires"]
    return {RUNTIME: [Requirement(r) for r in runtime], DEV: [Requirement(r) for r in dev]}


def closure(requirements: list[Requirement]) -> dict[str, str]:
    """Normalised name -> installed version of these requirements and everything they need here."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, frozenset(req.extras)) for req in requirements]
    while todo:
        req, extras = todo.pop()
        if (norm(req.name), extras) in seen:
            continue
        seen.add((norm(req.name), extras))
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise SystemExit(f"pins: {req.name} (needed) is not installed in {sys.prefix}") from None
        found[norm(dist.metadata["Name"])] = dist.version
        for sub in map(Requirement, dist.requires or []):
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append((sub, frozenset(sub.extras)))
    return found


def freeze() -> str:
    """The lock file's text for this environment."""
    tops = top_requirements()
    runtime = closure(tops[RUNTIME])
    dev = {k: v for k, v in closure(tops[DEV]).items() if k not in runtime}
    runtime.pop("cinderseg", None)
    python = ".".join(map(str, sys.version_info[:2]))
    lines = [
        "# The exact versions of every package of a tested environment (Python "
        f"{python}): the one place\n# versions are pinned. `make setup` installs from it; "
        "requirements.txt, requirements-dev.txt and\n# the pins of envs/*.yaml are generated from it "
        "(`make lock`: .ci/pins.py). Update: install and\n# test the new versions, then `make lock`.\n",
        "# runtime: pyproject.toml's dependencies and theirs",
        *(f"{name}=={runtime[name]}" for name in sorted(runtime)),
        "# development: pyproject.toml's dev extra and build requirements, and theirs",
        *(f"{name}=={dev[name]}" for name in sorted(dev)),
    ]
    return "\n".join(lines) + "\n"


def read_lock(text: str | None = None) -> dict[str, dict[str, str]]:
    """Section -> normalised name -> version of the lock file."""
    pins: dict[str, dict[str, str]] = {RUNTIME: {}, DEV: {}}
    section = None
    for line in (LOCK.read_text() if text is None else text).splitlines():
        if match := SECTION.match(line):
            section = match.group(1)
        elif line and not line.startswith("#"):
            if section is None or "==" not in line:
                raise SystemExit(f"pins: {LOCK.name}: not a pin in a section: {line!r}")
            name, version = line.split("==", 1)
            pins[section][norm(name)] = version.strip()
    return pins


def derived() -> dict[Path, str]:
    """Each derived file and the text it must have."""
    pins = read_lock()
    files = {
        REPO / "requirements.txt": _requirements("Runtime requirements", pins[RUNTIME]),
        REPO / "requirements-dev.txt": _requirements("Development tools", pins[DEV]),
    }
    every = {**pins[RUNTIME], **pins[DEV]}
    for env in sorted((REPO / "envs").glob("*.yaml")):
        files[env] = _env_with_pins(env, every)
    return files


def _requirements(what: str, pins: dict[str, str]) -> str:
    return GENERATED + f"# {what}.\n" + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def _env_with_pins(env: Path, pins: dict[str, str]) -> str:
    """The conda environment file with each package's version from the lock (python and pip stay)."""
    out = []
    for line in env.read_text().splitlines(keepends=True):
        match = ENV_PIN.match(line.rstrip("\n"))
        if match and match.group("name") != "python":
            name = norm(match.group("name"))
            if name not in pins:
                raise SystemExit(f"pins: {env.relative_to(REPO)}: {name} is not in {LOCK.name}")
            line = f"{match['lead']}{match['name']}{match['op']}{pins[name]}{match['rest']}\n"
        out.append(line)
    return "".join(out)


def stale() -> list[str]:
    """The derived files whose text differs from what the lock gives."""
    return [str(path.relative_to(REPO)) for path, text in derived().items() if path.read_text() != text]


def main(argv: list[str]) -> int:
    if argv == ["freeze"]:
        LOCK.write_text(freeze())
    elif argv == ["write"]:
        for path, text in derived().items():
            path.write_text(text)
    elif argv == ["check"]:
        if files := stale():
            print(f"pins: out of date with {LOCK.name}: {', '.join(files)}; run `make lock`", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
