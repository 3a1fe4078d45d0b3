"""Imports go one way: storage ← engine ← bot, without cycles; engine stays free of Slack and of
heavy imports; only entry points read the environment."""

import ast
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "engine", "storage")
FORBIDDEN = {
    "storage": {"engine", "bot", "slack_sdk", "slack_bolt"},
    "engine": {"bot", "slack_sdk", "slack_bolt"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_import_direction():
    offences = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = imported_roots(path) & forbidden
            if bad:
                offences.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offences, "\n".join(offences)


def test_import_engine_stays_light():
    heavy = "{'torch', 'transformers', 'peft', 'trl', 'ray', 'vllm', 'matplotlib'}"
    code = f"import sys, engine, storage; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


# --- import cycles ----------------------------------------------------------------------------


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth; ``if TYPE_CHECKING:`` bodies never do."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: Iterable[ast.AST] = node.orelse
    else:
        children = ast.iter_child_nodes(node)
    for child in children:
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _runtime_imports(child)


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module → the modules of ``packages`` it imports, function-level imports included.

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``."""
    known = modules(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else resolve(base))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _shortest_cycle(graph: dict[str, set[str]], start: str, allowed: set[str]) -> list[str]:
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & allowed):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return []


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so deep graphs do not hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def import_cycles(root: Path, packages: Iterable[str]) -> list[str]:
    """Each import cycle as ``a -> b -> a``: the shortest one through each module that is in one."""
    graph = import_graph(root, packages)
    cycles = set()
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        for node in component:
            cycle = _shortest_cycle(graph, node, component)[:-1]
            first = cycle.index(min(cycle))  # one spelling per cycle, whichever module it starts at
            cycle = cycle[first:] + cycle[:first]
            cycles.add(" -> ".join([*cycle, cycle[0]]))
    return sorted(cycles)


def test_no_import_cycles():
    cycles = import_cycles(ROOT, PACKAGES)
    assert not cycles, f"{len(cycles)} import cycles:\n" + "\n".join(cycles)


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_import_cycles_finds_a_planted_cycle(tmp_path):
    _write_package(tmp_path, {
        "app/__init__.py": "",
        "app/a.py": "from . import b\n",  # relative import of a module
        "app/b.py": "def later():\n    from app.sub import c\n",  # inside a function
        "app/sub/__init__.py": "",
        "app/sub/c.py": "from ..a import thing\n",  # two levels up, a name from a module
        # a cycle only for the type checker is not one
        "app/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app import e\n",
        "app/e.py": "import app.d\n",
        # `from pkg import name` of a name defined in pkg/__init__.py points at the package
        "app/f.py": "from app import VALUE\n",
        "other/__init__.py": "import app.a\n",  # outside the packages checked: ignored
    })
    assert import_graph(tmp_path, ["app"])["app.f"] == {"app"}
    assert import_cycles(tmp_path, ["app"]) == ["app.a -> app.b -> app.sub.c -> app.a"]


# --- singletons that read the environment ---------------------------------------------------


def _settings_classes(trees: Iterable[ast.Module]) -> set[str]:
    """Names of the classes that subclass pydantic's ``BaseSettings``, directly or not."""
    classes = [node for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    names = {"BaseSettings"}
    grew = True
    while grew:
        grew = False
        for cls in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in cls.bases}
            if cls.name not in names and bases & names:
                names.add(cls.name)
                grew = True
    return names


def _import_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes that run on import: not function bodies, not ``if __name__ == "__main__":``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            # decorators and default values are evaluated when the module is imported
            for part in [*child.decorator_list, *child.args.defaults, *child.args.kw_defaults]:
                if part is not None:
                    yield part
                    yield from _import_time_nodes(part)
            continue
        if isinstance(child, ast.Lambda):
            continue
        if isinstance(child, ast.If) and "__main__" in ast.unparse(child.test):
            continue
        yield child
        yield from _import_time_nodes(child)


def _reads_environment(node: ast.AST, settings: set[str]) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return "os.environ"
    if isinstance(node, ast.Name) and node.id == "environ":
        return "os.environ"  # `from os import environ`
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name == "getenv":
            return "os.getenv()"
        if name in settings:
            return f"{name}()"
    return None


def environment_singletons(root: Path, packages: Iterable[str]) -> list[str]:
    """``path:line: what`` for each read of the environment that runs when a module is imported."""
    trees = {path: ast.parse(path.read_text()) for path in modules(root, packages).values()}
    settings = _settings_classes(trees.values())
    found = set()
    for path, tree in trees.items():
        for node in _import_time_nodes(tree):
            what = _reads_environment(node, settings)
            if what:
                found.add((str(path.relative_to(root)), node.lineno, what))
    return [f"{path}:{line}: {what}" for path, line, what in sorted(found)]


def test_no_module_level_singleton_reads_the_environment():
    found = environment_singletons(ROOT, PACKAGES)
    assert not found, "read the environment in an entry point and pass it down:\n" + "\n".join(
        found
    )


def test_environment_singletons_finds_planted_ones(tmp_path):
    _write_package(tmp_path, {
        "app/__init__.py": "",
        "app/settings.py": """\
            from pydantic_settings import BaseSettings

            class Settings(BaseSettings):
                token: str = ""

            class LocalSettings(Settings):
                pass
            """,
        "app/globals.py": """\
            import os
            from os import getenv

            from app.settings import LocalSettings, Settings

            TOKEN = os.environ["TOKEN"]
            HOME = os.getenv("HOME")
            USER = getenv("USER")
            SHELL = os.environ.get("SHELL")
            SETTINGS = Settings()

            class Holder:
                settings = LocalSettings()

            def fine():
                return os.environ.get("LATER"), Settings()

            def read_at_import(value=os.getenv("DEFAULT")):
                return value

            if __name__ == "__main__":
                print(os.environ["ENTRY_POINT"])
            """,
    })
    assert environment_singletons(tmp_path, ["app"]) == [
        "app/globals.py:6: os.environ",
        "app/globals.py:7: os.getenv()",
        "app/globals.py:8: os.getenv()",
        "app/globals.py:9: os.environ",
        "app/globals.py:10: Settings()",
        "app/globals.py:13: LocalSettings()",
        "app/globals.py:18: os.getenv()",
    ]
