"""The report's figure: the scaling sweep, and each kind of ratio with its target lines.

It takes plain data (the sweep's series and the list of ratios from ``benchmarks.analysis``), so it
depends on the analysis module only, never on the report.
"""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
from matplotlib import ticker  # noqa: E402

from benchmarks.analysis import KINDS, CaseKey, Ratio  # noqa: E402


def _case_label(case: CaseKey) -> str:
    job, cell, shape, device = case
    return f"{job} {cell} {device}\n{shape}"


def _scaling(ax: plt.Axes, series: dict[str, dict[int, float]]) -> None:
    """Cost per stream-step against the number of streams, one line per implementation (log-log)."""
    for name, values in series.items():
        streams = sorted(values)
        ax.plot(streams, [values[s] for s in streams], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="streams S (B=1, T=16)", ylabel="µs per stream-step")
    ax.set_title("Scaling sweep: cost per stream-step (lower is better)", fontsize=9)
    if series:
        ax.legend(fontsize=6)


def save_rows(panels: dict[str, dict[str, dict[int, float]]], note: str, path: pathlib.Path) -> None:
    """The row sweep (``benchmarks.row_blocks``): per job a panel of cost per stream-step against rows, log-log.
    Series are named ``"<cell> H=<H> <arm>"``: one colour per cell and H, one line style per arm (solid: the
    multi-state layer with row blocks; dashed: the layer in one call; dotted: the raw call)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    styles = {"multistate": "-o", "one-call": "--x", "raw": ":+"}
    for ax, (job, series) in zip(axes[0], panels.items()):
        colors: dict[str, str] = {}
        for name, values in series.items():
            group, arm = name.rsplit(" ", 1)
            color = colors.setdefault(group, f"C{len(colors)}")
            rows = sorted(values)
            ax.plot(rows, [values[r] for r in rows], styles[arm], color=color, label=name, markersize=4)
        ax.set(xscale="log", yscale="log", xlabel="rows (B x streams), T=16, F=32", ylabel="µs per stream-step")
        ticks = sorted({r for values in series.values() for r in values})
        ax.set_xticks(ticks, [f"{r:,}" for r in ticks], fontsize=7)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
        titles = {"rows": "forward", "rows-train": "forward + backward + SGD", "flatness": "forward, rows interleaved"}
        ax.set_title(titles.get(job, job), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _minor_label(value: float, _position: int) -> str:
    """Label the minor log ticks at 2 and 5 times a power of ten only, so they stay readable."""
    return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""


def _bars(ax: plt.Axes, kind: str, found: list[Ratio], colors: dict[str, str]) -> None:
    """Grouped bars of one kind of ratio on a log scale: one group per case, one bar per series."""
    mine = [r for r in found if r.kind == kind]
    cases = list(dict.fromkeys(r.case for r in mine))
    series = [name for name in colors if any(r.series == name for r in mine)]
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        points = [(cases.index(r.case) + i * width, r.value) for r in mine if r.series == name]
        ax.bar([x for x, _ in points], [y for _, y in points], width, label=name, color=colors[name])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
    devices = {case[3] for case in cases}
    for target in KINDS[kind].targets:
        if target.device is None or target.device in devices:
            ax.axhline(target.bound, color="black", linestyle="--", linewidth=1)
            text = f"target {target.label}"
            ax.annotate(text, (0, target.bound), xytext=(2, 3), textcoords="offset points", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], [_case_label(c) for c in cases], rotation=90)
    ax.tick_params(axis="x", labelsize=6)
    ax.set(xlabel="case: job, cell, device, shape", ylabel="ratio (log scale)")
    direction = "lower is better" if KINDS[kind].lower_is_better else "higher is better"
    ax.set_title(f"{KINDS[kind].title} ({direction})", fontsize=9)
    if series:
        ax.legend(fontsize=6)


def save(scaling: dict[str, dict[int, float]], found: list[Ratio], path: pathlib.Path) -> None:
    """Write ``figure(scaling, found)`` to ``path`` as PNG."""
    fig = figure(scaling, found)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(scaling: dict[str, dict[int, float]], found: list[Ratio]) -> plt.Figure:
    """The scaling sweep, then one panel per kind of ratio (``KINDS``), every panel's axes labelled.

    ``scaling``: µs per stream-step by implementation label and stream count; ``found``: the measured ratios.
    """
    panels = 1 + len(KINDS)
    columns = 3
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(8 * columns, 6 * rows), squeeze=False)
    _scaling(axes.flat[0], scaling)
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r.series for r in found))}
    for ax, kind in zip(axes.flat[1:], KINDS):
        _bars(ax, kind, found, colors)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
