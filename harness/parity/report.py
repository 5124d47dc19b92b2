"""What a parity run found: a ``ParityReport`` of ``Comparison`` rows, one per (pair, boundary, tensor, layer, stream).

A tensor that one side lacks, or that has another shape on each side, is a failing
``Comparison`` of its own (``mismatch``): it carries ``problem``, counts every element
as mismatched, and is the worst failure of its report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from harness.parity import environment
from harness.parity.precision import reduced_precision
from harness.parity.tables import COLUMNS, markdown_table, summary_cells, text_table
from harness.parity.tolerances import Tolerance


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One tensor of one stream (and, for states, one layer) at one chunk boundary, ``actual`` vs ``expected``.

    ``where`` locates the worst absolute difference: chunk, stream, step (absolute
    time index; for states, the last step before the boundary), unit, batch, and
    for states the layer of the row. A structural failure (``problem`` set: a tensor
    missing on one side, or of another shape) has ``stream`` None, ``max_abs`` inf,
    and every element counted as mismatched.
    """

    pair: str
    kind: str
    chunk: int
    tensor: str
    stream: int | None
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    tolerance: Tolerance
    where: dict[str, int]
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    @property
    def layer(self) -> int | None:
        """The layer this row covers (states only; None for outputs and structural failures)."""
        return self.where.get("layer")


def mismatch(
    *, pair: str, kind: str, chunk: int, tensor: str, tolerance: Tolerance, problem: str, size: int
) -> Comparison:
    """A failing ``Comparison`` for a tensor that cannot be compared element by element.

    Example:
        >>> from harness.parity.tolerances import Tolerance
        >>> row = mismatch(pair="b vs a", kind="cross", chunk=0, tensor="missing:h",
        ...                tolerance=Tolerance(1e-5, 0.0), problem="a has state 'h', b has none", size=24)
        >>> row.ok, row.mismatched, row.max_abs
        (False, 24, inf)
    """
    size = max(int(size), 1)
    return Comparison(
        pair, kind, chunk, tensor, None, float("inf"), float("inf"), size, size, tolerance, {"chunk": chunk}, problem
    )


def compare(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    pair: str,
    kind: str,
    chunk: int,
    tensor: str,
    tolerance: Tolerance,
    stream_axis: int,
    axis_names: Sequence[str],
    offsets: Mapping[str, int] | None = None,
    layer_axis: int | None = None,
    at: Mapping[str, int] | None = None,
) -> list[Comparison]:
    """Compare two arrays stream by stream (and layer by layer, given ``layer_axis``).

    ``axis_names`` names each axis for the location report, ``offsets`` shifts the
    reported index of an axis (e.g. a chunk's first time step) and ``at`` adds fixed
    entries to ``where``. Arrays of different shapes give one failing ``mismatch`` row.

    Example:
        >>> from harness.parity.tolerances import Tolerance
        >>> a = np.zeros((2, 1, 3, 4)); b = a.copy(); b[1, 0, 2, 3] = 1e-3
        >>> rows = compare(a, b, pair="x", kind="same", chunk=0, tensor="h", tolerance=Tolerance(1e-6, 0.0),
        ...                stream_axis=2, axis_names=("layer", "batch", "stream", "unit"), layer_axis=0)
        >>> [(r.stream, r.layer, r.ok) for r in rows]
        [(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, True), (2, 0, True), (2, 1, False)]
        >>> rows[-1].where
        {'chunk': 0, 'stream': 2, 'layer': 1, 'batch': 0, 'unit': 3}
    """
    (rows,) = compare_each(
        [Operands(chunk, actual, expected, offsets, at)],
        pair=pair,
        kind=kind,
        tensor=tensor,
        tolerance=tolerance,
        stream_axis=stream_axis,
        axis_names=axis_names,
        layer_axis=layer_axis,
    )
    return rows


@dataclasses.dataclass(frozen=True)
class Operands:
    """One boundary's share of ``compare_each``: ``actual`` vs ``expected`` at ``chunk``, with the ``offsets``
    and ``at`` of its location report (as in ``compare``)."""

    chunk: int
    actual: np.ndarray
    expected: np.ndarray
    offsets: Mapping[str, int] | None = None
    at: Mapping[str, int] | None = None


STACKED_ELEMENTS = 1 << 22
"""The most elements ``compare_each`` reduces in one go (it bounds the float64 temporaries)."""


