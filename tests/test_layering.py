"""The layering, checked on the source: shards <- pipelines <- train, eval beside train.

Every import counts, the ones inside functions too. Entry points (``__main__``, the eval
CLI, the demo) are where the stages are composed; library modules never reach across.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "pipelines", "train", "eval")
ENTRY_POINTS = {"train.__main__", "train.demo", "eval.cli", "eval.__main__", "eval.predict"}
# the [eval] section's dataclass: part of every experiment file and checkpoint config
SHARED_DATA = {"eval.config"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path], *, in_functions: bool = True) -> set[str]:
    """Project modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks excluded);
    ``in_functions=False``: only those imported when the module itself is imported."""
    tree = ast.parse(path.read_text())
    skip = {
        id(n)
        for block in ast.walk(tree)
        if (
            isinstance(block, ast.If)
            and isinstance(block.test, ast.Name)
            and block.test.id == "TYPE_CHECKING"
        )
        or (not in_functions and isinstance(block, (ast.FunctionDef, ast.AsyncFunctionDef)))
        for n in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules and n.split(".")[0] in PACKAGES}
    return found


GRAPH = {m: _imports(p, _modules()) for m, p in _modules().items()}
AT_IMPORT = {m: _imports(p, _modules(), in_functions=False) for m, p in _modules().items()}


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("shards", ("pipelines", "train", "eval")), ("pipelines", ("train", "eval"))],
)
def test_lower_layers_import_nothing_above(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = {m: sorted(i for i in deps if i.split(".")[0] in forbidden) for m, deps in GRAPH.items()}
    assert not {m: d for m, d in bad.items() if d and m.split(".")[0] == layer}


def test_train_and_eval_libraries_do_not_import_each_other() -> None:
    crossing = {
        m: sorted(d)
        for m, deps in GRAPH.items()
        if m not in ENTRY_POINTS
        and (d := {i for i in deps if i.split(".")[0] in {"train", "eval"} - {m.split(".")[0]}} - SHARED_DATA)
        and m.split(".")[0] in ("train", "eval")
    }
    assert not crossing
    assert all(not _imports(p, _modules()) for m, p in _modules().items() if m in SHARED_DATA)


def test_no_import_cycle() -> None:
    """Among module-level imports (a registry's lazy load of its built-ins is a function call)."""
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(AT_IMPORT.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(d) :], d])}")
            if d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(AT_IMPORT):
        if m not in state:
            visit(m, [m])


def test_no_import_error_fallbacks() -> None:
    for m, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                assert not names & {"ImportError", "ModuleNotFoundError"}, f"{m}: line {node.lineno}"
