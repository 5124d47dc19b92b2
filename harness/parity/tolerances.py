"""Default parity tolerances by comparison kind and dtype (the table in docs/contract.md).

Example:
    >>> default_tolerance("cross", "float32")
    Tolerance(atol=1e-05, rtol=1.3e-06)
"""

from __future__ import annotations

from typing import NamedTuple


class Tolerance(NamedTuple):
    """An element passes when ``|actual - expected| <= atol + rtol * |expected|``."""

    atol: float
    rtol: float


_TABLE = {
    ("same", "float32"): Tolerance(1e-6, 0.0),
    ("same", "float64"): Tolerance(1e-13, 0.0),
    ("cross", "float32"): Tolerance(1e-5, 1.3e-6),
    ("cross", "float64"): Tolerance(1e-12, 1e-10),
    ("parallel", "float32"): Tolerance(1e-6, 0.0),
    ("parallel", "float64"): Tolerance(1e-12, 0.0),
    # Row blocks vs one call, on gradients scaled to their largest entry, for a loss with random weights on the
    # outputs. Measured float32: 1.4e-6 at 200 rows x 5 steps (tests/models_torch/test_row_blocks.py), up to
    # 2.2e-5 at 16,384 rows x 16 steps (benchmarks/results/row-blocks-cpu.json); float64: 2.1e-15 at 200 rows.
    # Forward results in inference are bit-identical: no tolerance. docs/measurements.md, "Row blocks".
    ("blocks", "float32"): Tolerance(1e-4, 0.0),
    ("blocks", "float64"): Tolerance(1e-12, 0.0),
}


def default_tolerance(kind: str, dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """Tolerance for ``kind`` ("same": chunked vs whole in one model; "cross": model vs reference; "parallel":
    data-parallel training vs one process, ``check_distributed_training_parity``; "blocks": gradients of a chunk
    run in row blocks vs one call (``models_torch.ops.row_blocks``), each gradient divided by its largest
    magnitude first, since its weight gradients are sums over the blocks in another order).

    ``atol``/``rtol`` override the table's values where given.
    """
    try:
        base = _TABLE[(kind, dtype)]
    except KeyError:
        raise ValueError(f"no default tolerance for kind={kind!r}, dtype={dtype!r}; pass atol= and rtol=") from None
    return Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
