"""Turn pytest-benchmark JSON files (one per Keras backend run) into a markdown report and a plot.

Usage::

    python -m benchmarks.report results/cpu-tensorflow.json results/cpu-jax.json --out results --name cpu-report

Every ratio with a target is printed next to it and marked met (✓) or missed (✗); nothing fails on speed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Iterable, Sequence

from benchmarks import cases
from benchmarks.analysis import (
    DISTURBED_CORES,
    KERAS_VS_TORCH_CPU,
    KINDS,
    LOOP_CPU_S8,
    LOOP_GPU,
    OVERHEAD,
    RATIO_JOBS,
    RESETS,
    Ratio,
    Result,
    Results,
    ResultsError,
    episode_times,
    header,
    implementations,
    load,
    ratio,
    ratios,
    scaling_series,
    series_name,
)


def fmt_ratio(found: Ratio | None) -> str:
    """``1.03 ✓ (≤ 1.05)``: the measured ratio, whether it meets its target, and the target."""
    if found is None:
        return "—"
    if found.target is None:
        return f"{found.value:.2f}"
    return f"{found.value:.2f} {'✓' if found.target.met(found.value) else '✗'} ({found.target})"


def fmt_ms(result: Result | None) -> str:
    """The median in ms, with ``*`` where other processes disturbed the timing."""
    if result is None:
        return "—"
    return f"{result.median * 1e3:.3g}" + ("*" if result.disturbed else "")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def time_rows(results: Results, index: dict[tuple, Ratio], backend: str) -> list[list[str]]:
    """Times and ratios of one framework: torch (``backend`` empty) or one Keras backend."""
    if backend:
        impls = (cases.KERAS_MULTISTATE, cases.KERAS_FUSED, cases.KERAS_PER_STREAM)
        kinds: tuple[str, ...] = ("overhead", "loop", "keras-vs-torch")
    else:
        impls, kinds = (cases.TORCH_MULTISTATE, cases.TORCH_FUSED, cases.TORCH_LOOP), ("overhead", "loop")
    series = series_name(backend)
    rows = []
    for case in results.cases(RATIO_JOBS):
        times = [results.get(impl, case, backend) for impl in impls]
        if times[0] is None:
            continue
        rows.append(
            list(case)
            + ([backend, times[0].kernel or "?"] if backend else [])
            + [fmt_ms(t) for t in times]
            + [fmt_ratio(index.get((kind, series, case))) for kind in kinds]
        )
    return rows


def episode_rows(results: Results, index: dict[tuple, Ratio]) -> list[list[str]]:
    """Times and ratios of the episode jobs (per-step resets, lengths): torch, then each Keras backend."""
    rows = []
    for case in results.cases(cases.EPISODE_JOBS):
        for backend in [""] + results.backends:
            times = episode_times(results, case, backend)
            if times[0] is None and times[1] is None:
                continue
            series = series_name(backend)
            rows.append(
                list(case)
                + [series]
                + ["—" if t is None else f"{t * 1e3:.3g}" for t in times]
                + [fmt_ratio(index.get((kind, series, case))) for kind in ("resets", "step-loop")]
            )
    return rows


def throughput_rows(results: Results) -> list[list[str]]:
    rows = []
    for case in results.cases(("forward",)):
        gemm = results.get(cases.TORCH_GEMM, ("gemm",) + case[1:])
        gemm_rate = None if gemm is None else gemm.flops / gemm.median / 1e9
        for impl in implementations(results):
            result = results.get(impl, case, impl.backend)
            if result is None:
                continue
            rate = result.flops / result.median / 1e9
            share = "—" if gemm_rate is None else f"{rate / gemm_rate:.0%}"
            gemm_text = "—" if gemm_rate is None else f"{gemm_rate:.1f}"
            rows.append(list(case[1:]) + [impl.label, f"{rate:.1f}", gemm_text, share])
    return rows


def scaling_table(results: Results) -> str:
    series = scaling_series(results)
    labels = list(series)
    rows = []
    for s in sorted({s for values in series.values() for s in values}):
        multi, fused, loop = (
            series.get(impl.label, {}).get(s) for impl in (cases.TORCH_MULTISTATE, cases.TORCH_FUSED, cases.TORCH_LOOP)
        )
        cells = [f"{series[name][s]:.3g}" if s in series[name] else "—" for name in labels]
        rows.append([str(s)] + cells + [f"{r:.2f}" if r else "—" for r in (ratio(multi, fused), ratio(loop, multi))])
    return table(["S"] + labels + ["torch multi/fused", "torch loop/multi"], rows)


def summary_table(found: list[Ratio]) -> str:
    """Each target over all the cases it applies to: range of measured values and how many meet it."""
    groups: dict[tuple[str, str], list[Ratio]] = {}
    for r in found:
        if r.target is not None:
            groups.setdefault((r.kind, r.series), []).append(r)
    rows = []
    kinds = list(KINDS)
    for (kind, series), members in sorted(
        groups.items(), key=lambda g: (kinds.index(g[0][0]), g[0][1] != "torch", g[0])
    ):
        values = [r.value for r in members]
        targets = ", ".join(sorted({str(r.target) for r in members}))
        met = sum(r.target.met(r.value) for r in members)
        rows.append([f"{KINDS[kind].title}: {series}", targets, f"{min(values):.2f} – {max(values):.2f}"])
        rows[-1].append(f"{met} of {len(members)}")
    return table(["ratio", "target", "measured (min – max)", "cases meeting it"], rows)


def machine_rows(results: Results) -> list[list[str]]:
    rows = []
    for name, info in results.machines:
        libs, cpu = info.get("libraries", {}), info.get("cpu", {})
        load = " ".join(f"{x:.1f}" for x in info.get("loadavg") or [])
        rows.append(
            [name, info.get("keras_backend") or "—", info.get("gpu") or info.get("keras_device") or "cpu"]
            + [f"{cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores", info.get("python_version", "?")]
            + [libs.get(k) or "—" for k in ("torch", "keras", "tensorflow", "jax", "numpy")]
            + [str(info.get("torch_threads", "?")), load, info["disturbed"], (info.get("datetime") or "?")[:19]]
        )
    return rows


NOTES = f"""\
Times are medians in ms; `*` marks a time during which other processes kept more than
{DISTURBED_CORES} CPU cores busy on average. ✓/✗: whether a ratio meets the target printed next to it
(measured here, never asserted).

