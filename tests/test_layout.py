"""The house rules of the code, checked: no import circle in ``cfx``, no Streamlit in the core,
no module over :data:`MAX_LINES` lines without a reason in its docstring, one registry of methods."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "cfx"
#: a module longer than this says why in its docstring (a line starting "Long because")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(CORE.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_time_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The cfx modules ``name`` imports when it is imported (module level; not in functions or
    ``if TYPE_CHECKING``)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and _type_checking(node):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                # importing a.b.c imports a and a.b first
                bits = t.split(".")
                for i in range(1, len(bits) + 1):
                    m = ".".join(bits[:i])
                    if m in known and m != name:
                        out.add(m)

    visit(ast.parse(path.read_text()).body)
    return out


def test_no_import_circle_in_the_core():
    mods = _modules()
    graph = {n: _import_time_imports(p, n, set(mods)) for n, p in mods.items()}
    # a package importing its own submodules (re-exports) is not a circle; a submodule importing
    # its parent package is implied anyway, so drop child -> ancestor edges
    for n in graph:
        graph[n] = {m for m in graph[n] if not n.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cycle = visit(n)
            assert cycle is None, " -> ".join(cycle)


def test_the_core_has_no_streamlit():
    offenders = [str(p.relative_to(ROOT)) for p in CORE.rglob("*.py")
                 if any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(
                     (a.name if isinstance(n, ast.Import) else (n.module or "")).startswith("streamlit")
                     for a in n.names) for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders


@pytest.mark.parametrize("path", [*sorted(CORE.rglob("*.py")), *sorted((ROOT / "pages").glob("*.py")),
                                  ROOT / "app.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_short_or_say_why(path):
    n = len(path.read_text().splitlines())
    if n <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert any(line.strip().startswith("Long because") for line in doc.splitlines()), \
        f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}) and no 'Long because' in its docstring"


def test_one_registry_of_methods():
    """The method list lives on the registry only: no copied name lists elsewhere."""
    import cfx.explainers as E

    names = list(E.methods())
    assert names and len(set(names)) == len(names)
    copied = []
    for p in [*CORE.rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 4:
                vals = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if len(vals) == len(node.elts) and set(vals) <= set(names):
                    copied.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not copied, copied
