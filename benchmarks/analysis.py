"""The data behind the report and the plot: results loaded from pytest-benchmark JSON, targets, and ratios.

``report`` (markdown) and ``plot`` (figure) both read from here and never from each other. Each target
is defined once, with its bound and where it applies; table headers and plot lines are rendered from it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from benchmarks import cases
from benchmarks.cases import Impl

RATIO_JOBS = ("forward", "train", "stream-1", "stream-16")
CaseKey = tuple[str, str, str, str]  # job, cell, shape name, device
DISTURBED_CORES = 0.2  # a timing during which other processes kept more CPU cores busy than this is flagged


@dataclasses.dataclass(frozen=True)
class Target:
    """A bound a ratio should meet: ``op`` is ``"<="`` or ``">="``; ``where`` says where it applies.

    ``device``: the only device it applies to (None: every device).
    """

    op: str
    bound: float
    where: str = ""
    device: str | None = None

    def met(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        """``≤ 1.05``: the bound alone, as printed next to a measured ratio."""
        return f"{'≤' if self.op == '<=' else '≥'} {self.bound:g}"

    @property
    def label(self) -> str:
        """``≥ 1.8 at S=8 on CPU``: the bound and where it applies, for headers and plot lines."""
        return f"{self} {self.where}".strip()


OVERHEAD = Target("<=", 1.05)  # multi-state / raw fused, torch and each Keras backend against its own raw layer
LOOP_CPU_S8 = Target(">=", 1.8, "at S=8 on CPU", "cpu")  # per-stream loop / multi-state
LOOP_GPU = Target(">=", 5.0, "on GPU", "gpu")
KERAS_VS_TORCH_CPU = Target("<=", 1.25, "on CPU", "cpu")  # Keras multi-state / torch multi-state
RESETS = Target("<=", 1.5)  # multi-state with resets or lengths / the same without


def loop_target(streams: int, device: str) -> Target | None:
    """The per-stream-loop speedup target: ≥ 1.8 at S=8 on CPU, ≥ 5 on GPU, none elsewhere."""
    if device == "gpu":
        return LOOP_GPU
    return LOOP_CPU_S8 if streams == 8 else None


def keras_target(device: str) -> Target | None:
    """The Keras/torch multi-state target, set for CPU only."""
    return KERAS_VS_TORCH_CPU if device == "cpu" else None


def header(name: str, *targets: Target) -> str:
    """A table column header: ``multi/fused (≤ 1.05)``, the ratio's name and the targets that apply to it."""
    return f"{name} ({'; '.join(t.label for t in targets)})" if targets else name


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of ratio: its title, the targets it is held to, and which way is better."""

    title: str
    targets: tuple[Target, ...] = ()
    lower_is_better: bool = True


KINDS = {
    "overhead": Kind("multi-state / raw fused", (OVERHEAD,)),
    "loop": Kind("per-stream / multi-state", (LOOP_CPU_S8, LOOP_GPU), lower_is_better=False),
    "keras-vs-torch": Kind("Keras / torch multi-state", (KERAS_VS_TORCH_CPU,)),
    "resets": Kind("multi-state with resets or lengths / without", (RESETS,)),
    "step-loop": Kind("per-step loop / multi-state, resets or lengths", lower_is_better=False),
}


@dataclasses.dataclass(frozen=True)
class Result:
    """One benchmark's median time (seconds) and what it measured (from its ``extra_info``).

    ``impl`` carries the Keras backend of a Keras result (``Impl.on``).
    """

    impl: Impl
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
    """All results of several runs, looked up by implementation (with its Keras backend) and case."""

    by_key: dict[tuple[Impl, CaseKey], Result]
    machines: list[tuple[str, dict]]

    def get(self, impl: Impl, case: CaseKey, backend: str = "") -> Result | None:
        """The result of ``impl`` on ``case``; ``backend`` picks the Keras backend of a Keras implementation."""
        return self.by_key.get((impl.on(backend), case))

    def seconds(self, impl: Impl, case: CaseKey, backend: str = "") -> float | None:
        result = self.get(impl, case, backend)
        return None if result is None else result.median

    def streams(self, case: CaseKey) -> int:
        return next(r.S for r in self.by_key.values() if r.case == case)

    @property
    def backends(self) -> list[str]:
        """The Keras backends that have results."""
        return sorted({r.impl.backend for r in self.by_key.values() if r.impl.is_keras})

    def cases(self, jobs: Sequence[str]) -> list[CaseKey]:
        """The distinct cases of ``jobs``: by job, device, cell, then problem size."""
        order = {job: i for i, job in enumerate(jobs)}
        found = {r.case: r for r in self.by_key.values() if r.job in order}
        return sorted(found, key=lambda c: (order[c[0]], c[3], c[1], found[c].flops))


NEEDED = ("impl", "cell", "job", "shape", "device", "B", "S", "T", "flops")  # each benchmark's extra_info


class ResultsError(ValueError):
    """A results file the report cannot use: not pytest-benchmark JSON, or no benchmark in it says what it measured."""


def _benchmarks(path: pathlib.Path) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON file that carry the ``extra_info`` the report reads (``NEEDED``);
    ``ResultsError`` naming what is missing when none does, or one names an implementation not in ``IMPLS``."""
    try:
        data = json.loads(path.read_text())
        benches = data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResultsError(f"{path}: not a pytest-benchmark JSON file ({type(e).__name__}: {e})") from e
    # a benchmark without "impl" is not a case of the plan (e.g. test_export_stream.py, reported in docs/export.md)
    ours = [b for b in benches if "impl" in b.get("extra_info", {})]
    if not ours:
        raise ResultsError(
            f"{path}: none of its {len(benches)} benchmarks records the extra_info this report reads "
            f"({', '.join(NEEDED)}; see benchmarks/conftest.py): nothing to report"
        )
    for bench in ours:
        info = bench["extra_info"]
        if missing := [n for n in NEEDED if n not in info]:
            raise ResultsError(f"{path}: benchmark {bench.get('name')!r} has no extra_info {', '.join(missing)}")
        if info["impl"] not in cases.IMPLS:
            raise ResultsError(
                f"{path}: benchmark {bench.get('name')!r} names implementation {info['impl']!r}; "
                f"expected one of {sorted(cases.IMPLS)}"
            )
    return ours


