"""The package mirrors the DAG: stage packages depend on shared modules and on each other's public readers only.

Checked on the source text (nothing is imported): every ``import`` of an ``a2dpipe`` module, at module level or
inside a function, is an edge of the module graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "a2dpipe"
STAGES = ("dataset", "flow", "masks", "segmentation", "evaluation")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """``(imported module, imported names)`` for every a2dpipe import of ``module`` (names empty for ``import m``)."""
    found = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("a2dpipe")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("a2dpipe"):
            names = [alias.name for alias in node.names]
            # ``from a2dpipe.flow import flownet`` imports a module, not a name
            submodules = [n for n in names if f"{node.module}.{n}" in MODULES]
            found += [(f"{node.module}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((node.module, rest))
    return found


def _exported(module: str) -> set[str]:
    """Names in the module's ``__all__`` (empty when it has none)."""
    for node in TREES[module].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def test_the_module_graph_has_no_cycle():
    graph = {m: {target for target, _ in _imports(m) if target in MODULES and target != m} for m in MODULES}
    # a package's __init__ re-exporting its own modules is not a cycle through them
    for m in graph:
        graph[m] = {t for t in graph[m] if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_stage_takes_only_public_names_of_another(module):
    own = _stage(module)
    for target, names in _imports(module):
        other = _stage(target)
        if other is None or other == own:
            continue
        assert names, f"{module} imports the module {target} of stage {other}: import its public names instead"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module} reaches into {target} for private names {private}"
        unexported = sorted(set(names) - _exported(target))
        assert not unexported, f"{module} imports {unexported} from {target}, which does not export them (__all__)"


BENCHMARKS = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmarks_take_only_public_names(script):
    """A benchmark measures the package's code through its public names (its modules' ``__all__``), and its
    neighbours' through names without a leading underscore, so a private helper can change without breaking one."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [alias.name for alias in node.names]
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{script.name}:{node.lineno} imports private names {private} from {node.module}"
            if node.module in MODULES:
                modules = {n for n in names if f"{node.module}.{n}" in MODULES}
                unexported = sorted(set(names) - modules - _exported(node.module))
                assert not unexported, (f"{script.name}:{node.lineno} imports {unexported} from {node.module}, which "
                                        "does not export them (__all__)")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id != "self":
            assert not (node.attr.startswith("_") and not node.attr.startswith("__")), (
                f"{script.name}:{node.lineno} reaches for the private {node.value.id}.{node.attr}")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _stage(m) is None and m != "a2dpipe.cli"))
def test_shared_modules_import_no_stage(module):
    stages = sorted({_stage(target) for target, _ in _imports(module)} - {None})
    assert not stages, f"shared module {module} imports stage package(s) {stages}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_short(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines (at most {MAX_MODULE_LINES})"
    for node in ast.walk(TREES[module]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            why = "Long because" in (ast.get_docstring(node) or "")
            assert length <= MAX_FUNCTION_LINES or why, (
                f"{module}.{node.name}: {length} lines (at most {MAX_FUNCTION_LINES}, or a docstring line "
                f"'Long because ...' saying why)")
