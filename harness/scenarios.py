"""The built-in parity scenarios of ``python -m harness parity``: which models, inputs and plans.

Each backend runs in its own process; ``run_backend`` yields one result row
(a plain dict) per (cell, dtype, plan, compared pair). The torch reference is built on
``device`` ("cpu" or "cuda"); every row names each model's device and the matmul settings in
force (``check_parity`` runs with full float32 matmuls: no TF32 on a GPU).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.export.formats import FORMATS
from harness.parity.engine import PLANS, check_parity
from harness.parity.environment import package_versions
from harness.parity.precision import reduced_precision
from harness.parity.runners import model_device
from harness.parity.tables import COLUMNS, markdown_table, summary_cells, text_table
from multistate_core.atomic import atomic_path

BATCH, STEPS, FEATURES, UNITS, LAYERS = 2, 64, 4, 8, 2
WHOLE_STATE_CHECKS = 8  # boundaries where chunked-vs-whole states are compared (each costs a prefix run)


def torch_model(cell: str, streams: int, dtype: str, seed: int = 0, device: str = "cpu"):
    """A seeded ``models_torch`` multi-state model of the default scenario, on ``device``.

    The weights are drawn on the CPU and then moved, so every device gets the same ones.

    Example:
        >>> torch_model("gru", 3, "float64").rnn.weight_hh_l0.device
        device(type='cpu')
    """
    import torch

    from harness.porting.layers import torch_class

    torch.manual_seed(seed)
    return torch_class(cell)(FEATURES, UNITS, streams, num_layers=LAYERS, dtype=getattr(torch, dtype)).to(device)


def _twin(backend: str, module: Any, folder: str, eager: bool = False, resets: bool = False) -> Any:
    """The model held against the torch ``module``: its Keras twin (a layer if ``eager``), or its exported
    file (a format of ``FORMATS``, exported from the module; with a ``reset`` input if ``resets``)."""
    from harness.export.pipeline import export
    from harness.porting.layers import keras_twin

    if backend in FORMATS:
        fmt = FORMATS[backend]
        path = os.path.join(folder, f"{module.cell}{'+reset' if resets else ''}{fmt.suffix}")
        export(module, path, batch_size=BATCH, resets=resets)
        return path
    return keras_twin(module) if eager else keras_twin(module, batch_size=BATCH)


def run_backend(
    backend: str, cells: list[str], dtypes: list[str], streams: int, device: str = "cpu", episodes: float = 0.0
) -> Iterator[dict]:
    """Parity rows for ``backend`` ("torch" alone, "keras-<name>", or an export format against torch), torch on
    ``device``.

    Exported files run float32 only (onnxruntime's recurrent kernels and TFLite's have no float64); a format
    that takes a reset input also runs a file with one (rows of backend ``<format>+reset``, ``_format_rows``).
    ``episodes`` > 0: streams restart inside chunks, with per-step resets at that rate and lengths in
    ``[T/2, T]`` (the Keras side then runs as an eager layer, which takes them as arguments; an exported file
    takes the resets only).
    """
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="multistate-parity-") as folder:
        for cell in cells:
            for dtype in dtypes:
                x = rng.standard_normal((BATCH, streams, STEPS, FEATURES)).astype(dtype)
                if backend in FORMATS and dtype != "float32":
                    continue
                module = torch_model(cell, streams, dtype, device=device)
                steps = {}
                if episodes:
                    steps = {
                        "resets": rng.random((BATCH, streams, STEPS)) < episodes,
                        "lengths": rng.integers(STEPS // 2, STEPS + 1, (BATCH, streams)).astype("int32"),
                    }
                if backend in FORMATS:
                    yield from _format_rows(backend, cell, module, x, steps, folder)
                    continue
                models = {"torch": module}
                if backend != "torch":
                    models[backend] = _twin(backend, module, folder, eager=episodes > 0)
                yield from _rows(backend, cell, dtype, models, x, steps)


def _format_rows(backend: str, cell: str, module: Any, x: np.ndarray, steps: dict, folder: str) -> Iterator[dict]:
    """An export format's rows: its plain file (not with episodes: it takes no resets), then a file with a reset
    input (backend ``<format>+reset``) fed the episodes' resets, else random ones at ``RESET_RATE`` (never
    lengths: a chunk file runs every step)."""
    from harness.export.job import RESET_RATE

    if not steps:
        yield from _rows(backend, cell, "float32", {"torch": module, backend: _twin(backend, module, folder)}, x, {})
    resets = steps.get("resets", np.random.default_rng(24).random(x.shape[:3]) < RESET_RATE)
    name = f"{backend}+reset"
    models = {"torch": module, name: _twin(backend, module, folder, resets=True)}
    yield from _rows(name, cell, "float32", models, x, {"resets": resets})


def _rows(backend: str, cell: str, dtype: str, models: dict, x: np.ndarray, steps: dict) -> Iterator[dict]:
    """One row per (plan, pair, tensor); the torch reference's own rows only for the torch backend."""
    devices = {name: model_device(m) for name, m in models.items()}
    for plan in PLANS:
        report = check_parity(models, x, plan, seed=1, whole_state_checks=WHOLE_STATE_CHECKS, **steps)
        for row in report.summary():
            if backend != "torch" and row["pair"].startswith("torch "):
                continue
            kept = (
                *("pair", "tensor", "max_abs", "max_rel", "atol", "rtol", "mismatched", "total"),
                *("boundaries", "boundaries_total", "bit_identical", "ok", "problem"),
            )
            head = {"backend": backend, "cell": cell, "dtype": dtype, "plan": plan, "chunks": len(report.plan)}
            yield head | {"device": devices, "matmul": report.matmul} | {k: row[k] for k in kept}


