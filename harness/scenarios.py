"""The built-in parity scenarios of ``python -m harness parity``: which models, inputs and plans.

Each backend runs in its own process; ``run_backend`` yields one result row
(a plain dict) per (cell, dtype, plan, compared pair).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.parity import PLANS, check_parity
from harness.spec.atomic import atomic_path

CELLS = ("lstm", "gru", "rnn")
BATCH, STEPS, FEATURES, UNITS, LAYERS = 2, 64, 4, 8, 2
WHOLE_STATE_CHECKS = 8  # boundaries where chunked-vs-whole states are compared (each costs a prefix run)


def torch_model(cell: str, streams: int, dtype: str, seed: int = 0):
    """A seeded ``models_torch`` multi-state model of the default scenario."""
    import torch

    from harness.porting import torch_class

    torch.manual_seed(seed)
    return torch_class(cell)(FEATURES, UNITS, streams, num_layers=LAYERS, dtype=getattr(torch, dtype))


def _twin(backend: str, module: Any, folder: str) -> Any:
    """The model held against the torch ``module``: its Keras twin, or its exported ONNX file."""
    if backend == "onnx":
        from harness.export import export

        path = os.path.join(folder, f"{module.cell}.onnx")
        export(module, path, batch_size=BATCH)
        return path
    from harness.porting import keras_twin

    return keras_twin(module, batch_size=BATCH)


def run_backend(backend: str, cells: list[str], dtypes: list[str], streams: int) -> Iterator[dict]:
    """Parity rows for ``backend`` ("torch" alone, "keras-<name>" or "onnx" against torch).

    ONNX runs float32 only (onnxruntime's recurrent kernels have no float64).
    """
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="multistate-parity-") as folder:
        for cell in cells:
            for dtype in dtypes:
                x = rng.standard_normal((BATCH, streams, STEPS, FEATURES)).astype(dtype)
                if backend == "onnx" and dtype != "float32":
                    continue
                models = {"torch": torch_model(cell, streams, dtype)}
                if backend != "torch":
                    models[backend] = _twin(backend, models["torch"], folder)
                yield from _rows(backend, cell, dtype, models, x)


def _rows(backend: str, cell: str, dtype: str, models: dict, x: np.ndarray) -> Iterator[dict]:
    """One row per (plan, pair, tensor); the torch reference's own rows only for the torch backend."""
    for plan in PLANS:
        report = check_parity(models, x, plan, seed=1, whole_state_checks=WHOLE_STATE_CHECKS)
        for row in report.summary():
            if backend != "torch" and row["pair"].startswith("torch "):
                continue
            kept = ("pair", "tensor", "max_abs", "max_rel", "atol", "bit_identical", "ok")
            yield {"backend": backend, "cell": cell, "dtype": dtype, "plan": plan, "chunks": len(report.plan)} | {
                k: row[k] for k in kept
            }


def format_rows(rows: list[dict]) -> str:
    """One console line per row, grouped by backend."""
    head = f"{'backend':<16} {'cell':<5} {'dtype':<8} {'plan':<7} {'pair':<36} {'tensor':<7} {'max abs':>9}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = ("ok, bit-identical" if r["bit_identical"] else "ok") if r["ok"] else "FAIL"
        lines.append(
            f"{r['backend']:<16} {r['cell']:<5} {r['dtype']:<8} {r['plan']:<7} {r['pair']:<36} "
            f"{r.get('tensor', '-'):<7} {r['max_abs']:>9.3g}  {verdict}"
        )
    return "\n".join(lines)


def write_json(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"ok": all(r["ok"] for r in rows), "rows": rows}, f, indent=1)
