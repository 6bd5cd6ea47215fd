"""The folder tree is the architecture: every module has a line in docs/architecture.md's
ownership table, and no diffscape module imports, directly or through others, one that imports
it back (at module level or inside a function), and no function is over 60 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "diffscape"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ``known`` modules ``name`` imports, anywhere in its file. ``from diffscape.x import y``
    is the module ``diffscape.x.y`` when that is one, else ``diffscape.x``."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds this module
                package = name if is_package(path) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in known else base)
    found = set()
    for target in targets:
        while target and target not in known:  # an attribute of a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports. A package's ``__init__`` importing its
    own submodules re-exports them: not an edge (a submodule importing its package is one).
    Importing a package from outside it also runs what its ``__init__`` imports from inside it."""
    known = modules(package)
    graph = {name: imported(name, path, known) for name, path in known.items()}
    inside = {}
    for name, path in known.items():
        if is_package(path):
            inside[name] = {t for t in graph[name] if t.startswith(name + ".")}
            graph[name] -= inside[name]
    changed = True
    while changed:  # through packages that import packages
        changed = False
        for name, targets in graph.items():
            for target in list(targets):
                if target in inside and not name.startswith(target + "."):
                    more = inside[target] - targets - {name}
                    targets |= more
                    changed = changed or bool(more)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_diffscape_modules():
    graph = import_graph()
    assert "diffscape.train.loop" in graph["diffscape.study.stages"]  # the graph sees lazy imports
    assert cycles(graph) == []


def test_a_circle_through_a_package_is_found_and_a_re_export_is_none(tmp_path):
    top = tmp_path / "top"
    (top / "p").mkdir(parents=True)
    (top / "__init__.py").write_text("")
    (top / "p" / "__init__.py").write_text("from top.p.x import f\n")  # a re-export
    (top / "p" / "x.py").write_text("def f():\n    from top.p import y\n")
    (top / "p" / "y.py").write_text("")
    (top / "a.py").write_text("from top import p\n")
    assert cycles(import_graph(top)) == []
    (top / "p" / "x.py").write_text("def f():\n    from top.a import g\n")  # in a function
    assert cycles(import_graph(top)) == [["top.a", "top.p.x"]]


def test_every_module_is_in_the_ownership_table():
    text = ARCHITECTURE.read_text()
    table = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([\w/]+\.py)`", table))
    files = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}
    wanted = {f for f in files if Path(f).name not in ("__init__.py", "__main__.py")}
    assert sorted(wanted - listed) == [], "modules missing from docs/architecture.md's table"
    assert sorted(listed - files) == [], "docs/architecture.md's table names modules that are gone"


# ---- every file and folder name in core/layout.py ------------------------------------------------
# A string literal that is a file name ("metrics.json"), a pattern of them ("step-*.png") or an
# f-string's tail ("_images.npy").
FILE_NAME = re.compile(
    r"[\w.*-]+\.(json|jsonl|png|npy|raw|safetensors|skops|html|csv|toml|txt|log)"
)
LAYOUT = PACKAGE / "core" / "layout.py"


def not_names(tree: ast.AST) -> set[int]:
    """The ids of the strings that name nothing on disk: the docstrings of a module, its classes
    and functions, and templates by name (``get_template("page.html")``: package data)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_template":
            found |= {id(a) for a in node.args}
    return found


def is_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def is_package_data(node: ast.AST, names: set[str]) -> bool:
    """``resources.files("diffscape") / ...`` (or a variable ``names`` holds it in): the
    package's own files (presets, shipped sweeps), read from its source tree, never written."""
    while isinstance(node, ast.BinOp):
        node = node.left
    if isinstance(node, ast.Name):
        return node.id in names
    func = node.func if isinstance(node, ast.Call) else None
    return isinstance(func, ast.Attribute) and func.attr == "files"


def package_data_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and is_package_data(node.value, names):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def joins_a_literal(node: ast.AST, package_data: set[str]) -> bool:
    """``path / "name"``, ``path.joinpath("name")``, ``path.with_name(f"...")``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return is_literal(node.right) and not is_package_data(node.left, package_data)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("joinpath", "with_name") and any(map(is_literal, node.args))
    return False


def names_outside_layout(package: Path = PACKAGE, layout: Path = LAYOUT) -> list[str]:
    """Every file name spelt as a literal, and every literal joined onto a path, outside
    ``layout`` (docstrings and template names aside)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == layout:
            continue
        source = path.read_text()
        tree = ast.parse(source, str(path))
        skip, package_data = not_names(tree), package_data_names(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', 0)}"
            if is_literal(node) and id(node) not in skip and isinstance(node, ast.Constant):
                if FILE_NAME.fullmatch(node.value):
                    found.append(f"{where}: {node.value!r}")
            elif joins_a_literal(node, package_data):
                found.append(f"{where}: {ast.get_source_segment(source, node)}")
    return found


def test_every_file_and_folder_name_is_in_layout():
    assert names_outside_layout() == [], "name these in diffscape/core/layout.py and import them"


def test_the_name_check_finds_literals_and_joins(tmp_path):
    top = tmp_path / "top"
    (top / "core").mkdir(parents=True)
    (top / "core" / "layout.py").write_text('CAS_JSON = "cas.json"\n')
    (top / "a.py").write_text(
        '"""Writes cas.json (a docstring may say so)."""\n'
        'NAME = "cas.json"\n'
        'def f(out, split):\n'
        '    """Reads x.json."""\n'
        '    env.get_template("page.html")  # package data\n'
        '    print(f"wrote {out} and results.csv")  # prose: not a name\n'
        '    out.with_name(f".{out.name}.partial")\n'
        '    resources.files("top") / "presets" / f"{split}.toml"  # package data\n'
        '    folder = resources.files("top") / "sweeps"\n'
        '    folder / f"{split}.toml"\n'
        '    return out / "run" / f"{split}_images.npy"\n'
    )  # fmt: skip
    assert names_outside_layout(top, top / "core" / "layout.py") == [
        "top/a.py:2: 'cas.json'",
        'top/a.py:7: out.with_name(f".{out.name}.partial")',
        'top/a.py:11: out / "run" / f"{split}_images.npy"',
        'top/a.py:11: out / "run"',
        "top/a.py:11: '_images.npy'",
    ]


MAX_FUNCTION_LINES = 60  # issue 25: a function a reader holds on one screen


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(SRC)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in modules(PACKAGE).values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
