"""The layers of the repository and their allowed arrows (docs/architecture.md), the doctests' collection and
the suite's shards."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import tomllib

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


def _module_of(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """The import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    return {i for g in guarded for b in g.body for i in ast.walk(b) if isinstance(i, (ast.Import, ast.ImportFrom))}


def import_map(root: pathlib.Path = ROOT, packages: tuple[str, ...] = PROJECT) -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (any import, lazy ones too; not ``TYPE_CHECKING``
    ones). ``from pkg import name`` points at ``pkg.name`` where that is a module, else at ``pkg`` itself."""
    files = {_module_of(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    arrows: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        found = set()
        for node in ast.walk(tree):
            if node in skip:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}  # fmt: skip
        arrows[module] = {name for name in found if name in files and name != module}
    return arrows


def find_cycle(arrows: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(arrows.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(arrows):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle_between_files():
    cycle = find_cycle(import_map())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_planted_import_cycles_are_caught(tmp_path):
    """A lazy import closing a circle of two files, and a longer one, in a package written here."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from planted import b\n")
    (pkg / "b.py").write_text("def f():\n    from planted.a import g\n")
    (pkg / "c.py").write_text("import planted.d\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import planted.c\n")
    arrows = import_map(tmp_path, ("planted",))
    assert find_cycle(arrows) == ["planted.a", "planted.b", "planted.a"], arrows
    del arrows["planted.a"]
    assert find_cycle(arrows) is None, "a TYPE_CHECKING import counted as an arrow"
    arrows["planted.d"].add("planted.e")
    arrows["planted.e"] = {"planted.c"}
    assert find_cycle(arrows) == ["planted.c", "planted.d", "planted.e", "planted.c"]


def _loaded_by(statement: str, backend: str = "jax") -> set[str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_a_model_package_loads_no_other_framework_and_no_engine():
    torch_side = _loaded_by("import models_torch")
    assert not {"keras", "jax", "tensorflow", "harness.parity.engine", "harness.porting.layers"} & torch_side
    keras_side = _loaded_by("import models_keras")
    engine = {"harness.parity.engine", "harness.porting.layers", "harness.training.twins"}
    assert not {"torch", "models_torch", *engine} & keras_side
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


# Where a cell's name may be spelled out: the cell table, and a format whose file needs each cell's maths.
CELL_NAMES_ALLOWED = {"multistate_core/cells.py", "harness/export/tflite_steps.py"}


def _attribute_names(tree: ast.AST) -> set[ast.AST]:
    """String constants naming an attribute (``getattr(m, "rnn")``, ``m._modules["rnn"]``): not cells."""
    named = {n.args[1] for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "getattr"}
    return named | {
        n.slice for n in ast.walk(tree) if isinstance(n, ast.Subscript) and ast.unparse(n.value).endswith("_modules")
    }


def _cell_literals(source: str, cells: set[str]) -> list[str]:
    """The string constants in ``source`` that spell a cell's name."""
    tree = ast.parse(source)
    names = _attribute_names(tree)
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in cells and n not in names]


def test_no_cell_is_spelled_out_in_the_library():
    """A cell is named only in ``multistate_core/cells.py`` (and the TFLite step maths); the rest looks it up."""
    from multistate_core.cells import CELLS

    files = [p for package in LIBRARY for p in sorted((ROOT / package).rglob("*.py"))]
    found = {str(p.relative_to(ROOT)): _cell_literals(p.read_text(), set(CELLS)) for p in files}
    assert not {p: lits for p, lits in found.items() if lits and p not in CELL_NAMES_ALLOWED}, found
    assert _cell_literals('extra = {} if cell == "rnn" else None', set(CELLS)) == ["rnn"]  # planted literal
    assert _cell_literals('inner = getattr(module, "rnn")', set(CELLS)) == []


def _suffix_literals(source: str) -> list[str]:
    """The string constants in ``source`` that spell an export format's file suffix."""
    return [
        n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in (".onnx", ".tflite")
    ]


def test_export_suffixes_are_listed_in_one_registry():
    files = [p for package in LIBRARY for p in sorted((ROOT / package).rglob("*.py"))]
    found = {str(p.relative_to(ROOT)) for p in files if _suffix_literals(p.read_text())}
    assert found == {"harness/export/formats.py"}, found
    assert _suffix_literals('if path.endswith(".tflite"): pass') == [".tflite"]  # planted literal


def test_importing_harness_loads_no_framework():
    loaded = _loaded_by("import harness, harness.export, harness.porting, harness.training, harness.cli")
    assert not {"torch", "keras", "tensorflow", "jax", "onnxruntime", "models_torch", "models_keras"} & loaded


_TORCH_ONLY = """
import sys


class NotInstalled:  # Keras, TensorFlow and JAX as if not installed: importing them raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras", "tensorflow", "jax"):
            raise ImportError(f"No module named {name!r}")


sys.meta_path.insert(0, NotInstalled())
import numpy as np
import harness
from harness.porting import files
from models_torch import MultiStateGRU
module = MultiStateGRU(3, 4, 2)
files.write_torch_file(module.rnn.state_dict(), sys.argv[1])
back = files.torch_module_from_state(files.read_torch_file(sys.argv[1]), 2)
report = harness.check_parity({"torch": module, "file": back}, np.ones((1, 2, 6, 3), "float32"), "halves")
print(report.ok, report.max_abs_error)
"""


def test_a_torch_only_user_ports_files_and_checks_parity(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_ONLY, str(tmp_path / "gru.pt")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.split() == ["True", "0.0"], done.stderr[-2000:] + done.stdout


LIBRARY = ("multistate_core", "models_torch", "models_keras", "harness")


def _undoctested(pytest_config: dict) -> list[str]:
    """The library packages whose docstring examples the suite's configuration would not run."""
    if "--doctest-modules" not in pytest_config.get("addopts", "").split():
        return list(LIBRARY)
    return [package for package in LIBRARY if package not in pytest_config.get("testpaths", [])]


def test_every_docstring_example_of_the_library_runs():
    """``--doctest-modules`` and the ``testpaths`` collect each package's examples (``models_keras``'s are marked
    ``keras`` by conftest.py); a configuration without them, planted below, is caught."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert not _undoctested(config)
    dropped = [path for path in config["testpaths"] if path != "models_keras"]
    assert _undoctested({**config, "testpaths": dropped}) == ["models_keras"]
    assert _undoctested({**config, "addopts": "-ra"}) == list(LIBRARY)


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