LEAD = ("backend", "cell", "dtype", "plan")  # the columns the main job puts before ``tables.COLUMNS``
SUMMARY_COLUMNS = ("backend", "cell", "dtype", "checks", "worst max abs", "atol", "at", "result")


def _worst(rows: list[dict]) -> dict:
    """The row of the largest error (a crashed worker's NaN counts as the largest)."""
    return max(rows, key=lambda r: math.inf if math.isnan(r["max_abs"]) else r["max_abs"])


def summary_rows(rows: list[dict]) -> list[list[str]]:
    """The ``SUMMARY_COLUMNS`` of each (backend, cell, dtype): checks passed, the worst error and where it is."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["cell"], r["dtype"]), []).append(r)
    found = []
    for key, members in groups.items():
        worst, failed = _worst(members), sum(not r["ok"] for r in members)
        at = " ".join(str(worst.get(k, "")) for k in ("plan", "pair", "tensor")).strip()
        atol = f"{worst['atol']:.3g}" if "atol" in worst else "-"
        result = "ok" if not failed else f"FAIL ({failed} of {len(members)})"
        checks = f"{len(members) - failed}/{len(members)}"
        found.append([*key, checks, f"{worst['max_abs']:.3g}", atol, at, result])
    return found


def full_rows(rows: list[dict]) -> list[list[str]]:
    """Each row as ``LEAD`` + ``tables.COLUMNS`` cells: the columns of ``ParityReport.table()``."""
    return [[str(r.get(k, "-")) for k in LEAD] + summary_cells(r) for r in rows]


def format_summary(rows: list[dict]) -> str:
    """The console summary: one line per (backend, cell, dtype), then every failing row in full."""
    lines = text_table(SUMMARY_COLUMNS, summary_rows(rows))
    if failed := [r for r in rows if not r["ok"]]:
        lines += ["", "Failing checks:", *text_table(LEAD + COLUMNS, full_rows(failed))]
    return "\n".join(lines)


def markdown_report(rows: list[dict], command: str) -> str:
    """The main job's full report as Markdown: verdict, summary, every row, and the environment of the run."""
    failed = sum(not r["ok"] for r in rows)
    devices = {r["backend"]: r["device"] for r in rows if r.get("device")}
    matmul = {r["backend"]: reduced_precision(r["matmul"]) for r in rows if "matmul" in r}
    tolerances = sorted({(r["dtype"], r["atol"], r["rtol"]) for r in rows if "rtol" in r})
    environment = {
        "command": f"`{command}`",
        "packages": ", ".join(f"{k} {v}" for k, v in package_versions().items()),
        "devices": "; ".join(f"{b}: " + ", ".join(f"{n}={d}" for n, d in ds.items()) for b, ds in devices.items()),
        "matmul": "; ".join(f"{b}: {m}" for b, m in matmul.items() if m) or "full float32 (no TF32, no bfloat16)",
        "seeds": "weights torch.manual_seed(0), input numpy default_rng(0), random plan seed 1",
        "input shape": f"(batch {BATCH}, streams S, steps {STEPS}, features {FEATURES}); {LAYERS} layers of {UNITS}",
        "chunk plans": ", ".join(PLANS) + " (chunk lengths in the JSON: chunks per row)",
        "tolerances": "; ".join(f"{d}: atol {a:g}, rtol {r:g}" for d, a, r in tolerances),
    }
    return "\n".join(
        [
            f"# python -m harness parity: {'PASS' if rows and not failed else 'FAIL'}",
            "",
            f"{len(rows) - failed}/{len(rows)} checks passed.",
            "",
            "## Summary (worst error per backend, cell and dtype)",
            "",
            markdown_table(SUMMARY_COLUMNS, summary_rows(rows)),
            "",
            "## Every check",
            "",
            markdown_table(LEAD + COLUMNS, full_rows(rows)),
            "",
            "## Environment",
            "",
            *(f"- {k}: {v}" for k, v in environment.items()),
            "",
        ]
    )


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"ok": all(r["ok"] for r in rows), "rows": rows}, f, indent=1)
