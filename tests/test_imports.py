"""The import graph of codecx, read from its import statements (those inside functions included,
`if TYPE_CHECKING:` blocks left out): no import cycle beyond the known ones, and no module imports
one of a higher layer beyond the known arrows (issue 30: both lists only shrink).
`python tests/test_imports.py` prints the cycles and the upward arrows."""
from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "codecx"

#: the layers, lowest first: a module may import its own layer and those below
LAYERS = [["codecx.types", "codecx.lattice_math", "codecx.conf"], ["codecx.coding"], ["codecx.quantizers"],
          ["codecx.transforms", "codecx.inference"], ["codecx.models"], ["codecx.losses", "codecx.metrics"],
          ["codecx.regularizers", "codecx.data"], ["codecx.config", "codecx.lit"],
          ["codecx.eval", "codecx.compare", "codecx.train", "codecx.cli"]]
#: upward arrows still there (issue 30 items 1-3: the walk's channels, one evaluation package); none may be added
KNOWN_UPWARD = {
    ("codecx.coding.container", "codecx.models.build"),     # non_finite_tensors
    ("codecx.coding.context", "codecx.quantizers.scalar"),  # isinstance(q, ScalarQuantizer)
    ("codecx.coding.fuzz", "codecx.eval.load"),              # a tool beside the coders
    ("codecx.coding.fuzz", "codecx.models.build"),
    ("codecx.inference.sga", "codecx.metrics.rd"),
    ("codecx.metrics.rdplot", "codecx.compare"),
    ("codecx.regularizers.labeler", "codecx.lit.schedule"),
}
#: import cycles still there; none may be added
KNOWN_CYCLES: list = []


def modules() -> Dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _statements(tree: ast.AST):
    """Import statements of a module, outside `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(ast.Module(body=node.orelse, type_ignores=[]))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            yield from _statements(node)


def import_graph() -> Dict[str, Set[str]]:
    """{module: the codecx modules it imports}."""
    mods = modules()

    def resolve(name: str):
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: Dict[str, Set[str]] = defaultdict(set)
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _statements(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                r = resolve(t) if t.startswith("codecx") else None
                if r and r != name and not name.startswith(r + "."):  # a package's own __init__ is not an arrow
                    graph[name].add(r)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | set(itertools.chain(*graph.values()))):
        if v not in index:
            visit(v)
    return sorted(out)


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return len(LAYERS)  # codecx/__init__ and anything new: the top


def upward_arrows(graph: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer(a) < layer(b))


def test_the_graph_is_read_from_the_import_statements():
    g = import_graph()
    assert "codecx.models.weights" in g["codecx.models.backbones"]  # a function-level import counts
    assert "codecx.models.backbones" not in g.get("codecx.models.build", set())  # TYPE_CHECKING does not
    assert "codecx.lattice_math" in g["codecx.coding.lattice_coder"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_new_import_cycle():
    assert cycles(import_graph()) == sorted(KNOWN_CYCLES)


def test_no_new_upward_arrow():
    """The lattice math sits below the coders (no quantizers <-> coding cycle), the backbone
    registry below the models, ...: every arrow that climbs a layer is a known one."""
    g = import_graph()
    assert set(upward_arrows(g)) <= KNOWN_UPWARD, set(upward_arrows(g)) - KNOWN_UPWARD
    assert not g.get("codecx.lattice_math") and not g.get("codecx.conf")
    coders_on_quantizers = {(a, b) for a, bs in g.items() for b in bs
                            if a.startswith("codecx.coding") and b.startswith("codecx.quantizers")}
    assert coders_on_quantizers <= {("codecx.coding.context", "codecx.quantizers.scalar")}


if __name__ == "__main__":
    g = import_graph()
    print("cycles:", *(" <-> ".join(c) for c in cycles(g)) or ["none"], sep="\n  ")
    up = upward_arrows(g)
    print(f"upward arrows ({len(up)}):", *(f"{a} -> {b}" for a, b in up), sep="\n  ")
