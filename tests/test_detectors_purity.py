"""detectors/ is pure statistics: every module imports only computation libraries, never the service,
Kafka, Prometheus or anything doing I/O, and calls no I/O builtins."""

import ast
import pathlib

import pytest

import detectors

PACKAGE = pathlib.Path(detectors.__file__).parent
MODULES = sorted(p.name for p in PACKAGE.glob("*.py"))

#: What a detector may import: the standard library's computation modules and the scientific stack.
ALLOWED = {
    "__future__", "abc", "bisect", "collections", "copy", "dataclasses", "enum", "functools", "heapq",
    "itertools", "math", "numbers", "operator", "typing",
    "msgspec", "numpy", "river", "scipy", "sklearn", "threadpoolctl",
}
#: Named so the failure says why (these are also outside ALLOWED).
FORBIDDEN = {"monitor", "kafka", "confluent_kafka", "prometheus_client", "os", "io", "pathlib", "socket",
             "logging", "sqlite3", "urllib", "http", "requests", "subprocess", "shutil", "tempfile", "json",
             "pickle", "yaml", "sys", "time", "threading"}
IO_BUILTINS = {"open", "print", "input", "exec", "eval", "__import__"}


def imports(tree: ast.AST):
    """(line, root module) of every import in a module, at top level or inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module.split(".")[0]
            elif node.level > 1:
                yield node.lineno, "..(outside detectors)"


def test_every_module_is_checked():
    assert {"drift.py", "performance.py", "multivariate.py", "embedding.py"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_only_pure_libraries(name):
    tree = ast.parse((PACKAGE / name).read_text())
    bad = [(line, root) for line, root in imports(tree) if root not in ALLOWED]
    assert not bad, f"detectors/{name} imports {bad}: detectors/ holds pure statistics " \
                    f"(forbidden outright: {sorted(FORBIDDEN & {r for _l, r in bad})})"
    assert not FORBIDDEN & ALLOWED


@pytest.mark.parametrize("name", MODULES)
def test_module_calls_no_io_builtins(name):
    tree = ast.parse((PACKAGE / name).read_text())
    calls = [(node.lineno, node.func.id) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_BUILTINS]
    assert not calls, f"detectors/{name} calls {calls}"
