"""The package's layers (docs/architecture.md, "Layers"): each subpackage imports only those below.

Read from the source (every ``import`` statement, also those inside functions), so a new
import from a higher layer or an import cycle fails here, with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tsd_ray"

#: subpackage -> rank; a module may import its own subpackage and any subpackage of lower rank
LAYERS = {
    "common": 0,
    "data": 1, "metrics": 1, "models": 1,
    "train": 2,
    "evaluate": 3,
    "experiments": 4,
    "apps": 5,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tsd_imports(path: Path) -> list[tuple[str, int]]:
    """(imported tsd_ray module, line) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("tsd_ray")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tsd_ray"):
            # `from tsd_ray.x import y` may import the submodule tsd_ray.x.y
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub if _is_module(sub) else node.module, node.lineno))
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    loose = [str(p.relative_to(PKG)) for p in MODULES if layer_of(module_name(p)) not in LAYERS
             and p != PKG / "__init__.py"]
    assert not loose, f"modules outside the layers {sorted(LAYERS)}: {loose}"


def layer_violations(module: str, imports: list[tuple[str, int]]) -> list[str]:
    """The imports of ``module`` that break the layering, as readable lines."""
    me = layer_of(module)
    bad = []
    for target, line in imports:
        other = layer_of(target)
        if me is None:  # tsd_ray/__init__.py imports nothing of the package
            bad.append(f"{module}:{line} imports {target}")
        elif other != me and LAYERS.get(other, 99) >= LAYERS[me]:
            bad.append(f"{module}:{line} ({me}) imports {target} ({other})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> imported modules) as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d in graph and d not in state and (cycle := visit(d)):
                return cycle
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_no_import_from_a_higher_layer():
    bad = [v for p in MODULES for v in layer_violations(module_name(p), tsd_imports(p))]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {module_name(p): {t for t, _ in tsd_imports(p)} for p in MODULES}
    # a package's __init__ importing its own submodules is not a cycle of design
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not d.startswith(name + ".") and d != name}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checkers_catch_a_violation_and_a_cycle(tmp_path):
    """The rules above are not vacuous: an import from a higher layer, inside a function, and a
    cycle are found; imports within a layer or from below are not reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tsd_ray.train.losses import frame_bce\n")
    imports = tsd_imports(bad)
    assert imports == [("tsd_ray.train.losses", 2)]
    assert layer_violations("tsd_ray.models.detector", imports) == [
        "tsd_ray.models.detector:2 (models) imports tsd_ray.train.losses (train)"]
    assert layer_violations("tsd_ray.train.worker", imports) == []  # same layer
    assert layer_violations("tsd_ray.data.build", [("tsd_ray.models.encoder", 1)])  # same rank, other layer
    assert layer_violations("tsd_ray.apps.detect", [("tsd_ray.common.storage", 1)]) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
