"""Turn pytest-benchmark JSON files (one per Keras backend run) into a markdown report and a plot.

Usage::

    python -m benchmarks.report results/cpu-tensorflow.json results/cpu-jax.json --out results --name cpu-report

Every ratio with a target is printed next to it and marked met (✓) or missed (✗); nothing fails on speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Iterable, Sequence

from benchmarks import cases

TORCH = ""  # the backend key of torch results, which do not depend on the Keras backend
RATIO_JOBS = ("forward", "train", "stream-1", "stream-16")
CaseKey = tuple[str, str, str, str]  # job, cell, shape name, device
DISTURBED_CORES = 0.2  # a timing during which other processes kept more CPU cores busy than this is flagged


@dataclasses.dataclass(frozen=True)
class Target:
    """A bound a ratio should meet: ``op`` is ``"<="`` or ``">="``."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '≥'} {self.bound:g}"


OVERHEAD = Target("<=", 1.05)  # multi-state / raw fused, torch and each Keras backend against its own raw layer
LOOP_CPU_S8, LOOP_GPU = Target(">=", 1.8), Target(">=", 5.0)  # per-stream loop / multi-state
KERAS_VS_TORCH_CPU = Target("<=", 1.25)  # Keras multi-state / torch multi-state


def loop_target(streams: int, device: str) -> Target | None:
    """The per-stream-loop speedup target: ≥ 1.8 at S=8 on CPU, ≥ 5 on GPU, none elsewhere."""
    if device == "gpu":
        return LOOP_GPU
    return LOOP_CPU_S8 if streams == 8 else None


def keras_target(device: str) -> Target | None:
    """The Keras/torch multi-state target, set for CPU only."""
    return KERAS_VS_TORCH_CPU if device == "cpu" else None


@dataclasses.dataclass(frozen=True)
class Result:
    """One benchmark's median time (seconds) and what it measured (from its ``extra_info``)."""

    impl: str
    backend: str
    cell: str
    job: str
    shape: str
    device: str
    B: int
    S: int
    T: int
    median: float
    flops: int
    foreign_cpu_cores: float | None = None
    kernel: str | None = None  # Keras: the multi-state layer's fast path, or "keras"

    @property
    def case(self) -> CaseKey:
        return self.job, self.cell, self.shape, self.device

    @property
    def disturbed(self) -> bool:
        return (self.foreign_cpu_cores or 0.0) > DISTURBED_CORES


@dataclasses.dataclass
class Results:
    """All results of several runs, looked up by implementation, Keras backend and case."""

    by_key: dict[tuple, Result]
    machines: list[tuple[str, dict]]

    def get(self, impl: str, case: CaseKey, backend: str = TORCH) -> Result | None:
        return self.by_key.get((impl, backend if impl.startswith("keras") else TORCH) + case)

    def seconds(self, impl: str, case: CaseKey, backend: str = TORCH) -> float | None:
        result = self.get(impl, case, backend)
        return None if result is None else result.median

    def streams(self, case: CaseKey) -> int:
        return next(r.S for r in self.by_key.values() if r.case == case)

    @property
    def backends(self) -> list[str]:
        return sorted({r.backend for r in self.by_key.values() if r.impl.startswith("keras")})

    def cases(self, jobs: Sequence[str]) -> list[CaseKey]:
        """The distinct cases of ``jobs``: by job, device, cell, then problem size."""
        order = {job: i for i, job in enumerate(jobs)}
        found = {r.case: r for r in self.by_key.values() if r.job in order}
        return sorted(found, key=lambda c: (order[c[0]], c[3], c[1], found[c].flops))


def load(paths: Sequence[pathlib.Path]) -> Results:
    """Merge pytest-benchmark JSON files; a later file's result replaces an earlier one of the same key."""
    by_key, machines = {}, []
    for path in paths:
        data = json.loads(path.read_text())
        disturbed = 0
        for bench in data["benchmarks"]:
            info = bench["extra_info"]
            backend = info["keras_backend"] if info["impl"].startswith("keras") else TORCH
            fields = {f.name: info.get(f.name) for f in dataclasses.fields(Result)}
            result = Result(**fields | {"backend": backend, "median": bench["stats"]["median"]})
            by_key[(result.impl, backend) + result.case] = result
            disturbed += result.disturbed
        extra = {"datetime": data.get("datetime"), "disturbed": f"{disturbed} of {len(data['benchmarks'])}"}
        machines.append((path.name, data["machine_info"] | extra))
    return Results(by_key, machines)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


@dataclasses.dataclass(frozen=True)
class Ratio:
    """One measured ratio: ``kind`` is a key of ``KINDS``, ``series`` names whose ratio it is."""

    kind: str
    series: str
    case: CaseKey
    value: float
    target: Target | None


KINDS = {
    "overhead": "multi-state / raw fused",
    "loop": "per-stream / multi-state",
    "keras-vs-torch": "Keras / torch multi-state",
}


