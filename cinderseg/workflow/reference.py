"""The configuration reference (``docs/configuration.md``), generated from the schema.

``python -m cinderseg.workflow.reference > docs/configuration.md`` (``make docs``) writes, for every
section and key of :mod:`cinderseg.core.schema`'s schema, its type, allowed values or range, default
and description. tests/test_config.py fails when the file is out of date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from cinderseg.core.schema import load_schema

Node = Mapping[str, Any]

HEADER = """\
# Configuration reference

<!-- Generated from cinderseg/core/config.schema.yaml by `make docs`
     (python -m cinderseg.workflow.reference > docs/configuration.md): do not edit by hand. -->

{description}

A run reads one YAML file: `config.yaml`, or the one given with `--configfile other.yaml` (which
replaces `config.yaml`). Values given with `--config section='{{key: value}}'` are merged into the
file's section and read as the types below. Errors name the file and the key, on one line, before
any job runs. `results/` and `resources/` are relative to the working directory.

Sections: {sections}.
"""


def render(schema: Node | None = None) -> str:
    """The whole reference as Markdown."""
    schema = load_schema() if schema is None else schema
    sections = list(schema["properties"])
    parts = [
        HEADER.format(
            description=_text(schema.get("description", "")),
            sections=", ".join(f"[{name}](#{name})" for name in sections),
        )
    ]
    required = set(schema.get("required", []))
    for name in sections:
        node = _resolved(schema["properties"][name], schema)
        flag = " (required)" if name in required else ""
        parts.append(f"## {name}\n\n{_text(node.get('description', ''))}{flag}\n")
        parts.extend(_blocks(name, node, schema))
    return "\n".join(parts)


def _blocks(path: str, node: Node, root: Node) -> Iterator[str]:
    """The table of an object's keys, then one block per nested object (its own heading)."""
    node = _resolved(node, root)
    entries = _entries(node, root)
    if entries is None:
        return
    if isinstance(entries, tuple):  # a mapping of names to objects of one kind
        label, child = entries
        yield _heading(f"{path}.{label}", child)
        yield from _blocks(f"{path}.{label}", child, root)
        return
    required = set(node.get("required", []))
    rows = ["| Key | Type | Allowed | Default | Description |", "| --- | --- | --- | --- | --- |"]
    nested: list[tuple[str, Node]] = []
    for key, sub in entries.items():
        sub = _resolved(sub, root)
        default = "required" if key in required else _default(sub)
        rows.append(
            f"| `{key}` | {_type(sub, root)} | {_allowed(sub, root)} | {default} | "
            f"{_cell(_text(sub.get('description', '')))} |"
        )
        if _entries(sub, root) is not None:
            nested.append((f"{path}.{key}", sub))
    yield "\n".join(rows) + "\n"
    for sub_path, sub in nested:
        yield _heading(sub_path, sub)
        yield from _blocks(sub_path, sub, root)


def _heading(path: str, node: Node) -> str:
    about = _text(node.get("description", ""))
    return f"### {_text(path)}\n" + (f"\n{about}\n" if about else "")


def _entries(node: Node, root: Node) -> dict[str, Node] | tuple[str, Node] | None:
    """An object's named keys, or (``<name>``, schema) for a mapping of names to objects; None for
    anything else."""
    if node.get("type") != "object":
        return None
    if "properties" in node:
        return dict(node["properties"])
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        child = _resolved(extra, root)
        if child.get("type") == "object":
            return ("<region>" if node.get("propertyNames") else "<name>", child)
    return None


def _resolved(node: Node, root: Node) -> Node:
    ref = node.get("$ref")
    return root["definitions"][ref.rsplit("/", 1)[-1]] if isinstance(ref, str) else node


def _type(node: Node, root: Node) -> str:
    """``integer``, ``list of number``, ``string or list of string``, ``mapping`` ..."""
    if "anyOf" in node:
        return " or ".join(_type(_resolved(b, root), root) for b in node["anyOf"])
    kinds = node.get("type", "any")
    names = []
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind == "array":
            names.append(f"list of {_type(_resolved(node.get('items', {}), root), root)}")
        elif kind == "object":
            names.append("mapping")
        else:
            names.append(kind)
    return " or ".join(names)


_BOUNDS = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}


def _allowed(node: Node, root: Node) -> str:
    """Enum values, ranges, lengths and patterns of a key (and of its list items), '' if free."""
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{_value(v)}`" for v in node["enum"]))
    bounds = [f"{op} {_value(node[key])}" for key, op in _BOUNDS.items() if key in node]
    if bounds:
        out.append(" and ".join(bounds))
    if "multipleOf" in node:
        out.append(f"multiple of {_value(node['multipleOf'])}")
    lo, hi = node.get("minItems"), node.get("maxItems")
    if lo is not None and lo == hi:
        out.append(f"exactly {lo} items")
    else:
        out += [f"at least {lo} item{'s' * (lo != 1)}"] if lo is not None else []
        out += [f"at most {hi} items"] if hi is not None else []
    if node.get("uniqueItems"):
        out.append("no repeats")
    if node.get("minLength") == 1:
        out.append("not empty")
    if "pattern" in node:
        out.append(f"matches `{node['pattern']}`")
    if node.get("minProperties") == 1:
        out.append("at least one")
    names = node.get("propertyNames", {})
    if "pattern" in names:
        out.append(f"names match `{names['pattern']}`")
    items = _resolved(node.get("items", {}), root)
    if items and _allowed(items, root):
        out.append(f"each {_allowed(items, root)}")
    for branch in node.get("anyOf", []):
        if _allowed(_resolved(branch, root), root):
            out.append(f"{_type(branch, root)}: {_allowed(_resolved(branch, root), root)}")
    return "; ".join(out)


def _default(node: Node) -> str:
    return f"`{_value(node['default'])}`" if "default" in node else "not set"


def _value(value: Any) -> str:
    """A value as in a YAML config file."""
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return (
            value
            if re.fullmatch(r"[\w./:-]+", value) and value not in {"true", "false"}
            else json.dumps(value)
        )
    return json.dumps(value)


def _text(text: str) -> str:
    """Schema text on one line, ``<`` and ``>`` escaped (``<region>`` is no HTML tag)."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> None:
    """Print the reference (the schema: ``cinderseg/core/config.schema.yaml``)."""
    print(render(), end="")


if __name__ == "__main__":
    main()
