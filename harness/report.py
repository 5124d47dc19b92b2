"""What a parity run found: a ``ParityReport`` of ``Comparison`` rows, one per (pair, boundary, tensor, layer, stream).

A tensor that one side lacks, or that has another shape on each side, is a failing
``Comparison`` of its own (``mismatch``): it carries ``problem``, counts every element
as mismatched, and is the worst failure of its report.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

from harness.tolerances import Tolerance


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
        >>> from harness.tolerances import Tolerance
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
    offsets: dict[str, int] | None = None,
    layer_axis: int | None = None,
    at: dict[str, int] | None = None,
) -> list[Comparison]:
    """Compare two arrays stream by stream (and layer by layer, given ``layer_axis``).

    ``axis_names`` names each axis for the location report, ``offsets`` shifts the
    reported index of an axis (e.g. a chunk's first time step) and ``at`` adds fixed
    entries to ``where``. Arrays of different shapes give one failing ``mismatch`` row.

    Example:
        >>> from harness.tolerances import Tolerance
        >>> a = np.zeros((2, 1, 3, 4)); b = a.copy(); b[1, 0, 2, 3] = 1e-3
        >>> rows = compare(a, b, pair="x", kind="same", chunk=0, tensor="h", tolerance=Tolerance(1e-6, 0.0),
        ...                stream_axis=2, axis_names=("layer", "batch", "stream", "unit"), layer_axis=0)
        >>> [(r.stream, r.layer, r.ok) for r in rows]
        [(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, True), (2, 0, True), (2, 1, False)]
        >>> rows[-1].where
        {'chunk': 0, 'stream': 2, 'layer': 1, 'batch': 0, 'unit': 3}
    """
    if actual.shape != expected.shape:
        return [
            mismatch(
                pair=pair,
                kind=kind,
                chunk=chunk,
                tensor=tensor,
                tolerance=tolerance,
                problem=f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}",
                size=max(actual.size, expected.size),
            )
        ]
    actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(actual64 - expected64)
    diff[np.isnan(diff)] = np.inf
    rel = diff / np.where(expected64 == 0, np.inf, np.abs(expected64))
    bad = ~(diff <= tolerance.atol + tolerance.rtol * np.abs(expected64))
    split = [stream_axis] + ([] if layer_axis is None else [layer_axis])
    names = [n for i, n in enumerate(axis_names) if i not in split]
    diff, rel, bad = (np.moveaxis(a, split, list(range(len(split)))) for a in (diff, rel, bad))
    lead, inner = diff.shape[: len(split)], diff.shape[len(split) :]
    # One row per (stream[, layer]): the reductions run over all rows at once, the loop only builds them.
    size = int(np.prod(inner))
    diff, rel, bad = (a.reshape(int(np.prod(lead)), size) for a in (diff, rel, bad))
    max_abs = diff.max(axis=1, initial=0.0)
    max_rel = np.nan_to_num(rel).max(axis=1, initial=0.0)
    mismatched = bad.sum(axis=1)
    worst = diff.argmax(axis=1) if size else np.zeros(len(diff), int)
    rows = []
    for row, index in enumerate(np.ndindex(*lead)):
        where = {"chunk": chunk, "stream": int(index[0])} | (at or {})
        if layer_axis is not None:
            where["layer"] = int(index[1])
        position = np.unravel_index(int(worst[row]), inner) if size else ()
        where |= {n: int(i) + (offsets or {}).get(n, 0) for n, i in zip(names, position)}
        rows.append(
            Comparison(
                pair,
                kind,
                chunk,
                tensor,
                int(index[0]),
                float(max_abs[row]),
                float(max_rel[row]),
                int(mismatched[row]),
                size,
                tolerance,
                where,
            )
        )
    return rows


@dataclasses.dataclass
class ParityReport:
    """Every comparison of a parity run, with summaries for the console and JSON.

    Example:
        >>> report = check_parity({"torch": model}, x, "halves")   # doctest: +SKIP
        >>> report.ok, report.max_abs_error
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
        """A console table: one line per (pair, tensor)."""
        rows = self.summary()
        width = max([9] + [len(r["tensor"]) for r in rows])
        head = (
            f"{'pair':<34} {'tensor':<{width}} {'max abs':>10} {'max rel':>10} {'atol':>8} {'bad/total':>13} "
            f"{'boundaries':>11}  result"
        )
        lines = [self._dtype_line(), head, "-" * len(head)]
        for r in rows:
            verdict = ("ok (bit-identical)" if r["bit_identical"] else "ok") if r["ok"] else "FAIL"
            verdict += f": {r['problem']}" if r["problem"] else ""
            lines.append(
                f"{r['pair']:<34} {r['tensor']:<{width}} {r['max_abs']:>10.3g} {r['max_rel']:>10.3g} "
                f"{r['atol']:>8.0e} {r['mismatched']:>6}/{r['total']:<6} "
                f"{r['boundaries']:>5}/{r['boundaries_total']:<5}  {verdict}"
            )
        if self.matmul:
            lines.append("matmul settings in force: " + ", ".join(f"{k}={v}" for k, v in self.matmul.items()))
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
        return "; ".join(
            f"{r['pair']} {r['tensor']} {r['boundaries']}/{r['boundaries_total']}" for r in self.summary()
        )


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