def ratios(results: Results) -> list[Ratio]:
    """Every ratio the report shows, computed once for the tables, the summary and the plot."""
    found = []

    def add(kind: str, series: str, case: CaseKey, value: float | None, target: Target | None = None) -> None:
        if value is not None:
            found.append(Ratio(kind, series, case, value, target))

    for case in results.cases(RATIO_JOBS):
        multi = results.seconds("torch-multistate", case)
        add("overhead", "torch", case, ratio(multi, results.seconds("torch-fused", case)), OVERHEAD)
        target = loop_target(results.streams(case), case[3])
        add("loop", "torch", case, ratio(results.seconds("torch-loop", case), multi), target)
        for backend in results.backends:
            keras_multi = results.seconds("keras-multistate", case, backend)
            raw = results.seconds("keras-fused", case, backend)
            add("overhead", f"keras {backend}", case, ratio(keras_multi, raw), OVERHEAD)
            per_stream = results.seconds("keras-per-stream", case, backend)
            add("loop", f"keras {backend}", case, ratio(per_stream, keras_multi))
            add("keras-vs-torch", f"keras {backend}", case, ratio(keras_multi, multi), keras_target(case[3]))
    return found


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


def label(impl: str, backend: str) -> str:
    return impl if backend == TORCH else f"{impl} ({backend})"


def implementations(results: Results) -> list[tuple[str, str]]:
    """(impl, backend) pairs in report order: the torch ones, then each Keras backend's."""
    torch_impls = [(f"torch-{v}", TORCH) for v in ("multistate", "fused", "loop")]
    keras_impls = [(f"keras-{v}", b) for b in results.backends for v in ("multistate", "fused", "per-stream")]
    return torch_impls + keras_impls


def time_rows(results: Results, index: dict[tuple, Ratio], backend: str) -> list[list[str]]:
    """Times and ratios of one framework: torch (``backend`` TORCH) or one Keras backend."""
    framework, series = ("torch", "torch") if backend == TORCH else ("keras", f"keras {backend}")
    variants = ("multistate", "fused", "loop" if backend == TORCH else "per-stream")
    rows = []
    for case in results.cases(RATIO_JOBS):
        times = [results.get(f"{framework}-{v}", case, backend) for v in variants]
        if times[0] is None:
            continue
        kinds = ("overhead", "loop") + (() if backend == TORCH else ("keras-vs-torch",))
        rows.append(
            list(case)
            + ([] if backend == TORCH else [backend, times[0].kernel or "?"])
            + [fmt_ms(t) for t in times]
            + [fmt_ratio(index.get((kind, series, case))) for kind in kinds]
        )
    return rows


def throughput_rows(results: Results) -> list[list[str]]:
    rows = []
    for case in results.cases(("forward",)):
        gemm = results.get("torch-gemm", ("gemm",) + case[1:])
        gemm_rate = None if gemm is None else gemm.flops / gemm.median / 1e9
        for impl, backend in implementations(results):
            result = results.get(impl, case, backend)
            if result is None:
                continue
            rate = result.flops / result.median / 1e9
            share = "—" if gemm_rate is None else f"{rate / gemm_rate:.0%}"
            gemm_text = "—" if gemm_rate is None else f"{gemm_rate:.1f}"
            rows.append(list(case[1:]) + [label(impl, backend), f"{rate:.1f}", gemm_text, share])
    return rows


def scaling_series(results: Results) -> dict[str, dict[int, float]]:
    """Microseconds per stream-step, by implementation label and stream count."""
    series: dict[str, dict[int, float]] = {label(impl, backend): {} for impl, backend in implementations(results)}
    for result in results.by_key.values():
        if result.job == "scaling":
            per = result.median / (result.B * result.S * result.T) * 1e6
            series[label(result.impl, result.backend)][result.S] = per
    return {name: values for name, values in series.items() if values}


def scaling_table(results: Results) -> str:
    series = scaling_series(results)
    labels = list(series)
    rows = []
    for s in sorted({s for values in series.values() for s in values}):
        multi, fused, loop = (series.get(f"torch-{v}", {}).get(s) for v in ("multistate", "fused", "loop"))
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
        rows.append([f"{KINDS[kind]}: {series}", targets, f"{min(values):.2f} – {max(values):.2f}"])
        rows[-1].append(f"{met} of {len(members)}")
    return table(["ratio", "target", "measured (min – max)", "cases meeting it"], rows)


def machine_rows(results: Results) -> list[list[str]]:
    rows = []
    for name, info in results.machines:
        libs, cpu = info.get("libraries", {}), info.get("cpu", {})
        load = " ".join(f"{x:.1f}" for x in info.get("loadavg") or [])
        rows.append(
            [name, info.get("keras_backend", "?"), info.get("gpu") or info.get("keras_device", "?")]
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
  the run time."""


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
            + ["multi/fused (≤ 1.05)", "loop/multi (≥ 1.8 at S=8 CPU, ≥ 5 GPU)"],
            time_rows(results, index, TORCH),
        ),
        "## Keras, per backend: multi-state vs its own raw layer, the per-stream graph, and torch",
        table(
            case_headers
            + ["backend", "multi-state kernel", "multi-state", "raw", "per-stream"]
            + ["multi/raw (≤ 1.05)", "per-stream/multi", "Keras/torch multi (≤ 1.25 CPU)"],
            [row for backend in results.backends for row in time_rows(results, index, backend)],
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=pathlib.Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the report and the plot")
    parser.add_argument("--name", default="report", help="file name stem of the outputs (NAME.md, NAME.png)")
    args = parser.parse_args(argv)

    from benchmarks import plot

    results = load(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"{args.name}.png"
    plot.save(results, png)
    markdown = args.out / f"{args.name}.md"
    markdown.write_text(render(results, png.name))
    print(f"wrote {markdown} and {png}")


if __name__ == "__main__":
    main()
