"""A report of anyone's pytest-benchmark results: a Markdown table per group and, if asked, a plot.

``pytest --benchmark-json=RESULTS.json`` writes the file; ``python -m harness bench-report RESULTS.json``
reads it. Each group (pytest-benchmark's ``group``, else one group) gets a table of the medians, their
interquartile range, the rounds, and the ratio of each median to the group's baseline: the fastest, or
the benchmark whose name contains ``--baseline``. A file this cannot read is refused by name
(``BadResults``), never reported as an empty table.

Example:
    >>> bench = Benchmark(source="r.json", name="test_sort", group="sort", median=2e-6, iqr=1e-7, rounds=50)
    >>> print(markdown([bench], {}))  # doctest: +NORMALIZE_WHITESPACE
    ## sort
    <BLANKLINE>
    baseline: `test_sort`
    <BLANKLINE>
    | benchmark | median (µs) | IQR (µs) | rounds | × baseline |
    |---|---:|---:|---:|---:|
    | test_sort | 2 | 0.1 | 50 | 1.00 |
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_GROUP = "benchmarks"  # the title of the one group of benchmarks that pytest-benchmark left ungrouped
UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))  # largest first
HEADER_FIELDS = {  # shown in the report's header when the file records them
    "machine_info": ("node", "cpu.brand_raw", "machine", "system", "python_implementation", "python_version"),
    "commit_info": ("id", "branch", "dirty"),  # the id shortened to 12 characters
}


class BadResults(ValueError):
    """A results file that is not pytest-benchmark JSON, holds no benchmarks, or lacks a needed field."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's timing, in seconds, as pytest-benchmark measured it."""

    source: str
    name: str
    group: str
    median: float
    iqr: float
    rounds: int


def _field(entry: dict, dotted: str) -> Any:
    """``entry["a"]["b"]`` for ``"a.b"``, or None where a level is missing."""
    value: Any = entry
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _number(path: str, name: str, stats: Any, key: str, *, positive: bool) -> float:
    """``stats[key]``: a finite number (> 0 if ``positive``, else >= 0), or ``BadResults`` naming what is wrong."""
    value = stats.get(key) if isinstance(stats, dict) else None
    if value is None:
        raise BadResults(f"{path}: benchmark {name!r} has no stats.{key} (pytest-benchmark writes it)")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadResults(f"{path}: benchmark {name!r}: stats.{key} is {value!r}, expected a finite number")
    if value < 0 or (positive and value == 0):
        raise BadResults(
            f"{path}: benchmark {name!r}: stats.{key} is {value!r}, expected {'> 0' if positive else '>= 0'}"
        )
    return float(value)


