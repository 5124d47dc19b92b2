"""The benchmark report tools on pytest-benchmark JSON, and their plots: the repository's own
(``python -m benchmarks.report``, on its cases) and anyone's (``python -m harness bench-report``)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from benchmarks import analysis, plot  # noqa: E402  (after the skip: the plot needs matplotlib)
from benchmarks.report import main  # noqa: E402
from harness import bench_report  # noqa: E402
from harness.cli import main as harness_main  # noqa: E402

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


OWN_BENCHMARKS = """
import pytest

@pytest.mark.benchmark(group="sort")
@pytest.mark.parametrize("n", [10, 3000])
def test_sort(benchmark, n):
    benchmark(sorted, list(range(n, 0, -1)))

def test_sum(benchmark):
    benchmark(sum, range(100))
"""


@pytest.fixture(scope="module")
def own_json(tmp_path_factory) -> pathlib.Path:
    """What ``pytest --benchmark-json`` writes for someone's own benchmarks: two grouped, one not."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "test_mine.py").write_text(OWN_BENCHMARKS)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-json=results.json"]
    command += ["--benchmark-max-time=0.01", "--benchmark-min-rounds=3", "test_mine.py"]
    proc = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder / "results.json"


def _tables(text: str) -> dict[str, tuple[float, str, dict[str, list[str]]]]:
    """Each group's table in a bench-report: (seconds per unit, baseline, the cells of each row by name)."""
    scales = {name: scale for name, scale in bench_report.UNITS}
    found = {}
    for section in text.split("\n## ")[1:]:
        group, *lines = section.splitlines()
        unit = re.search(r"median \((\S+)\)", section).group(1)
        baseline = re.search(r"baseline: `(.*)`", section).group(1)
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
        found[group] = (scales[unit], baseline, {row[0]: row[1:] for row in rows[1:]})
    return found


def _medians(path: pathlib.Path) -> dict[str, dict[str, float]]:
    """The medians (s) of a pytest-benchmark JSON, by group (bench-report's name for no group) and name."""
    found: dict[str, dict[str, float]] = {}
    for entry in json.loads(path.read_text())["benchmarks"]:
        found.setdefault(entry["group"] or bench_report.NO_GROUP, {})[entry["name"]] = entry["stats"]["median"]
    return found


@pytest.mark.parametrize("source", ["own", "committed"])
def test_bench_report_tables_hold_the_json_medians_and_ratios_to_the_fastest(source, own_json, tmp_path):
    """Installed with ``harness`` and run on any pytest-benchmark JSON: it used to be ``benchmarks.report`` alone."""
    path = own_json if source == "own" else RESULTS / "cpu-torch.json"
    assert harness_main(["bench-report", str(path), "--out", str(tmp_path / "report.md")]) == 0
    tables, medians = _tables((tmp_path / "report.md").read_text()), _medians(path)
    assert {g: set(rows) for g, (_, _, rows) in tables.items()} == {g: set(m) for g, m in medians.items()}
    for group, (scale, baseline, rows) in tables.items():
        fastest = min(medians[group], key=medians[group].get)
        assert baseline == fastest, f"{group}: baseline {baseline}, fastest {fastest}"
        for name, (median, _, _, ratio) in rows.items():
            expected = medians[group][name]
            assert float(median) * scale == pytest.approx(expected, rel=5e-4), f"{group} {name}: {median} vs {expected}"
            assert float(ratio) == pytest.approx(expected / medians[group][fastest], abs=0.005), f"{group} {name}"


def test_bench_report_baseline_is_the_benchmark_named(own_json, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert harness_main(["bench-report", str(own_json), "--out", str(out), "--baseline", "[3000]"]) == 0
    tables, medians = _tables(out.read_text()), _medians(own_json)
    _, baseline, rows = tables["sort"]
    expected = medians["sort"]["test_sort[10]"] / medians["sort"]["test_sort[3000]"]
    assert baseline == "test_sort[3000]" and rows["test_sort[3000]"][3] == "1.00", rows
    assert float(rows["test_sort[10]"][3]) == pytest.approx(expected, abs=0.005), (rows, expected)
    assert tables[bench_report.NO_GROUP][1] == "test_sum"  # no name there contains it: the fastest
    assert harness_main(["bench-report", str(own_json), "--baseline", "[30000]"]) == 1
    assert "--baseline '[30000]': no benchmark's name contains it" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["name", "stats.median", "stats.iqr", "stats.rounds"])
def test_bench_report_refuses_a_benchmark_lacking_a_field_naming_it(field, own_json, tmp_path, capsys):
    data = json.loads(own_json.read_text())
    entry = data["benchmarks"][1]
    *parents, key = field.split(".")
    del (entry[parents[0]] if parents else entry)[key]
    (tmp_path / "cut.json").write_text(json.dumps(data))
    status = harness_main(["bench-report", str(tmp_path / "cut.json"), "--out", str(tmp_path / "report.md")])
    err = capsys.readouterr().err
    named = "benchmark #1 has no name" if field == "name" else f"benchmark {entry['name']!r} has no {field}"
    assert status == 1 and f"{tmp_path / 'cut.json'}: {named}" in err, err
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("median 1 ms", "not JSON"),
        ('[{"backend": "torch", "max_abs": 0.0}]', "no top-level 'benchmarks' list (found list)"),
        ('{"machine_info": {}, "benchmarks": []}', "its 'benchmarks' list is empty"),
    ],
)
def test_bench_report_refuses_a_json_that_holds_no_benchmarks(text, reason, tmp_path, capsys):
    (tmp_path / "other.json").write_text(text)
    status = harness_main(["bench-report", str(tmp_path / "other.json"), "--plot", str(tmp_path / "plot.png")])
    err = capsys.readouterr().err
    assert status == 1 and f"{tmp_path / 'other.json'}: {reason}" in err, err
    assert not (tmp_path / "plot.png").exists()


def test_bench_report_plot_has_a_labelled_panel_per_group(own_json, tmp_path):
    benchmarks, _ = bench_report.load(str(own_json))
    fig = bench_report.figure(benchmarks)
    medians = _medians(own_json)
    assert [ax.get_title() for ax in fig.axes] == list(medians), [ax.get_title() for ax in fig.axes]
    for ax in fig.axes:
        unit, scale = bench_report.unit(list(medians[ax.get_title()].values()))
        widths = [bar.get_width() * scale for bar in ax.patches]
        assert (ax.get_xlabel(), ax.get_ylabel()) == (f"median time ({unit})", "benchmark"), ax.get_title()
        assert widths == pytest.approx(list(medians[ax.get_title()].values()), rel=1e-12), ax.get_title()
    assert harness_main(["bench-report", str(own_json), "--plot", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
