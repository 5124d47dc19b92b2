"""What a parity run found: one ``Comparison`` per (pair, boundary, tensor, stream), gathered in a ``ParityReport``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from harness.tolerances import Tolerance


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One tensor of one stream at one chunk boundary, ``actual`` held against ``expected``.

    ``where`` locates the worst absolute difference: chunk, stream, step (absolute
    time index; for states, the step at the boundary), unit, and batch / layer.
    """

    pair: str
    kind: str
    chunk: int
    tensor: str
    stream: int
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    tolerance: Tolerance
    where: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


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
) -> list[Comparison]:
    """Compare two arrays stream by stream; ``axis_names`` names each axis for the location report."""
    if actual.shape != expected.shape:
        raise ValueError(f"{pair} {tensor} at chunk {chunk}: shape {actual.shape} vs expected {expected.shape}")
    actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(actual64 - expected64)
    diff[np.isnan(diff)] = np.inf
    rel = diff / np.where(expected64 == 0, np.inf, np.abs(expected64))
    bad = ~(diff <= tolerance.atol + tolerance.rtol * np.abs(expected64))
    rows = []
    for s in range(actual.shape[stream_axis]):
        d, r, b = (np.take(a, s, axis=stream_axis) for a in (diff, rel, bad))
        worst = np.unravel_index(int(np.argmax(d)), d.shape) if d.size else ()
        names = [n for i, n in enumerate(axis_names) if i != stream_axis]
        where = {"chunk": chunk, "stream": s} | {n: int(i) + (offsets or {}).get(n, 0) for n, i in zip(names, worst)}
        rows.append(
            Comparison(
                pair,
                kind,
                chunk,
                tensor,
                s,
                float(d.max(initial=0.0)),
                float(np.nan_to_num(r).max(initial=0.0)),
                int(b.sum()),
                int(b.size),
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
    dtype: str
    reference: str

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

    def summary(self) -> list[dict]:
        """One row per (pair, tensor): worst error over boundaries and streams, and whether bit-identical."""
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
                    "ok": all(c.ok for c in cs),
                    "worst_at": worst.where,
                }
            )
        return rows

    def table(self) -> str:
        """A console table: one line per (pair, tensor)."""
        head = f"{'pair':<34} {'tensor':<7} {'max abs':>10} {'max rel':>10} {'atol':>8} {'bad/total':>13}  result"
        lines = [head, "-" * len(head)]
        for r in self.summary():
            verdict = ("ok (bit-identical)" if r["bit_identical"] else "ok") if r["ok"] else "FAIL"
            lines.append(
                f"{r['pair']:<34} {r['tensor']:<7} {r['max_abs']:>10.3g} {r['max_rel']:>10.3g} {r['atol']:>8.0e} "
                f"{r['mismatched']:>6}/{r['total']:<6}  {verdict}"
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "max_abs_error": self.max_abs_error,
                "dtype": self.dtype,
                "reference": self.reference,
                "plan": self.plan,
                "summary": self.summary(),
                "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
            },
            indent=1,
        )

    def failure_message(self) -> str:
        """A message in the style of ``torch.testing.assert_close`` for the worst failing comparison."""
        bad = self.failures()
        if not bad:
            return "parity holds"
        worst = max(bad, key=lambda c: c.max_abs)
        where = ", ".join(f"{k} {v}" for k, v in worst.where.items())
        return (
            f"Parity failed: {len(bad)} of {len(self.comparisons)} comparisons out of tolerance "
            f"(plan {self.plan}, {self.dtype}).\n"
            f"Worst: {worst.pair}, tensor {worst.tensor!r}, chunk {worst.chunk}, stream {worst.stream}.\n"
            f"Mismatched elements: {worst.mismatched} / {worst.total} ({100 * worst.mismatched / worst.total:.1f}%)\n"
            f"Greatest absolute difference: {worst.max_abs:.6g} at {where} (up to {worst.tolerance.atol:g} allowed)\n"
            f"Greatest relative difference: {worst.max_rel:.6g} (up to {worst.tolerance.rtol:g} allowed)"
        )