def load(path: str) -> tuple[list[Benchmark], dict]:
    """The benchmarks of one pytest-benchmark JSON file and its header (machine and commit, where recorded).

    Raises ``BadResults`` naming the file, the benchmark and the field for anything this cannot report.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise BadResults(f"{path}: cannot read it: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadResults(f"{path}: not JSON ({e}); expected the file `pytest --benchmark-json=PATH` writes") from e
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise BadResults(f"{path}: no top-level 'benchmarks' list (found {found}); not a pytest-benchmark JSON")
    if not data["benchmarks"]:
        raise BadResults(f"{path}: its 'benchmarks' list is empty: nothing to report")
    benchmarks = []
    for i, entry in enumerate(data["benchmarks"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise BadResults(f"{path}: benchmark #{i} has no name (expected a string under 'name')")
        stats = entry.get("stats")
        benchmarks.append(
            Benchmark(
                source=path,
                name=name,
                group=str(entry["group"]) if entry.get("group") is not None else NO_GROUP,
                median=_number(path, name, stats, "median", positive=True),
                iqr=_number(path, name, stats, "iqr", positive=False),
                rounds=int(_number(path, name, stats, "rounds", positive=True)),
            )
        )
    header = {
        section: {key: value for key in keys if (value := _field(data.get(section) or {}, key)) not in (None, "")}
        for section, keys in HEADER_FIELDS.items()
    }
    return benchmarks, {"datetime": data.get("datetime"), **header}


def unit(seconds: list[float]) -> tuple[str, float]:
    """The largest unit in which the smallest of ``seconds`` is at least 1 (ns for anything faster)."""
    smallest = min(seconds)
    return next(((name, scale) for name, scale in UNITS if smallest >= scale), UNITS[-1])


def by_group(benchmarks: list[Benchmark]) -> dict[str, list[Benchmark]]:
    """The benchmarks of each group, groups and benchmarks in the order first met."""
    groups: dict[str, list[Benchmark]] = {}
    for bench in benchmarks:
        groups.setdefault(bench.group, []).append(bench)
    return groups


def label(bench: Benchmark, several_files: bool) -> str:
    """A benchmark's name, after its file's name when several files are reported together."""
    return f"{bench.source}: {bench.name}" if several_files else bench.name


def baselines(groups: dict[str, list[Benchmark]], several_files: bool, contains: str | None) -> dict[str, Benchmark]:
    """Each group's baseline: its one benchmark whose label contains ``contains``, else its fastest.

    Raises ``BadResults`` if ``contains`` matches no benchmark at all (a misspelling), or several in one group.
    """
    chosen = {}
    for group, members in groups.items():
        matches = [b for b in members if contains is not None and contains in label(b, several_files)]
        if len(matches) > 1:
            names = ", ".join(label(b, several_files) for b in matches)
            raise BadResults(f"--baseline {contains!r} matches {len(matches)} benchmarks in group {group!r}: {names}")
        chosen[group] = matches[0] if matches else min(members, key=lambda b: b.median)
    if contains is not None and not any(contains in label(b, several_files) for b in chosen.values()):
        raise BadResults(f"--baseline {contains!r}: no benchmark's name contains it")
    return chosen


def _header_lines(headers: dict[str, dict]) -> list[str]:
    lines = []
    for path, header in headers.items():
        facts = [
            f"{key} {str(value)[:12] if key == 'id' else value}"
            for section in HEADER_FIELDS
            for key, value in header[section].items()
        ]
        when = f" ({header['datetime']})" if header.get("datetime") else ""
        lines.append(f"- `{path}`{when}" + (f": {', '.join(facts)}" if facts else ""))
    return lines


def markdown(benchmarks: list[Benchmark], headers: dict[str, dict], baseline: str | None = None) -> str:
    """The report: the files' machine and commit (``headers``, by path, from ``load``), then a table per group."""
    several_files = len({b.source for b in benchmarks}) > 1
    groups = by_group(benchmarks)
    base = baselines(groups, several_files, baseline)
    lines = _header_lines(headers)
    for group, members in groups.items():
        name, scale = unit([b.median for b in members])
        lines += [
            *([""] if lines else []),
            f"## {group}",
            "",
            f"baseline: `{label(base[group], several_files)}`",
            "",
            f"| benchmark | median ({name}) | IQR ({name}) | rounds | × baseline |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {label(b, several_files)} | {b.median / scale:.4g} | {b.iqr / scale:.4g} | {b.rounds} | "
            f"{b.median / base[group].median:.2f} |"
            for b in members
        ]
    return "\n".join(lines) + "\n"


def figure(benchmarks: list[Benchmark]) -> Figure:
    """One panel per group: horizontal bars of the medians, in the group's unit (matplotlib, no display)."""
    from matplotlib.figure import Figure

    several_files = len({b.source for b in benchmarks}) > 1
    groups = by_group(benchmarks)
    heights = [1.2 + 0.3 * len(members) for members in groups.values()]
    fig = Figure(figsize=(9, sum(heights)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (group, members) in zip(axes, groups.items()):
        name, scale = unit([b.median for b in members])
        ax.barh([label(b, several_files) for b in members], [b.median / scale for b in members])
        ax.invert_yaxis()  # the table's order, top to bottom
        ax.set(title=group, xlabel=f"median time ({name})", ylabel="benchmark")
    return fig
