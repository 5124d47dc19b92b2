"""The one set of columns of a parity summary, as a console table and as Markdown.

``ParityReport.table()``/``markdown()`` and the main job's full report (``python -m harness parity
--report``) all render ``summary()`` rows through here, so the API and the command line show the same
columns; the main job adds its own leading columns (backend, cell, dtype, plan).

Example:
    >>> row = {"pair": "keras vs torch", "tensor": "h", "max_abs": 1.5e-7, "max_rel": 2e-6, "atol": 1e-5,
    ...        "rtol": 1.3e-6, "mismatched": 0, "total": 48, "boundaries": 2, "boundaries_total": 2,
    ...        "ok": True, "bit_identical": False, "problem": ""}
    >>> print(markdown_table(COLUMNS, [summary_cells(row)]))
    | pair | tensor | max abs | max rel | atol | rtol | bad/total | boundaries | result |
    |---|---|---:|---:|---:|---:|---:|---:|---|
    | keras vs torch | h | 1.5e-07 | 2e-06 | 1e-05 | 1.3e-06 | 0/48 | 2/2 | ok |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

COLUMNS = ("pair", "tensor", "max abs", "max rel", "atol", "rtol", "bad/total", "boundaries", "result")
_TEXT = {"pair", "tensor", "result", "backend", "cell", "dtype", "plan", "at"}  # columns of text: left-aligned


def verdict(row: Mapping) -> str:
    """``ok``, ``ok (bit-identical)`` or ``FAIL``, with the row's structural problem if it has one."""
    text = ("ok (bit-identical)" if row.get("bit_identical") else "ok") if row["ok"] else "FAIL"
    return text + (f": {row['problem']}" if row.get("problem") else "")


def summary_cells(row: Mapping) -> list[str]:
    """The ``COLUMNS`` of one ``ParityReport.summary()`` row (a row lacking a count shows ``-`` there)."""

    def count(done: str, total: str) -> str:
        return f"{row[done]}/{row[total]}" if done in row and total in row else "-"

    def number(key: str) -> str:
        return f"{row[key]:.3g}" if key in row else "-"

    return [
        str(row["pair"]),
        str(row.get("tensor", "-")),
        number("max_abs"),
        number("max_rel"),
        number("atol"),
        number("rtol"),
        count("mismatched", "total"),
        count("boundaries", "boundaries_total"),
        verdict(row),
    ]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Console lines: the header, a rule, then one line per row, numbers right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        parts = [
            c if i == last else c.ljust(w) if headers[i] in _TEXT else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    head = line(headers)
    return [head, "-" * len(head), *(line(r) for r in rows)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table, numbers right-aligned; a ``|`` inside a cell is escaped."""
    align = ["---" if h in _TEXT else "---:" for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)
