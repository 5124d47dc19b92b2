"""The benchmark report tool (``python -m benchmarks.report``) on a foreign pytest-benchmark JSON, and its plot."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("matplotlib")

from benchmarks import analysis, plot  # noqa: E402  (after the skip: the plot needs matplotlib)
from benchmarks.report import main  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # the committed, real runs

FOREIGN = {  # what pytest-benchmark writes for someone's own test: no extra_info
    "machine_info": {"node": "box", "python_version": "3.11.2"},
    "commit_info": {},
    "benchmarks": [
        {"group": None, "name": "test_sort", "fullname": "test_mine.py::test_sort", "params": None,
         "stats": {"min": 1e-4, "max": 2e-4, "mean": 1.5e-4, "median": 1.4e-4, "rounds": 100}, "extra_info": {}},
    ],
    "datetime": "2026-01-01T00:00:00",
    "version": "5.1.0",
}  # fmt: skip


def test_a_foreign_json_is_refused_naming_the_missing_fields(tmp_path, capsys):
    """It used to crash (``TypeError: sequence item 2``) or write empty tables and plots with exit status 0."""
    (tmp_path / "mine.json").write_text(json.dumps(FOREIGN))
    status = main([str(tmp_path / "mine.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 1 and "none of its 1 benchmarks records the extra_info" in err, err
    assert all(name in err for name in analysis.NEEDED), err
    assert not (tmp_path / "out").exists()
    partial = json.loads(json.dumps(FOREIGN))
    partial["benchmarks"][0]["extra_info"] = {"impl": "torch-multistate", "cell": "lstm"}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    assert main([str(tmp_path / "partial.json"), "--out", str(tmp_path / "out")]) == 1
    assert "benchmark 'test_sort' has no extra_info job, shape, device, B, S, T, flops" in capsys.readouterr().err


def test_every_plot_panel_has_labelled_axes():
    paths = sorted(RESULTS.glob("cpu-*.json"))
    assert paths, f"no committed results in {RESULTS}"
    results = analysis.load(paths)
    fig = plot.figure(analysis.scaling_series(results), analysis.ratios(results))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    unlabelled = [ax.get_title() for ax in panels if not (ax.get_xlabel() and ax.get_ylabel())]
    assert len(panels) == 1 + len(analysis.KINDS) and not unlabelled, f"panels without axis labels: {unlabelled}"
    plot.plt.close(fig)
