"""The layers of the repository and their allowed arrows (docs/architecture.md), and the doctests of its modules."""

from __future__ import annotations

import ast
import doctest
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import shard

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = ("multistate_core", "harness", "models_torch", "models_keras", "benchmarks", "tests")
FRAMEWORKS = ("torch", "keras", "tensorflow", "jax")

# What each layer may import, among the project's packages and the frameworks (any import, lazy ones too).
# The Keras torch backend reaches the torch kernels (models_torch.ops) lazily; the load test below holds that.
ALLOWED = {
    "multistate_core": set(),
    "models_torch.ops": {"multistate_core", "torch"},
    "models_torch": {"multistate_core", "models_torch.ops", "torch"},
    "models_keras": {"multistate_core", "models_torch.ops", "keras", "tensorflow", "jax", "torch"},
    "harness": {"harness", "multistate_core", "models_torch", "models_torch.ops", "models_keras", *FRAMEWORKS},
}


def _layer(module: str) -> str:
    return "models_torch.ops" if module.startswith("models_torch.ops") else module.split(".")[0]


def _imports(path: pathlib.Path) -> set[str]:
    """Every project package or framework that ``path`` imports, as a layer name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PROJECT + FRAMEWORKS:
                found.add(_layer(name) if name.split(".")[0] in PROJECT else name.split(".")[0])
    return found


def _modules(layer: str) -> list[pathlib.Path]:
    files = sorted((ROOT / layer.replace(".", "/")).rglob("*.py"))
    return [f for f in files if layer != "models_torch" or "ops" not in f.parts]


@pytest.mark.parametrize("layer", ALLOWED)
def test_imports_only_point_down(layer):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - ALLOWED[layer] - {layer})
        for path in _modules(layer)
        if _imports(path) - ALLOWED[layer] - {layer}
    }
    assert not wrong, f"imports against the arrows of docs/architecture.md: {wrong}"


def _loaded_by(statement: str, backend: str = "jax") -> set[str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_a_model_package_loads_no_other_framework_and_no_engine():
    torch_side = _loaded_by("import models_torch")
    assert not {"keras", "jax", "tensorflow", "harness.parity", "harness.porting"} & torch_side
    keras_side = _loaded_by("import models_keras")
    assert not {"torch", "models_torch", "harness.parity", "harness.porting", "harness.training"} & keras_side
    on_tensorflow = _loaded_by("import models_keras", backend="tensorflow")
    assert "models_keras.backends.tensorflow" in on_tensorflow
    assert not {"torch", "models_torch", "models_keras.backends.jax", "models_keras.backends.torch"} & on_tensorflow


KERAS_BACKENDS = ROOT / "models_keras" / "backends"


def _backend_reads(source: str) -> int:
    """How many times ``source`` calls ``keras.backend.backend()``."""
    return sum(
        isinstance(node, ast.Call) and ast.unparse(node.func) == "keras.backend.backend"
        for node in ast.walk(ast.parse(source))
    )


def test_keras_backend_is_read_in_one_module():
    reads = {str(p.relative_to(ROOT)): _backend_reads(p.read_text()) for p in _modules("models_keras")}
    assert {p: n for p, n in reads.items() if n} == {"models_keras/backends/__init__.py": 1}, reads
    assert _backend_reads("import keras\nif keras.backend.backend() == 'jax': pass") == 1  # planted read


def _seam() -> tuple[str, ...]:
    """``SEAM`` of ``models_keras/backends/__init__.py``, read without importing Keras."""
    tree = ast.parse((KERAS_BACKENDS / "__init__.py").read_text())
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "SEAM"]
    return ast.literal_eval(value)


def _missing_seam(source: str) -> set[str]:
    """The seam's functions that a backend module's ``source`` neither defines nor imports, nor lists in ``__all__``."""
    tree = ast.parse(source)
    given = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    given |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    listed = [n.value for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"]
    exported = set(ast.literal_eval(listed[0])) if listed else given
    return set(_seam()) - (given & exported)


@pytest.mark.parametrize("backend", ["portable", "tensorflow", "jax", "torch"])
def test_each_keras_backend_module_gives_the_seam(backend):
    source = (KERAS_BACKENDS / f"{backend}.py").read_text()
    assert not _missing_seam(source), f"{backend}.py lacks {sorted(_missing_seam(source))}"
    planted = source.replace("def holds_values(", "def holds_values_renamed(").replace('"holds_values"', '"x"')
    planted = planted.replace("    holds_values,\n", "")
    assert _missing_seam(planted) == {"holds_values"}, "a module without holds_values must be caught"


def _cell_literals(source: str, cells: set[str]) -> list[str]:
    """The string constants in ``source`` that spell a cell's name."""
    return [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in cells]


def test_no_cell_is_spelled_out_in_models_keras():
    """A cell is named only in ``multistate_core/cells.py``; ``models_keras`` looks it up there."""
    from multistate_core.cells import CELLS

    found = {str(p.relative_to(ROOT)): _cell_literals(p.read_text(), set(CELLS)) for p in _modules("models_keras")}
    assert not {p: lits for p, lits in found.items() if lits}, found
    assert _cell_literals('extra = {} if cell == "rnn" else None', set(CELLS)) == ["rnn"]  # planted literal


DOCTESTED = [
    "harness",
    "multistate_core.cells",
    "multistate_core.contract",
    "multistate_core.atomic",
    "models_torch.ops.segments",
    "models_torch.ops.saturate",
    "models_torch.ops.kernels",
    "models_torch.ops.step_runs",
    "harness.parity",
    "harness.tolerances",
    "models_torch",
    "models_torch.multistate",
    "models_torch.segments",
    "models_torch.distributed",
    "models_torch.streaming",
]


@pytest.mark.parametrize("name", DOCTESTED)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no doctest to run"
    assert result.failed == 0


@pytest.mark.keras
@pytest.mark.parametrize(
    "name",
    [
        "models_keras",
        "models_keras.backends",
        "models_keras.multistate",
        "models_keras.exact",
        "models_keras.distributed",
    ],
)
def test_keras_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _partition_problems(split, items: list, n: int) -> list[str]:
    kept = [split(items, f"{k}/{n}") for k in range(1, n + 1)]
    together = sorted(item for shard_kept, _ in kept for item in shard_kept)
    problems = [] if together == sorted(items) else [f"{n} shards hold {together}, not each test once"]
    return problems + [f"shard {k}: kept and dropped overlap or miss" for k, (a, b) in enumerate(kept, 1)
                       if sorted(a + b) != sorted(items)]  # fmt: skip


@pytest.mark.parametrize("n", [1, 2, 3])
def test_suite_shards_partition_the_tests(n):
    """run_all.sh's SUITE_SHARD halves together run every test exactly once."""
    items = list(range(11))
    assert not _partition_problems(shard, items, n)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        shard(items, f"{n + 1}/{n}")


def test_planted_shard_fault_is_caught():
    """An off-by-one shard (1-based k taken as 0-based) must break the partition."""

    def planted(items: list, spec: str) -> tuple[list, list]:
        k, n = (int(part) for part in spec.split("/"))
        return items[k::n], [item for i, item in enumerate(items) if i % n != k]

    assert _partition_problems(planted, list(range(11)), 2)