def compare_each(
    items: Sequence[Operands],
    *,
    pair: str,
    kind: str,
    tensor: str,
    tolerance: Tolerance,
    stream_axis: int,
    axis_names: Sequence[str],
    layer_axis: int | None = None,
) -> list[list[Comparison]]:
    """``compare`` of every item (one boundary each, say), the rows of each item in a list of their own.

    The rows are those ``compare`` gives item by item; items of one shape are stacked and reduced
    together, so that thousands of small boundaries cost a few numpy calls, not thousands.

    Example:
        >>> from harness.parity.tolerances import Tolerance
        >>> a = np.zeros((1, 2, 3)); b = a.copy(); b[0, 1, 2] = 1e-3
        >>> rows = compare_each([Operands(0, a, a), Operands(1, a, b), Operands(2, a, a[:, :1])], pair="x",
        ...                     kind="same", tensor="y", tolerance=Tolerance(1e-6, 0.0), stream_axis=1,
        ...                     axis_names=("batch", "stream", "step"))
        >>> [[(r.chunk, r.stream, r.ok) for r in item] for item in rows]
        [[(0, 0, True), (0, 1, True)], [(1, 0, True), (1, 1, False)], [(2, None, False)]]
        >>> rows[1][1].where
        {'chunk': 1, 'stream': 1, 'batch': 0, 'step': 2}
    """
    rows: list[list[Comparison]] = [[] for _ in items]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(items):
        if item.actual.shape == item.expected.shape:
            by_shape.setdefault(item.actual.shape, []).append(i)
        else:
            problem = f"shape {tuple(item.actual.shape)}, expected {tuple(item.expected.shape)}"
            size = max(item.actual.size, item.expected.size)
            rows[i] = [
                mismatch(
                    pair=pair,
                    kind=kind,
                    chunk=item.chunk,
                    tensor=tensor,
                    tolerance=tolerance,
                    problem=problem,
                    size=size,
                )
            ]
    for shape, indices in by_shape.items():
        step = max(1, STACKED_ELEMENTS // max(1, math.prod(shape)))
        for first in range(0, len(indices), step):
            batch = indices[first : first + step]
            reduced = _reduce(
                [items[i] for i in batch], pair, kind, tensor, tolerance, stream_axis, axis_names, layer_axis
            )
            for i, item_rows in zip(batch, reduced):
                rows[i] = item_rows
    return rows


def _reduce(
    items: Sequence[Operands],
    pair: str,
    kind: str,
    tensor: str,
    tolerance: Tolerance,
    stream_axis: int,
    axis_names: Sequence[str],
    layer_axis: int | None,
) -> list[list[Comparison]]:
    """The rows of items of one shape, stacked along a new first axis and reduced at once."""
    actual64 = np.stack([item.actual for item in items], dtype=np.float64, casting="unsafe")
    expected64 = np.stack([item.expected for item in items], dtype=np.float64, casting="unsafe")
    diff: np.ndarray = np.abs(actual64 - expected64)
    diff[np.isnan(diff)] = np.inf
    rel: np.ndarray = diff / np.where(expected64 == 0, np.inf, np.abs(expected64))
    bad: np.ndarray = ~(diff <= tolerance.atol + tolerance.rtol * np.abs(expected64))
    # One row per (item, stream[, layer]): the reductions run over all rows at once, the loop only builds them.
    split = [0, stream_axis + 1] + ([] if layer_axis is None else [layer_axis + 1])
    names = [n for i, n in enumerate(axis_names) if i + 1 not in split]
    diff, rel, bad = (np.moveaxis(a, split, list(range(len(split)))) for a in (diff, rel, bad))
    lead, inner = diff.shape[: len(split)], diff.shape[len(split) :]
    size = math.prod(inner)
    diff, rel, bad = (a.reshape(math.prod(lead), size) for a in (diff, rel, bad))
    max_abs = diff.max(axis=1, initial=0.0).tolist()
    max_rel = np.nan_to_num(rel).max(axis=1, initial=0.0).tolist()
    mismatched = bad.sum(axis=1).tolist()
    located = names if size else []  # the axes whose index of the worst element ``where`` reports
    worst = _worst_indices(diff, inner, located, items) if located else itertools.repeat(())
    cells = list(np.ndindex(*lead[1:]))  # (stream[, layer]) of each row of an item
    rows, row = [], 0
    for item in items:
        at = dict(item.at or {})
        # where: chunk, stream, the fixed entries, the layer, then the worst element's index per axis
        keys = ("chunk", "stream", *at, *(() if layer_axis is None else ("layer",)), *located)
        fixed = tuple(at.values())
        item_rows = []
        for cell in cells:
            where = dict(zip(keys, (item.chunk, cell[0], *fixed, *cell[1:], *next(worst))))
            item_rows.append(
                Comparison(
                    pair,
                    kind,
                    item.chunk,
                    tensor,
                    cell[0],
                    max_abs[row],
                    max_rel[row],
                    mismatched[row],
                    size,
                    tolerance,
                    where,
                )
            )
            row += 1
        rows.append(item_rows)
    return rows


def _worst_indices(
    diff: np.ndarray, inner: tuple[int, ...], names: Sequence[str], items: Sequence[Operands]
) -> Iterator[tuple[int, ...]]:
    """For each row of ``diff`` ``(rows, elements)``, the index of its largest element along each axis of ``inner``
    (named ``names``), shifted by the offsets of the row's item (the rows of an item are consecutive)."""
    per_item = len(diff) // max(len(items), 1)
    shifted = [
        (index + np.repeat([(item.offsets or {}).get(name, 0) for item in items], per_item)).tolist()
        for name, index in zip(names, np.unravel_index(diff.argmax(axis=1), inner))
    ]
    return zip(*shifted)


@dataclasses.dataclass
class ParityReport:
    """Every comparison of a parity run, with summaries for the console and JSON.

    Example:
        >>> report = check_parity({"torch": model}, x, "halves")   # doctest: +SKIP
        >>> report.ok, report.max_abs_error                           # doctest: +SKIP
        (True, 0.0)
        >>> print(report.table())                                    # doctest: +SKIP
    """

    comparisons: list[Comparison]
    plan: list[int]
    dtype: str  # the dtype the models compute in (the coarsest, where they differ): tolerances follow it
    reference: str
    matmul: dict = dataclasses.field(default_factory=dict)  # the matmul precision settings in force
    input_dtype: str = ""  # the dtype of the input x (the models cast it to theirs); "" where not recorded
    dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> the dtype it computes in
    seed: int | None = None  # the seed of the run (its "random" plan), where the caller gave it
    input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] | None = None  # x's shape (several: by name)
    devices: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> where it ran, where recorded

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs for c in self.comparisons), default=0.0)

    def curve(self, pair: str, tensor: str = "output") -> list[tuple[int, float]]:
        """``(chunk, max abs error over streams)`` at every chunk boundary: how an error grows with time."""
        worst: dict[int, float] = {}
        for c in self.comparisons:
            if c.pair == pair and c.tensor == tensor:
                worst[c.chunk] = max(worst.get(c.chunk, 0.0), c.max_abs)
        return sorted(worst.items())

    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.ok]

    def first_failure(self) -> Comparison | None:
        """Where to look first: the failure at the earliest boundary, states before outputs, lowest layer first.

        Errors flow forward in time, from a carried state into the next chunk's
        outputs and from a lower layer into the ones above, so the earliest failing
        boundary, and there a structural failure, else the lowest failing layer's
        state, is nearest the cause. Ties go to the largest error, then the lowest stream.

        Example:
            >>> report = check_parity({"ref": model, "bad": faulty}, x, [3, 3])  # doctest: +SKIP
            >>> f = report.first_failure(); f.chunk, f.tensor, f.stream, f.layer  # doctest: +SKIP
            (1, 'c', 2, 0)
        """

        def order(c: Comparison) -> tuple:
            state_first = 0 if c.problem else 1 if c.tensor != "output" else 2
            return (c.chunk, state_first, c.layer or 0, -c.max_abs, c.stream or 0)

        return min(self.failures(), key=order, default=None)

    def summary(self) -> list[dict]:
        """One row per (pair, tensor): worst error over boundaries and streams, whether bit-identical, and how
        many of the plan's boundaries it covered (``boundaries`` of ``boundaries_total``)."""
        groups: dict[tuple[str, str], list[Comparison]] = {}
        for c in self.comparisons:
            groups.setdefault((c.pair, c.tensor), []).append(c)
        rows = []
        for (pair, tensor), cs in groups.items():
            worst = max(cs, key=lambda c: c.max_abs)
            rows.append(
                {
                    "pair": pair,
                    "tensor": tensor,
                    "kind": worst.kind,
                    "max_abs": worst.max_abs,
                    "max_rel": max(c.max_rel for c in cs),
                    "mismatched": sum(c.mismatched for c in cs),
                    "total": sum(c.total for c in cs),
                    "atol": worst.tolerance.atol,
                    "rtol": worst.tolerance.rtol,
                    "bit_identical": worst.max_abs == 0.0,
                    "boundaries": len({c.chunk for c in cs}),
                    "boundaries_total": len(self.plan),
                    "ok": all(c.ok for c in cs),
                    "worst_at": worst.where,
                    "problem": next((c.problem for c in cs if c.problem), ""),
                }
            )
        return rows

    def table(self) -> str:
        """A console table: one line per (pair, tensor), the columns of ``harness.parity.tables.COLUMNS``; the
        matmul settings below it only where they were not full float32 (``allow_tf32=True``)."""
        lines = [self._dtype_line(), *text_table(COLUMNS, [summary_cells(r) for r in self.summary()])]
        if reduced := reduced_precision(self.matmul):
            lines.append(f"matmul settings in force, not full float32: {reduced}")
        return "\n".join(lines)

    def environment(self) -> dict[str, object]:
        """Where and how the check ran, for a reader of the report: package versions, Keras backend, devices,
        matmul settings, seed, input shape, chunk plan and tolerances (``None`` where not recorded)."""
        tolerances = sorted({(c.tolerance.atol, c.tolerance.rtol) for c in self.comparisons})
        full = "full float32 (no TF32, no bfloat16)" if self.matmul else None
        return {
            "packages": environment.package_versions(),
            "keras backend": environment.keras_backend() or "Keras not imported",
            "devices": self.devices or None,
            "matmul": reduced_precision(self.matmul) or full,
            "seed": self.seed,
            "input shape": self.input_shape,
            "chunk plan": f"{len(self.plan)} chunks: {self.plan}",
            "tolerances": f"{self.dtype}: " + ", ".join(f"atol {a:g}, rtol {r:g}" for a, r in tolerances),
        }

    def markdown(self, title: str = "Parity") -> str:
        """The report as Markdown to paste into a pull request: a heading with the verdict, the summary table
        (the columns of ``table()``), the failure message where it failed, and the ``environment()``."""
        lines = [
            f"### {title}: {'ok' if self.ok else 'FAIL'}",
            "",
            self._dtype_line(),
            "",
            markdown_table(COLUMNS, [summary_cells(r) for r in self.summary()]),
        ]
        if not self.ok:
            lines += ["", "```text", self.failure_message(), "```"]
        lines += ["", "<details><summary>Environment</summary>", ""]
        lines += [f"- {name}: {_plain(value)}" for name, value in self.environment().items()]
        lines += ["", "</details>", ""]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The whole report as strict JSON (a non-finite error, e.g. of a missing state, is written as a string)."""
        return json.dumps(
            _finite_or_text(
                {
                    "ok": self.ok,
                    "max_abs_error": self.max_abs_error,
                    "dtype": self.dtype,
                    "input_dtype": self.input_dtype,
                    "dtypes": self.dtypes,
                    "reference": self.reference,
                    "plan": self.plan,
                    "summary": self.summary(),
                    "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
                }
            ),
            indent=1,
            allow_nan=False,
        )

    def failure_message(self) -> str:
        """A message in the style of ``torch.testing.assert_close``: the worst failure, then the first one."""
        bad = self.failures()
        if not bad:
            return "parity holds"
        worst = max(bad, key=lambda c: c.max_abs)
        first = self.first_failure()
        lines = [
            f"Parity failed: {len(bad)} of {len(self.comparisons)} comparisons out of tolerance "
            f"(plan {self.plan}, {self.dtype}).",
            self._dtype_line(),
            f"Worst: {_locate(worst)}.",
        ]
        if worst.problem:
            lines.append(f"Problem: {worst.problem}")
        else:
            where = ", ".join(f"{k} {v}" for k, v in worst.where.items())
            lines += [
                f"Mismatched elements: {worst.mismatched} / {worst.total} "
                f"({100 * worst.mismatched / worst.total:.1f}%)",
                f"Greatest absolute difference: {worst.max_abs:.6g} at {where} "
                f"(up to {worst.tolerance.atol:g} allowed)",
                f"Greatest relative difference: {worst.max_rel:.6g} (up to {worst.tolerance.rtol:g} allowed)",
            ]
        if first is not None and first is not worst:
            lines.append(f"First: {_locate(first)}, max abs {first.max_abs:.6g}.")
        lines.append("Boundaries compared: " + self._coverage())
        return "\n".join(lines)

    def _dtype_line(self) -> str:
        """Which dtype the models compute in, which x had, and that the tolerances follow the models'."""
        models = ", ".join(f"{name} {dtype}" for name, dtype in self.dtypes.items()) or self.dtype
        line = f"Tolerances for {self.dtype}, the dtype the models compute in ({models})"
        if self.input_dtype and self.input_dtype not in self.dtypes.values():
            line += f"; x is {self.input_dtype}, cast by the models"
        return line + "."

    def _coverage(self) -> str:
        """How many of the plan's boundaries each (pair, tensor) covered, e.g. ``m chunked vs whole h 8/40``."""
        return "; ".join(f"{r['pair']} {r['tensor']} {r['boundaries']}/{r['boundaries_total']}" for r in self.summary())


def _plain(value: object) -> str:
    """A value of ``environment()`` as Markdown text: a dict as ``key value`` pairs, None as "not recorded"."""
    if value is None:
        return "not recorded"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v) if isinstance(v, dict) else v}" for k, v in value.items())
    return str(value)


def _locate(c: Comparison) -> str:
    layer = "" if c.layer is None else f", layer {c.layer}"
    stream = "" if c.stream is None else f", stream {c.stream}"
    return f"{c.pair}, tensor {c.tensor!r}, chunk {c.chunk}{stream}{layer}"


def _finite_or_text(value: object) -> object:
    """``value`` with every NaN or infinite float replaced by its text ("inf", "nan"), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    return value
