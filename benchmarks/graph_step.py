"""One streaming step at many streams: ``GraphStep`` (a replayed CUDA graph) beside the module's own eager call.

For each cell, a float32 multi-state module with ``--streams`` streams (batch 1, one time step per call)
runs the same inputs twice, from the same weights and a zero state: eagerly (``module(x)``), and through
``GraphStep``. The script prints, and writes as JSON with ``--json``, the largest difference between the
two (outputs and carried states, every step: the replay must equal the eager call bit for bit) and the
median wall time of one call of each, synchronized. Runs on CUDA (captured) or, without it, on the CPU
(``capture=False``: the bookkeeping only, for a smoke test).

    python -m benchmarks.graph_step --streams 256 --json gpu-graph-step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch

from harness.parity import full_precision_matmul
from harness.porting import torch_class
from models_torch.graphs import GraphStep

FEATURES, UNITS = 32, 128  # the suite's small shape (benchmarks/cases.py SMALL)


def _timed(call: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """The median wall time of ``call`` in microseconds, synchronized after each call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def measure(cell: str, streams: int, steps: int, repeats: int, device: torch.device) -> dict[str, object]:
    """Replay vs eager for one cell: the largest difference over ``steps`` steps, and one call's time each."""
    torch.manual_seed(0)
    module = torch_class(cell)(FEATURES, UNITS, streams).to(device).eval()
    eager = copy.deepcopy(module)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    xs = torch.randn(steps, 1, streams, 1, FEATURES, device=device)
    with full_precision_matmul(), torch.no_grad():
        step = GraphStep(module, batch_size=1, chunk=1)  # captured without TF32, like the eager calls below
        worst = 0.0
        for x in xs:
            worst = max(worst, _max_diff((step(x),), (eager(x),)))
            worst = max(worst, _max_diff(module.get_states(), eager.get_states()))
        x = xs[0]
        graph_us = _timed(lambda: step(x), repeats, sync)
        eager_us = _timed(lambda: eager(x), repeats, sync)
    return {
        "cell": cell,
        "streams": streams,
        "F": FEATURES,
        "H": UNITS,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "captured": step.captured,
        "steps_compared": steps,
        "max_abs_diff": worst,
        "bit_identical": worst == 0.0,
        "graph_step_us": round(graph_us, 1),
        "eager_us": round(eager_us, 1),
        "speedup": round(eager_us / graph_us, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="steps compared, replay vs eager")
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls of each")
    parser.add_argument("--cell", nargs="+", default=["lstm", "gru", "rnn"])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure(cell, args.streams, args.steps, args.repeats, device) for cell in args.cell]
    for r in rows:
        print(
            f"{r['cell']:<5} S={r['streams']} on {r['device']} (captured={r['captured']}): "
            f"replay vs eager max abs {r['max_abs_diff']:.3g} over {r['steps_compared']} steps; "
            f"one step {r['graph_step_us']} us (GraphStep) vs {r['eager_us']} us (eager), x{r['speedup']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["bit_identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
