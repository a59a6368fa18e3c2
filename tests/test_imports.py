"""Every module of the packages imports on its own, and none import in a cycle.

A module that only imports after some other module was imported first hides
an import cycle (or a missing import) that the rest of the suite never sees,
because pytest has long imported everything by the time a test runs. So each
module is imported alone, in a fresh interpreter. The static check then looks
at the module-level import statements themselves: a cycle there works today
only by the luck of which module is imported first.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("couchbase_core", "gcouchbase")


def _modules() -> Dict[str, str]:
    """Dotted name -> file of every module of PACKAGES (``__main__`` modules
    excluded: importing one runs a program)."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if os.path.exists(os.path.join(folder, d, "__init__.py")))
            parts = os.path.relpath(folder, ROOT).split(os.sep)
            for name in sorted(files):
                if not name.endswith(".py") or name == "__main__.py":
                    continue
                stem = name[:-3]
                dotted = ".".join(parts if stem == "__init__" else parts + [stem])
                found[dotted] = os.path.join(folder, name)
    return found


MODULES = _modules()


def _import_alone(module: str) -> Optional[str]:
    """None if ``import module`` works in a fresh interpreter, else why not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", "import %s" % module], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return None
    return "%s (exit %d):\n%s" % (module, proc.returncode, proc.stderr.strip())


def test_the_walk_finds_the_modules_that_matter():
    # Guards the walk itself: an empty or partial list would pass everything.
    for name in ("couchbase_core", "couchbase_core._bucketbase", "couchbase_core._rowstream",
                 "couchbase_core._engine.instance", "couchbase_core.mock.kvserver",
                 "couchbase_core.testing.memcached", "gcouchbase.bucket"):
        assert name in MODULES


@pytest.mark.timeout(600)  # ~100 interpreters, two at a time, on a possibly loaded machine
def test_every_module_imports_alone_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(_import_alone, sorted(MODULES)) if f is not None]
    assert not failures, "modules that do not import on their own:\n\n" + "\n\n".join(failures)


# ------------------------------------------------------------ static check


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_time_statements(body: List[ast.stmt]) -> List[ast.stmt]:
    """The import statements that run when the module is imported: those at
    module level, in class bodies and in if/try/with blocks, but not in
    functions (they run when called) nor under ``if TYPE_CHECKING:``."""
    out: List[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out.extend(_import_time_statements(node.body))
            out.extend(_import_time_statements(node.orelse))
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                out.extend(_import_time_statements(block))
            for handler in node.handlers:
                out.extend(_import_time_statements(handler.body))
        elif isinstance(node, (ast.With, ast.ClassDef)):
            out.extend(_import_time_statements(node.body))
    return out


def _package_of(module: str) -> str:
    """The package relative imports in ``module`` are relative to."""
    if MODULES[module].endswith("__init__.py"):
        return module
    return module.rpartition(".")[0]


def import_graph() -> Dict[str, Set[str]]:
    """module -> the packages' own modules it imports at import time.

    ``from pkg import name`` depends on ``pkg.name`` when that is a module,
    else on ``pkg``. The implicit dependency of every module on its parent
    packages is left out: Python always runs those first, so it never forms
    a cycle of its own making.
    """
    graph: Dict[str, Set[str]] = {}
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        deps: Set[str] = set()
        for node in _import_time_statements(tree.body):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = _package_of(module).split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = "%s.%s" % (base, alias.name)
                deps.add(sub if sub in MODULES else base)
        graph[module] = {d for d in deps if d in MODULES and d != module}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    done: Set[str] = set()
    path: List[str] = []
    on_path: Set[str] = set()

    def visit(node: str) -> Optional[List[str]]:
        path.append(node)
        on_path.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep in on_path:
                return path[path.index(dep):] + [dep]
            if dep not in done:
                cycle = visit(dep)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_module_level_imports_only():
    graph = import_graph()
    assert "couchbase_core._engine.instance" in graph["couchbase_core._bucket_core"]
    assert "couchbase_core._formats" in graph["couchbase_core"]  # from a package's __init__
    assert "couchbase_core.transcoder" in graph["couchbase_core._kvops"]  # `from pkg import module`
    assert "couchbase_core._latch" in graph["couchbase_core._rowstream"]
    # Imported inside a method (flush) and under `if TYPE_CHECKING:` only:
    assert "couchbase_core._httpops" not in graph["couchbase_core._bucket_admin"]
    assert "couchbase_core.result" not in graph["couchbase_core._latch"]


def test_no_import_cycle_between_the_packages_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_row_streams_do_not_load_the_bucket_api():
    # The row streams only need the completion counter; importing them used
    # to load the whole bucket API, which (lazily) imports them back.
    code = ("import sys, couchbase_core._rowstream; "
            "print(sorted(m for m in sys.modules if m.startswith('couchbase_core._bucket')))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
