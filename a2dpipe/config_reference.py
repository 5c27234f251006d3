"""Command ``a2dpipe config-reference``: the configuration reference page, generated from the config schema.

    a2dpipe config-reference --out docs/configuration.md     # rewrite the page after editing the schema
    a2dpipe config-reference --check docs/configuration.md   # exit 1 when the page is stale or a key undescribed

The schema (``workflow/schemas/config.schema.yaml``) is the one place a key, its type, its default and its meaning
are declared; this page is that schema laid out for reading, one table per section. ``tests/test_docs.py`` fails
when a key has no description or the committed page differs from what this command writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from a2dpipe.config import schema
from a2dpipe.errors import A2DError
from a2dpipe.io import atomic_path

__all__ = ["configure_parser", "run", "render", "keys", "undescribed"]

COMMAND = "python -m a2dpipe config-reference --out docs/configuration.md"
TOP_LEVEL = "(top level)"


def keys(tree: dict | None = None, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every property of the schema as (dotted key, its schema node), depth first, in the schema's order."""
    tree = schema() if tree is None else tree
    for name, node in tree.get("properties", {}).items():
        yield f"{prefix}{name}", node
        yield from keys(node, f"{prefix}{name}.")


def undescribed(tree: dict | None = None) -> list[str]:
    """Dotted keys whose schema node has no non-empty ``description``."""
    return [key for key, node in keys(tree) if not str(node.get("description", "")).strip()]


def _type(node: dict, defs: dict) -> str:
    """A short reading of a node's type: ``integer >= 1``, ``tiny | resnet50``, ``path or null`` ..."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return {"path": "path", "optional_path": "path or null"}.get(name) or _type(defs[name], defs)
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" if not isinstance(v, str) else f"`{v}`" for v in node["enum"])
    if "anyOf" in node:
        return " or ".join(_type(option, defs) for option in node["anyOf"])
    kind = node.get("type", "")
    if isinstance(kind, list):  # [integer, "null"]: the bounds belong to the number
        return " or ".join(_type({**node, "type": k}, defs) if k != "null" else "null" for k in kind)
    if kind == "array":
        if "prefixItems" in node:
            return "list of [" + ", ".join(_type(item, defs) for item in node["prefixItems"]) + "]"
        items = node.get("items")
        return f"list of {_type(items, defs)}" if items else "list"
    bounds = [f"{sign} {node[word]}" for word, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                         ("maximum", "<="), ("exclusiveMaximum", "<"))
              if word in node]
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    return " ".join([kind or "value", ", ".join(bounds)]).strip()


def _default(node: dict) -> str:
    if "default" not in node:
        return "required"
    value = node["default"]
    if isinstance(value, dict) and not value:
        return ""  # a section: its keys carry the defaults
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """One line of Markdown table text; `<results>` stays text, not an HTML tag."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[tuple[str, dict]], defs: dict, prefix: str) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, node in rows:
        name = key[len(prefix):]
        lines.append(f"| `{name}` | {_type(node, defs)} | {_default(node)} | {_cell(node.get('description', ''))} |")
    return lines


def _sections(tree: dict) -> list[tuple[str, dict, list[tuple[str, dict]]]]:
    """(section name, its node, its leaf keys): the top level's own keys first, then each object section; a nested
    object section (``segmentation.stage1``) gets its own table after its parent's."""
    out: list[tuple[str, dict, list[tuple[str, dict]]]] = []

    def visit(name: str, node: dict, prefix: str) -> None:
        props = node.get("properties", {})
        leaves = [(f"{prefix}{k}", v) for k, v in props.items() if "properties" not in v]
        out.append((name, node, leaves))
        for k, v in props.items():
            if "properties" in v:
                visit(f"{prefix}{k}", v, f"{prefix}{k}.")

    visit(TOP_LEVEL, tree, "")
    return out


def render(tree: dict | None = None) -> str:
    """The Markdown page: every key of the schema with its type, default and description."""
    tree = schema() if tree is None else tree
    defs = tree.get("$defs", {})
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from workflow/schemas/config.schema.yaml by `{COMMAND}`; edit the schema, not this page. -->",
        "",
        _cell(tree.get("description", "")),
        "",
        "A configuration is a YAML file: `config.yaml` (the embedded default, each value commented with why it has",
        "it) or a preset in `config/` (`--configfile config/paper.yaml`). A key left out takes the default below;",
        "`dataset.root` is required. The keys each command reads are declared once, in `a2dpipe/settings.py`;",
        "their values are part of its rule's params, so editing one reruns exactly the jobs it affects",
        "(`snakemake -n tables --rerun-triggers params` lists them).",
        "",
        "Sections: " + ", ".join(f"[`{name}`](#{name.replace('.', '')})" for name, _, _ in _sections(tree)[1:]) + ".",
        "",
    ]
    for name, node, leaves in _sections(tree):
        title = "Top-level keys" if name == TOP_LEVEL else f"`{name}`"
        lines += [f"## {title}", ""]
        if name != TOP_LEVEL:
            lines += [_cell(node.get("description", "")), ""]
        if leaves:
            prefix = "" if name == TOP_LEVEL else f"{name}."
            lines += [*_table(leaves, defs, prefix), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def configure_parser(parser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="write the page here (docs/configuration.md)")
    group.add_argument("--check", help="compare this page with the schema; exit 1 when it is stale")


def run(args) -> None:
    missing = undescribed()
    if missing:
        raise A2DError(f"workflow/schemas/config.schema.yaml: no description for {', '.join(missing)}: "
                       f"add a `description` to each")
    page = render()
    if args.check:
        path = Path(args.check)
        if not path.is_file() or path.read_text() != page:
            raise A2DError(f"{path}: stale, it does not match the config schema; regenerate it: {COMMAND}")
        return
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(page)
