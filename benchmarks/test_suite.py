"""The benchmark suite, one parametrized test per case of ``cases.PLAN``, and a check of its import graph.

Run ``pytest benchmarks --benchmark-only``. Keras cases carry the ``keras`` marker, so a run with
``-m keras`` (as ``run_cpu.sh`` does for the JAX and torch backends) measures only those, and a run
with ``-m "not keras"`` only the torch ones, which need neither Keras nor TensorFlow nor JAX.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks.cases import Case, all_cases

CASES = {case.id: case for case in all_cases()}
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _param(case: Case) -> pytest.param:
    marks = [pytest.mark.keras] if case.impl.is_keras else []
    return pytest.param(case.id, id=case.id, marks=marks)


@pytest.mark.parametrize("case_id", [_param(case) for case in CASES.values()])
def test_case(case_id: str, measure) -> None:
    measure(CASES[case_id])


# Runs a few torch cases untimed with keras, tensorflow and jax made unimportable, then checks none was loaded.
TORCH_ONLY_RUN = """
import importlib.abc, sys
BLOCKED = ("keras", "tensorflow", "jax", "jaxlib")
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: a torch-only benchmark run must not import it")
sys.meta_path.insert(0, Blocker())
import pytest
code = pytest.main(sys.argv[1:])
loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
assert not loaded, f"torch-only run loaded {loaded}"
sys.exit(code)
"""


def test_torch_cases_run_without_keras() -> None:
    """A torch-only selection runs with Keras, TensorFlow and JAX absent (the Keras side loads lazily)."""
    selection = "forward-lstm-B4-S8 or resets-1pct or lengths"
    args = [sys.executable, "-c", TORCH_ONLY_RUN, f"{ROOT / 'benchmarks' / 'test_suite.py'}::test_case"]
    args += ["-m", "not keras", "-k", selection, "--benchmark-disable", "-p", "no:cacheprovider", "-q"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout, done.stdout[-3000:]


@pytest.mark.keras
def test_resident_predict_equals_predict_on_batch_state_carried() -> None:
    """The device-resident step gives ``predict_on_batch``'s numbers, the carried state moving on as there."""
    import keras
    import numpy as np

    from benchmarks import cases, keras_impls, torch_impls

    if keras_impls.backend() not in keras_impls.RESIDENT_BACKENDS:
        pytest.skip(f"resident_predict has no path for the {keras_impls.backend()} backend")
    case = Case(cases.JOBS["stream-1"], "lstm", cases.SMALL, cases.KERAS_MULTISTATE)
    module = torch_impls.make_module(case.cell, case.shape)
    (resident, x), (eager, _) = keras_impls.MODELS[case.impl](case, module), keras_impls.MODELS[case.impl](case, module)
    step = keras_impls.resident_predict(resident, keras_impls.on_device(x))
    for call in range(3):  # the state carried from call to call must move on in both
        got, expected = keras.ops.convert_to_numpy(step()), eager.predict_on_batch(x)
        np.testing.assert_array_equal(got, expected, err_msg=f"call {call}")
    assert np.abs(expected).max() > 0
