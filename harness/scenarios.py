"""The built-in parity scenarios of ``python -m harness parity``: which models, inputs and plans.

Each backend runs in its own process; ``run_backend`` yields one result row
(a plain dict) per (cell, dtype, plan, compared pair). The torch reference is built on
``device`` ("cpu" or "cuda"); every row names each model's device and the matmul settings in
force (``check_parity`` runs with full float32 matmuls: no TF32 on a GPU).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.export.formats import FORMATS, format_of
from harness.parity.engine import PLANS, check_parity
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


def model_device(model: Any) -> str:
    """Where ``model``'s weights live: a torch device ("cuda:0"), or the Keras backend's name for it.

    Example:
        >>> model_device(torch_model("rnn", 2, "float32"))
        'cpu'
        >>> model_device("lstm.bin")
        Traceback (most recent call last):
        ...
        ValueError: lstm.bin is not an exported model: expected a file of onnx, tflite
    """
    import sys

    if isinstance(model, (str, os.PathLike)):
        fmt = format_of(model)
        if fmt is None:
            raise ValueError(f"{model} is not an exported model: expected a file of {', '.join(FORMATS)}")
        return fmt.device
    if "keras" in sys.modules and isinstance(model, sys.modules["keras"].layers.Layer):
        value = model.weights[0].value
        if hasattr(value, "devices"):  # a JAX array
            return ",".join(str(d) for d in value.devices())
        return str(value.device).rsplit("device:", 1)[-1]  # torch: "cuda:0"; TensorFlow: ".../device:GPU:0"
    return str(next(model.parameters()).device)


def _twin(backend: str, module: Any, folder: str, eager: bool = False) -> Any:
    """The model held against the torch ``module``: its Keras twin (a layer if ``eager``), or its exported
    file (a format of ``FORMATS``, exported from the module or from its Keras twin, as the format takes them)."""
    from harness.export.pipeline import export
    from harness.porting.layers import keras_twin

    if backend in FORMATS:
        fmt = FORMATS[backend]
        path = os.path.join(folder, f"{module.cell}{fmt.suffix}")
        export(module if fmt.source == "torch" else keras_twin(module, batch_size=BATCH), path, batch_size=BATCH)
        return path
    return keras_twin(module) if eager else keras_twin(module, batch_size=BATCH)


def run_backend(
    backend: str, cells: list[str], dtypes: list[str], streams: int, device: str = "cpu", episodes: float = 0.0
) -> Iterator[dict]:
    """Parity rows for ``backend`` ("torch" alone, "keras-<name>", or an export format against torch), torch on
    ``device``.

    Exported files run float32 only (onnxruntime's recurrent kernels and TFLite's have no float64). ``episodes`` > 0:
    streams restart inside chunks, with per-step resets at that rate and lengths in ``[T/2, T]``
    (the Keras side then runs as an eager layer, which takes them as arguments).
    """
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="multistate-parity-") as folder:
        for cell in cells:
            for dtype in dtypes:
                x = rng.standard_normal((BATCH, streams, STEPS, FEATURES)).astype(dtype)
                if backend in FORMATS and dtype != "float32":
                    continue
                models = {"torch": torch_model(cell, streams, dtype, device=device)}
                if backend != "torch":
                    models[backend] = _twin(backend, models["torch"], folder, eager=episodes > 0)
                steps = {}
                if episodes:
                    steps = {
                        "resets": rng.random((BATCH, streams, STEPS)) < episodes,
                        "lengths": rng.integers(STEPS // 2, STEPS + 1, (BATCH, streams)).astype("int32"),
                    }
                yield from _rows(backend, cell, dtype, models, x, steps)


def _rows(backend: str, cell: str, dtype: str, models: dict, x: np.ndarray, steps: dict) -> Iterator[dict]:
    """One row per (plan, pair, tensor); the torch reference's own rows only for the torch backend."""
    devices = {name: model_device(m) for name, m in models.items()}
    for plan in PLANS:
        report = check_parity(models, x, plan, seed=1, whole_state_checks=WHOLE_STATE_CHECKS, **steps)
        for row in report.summary():
            if backend != "torch" and row["pair"].startswith("torch "):
                continue
            kept = ("pair", "tensor", "max_abs", "max_rel", "atol", "bit_identical", "ok")
            head = {"backend": backend, "cell": cell, "dtype": dtype, "plan": plan, "chunks": len(report.plan)}
            yield head | {"device": devices, "matmul": report.matmul} | {k: row[k] for k in kept}


def format_rows(rows: list[dict]) -> str:
    """One console line per row, grouped by backend."""
    head = (
        f"{'backend':<16} {'cell':<5} {'dtype':<8} {'plan':<7} {'pair':<36} {'tensor':<7} {'max abs':>9}  "
        f"{'result':<17}  devices"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = ("ok, bit-identical" if r["bit_identical"] else "ok") if r["ok"] else "FAIL"
        devices = ", ".join(f"{name}={device}" for name, device in r.get("device", {}).items()) or "-"
        lines.append(
            f"{r['backend']:<16} {r['cell']:<5} {r['dtype']:<8} {r['plan']:<7} {r['pair']:<36} "
            f"{r.get('tensor', '-'):<7} {r['max_abs']:>9.3g}  {verdict:<17}  {devices}"
        )
    return "\n".join(lines)


def write_json(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"ok": all(r["ok"] for r in rows), "rows": rows}, f, indent=1)
