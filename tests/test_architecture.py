"""Layering rules: only the backend touches Pyfhel, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_he"

#: Layers from the bottom up. A module may import from its own layer and
#: the ones below it, never above.
LAYERS = [
    "exceptions",
    "_version",
    "datasets",
    "backend",
    "linalg",
    "circuit",
    "training",
    "_estimator",
    "protocol",
    "_demo",
    "cli",
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against the package path
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                mod = ".".join((*base, mod)) if mod else ".".join(base)
            found.add(mod)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "sklearn_he" or len(parts) < 2:
        return None
    return parts[1]


def test_only_the_backend_module_imports_pyfhel():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(m.split(".")[0] == "Pyfhel" for m in _imports(p))
    ]
    assert offenders == ["backend/_pyfhel.py"]


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        own = rel.parts[0]
        if own not in LAYERS:
            if own == "__init__":
                continue
            violations.append(f"{rel}: unknown layer {own!r}; add it to LAYERS")
            continue
        for mod in _imports(path):
            layer = _layer(mod)
            if layer in LAYERS and LAYERS.index(layer) > LAYERS.index(own):
                violations.append(f"{rel} imports {mod}")
    assert violations == []


#: The scheduler (``circuit/_schedule.py``) is a pure function of a compiled
#: circuit and its costs, so that predictions can plan without running
#: anything: of the package it may use the circuit IR, the compiler, the cost
#: model, the dataflow planner and the analysis, and nothing of what runs
#: schedules (``_parallel``, the executor; ``_worker``, inside the workers).
SCHEDULER = PACKAGE / "circuit" / "_schedule.py"
SCHEDULER_MAY_IMPORT = {
    f"sklearn_he.circuit.{m}" for m in ("_ir", "_compiler", "_cost", "_dataflow", "_analysis")
}
#: ...and it starts no process or thread, touches no file, reads no clock and
#: never reaches SEAL's bindings itself.
SCHEDULER_MUST_NOT_IMPORT = {
    "Pyfhel",
    "concurrent",
    "dask",
    "distributed",
    "io",
    "joblib",
    "loky",
    "multiprocessing",
    "os",
    "pathlib",
    "shutil",
    "socket",
    "subprocess",
    "tempfile",
    "threading",
    "time",
}
#: Nothing the scheduler imports, directly or not, may load these.
EXECUTION_LIBRARIES = {"joblib", "loky", "dask", "distributed"}


def _module_file(module: str) -> Path | None:
    """The file of package module ``module`` (``a.b`` -> a/b.py or a/b/__init__.py)."""
    parts = module.split(".")
    if parts[0] != "sklearn_he":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_imports(path: Path) -> set[Path]:
    """Package files ``path`` imports, counting ``from pkg import submodule``."""
    found = set()
    for mod in _imports(path):
        if (f := _module_file(mod)) is not None:
            found.add(f)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
            for alias in node.names:
                module = [part for part in (node.module or "").split(".") if part]
                if (f := _module_file(".".join((*base, *module, alias.name)))) is not None:
                    found.add(f)
    return found


def test_scheduler_imports_only_its_inputs():
    own = _imports(SCHEDULER)
    package = {m for m in own if m.startswith("sklearn_he")}
    assert package <= SCHEDULER_MAY_IMPORT, sorted(package - SCHEDULER_MAY_IMPORT)
    assert not {m.split(".")[0] for m in own} & SCHEDULER_MUST_NOT_IMPORT


def test_nothing_the_scheduler_imports_reaches_joblib_or_the_executor():
    """Followed through the package's own imports (the ``circuit`` package's
    ``__init__``, which also imports the executor, is not the scheduler's)."""
    seen, todo = set(), [SCHEDULER]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_package_imports(path))
    circuit = PACKAGE / "circuit"
    assert circuit / "_parallel.py" not in seen
    assert circuit / "_cluster.py" not in seen
    assert circuit / "_worker.py" not in seen
    assert circuit / "__init__.py" not in seen
    loaders = sorted(
        str(p.relative_to(PACKAGE))
        for p in seen
        if {m.split(".")[0] for m in _imports(p)} & EXECUTION_LIBRARIES
    )
    assert loaders == []
    assert circuit / "_cost.py" in seen  # the walk does follow the imports


def test_the_executor_takes_the_scheduler_from_its_module():
    """``_parallel`` imports the scheduler; the scheduler never imports ``_parallel``."""
    assert "sklearn_he.circuit._schedule" in _imports(PACKAGE / "circuit" / "_parallel.py")
    assert "sklearn_he.circuit._parallel" not in _imports(SCHEDULER)


def test_only_the_executors_import_dask():
    """Dask is optional and an execution library: the cluster executor imports it (and
    the worker side looks up its worker's address); nothing else does, and the package
    loads it only when ``server=`` is used (``sklearn_he.circuit`` exports the cluster
    classes lazily)."""
    import subprocess
    import sys

    importers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if {m.split(".")[0] for m in _imports(p)} & {"dask", "distributed"}
    )
    assert importers == ["circuit/_cluster.py", "circuit/_worker.py"]
    code = (
        "import sys, sklearn_he.circuit, sklearn_he.training\n"
        "print('distributed' in sys.modules)\n"
        "sklearn_he.circuit.ClusterCKKSEvaluator\n"
        "print('distributed' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_worker_processes_do_not_import_scikit_learn():
    """A worker imports sklearn_he.circuit only: ~0.3 s to start instead of ~1.5 s."""
    import subprocess
    import sys

    code = (
        "import sys, sklearn_he.circuit._worker, sklearn_he.training\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
        "import sklearn_he\n"
        "sklearn_he.EncryptedLogisticRegression\n"
        "print('sklearn' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "True"]  # loaded on first use only


def test_unknown_top_level_name_is_an_attribute_error():
    import sklearn_he

    with pytest.raises(AttributeError, match="module 'sklearn_he' has no attribute 'Nope'"):
        sklearn_he.Nope  # noqa: B018
    assert "EncryptedLogisticRegression" in dir(sklearn_he)
