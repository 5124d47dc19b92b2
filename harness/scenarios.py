"""The built-in parity scenarios of ``python -m harness parity``: which models, inputs and plans.

Each backend runs in its own process; ``run_backend`` yields one result row
(a plain dict) per (cell, dtype, plan, compared pair).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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


def run_backend(backend: str, cells: list[str], dtypes: list[str], streams: int) -> Iterator[dict]:
    """Parity rows for ``backend`` ("torch" alone, or "keras-<name>" against torch)."""
    rng = np.random.default_rng(0)
    for cell in cells:
        for dtype in dtypes:
            x = rng.standard_normal((BATCH, streams, STEPS, FEATURES)).astype(dtype)
            models = {"torch": torch_model(cell, streams, dtype)}
            if backend != "torch":
                from harness.porting import keras_twin

                models[backend] = keras_twin(models["torch"], batch_size=BATCH)
            for plan in PLANS:
                report = check_parity(models, x, plan, seed=1, whole_state_checks=WHOLE_STATE_CHECKS)
                for row in report.summary():
                    if backend != "torch" and row["pair"].startswith("torch "):
                        continue
                    yield {
                        "backend": backend,
                        "cell": cell,
                        "dtype": dtype,
                        "plan": plan,
                        "chunks": len(report.plan),
                        **{k: row[k] for k in ("pair", "tensor", "max_abs", "max_rel", "atol", "bit_identical", "ok")},
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
