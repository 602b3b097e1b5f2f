"""The package's shape, checked on every CI run: no import cycles between modules (lazy imports
included: they hide a cycle from Python, not from a reader), and no module past ~350 lines unless
it is one concept, named here with the reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distill"
MAX_LINES = 360  # "about 350"
# one concept each, read top to bottom: splitting them would scatter a specification from its kernels
ONE_CONCEPT = {
    "losses/divergences.py": "the divergences' specification, their hand-derived gradients and the chunked engine",
    "student/width.py": "width pruning (Minitron): importance, the cut of every tensor family, the builder",
    "student/sparsity.py": "unstructured / N:M sparsity: masks, Wanda and magnitude scores, the builder",
    "quant/qat.py": "the QAT plugin: plan, fake-quantize, verify what torchao did, convert, finalize",
    "quant/qlora.py": "the QLoRA plugin: 4-bit base layers, the CPU gradient fix, adapters, merge",
    "data/prompt_response.py": "one data format: parse, template, response mask, pack, its DataModule",
}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``mod`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.split(".")[: len(mod.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != mod and known[name].name != "__init__.py":
                found.add(name)
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.append(w)
            on.discard(v)
            if comp:
                found.append(sorted([v, *comp]))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from . import b\n")
    known = modules(pkg)
    assert cycles({m: imports(m, p, known) for m, p in known.items()}) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles():
    known = modules()
    assert cycles({m: imports(m, p, known) for m, p in known.items()}) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    name = str(path.relative_to(PACKAGE))
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES or name in ONE_CONCEPT, f"{name}: {lines} lines; split it or name its one concept"
