"""The rooms of the tree and their layering, checked on the source.

Three kinds of room (docs/architecture.md): the shared base (``shards.base``: imports nothing
else of the project), the library (what a user's job runs: shards <- pipelines <- train, eval
beside train) and tools (benchmarks, baselines, the parity reference, the GPU acceptance run,
the demo driver), which the library never imports. Test helpers live under ``tests/helpers``
and nothing in the packages imports them. Every import counts, the ones inside functions too.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "pipelines", "train", "eval")
BASE = "shards.base"
TOOLS = (
    "shards.bench",
    "pipelines.bench",
    "pipelines.bench_long",
    "train.bench",
    "train.stepbench",
    "train.gpu_proof",
    "train.demo",
)
# Where the stages are composed (a CLI may hand one stage's function to another), and the CLIs
# that read audio files as the shard build does (``pipelines.features``: shards.builder.audio)
ENTRY_POINTS = {"train.__main__", "eval.cli", "eval.__main__", "eval.predict", "pipelines.features"}
# A CLI subcommand that runs a tool: `python -m shards bench|synth`
TOOL_DISPATCH = {("shards.cli", "shards.bench.build_speed"), ("shards.cli", "shards.bench.synth")}
# the [eval] section's dataclass: part of every experiment file and checkpoint config
SHARED_DATA = {"eval.config"}
LIMITS = {"file_lines": 400, "function_lines": 60}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def room(module: str) -> str:
    if _in(module, BASE):
        return "base"
    if any(_in(module, t) for t in TOOLS):
        return "tool"
    return "library"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


MODULES = _modules()


def _imported_names(path: Path, *, in_functions: bool = True) -> set[str]:
    """Every absolute module name ``path`` imports at run time (``if TYPE_CHECKING:`` blocks
    excluded); ``in_functions=False``: only those imported when the module itself is imported."""
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
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _imports(path: Path, *, in_functions: bool = True) -> set[str]:
    """Project modules ``path`` imports."""
    names = _imported_names(path, in_functions=in_functions)
    return {n for n in names if n in MODULES and n.split(".")[0] in PACKAGES}


# a package importing its own submodules (``from shards.format import storage`` in its face) is no edge
GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}
AT_IMPORT = {m: _imports(p, in_functions=False) - {m} for m, p in MODULES.items()}


def test_every_room_is_what_its_name_says() -> None:
    """Sanity of the classification itself: the base and every tool package exist."""
    assert any(room(m) == "base" for m in MODULES)
    for tool in TOOLS:
        assert tool in MODULES, f"tool package {tool} is gone: update TOOLS"


def test_base_imports_nothing_else_of_the_project() -> None:
    bad = {m: sorted(d for d in deps if room(d) != "base") for m, deps in GRAPH.items() if room(m) == "base"}
    assert not {m: d for m, d in bad.items() if d}


def test_library_never_imports_a_tool_or_a_test_helper() -> None:
    bad = {}
    for m, path in MODULES.items():
        if room(m) == "tool":
            continue
        tools = {d for d in GRAPH[m] if room(d) == "tool" and (m, d) not in TOOL_DISPATCH}
        helpers = {n for n in _imported_names(path) if n.split(".")[0] in ("helpers", "tests")}
        if tools | helpers:
            bad[m] = sorted(tools | helpers)
    assert not bad


def test_tools_never_import_test_helpers() -> None:
    bad = {
        m: sorted(n for n in _imported_names(p) if n.split(".")[0] in ("helpers", "tests"))
        for m, p in MODULES.items()
        if room(m) == "tool"
    }
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("shards", ("pipelines", "train", "eval")), ("pipelines", ("train", "eval"))],
)
def test_lower_layers_import_nothing_above(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        m: sorted(i for i in deps if i.split(".")[0] in forbidden)
        for m, deps in GRAPH.items()
        if room(m) == "library" and m.split(".")[0] == layer
    }
    assert not {m: d for m, d in bad.items() if d}


def test_train_and_eval_libraries_do_not_import_each_other() -> None:
    crossing = {
        m: sorted(d)
        for m, deps in GRAPH.items()
        if m not in ENTRY_POINTS
        and room(m) == "library"
        and (d := {i for i in deps if i.split(".")[0] in {"train", "eval"} - {m.split(".")[0]}} - SHARED_DATA)
        and m.split(".")[0] in ("train", "eval")
    }
    assert not crossing
    assert all(not (GRAPH[m] - {d for d in GRAPH[m] if room(d) == "base"}) for m in SHARED_DATA)


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
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                assert not names & {"ImportError", "ModuleNotFoundError"}, f"{m}: line {node.lineno}"


def test_no_test_helper_ships_in_a_package() -> None:
    """Helpers for tests live in tests/helpers, not as installed ``testing`` modules."""
    assert not [m for m in MODULES if m.rsplit(".", 1)[-1] in ("testing", "conftest")]


def test_files_and_functions_fit_on_a_screen() -> None:
    """docs/architecture.md, Conventions: a file past ~400 lines is two modules; a function fits on a screen."""
    long_files, long_functions = [], []
    for m, path in MODULES.items():
        src = path.read_text()
        if len(src.splitlines()) > LIMITS["file_lines"]:
            long_files.append(f"{m}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > LIMITS["function_lines"]:
                    long_functions.append(f"{m}.{node.name}: {n} lines")
    assert not long_files and not long_functions, long_files + long_functions


# shards/ rooms (docs/architecture.md): what each may import of shards
SHARDS_ROOMS = {
    "shards.format": ("shards.base", "shards.format"),
    "shards.importers": ("shards.base", "shards.importers"),
    "shards.builder": ("shards.base", "shards.format", "shards.importers", "shards.builder"),
}
FACE = ("shards.base", "shards.format")
"""What a library module outside ``shards`` may import of it."""


def _shards_deps(module: str) -> set[str]:
    return {d for d in GRAPH[module] if d.split(".")[0] == "shards"}


@pytest.mark.parametrize("room_name", sorted(SHARDS_ROOMS))
def test_each_shards_room_imports_only_the_rooms_below(room_name: str) -> None:
    allowed = SHARDS_ROOMS[room_name]
    bad = {
        m: sorted(d for d in _shards_deps(m) if not any(_in(d, a) for a in allowed))
        for m in MODULES
        if _in(m, room_name)
    }
    assert any(_in(m, room_name) for m in MODULES), f"{room_name} is gone: update SHARDS_ROOMS"
    assert not {m: d for m, d in bad.items() if d}


def test_other_stages_reach_shards_only_through_base_and_format() -> None:
    """Library modules of pipelines, train and eval import ``shards.base`` and ``shards.format``;
    entry points (``eval.predict`` builds shards from audio files) and tools are exempt by name."""
    bad = {
        m: sorted(d for d in _shards_deps(m) if not any(_in(d, a) for a in FACE))
        for m in MODULES
        if room(m) == "library" and m.split(".")[0] != "shards" and m not in ENTRY_POINTS
    }
    assert not {m: d for m, d in bad.items() if d}


def test_shards_keeps_few_flat_modules() -> None:
    """Entry modules only at the top of shards/; everything else lives in a room."""
    flat = sorted(p.name for p in (ROOT / "shards").glob("*.py"))
    assert len(flat) <= 8, flat
    assert {"base", "format", "importers", "builder", "bench"} <= {
        p.name for p in (ROOT / "shards").iterdir() if (p / "__init__.py").is_file()
    }


# dotted names, not file paths (``docs/eval.md``, ``shards/cli.py``)
_DOTTED = re.compile(r"(?<![\w/.-])((?:shards|pipelines|train|eval)(?:\.[A-Za-z_]\w*)+)(?![\w/])")
_FILE_SUFFIXES = ("md", "py", "toml", "json", "txt")


def _resolves(dotted: str) -> bool:
    """A module, or an attribute reached from the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_package_docstrings_name_what_exists() -> None:
    """A package docstring is a newcomer's index: every dotted name it mentions resolves."""
    missing = {}
    for m, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        names = {d for d in _DOTTED.findall(doc) if d.rsplit(".", 1)[-1] not in _FILE_SUFFIXES}
        gone = sorted(d for d in names if not _resolves(d))
        if gone:
            missing[m] = gone
    assert not missing
