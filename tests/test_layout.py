"""The shape of the package: no import cycles between histofast's modules, ``import histofast`` (and tiling,
export, the command line) without PyTorch, and the lazily loaded names the README uses."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import histofast

PACKAGE = Path(histofast.__file__).resolve().parent


def _modules() -> dict[str, Path | None]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py); compiled
    extensions (histofast._C) map to None: they import nothing of the package."""
    out: dict[str, Path | None] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for path in [*PACKAGE.rglob("*.so"), *PACKAGE.rglob("*.pyd")]:
        parts = path.relative_to(PACKAGE.parent).parts
        out[".".join([*parts[:-1], parts[-1].split(".")[0]])] = None
    return out


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and \
        "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path | None, modules: dict[str, Path | None]) -> set[str]:
    """The histofast modules ``name`` imports anywhere (top level or inside functions), except under
    ``if TYPE_CHECKING:``; ``from package import module`` counts as importing the module."""
    if path is None:
        return set()
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    target = f"{source}.{alias.name}"
                    if target in modules:
                        out.add(target)
                    elif source in modules:
                        out.add(source)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 40 and graph["histofast.tiling.scan"] >= {"histofast.tiling.grid", "histofast.ops"}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_histofast_tiling_export_and_the_command_line_without_torch():
    code = ("import sys, histofast, histofast.io, histofast.tiling, histofast.export, histofast.data, histofast.synth\n"
            "from histofast.cli import build_parser\n"
            "build_parser()\n"
            "print('torch' in sys.modules, 'nvidia.dali' in sys.modules, 'matplotlib' in sys.modules)")
    assert _run(code) == "False False False"


def test_lazy_names_the_readme_uses():
    code = ("import histofast\n"
            "from histofast.train import TrainConfig\n"
            "assert histofast.train.TrainConfig is TrainConfig and callable(histofast.train.fit)\n"
            "assert callable(histofast.evaluate.evaluate) and histofast.models.TwoLevelCNN\n"
            "assert histofast.Pipeline.__module__ == 'histofast.data.pipeline'\n"
            "assert histofast.TileDataset.__module__ == 'histofast.data.dataset'\n"
            "print('ok')")
    assert _run(code) == "ok"


GRID_SETTINGS = {"tile_size", "stride", "level", "mpp", "magnification", "hsv_lower", "hsv_upper", "max_white"}


def _signatures() -> list[tuple[str, list[str], dict[str, str]]]:
    """(where, named parameters or dataclass fields, their defaults as source text) of every function and class
    of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'name', '')}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                positional = a.posonlyargs + a.args
                names = [x.arg for x in positional + a.kwonlyargs if x.arg not in ("self", "cls")]
                defaults = {x.arg: ast.unparse(d) for x, d in zip(positional[::-1], a.defaults[::-1])}
                defaults |= {x.arg: ast.unparse(d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
                out.append((where, names, defaults))
            elif isinstance(node, ast.ClassDef):
                fields = [s for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                          and "InitVar" not in ast.unparse(s.annotation)]
                out.append((where + " (fields)", [s.target.id for s in fields],
                            {s.target.id: ast.unparse(s.value) for s in fields if s.value is not None}))
    return out


def test_no_signature_takes_more_than_16_named_parameters():
    """Settings travel as values (histofast.specs): the flat keywords of 0.x go through one adapter, not signatures.
    (A settings record's fields are not counted: TrainConfig has one field per ``histofast train`` flag.)"""
    wide = [(where, len(names)) for where, names, _ in _signatures() if len(names) > 16]
    assert [where for where, _ in wide] == ["histofast/train/config.py:TrainConfig (fields)"], wide


def test_the_grid_settings_are_listed_by_the_spec_and_the_entry_points_that_build_it_only():
    listing = {where for where, names, _ in _signatures() if len(GRID_SETTINGS & set(names)) >= 4}
    assert listing == {"histofast/specs.py:GridSpec (fields)", "histofast/tiling/scan.py:tile_grid",
                       "histofast/tiling/scan.py:iter_tiles", "histofast/train/config.py:TrainConfig (fields)",
                       "histofast/tiling/grid.py:TileGrid (fields)"}  # TileGrid: the resolved geometry of a result


def test_stride_has_one_default():
    defaults = {where: d["stride"] for where, names, d in _signatures() if "stride" in d and "models/" not in where}
    assert set(defaults.values()) <= {"None", "GridSpec.stride"} or all(
        "default tile_size" in v for v in defaults.values() if v not in ("None", "GridSpec.stride")), defaults
