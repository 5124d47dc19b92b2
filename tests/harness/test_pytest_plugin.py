"""The pytest plugin (``harness/pytest_plugin.py``): discovered after ``pip install``, its ``parity`` fixture,
``--parity-report=DIR``, failures that never print the input array, and the README's example suite, run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "test_own_suite.py"
PLUGIN = "harness.pytest_plugin"
# Where the project is installed with its entry point (CI), pytest loads the plugin itself; loading it
# again by -p would register it twice. A stale editable install lacks the entry point: load it by name.
INSTALLED = any(ep.value == PLUGIN for ep in importlib.metadata.entry_points(group="pytest11"))
LOAD = () if INSTALLED else ("-p", PLUGIN)
# pytester unloads the modules a test imported, and torch or TensorFlow imported a second time in one process
# crashes it: the in-process runs below find them loaded here.
for _name in ("torch", "keras", "models_torch", "models_keras", "harness.parity.engine"):
    importlib.import_module(_name)

PLANTED = 123.375  # an input value (exact in float32) that a failure's output must not show
SUITE = f"""
import copy

import numpy as np
import torch

from harness import assert_parity
from models_torch import MultiStateGRU


def models():
    torch.manual_seed(0)
    model = MultiStateGRU(3, 5, num_streams=2)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.rnn.weight_hh_l0[0, 0] += 1e-2
    return model, nudged


def inputs():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 3)).astype("float32")
    x[-1, -1, -1, -1] = {PLANTED}  # last: where a truncated repr of x still shows it
    return x


def test_same(parity):
    model, _ = models()
    parity({{"a": model, "b": copy.deepcopy(model)}}, inputs(), "halves")


def test_nudged(parity):
    model, nudged = models()
    parity({{"ref": model, "nudged": nudged}}, inputs(), "halves")


def test_nudged_assert_parity():
    model, nudged = models()
    assert_parity({{"ref": model, "nudged": nudged}}, inputs(), "halves")
"""


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fixture_fails_on_a_planted_fault_with_its_error_and_no_input_array(pytester, tmp_path):
    pytester.makepyfile(test_suite=SUITE)
    # -rN: no short summary, which repeats each message in full where pytest sees a CI variable.
    result = pytester.runpytest(*LOAD, "-rN", f"--parity-report={tmp_path}")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()

    leaked = [s for s in ("array(", "dtype=float32", str(PLANTED), "1.23375") if s in out]
    assert not leaked, f"the failure output shows the input array ({leaked}):\n{out}"
    stated = [float(v) for v in re.findall(r"Greatest absolute difference: (\S+)", out)]
    assert len(stated) == 2, f"expected the measured error of both failures in:\n{out}"

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"test_suite.py_test_{name}.{s}" for name in ("nudged", "same") for s in ("json", "md")]
    nudged, same = _read(tmp_path / files[0]), _read(tmp_path / files[2])
    assert (nudged["test"], nudged["ok"], same["test"], same["ok"]) == (
        "test_suite.py::test_nudged",
        False,
        "test_suite.py::test_same",
        True,
    )
    worst = max(c["max_abs"] for c in nudged["reports"][0]["comparisons"] if c["mismatched"])
    assert worst > 1e-5, f"the nudged weight moved the outputs by only {worst}"
    assert stated == [float(f"{worst:.6g}")] * 2, f"message says {stated}, the JSON report {worst}"
    assert same["reports"][0]["max_abs_error"] == 0.0, f"a model against its copy: {same['reports'][0]}"
    markdown = (tmp_path / files[1]).read_text()
    assert "# Parity of `test_suite.py::test_nudged`: FAIL" in markdown and f"{worst:.3g}" in markdown, markdown
    assert "| max rel | atol | rtol |" in markdown and "- chunk plan: 2 chunks" in markdown, markdown


@pytest.mark.parametrize("problem", ["missing", "file", "read-only"])
def test_an_unusable_report_folder_is_a_usage_error(pytester, tmp_path, problem):
    folder = tmp_path / "reports"
    expected = {
        "missing": "expected an existing folder, got no such folder",
        "file": "expected an existing folder, got a file",
        "read-only": "the folder is not writable",
    }
    if problem == "file":
        folder.write_text("")
    if problem == "read-only":
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    pytester.makepyfile(test_x="def test_x(parity):\n    pass\n")
    result = pytester.runpytest(*LOAD, f"--parity-report={folder}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"*--parity-report={folder}: {expected[problem]}*"])


TOY_SUITE = """
import sys
from pathlib import Path

import numpy as np


class RunningSum:
    \"\"\"A model in plain numpy: its output is the running sum of its input, its state the sum so far.\"\"\"

    def reset(self):
        self.total = None

    def run(self, x):
        start = 0 if self.total is None else self.total[0][:, :, None]
        out = start + np.cumsum(x, axis=2)
        self.total = out[None, :, :, -1]
        return out

    def states(self):
        return {"sum": self.total}


def test_toy(parity):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 4))
    report = parity({"a": RunningSum(), "b": RunningSum()}, x, "random")
    assert report.max_abs_error < 1e-12, report.table()
    loaded = {n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "harness"}
    elsewhere = {n: f for n, f in loaded.items() if "site" not in Path(f).parts}
    assert "harness.pytest_plugin" in loaded and not elsewhere, f"not loaded from the install: {elsewhere}"
    assert not {"torch", "keras", "tensorflow", "jax"} & set(sys.modules), "the plugin imported a framework"
"""


def test_discovered_after_pip_install(tmp_path):
    source, site, project = tmp_path / "source", tmp_path / "site", tmp_path / "project"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in {
        name.split(".")[0]
        for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    }:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *isolation, "--target", site]
    subprocess.run([*pip, source], check=True, capture_output=True)
    points = (next(site.glob("multistate_rnn-*.dist-info")) / "entry_points.txt").read_text()
    assert f"multistate_rnn = {PLUGIN}" in points, points

    project.mkdir()
    (project / "test_toy.py").write_text(TOY_SUITE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--parity-report=."]
    done = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _read(project / "test_toy.py_test_toy.json")["ok"] is True


@pytest.mark.keras
def test_readme_example_runs_and_holds_parity(pytester, tmp_path):
    example = EXAMPLE.read_text()
    assert example in (ROOT / "README.md").read_text(), f"README no longer quotes {EXAMPLE.name} verbatim"
    pytester.makepyfile(test_own_suite=example)
    result = pytester.runpytest(*LOAD, f"--parity-report={tmp_path}")
    result.assert_outcomes(passed=1)
    report = _read(tmp_path / "test_own_suite.py_test_keras_port_matches_torch.json")["reports"][0]
    cross = [r for r in report["summary"] if r["pair"] == "keras vs torch"]
    assert cross and all(r["ok"] and r["max_abs"] < 1e-5 for r in cross), textwrap.shorten(str(cross), 2000)
