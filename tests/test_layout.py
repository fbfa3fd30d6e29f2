"""The package's import graph obeys the layering rules of docs/development.md.

Every module under carto_cli/ is parsed with `ast` (nothing is imported) into its imports: a
carto_cli module (`from carto_cli.x import y` names module x.y when there is one, else module x) or
a third-party top-level package, each marked top-level (runs on import), lazy (inside a function:
runs when called) or type-only (under `if TYPE_CHECKING:`: never runs). Then:

- scoring (carto_cli/score/) never imports torch, directly or through what it imports;
- the shim (carto_cli/log/) never imports Polars, directly or through what it imports;
- nothing outside carto_cli/cli/ imports Typer or Rich (any part of Rich: console output is the CLI's);
- no import cycles among carto_cli modules;
- version < errors < log < io < score < engines < export < report < experiment < integrations < cli: a module
  imports only from its own layer and the layers before it, lazily too (carto_cli/__init__.py, the public API,
  is exempt; importing it counts as importing what it imports).

"Through what it imports" follows top-level imports, and the package `__init__`s Python runs
before a module (importing carto_cli.score.state runs carto_cli/__init__.py and
carto_cli/score/__init__.py first). The checks are also run on a small made-up package that
breaks every rule, so a checker that finds nothing is caught too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "carto_cli"
LAYERS = ("version", "errors", "log", "io", "score", "engines", "export", "report", "experiment", "integrations", "cli")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # a module of the package, or a third-party top-level package
    internal: bool  # target is a module of the package
    lazy: bool  # inside a function: runs when the function is called
    type_only: bool  # under `if TYPE_CHECKING:`: never runs
    line: int
    statement: str  # as written

    @property
    def on_import(self) -> bool:
        """Runs when the importer is imported."""
        return not (self.lazy or self.type_only)

    def where(self) -> str:
        kind = " (inside a function)" if self.lazy else " (under TYPE_CHECKING)" if self.type_only else ""
        return f"line {self.line}: `{self.statement}`{kind}"


@dataclass
class Graph:
    package: str
    files: dict[str, Path]  # module -> file
    imports: dict[str, list[Import]]  # module -> its imports, in file order


def module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module):
    """(node, lazy, type_only) for every import statement, wherever it is."""
    def visit(node: ast.AST, lazy: bool, type_only: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy, type_only
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                yield from visit(stmt, lazy, True)
            for stmt in node.orelse:
                yield from visit(stmt, lazy, type_only)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, lazy, type_only)

    yield from visit(tree, False, False)


def build_graph(package_dir: Path) -> Graph:
    package = package_dir.name
    files = {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    imports: dict[str, list[Import]] = {}
    for module, path in files.items():
        source = path.read_text()
        is_package = path.name == "__init__.py"
        found = []
        for node, lazy, type_only in _import_nodes(ast.parse(source, str(path))):
            statement = " ".join(ast.get_source_segment(source, node).split())

            def add(target: str, internal: bool) -> None:
                found.append(Import(module, target, internal, lazy, type_only, node.lineno, statement))  # noqa: B023

            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        add(_known_prefix(alias.name, files), True)
                    else:
                        add(alias.name.split(".")[0], False)
                continue
            if node.level:  # relative: from the importer's package, up level - 1
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source_module = ".".join(base + ([node.module] if node.module else []))
            else:
                source_module = node.module
            if source_module == package or source_module.startswith(package + "."):
                for alias in node.names:  # `from a.b import c`: module a.b.c if there is one, else a.b
                    candidate = f"{source_module}.{alias.name}"
                    add(candidate if candidate in files else _known_prefix(source_module, files), True)
            else:
                add(source_module.split(".")[0], False)
        imports[module] = found
    return Graph(package, files, imports)


def _known_prefix(name: str, files: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in files:
        parts.pop()
    assert parts, f"{name} is no module of the package"
    return ".".join(parts)


def _ancestors(module: str) -> list[str]:
    """The packages Python imports before `module`: a.b.c -> a, a.b."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def loaded_by(graph: Graph, module: str) -> dict[str, list[str]]:
    """Every module that importing `module` runs, each with the chain of steps that reaches it."""
    chains: dict[str, list[str]] = {}
    queue: deque[str] = deque()

    def reach(target: str, chain: list[str]) -> None:
        for parent in _ancestors(target):
            if parent not in chains and parent in graph.files:
                chains[parent] = [*chain, f"{parent} (the package of {target}, run first)"]
                queue.append(parent)
        if target not in chains:
            chains[target] = chain
            queue.append(target)

    reach(module, [module])
    while queue:
        current = queue.popleft()
        for imp in graph.imports[current]:
            if imp.internal and imp.on_import:
                reach(imp.target, [*chains[current], f"{imp.target} ({current} {imp.where()})"])
    return chains