- *multi-state*: the `models_torch` / `models_keras` layer on `(B, S, t, F)`; *raw fused* (Keras: *raw*):
  the plain layer on the already-folded `(B*S, t, F)`, the lower bound; *loop*: a hand-written loop over
  streams calling one shared `nn.LSTM` with a list of states; Keras *per-stream*: one shared plain Keras
  layer called on each of the S slices in one functional model.
- PyTorch inference runs under `no_grad`; training is forward, MSE loss, backward and an SGD step.
  Keras inference runs through `predict_on_batch`, training through `train_on_batch` (SGD, MSE).
- The Keras multi-state layer may take a backend fast path (`models_keras.fast_paths`: one fused torch
  RNN call on the torch backend, XLA inference on TensorFlow), named in the *kernel* column; Keras raw and
  per-stream models run plain Keras layers, so Keras multi/raw can fall well below 1. They are stateless,
  so their streaming times are slightly optimistic.
- Training FLOPs are estimated as {cases.TRAIN_FLOP_FACTOR}x the forward FLOPs. Fused kernels compute the
  input projection of all steps in one large GEMM, so they can exceed the per-step GEMM's rate.
- The scaling sweep runs the per-stream loop only up to S = {cases.PER_STREAM_LOOP_CAP_CPU} on CPU, to bound
  the run time.
- Episode jobs (forward): `resets-1pct` / `resets-10pct` zero a stream's state before a random 1% / 10%
  of the steps (seeded), `lengths` gives each stream a length uniform in [T/2, T]. *with* passes them to
  the multi-state layer, *without* is the same layer called without them (same run); the *per-step
  loop* calls the inner torch module once per step on the folded batch and multiplies the state by
  (1 - done), as SB3 / CleanRL do."""


def render(results: Results, plot_name: str | None) -> str:
    """The whole markdown report."""
    found = ratios(results)
    index = {(r.kind, r.series, r.case): r for r in found}
    case_headers = ["job", "cell", "shape", "device"]
    parts = [
        "# multistate-rnn benchmarks",
        NOTES,
        "## Targets at a glance",
        summary_table(found),
        "## PyTorch: multi-state vs the raw fused bound and the per-stream loop",
        table(
            case_headers
            + ["multi-state", "raw fused", "loop"]
            + [header("multi/fused", OVERHEAD), header("loop/multi", LOOP_CPU_S8, LOOP_GPU)],
            time_rows(results, index, ""),
        ),
        "## Keras, per backend: multi-state vs its own raw layer, the per-stream graph, and torch",
        table(
            case_headers
            + ["backend", "multi-state kernel", "multi-state", "raw", "per-stream"]
            + [
                header("multi/raw", OVERHEAD),
                header("per-stream/multi"),
                header("Keras/torch multi", KERAS_VS_TORCH_CPU),
            ],
            [row for backend in results.backends for row in time_rows(results, index, backend)],
        ),
        "## Per-step resets and variable lengths: multi-state with them, without them, and the per-step loop",
        table(
            case_headers
            + ["framework", "with", "without", "per-step loop"]
            + [header("with/without", RESETS), header("per-step loop/with")],
            episode_rows(results, index),
        ),
        "## Achieved throughput, forward: GFLOP/s and fraction of a GEMM of the per-step shape",
        table(
            ["cell", "shape", "device", "implementation", "GFLOP/s", "GEMM GFLOP/s", "of GEMM"],
            throughput_rows(results),
        ),
        "## Scaling sweep: µs per stream-step at B=1, T=16 (forward)",
        scaling_table(results),
    ]
    if plot_name:
        parts.append(f"![scaling sweep and ratios]({plot_name})")
    parts += [
        "## Machines",
        table(
            ["run", "keras backend", "device", "CPU", "python", "torch", "keras", "tensorflow", "jax", "numpy"]
            + ["torch threads", "load avg 1/5/15 min (at end)", "disturbed timings", "date"],
            machine_rows(results),
        ),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=pathlib.Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the report and the plot")
    parser.add_argument("--name", default="report", help="file name stem of the outputs (NAME.md, NAME.png)")
    args = parser.parse_args(argv)

    from benchmarks import plot  # here, so that rendering the tables needs no matplotlib

    try:
        results = load(args.results)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"{args.name}.png"
    plot.save(scaling_series(results), ratios(results), png)
    markdown = args.out / f"{args.name}.md"
    markdown.write_text(render(results, png.name))
    print(f"wrote {markdown} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