def load(paths: Sequence[pathlib.Path]) -> Results:
    """Merge pytest-benchmark JSON files; a later file's result replaces an earlier one of the same key.
    ``ResultsError`` where a file holds nothing the report can read (``_benchmarks``)."""
    by_key, machines = {}, []
    names = [f.name for f in dataclasses.fields(Result) if f.name not in ("impl", "median")]
    for path in paths:
        ours = _benchmarks(path)
        data = json.loads(path.read_text())
        disturbed = 0
        for bench in ours:
            info = bench["extra_info"]
            impl = cases.IMPLS[info["impl"]].on(info.get("keras_backend"))
            result = Result(impl=impl, median=bench["stats"]["median"], **{n: info.get(n) for n in names})
            by_key[(impl, result.case)] = result
            disturbed += result.disturbed
        extra = {"datetime": data.get("datetime"), "disturbed": f"{disturbed} of {len(data['benchmarks'])}"}
        machines.append((path.name, data.get("machine_info", {}) | extra))
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


def series_name(backend: str) -> str:
    """``torch`` for torch results (``backend`` empty), ``keras <backend>`` for a Keras backend's."""
    return f"keras {backend}" if backend else "torch"


def ratios(results: Results) -> list[Ratio]:
    """Every ratio the report shows, computed once for the tables, the summary and the plot."""
    found = []

    def add(kind: str, series: str, case: CaseKey, value: float | None, target: Target | None = None) -> None:
        if value is not None:
            found.append(Ratio(kind, series, case, value, target))

    for case in results.cases(RATIO_JOBS):
        multi = results.seconds(cases.TORCH_MULTISTATE, case)
        add("overhead", "torch", case, ratio(multi, results.seconds(cases.TORCH_FUSED, case)), OVERHEAD)
        target = loop_target(results.streams(case), case[3])
        add("loop", "torch", case, ratio(results.seconds(cases.TORCH_LOOP, case), multi), target)
        for backend in results.backends:
            series = series_name(backend)
            keras_multi = results.seconds(cases.KERAS_MULTISTATE, case, backend)
            raw = results.seconds(cases.KERAS_FUSED, case, backend)
            add("overhead", series, case, ratio(keras_multi, raw), OVERHEAD)
            per_stream = results.seconds(cases.KERAS_PER_STREAM, case, backend)
            add("loop", series, case, ratio(per_stream, keras_multi))
            add("keras-vs-torch", series, case, ratio(keras_multi, multi), keras_target(case[3]))
    for case in results.cases(cases.EPISODE_JOBS):
        for backend in [""] + results.backends:
            masked, plain, loop = episode_times(results, case, backend)
            add("resets", series_name(backend), case, ratio(masked, plain), RESETS)
            add("step-loop", series_name(backend), case, ratio(loop, masked))
    return found


def episode_times(results: Results, case: CaseKey, backend: str) -> tuple[float | None, float | None, float | None]:
    """Seconds of an episode case: multi-state with resets/lengths, without, and the per-step loop (torch only)."""
    if not backend:
        multi, plain, loop = cases.TORCH_MULTISTATE, cases.TORCH_MULTISTATE_PLAIN, cases.TORCH_STEP_LOOP
        return tuple(results.seconds(impl, case) for impl in (multi, plain, loop))  # type: ignore[return-value]
    multi, plain = cases.KERAS_MULTISTATE, cases.KERAS_MULTISTATE_PLAIN
    return results.seconds(multi, case, backend), results.seconds(plain, case, backend), None


def implementations(results: Results) -> list[Impl]:
    """The implementations of the throughput table and scaling sweep in report order: torch, then each backend's."""
    torch_impls = [cases.TORCH_MULTISTATE, cases.TORCH_FUSED, cases.TORCH_LOOP]
    keras_impls = [cases.KERAS_MULTISTATE, cases.KERAS_FUSED, cases.KERAS_PER_STREAM]
    return torch_impls + [impl.on(b) for b in results.backends for impl in keras_impls]


def scaling_series(results: Results) -> dict[str, dict[int, float]]:
    """Microseconds per stream-step, by implementation label and stream count."""
    series: dict[str, dict[int, float]] = {impl.label: {} for impl in implementations(results)}
    for result in results.by_key.values():
        if result.job == "scaling":
            per = result.median / (result.B * result.S * result.T) * 1e6
            series.setdefault(result.impl.label, {})[result.S] = per
    return {name: values for name, values in series.items() if values}