def forbidden_imports(graph: Graph, modules: list[str], forbidden: set[str]) -> list[str]:
    """Where any of `modules` imports a `forbidden` top-level package: itself (at any place in the
    file), or through the carto_cli modules that importing it runs (their top-level imports)."""
    problems = []
    for module in modules:
        for imp in graph.imports[module]:
            if not imp.internal and imp.target in forbidden:
                problems.append(f"{module} imports {imp.target} at {imp.where()}")
        for other, chain in loaded_by(graph, module).items():
            if other == module:
                continue
            for imp in graph.imports[other]:
                if not imp.internal and imp.target in forbidden and imp.on_import:
                    problems.append(f"{module} imports {imp.target} through {' -> '.join(chain)}, "
                                    f"which imports it at {imp.where()}")
    return problems


def cycles(graph: Graph) -> list[str]:
    """Each import cycle among the package's modules (top-level imports), as a path of imports."""
    edges = {m: sorted({i.target for i in imps if i.internal and i.on_import}) for m, imps in graph.imports.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    reports = []
    for component in components:
        members = set(component)
        path, seen = [component[0]], {component[0]}  # walk inside the component until a module repeats
        while True:
            nxt = next(w for w in edges[path[-1]] if w in members)
            if nxt in seen:
                path = path[path.index(nxt):] + [nxt]
                break
            path.append(nxt)
            seen.add(nxt)
        steps = []
        for a, b in zip(path, path[1:]):
            imp = next(i for i in graph.imports[a] if i.internal and i.on_import and i.target == b)
            steps.append(f"{a} imports {b} at {imp.where()}")
        reports.append(f"import cycle among {', '.join(component)}: " + "; ".join(steps))
    return reports


def layer_of(graph: Graph, module: str) -> int | None:
    """The layer's index; None for the package's own __init__ (exempt)."""
    if module == graph.package:
        return None
    name = module.split(".")[1]
    assert name in LAYERS, f"{module} is in no layer: add it to a layer folder (or to LAYERS and docs/development.md)"
    return LAYERS.index(name)


def layer_violations(graph: Graph) -> list[str]:
    """Imports (top-level, lazy or type-only) of a module in a later layer. Importing the package
    itself counts as importing what its __init__ imports."""
    order = " < ".join(LAYERS)
    problems = []
    for module, imps in graph.imports.items():
        own = layer_of(graph, module)
        if own is None:
            continue
        for imp in imps:
            if not imp.internal:
                continue
            targets = [imp.target]
            if imp.target == graph.package:
                targets = [i.target for i in graph.imports[graph.package] if i.internal and i.on_import]
            for target in targets:
                theirs = layer_of(graph, target)
                if theirs is not None and theirs > own:
                    via = "" if target == imp.target else f" (through {graph.package}/__init__.py)"
                    problems.append(f"{module} ({LAYERS[own]}) imports {target} ({LAYERS[theirs]}){via} at "
                                    f"{imp.where()}; a module imports only its own layer and earlier ones: {order}")
    return problems


def under(graph: Graph, layer: str) -> list[str]:
    prefix = f"{graph.package}.{layer}"
    return [m for m in graph.files if m == prefix or m.startswith(prefix + ".")]


def check_scoring_never_imports_torch(graph: Graph) -> list[str]:
    return forbidden_imports(graph, under(graph, "score"), {"torch"})


def check_log_never_imports_polars(graph: Graph) -> list[str]:
    return forbidden_imports(graph, under(graph, "log"), {"polars"})


def check_typer_and_rich_only_in_cli(graph: Graph) -> list[str]:
    outside = [m for m in graph.files if m not in under(graph, "cli")]
    return forbidden_imports(graph, outside, {"typer", "rich"})


def fail_on(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------- the package itself

GRAPH = build_graph(PACKAGE_DIR)


def test_the_graph_sees_the_package() -> None:
    """The parser finds what is plainly there (so the rules below cannot pass on an empty graph)."""
    g = GRAPH
    assert {"carto_cli", "carto_cli.errors", "carto_cli.log.shim", "carto_cli.cli.app"} <= set(g.files)
    assert len(g.files) >= 30
    app = {(i.target, i.on_import) for i in g.imports["carto_cli.cli.app"]}
    assert ("typer", True) in app and ("carto_cli.errors", True) in app
    shim = g.imports["carto_cli.log.shim"]
    assert any(i.target == "carto_cli.log.fused" and i.on_import for i in shim)  # from carto_cli.log import fused
    assert any(i.target == "torch" and i.lazy for i in shim)  # import torch.distributed inside a function
    tinygpt = g.imports["carto_cli.experiment.tinygpt"]
    assert any(i.target == "carto_cli.log.shim" and i.type_only for i in tinygpt)
    assert "carto_cli.errors" in loaded_by(g, "carto_cli.score.quadrants")  # also through carto_cli/__init__.py
    assert "carto_cli.log.shim" not in loaded_by(g, "carto_cli.score.quadrants")  # CartoLogger loads on first use


def test_scoring_never_imports_torch() -> None:
    fail_on(check_scoring_never_imports_torch(GRAPH))


def test_the_log_layer_never_imports_polars() -> None:
    assert "carto_cli.log.shim" in under(GRAPH, "log")
    fail_on(check_log_never_imports_polars(GRAPH))


def test_only_the_cli_imports_typer_or_rich() -> None:
    fail_on(check_typer_and_rich_only_in_cli(GRAPH))


def test_no_import_cycles() -> None:
    fail_on(cycles(GRAPH))


def test_layers_import_only_downward() -> None:
    fail_on(layer_violations(GRAPH))


HEAVY = ("torch", "polars", "pyarrow", "numpy", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has loaded after running `code`."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_importing_carto_cli_imports_no_heavy_library() -> None:
    assert _loaded_after("import carto_cli\nfrom carto_cli import CartoError, __version__") == []
    # the public names load their modules when first used
    assert set(_loaded_after("from carto_cli import CartoLogger")) == {"numpy", "pyarrow"}


def test_the_cli_imports_no_heavy_library_until_a_command_needs_one() -> None:
    # `carto --help`, `--version` and a bad option answer without importing Polars, pyarrow or
    # numpy (`carto_cli.cli.lazy`)
    assert _loaded_after("import carto_cli.cli") == []


# ------------------------------------------------------------------ the checks can fail

BROKEN = {
    "__init__.py": "from pkg.log import shim\n__version__ = '0'\n",
    "errors.py": "from pkg.score import state  # upward\n",
    "log/__init__.py": "",
    "log/shim.py": "import numpy\nfrom pkg.io import logs  # upward, and Polars through it\n",
    "io/__init__.py": "",
    "io/logs.py": "import polars as pl\nfrom . import storage\n",
    "io/storage.py": "from .logs import pl  # a cycle with io.logs\n",
    "score/__init__.py": "",
    "score/state.py": ("from typing import TYPE_CHECKING\nfrom pkg.score import rules\n"
                       "if TYPE_CHECKING:\n    from pkg.cli import app\n"),
    "score/rules.py": ("from pkg.export.manifests import prune_order  # upward, torch through it\n\n"
                       "def f():\n    import rich.progress\n"),
    "export/__init__.py": "",
    "export/manifests.py": "import torch.nn\n\ndef prune_order():\n    pass\n",
    "cli/__init__.py": "",
    "cli/app.py": "import typer\nfrom rich.console import Console\nfrom pkg import errors\n",
}


def broken_graph(tmp_path: Path) -> Graph:
    root = tmp_path / "pkg"
    for name, text in BROKEN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return build_graph(root)


def test_the_graph_resolves_modules_names_and_relative_imports(tmp_path: Path) -> None:
    g = broken_graph(tmp_path)
    def targets(module: str) -> list[tuple[str, bool, bool]]:
        return [(i.target, i.lazy, i.type_only) for i in g.imports[module]]
    assert targets("pkg.score.rules") == [("pkg.export.manifests", False, False), ("rich", True, False)]
    assert targets("pkg.io.logs") == [("polars", False, False), ("pkg.io.storage", False, False)]
    assert targets("pkg.io.storage") == [("pkg.io.logs", False, False)]  # from .logs import pl: a name
    assert targets("pkg.score.state") == [("typing", False, False), ("pkg.score.rules", False, False),
                                          ("pkg.cli.app", False, True)]
    assert targets("pkg.cli.app") == [("typer", False, False), ("rich", False, False), ("pkg.errors", False, False)]


def test_each_check_reports_the_module_and_the_import(tmp_path: Path) -> None:
    g = broken_graph(tmp_path)
    torch = check_scoring_never_imports_torch(g)
    assert any(p.startswith("pkg.score.rules imports torch through pkg.score.rules -> pkg.export.manifests")
               and "`import torch.nn`" in p for p in torch), torch
    assert any(p.startswith("pkg.score.state imports torch through") for p in torch), torch  # two steps away
    polars = check_log_never_imports_polars(g)
    assert any(p.startswith("pkg.log.shim imports polars through pkg.log.shim -> pkg.io.logs")
               and "`import polars as pl`" in p for p in polars), polars
    assert any(p.startswith("pkg.log imports polars through") for p in polars), polars  # log/__init__ -> pkg -> shim
    console = check_typer_and_rich_only_in_cli(g)
    assert any(p.startswith("pkg.score.rules imports rich at line 4: `import rich.progress` (inside a function)")
               for p in console), console
    assert not any(p.startswith("pkg.cli") for p in console), console
    found = cycles(g)
    assert any("pkg.io.logs imports pkg.io.storage at line 2" in c and "pkg.io.storage imports pkg.io.logs" in c
               for c in found), found
    assert len(found) == 1, found
    layers = layer_violations(g)
    for expected in (
        "pkg.errors (errors) imports pkg.score.state (score) at line 1",
        "pkg.log.shim (log) imports pkg.io.logs (io) at line 2",
        "pkg.score.rules (score) imports pkg.export.manifests (export) at line 1",
        "pkg.score.state (score) imports pkg.cli.app (cli) at line 4: `from pkg.cli import app` (under TYPE_CHECKING)",
    ):
        assert any(p.startswith(expected) for p in layers), (expected, layers)
    assert not any(p.startswith("pkg.cli.app") or p.startswith("pkg (") for p in layers), layers


def test_importing_the_package_counts_as_importing_its_init(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "log").mkdir(parents=True)
    (root / "__init__.py").write_text("__version__ = '0'\nfrom pkg.log import shim\n")
    (root / "errors.py").write_text("from pkg import __version__\n")
    (root / "log" / "__init__.py").write_text("")
    (root / "log" / "shim.py").write_text("from pkg import __version__\n")
    g = build_graph(root)
    assert layer_violations(g) == [
        "pkg.errors (errors) imports pkg.log.shim (log) (through pkg/__init__.py) at line 1: "
        "`from pkg import __version__`; a module imports only its own layer and earlier ones: " + " < ".join(LAYERS)
    ]
    assert cycles(g) == [
        "import cycle among pkg, pkg.log.shim: pkg imports pkg.log.shim at line 2: `from pkg.log import shim`; "
        "pkg.log.shim imports pkg at line 1: `from pkg import __version__`"
    ]
