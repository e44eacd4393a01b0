"""The shape of the package, read from its source: no import circle (imports
inside functions included), no private name used across modules, no module
over about 400 lines unless its docstring says why, and only the command
layer imports Click."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vmbinder"
GUEST = ROOT / "cloud-init" / "vmbinder_guest.py"
LIMIT = 400
#: Words a long module's docstring uses to say why its size is earned.
EARNED = "its size"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def trees():
    for name, path in sorted(MODULES.items()):
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def imported(name: str, path: Path, tree: ast.Module):
    """(module imported, names taken from it, node) for each import of a vmbinder module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, [], node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            if base not in MODULES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            yield from ((m, [], node) for m in submodules)
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest:
                yield base, rest, node


def graph() -> dict[str, set[str]]:
    edges = {name: set() for name in MODULES}
    for name, path, tree in trees():
        for target, _, _ in imported(name, path, tree):
            if target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    assert cycles(graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_used_across_modules():
    used = []
    for name, path, tree in trees():
        aliases = {}
        for target, names, node in imported(name, path, tree):
            used += [f"{name} imports {target}.{n}" for n in names
                     if n.startswith("_") and not n.startswith("__")]
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            else:
                for alias in node.names:
                    if f"{target}" == f"{node.module}.{alias.name}" or target.endswith("." + alias.name):
                        aliases[alias.asname or alias.name] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                used.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert used == []


def test_no_module_is_long_unless_its_docstring_says_why():
    long = []
    for name, path in sorted({**MODULES, "vmbinder.cloud_init.vmbinder_guest": GUEST}.items()):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > LIMIT and EARNED not in doc.lower():
            long.append(f"{name}: {lines} lines")
    assert long == []


def test_only_the_command_layer_imports_click():
    outside = []
    for name, _, tree in trees():
        if name.startswith("vmbinder.commands"):
            continue
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            outside += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ("click", "rich")]
    assert outside == []
