"""The row sweep of ``cases.PLAN`` (jobs ``rows`` and ``rows-train``), timed side by side in alternating rounds.

A multi-state layer runs a large CPU chunk in row blocks (``models_torch.ops.paths.block_rows``). Per shape
three steps run interleaved, in rotating order, and each ratio is taken of their medians (on a shared
machine absolute times drift):

- ``multistate``: the layer as it is (``torch_impls.build_step``, as the pytest suite builds it);
- ``one-call``: the same layer with the rule planted to one call per chunk: the layer before row blocks;
- ``raw``: its inner ``nn.GRU``/``nn.LSTM`` on the folded rows, torch's single call (``torch-fused``).

Per forward shape it also records whether the blocked layer's outputs and states equal the one call's bit
for bit (``difference`` 0.0); per training shape, the largest gradient difference, divided by that gradient's
largest entry, for a loss with random weights on the outputs (``--differences`` recomputes these alone).

Cost per stream-step across row counts cannot be read from shapes timed minutes apart on a shared machine;
``--flatness`` times the forward of the layer and of the raw call at every row count of one (cell, H) in
rotating rounds instead, and stores the medians under ``"flatness"`` in the same JSON.

Run (many minutes; ``--rows``/``--hidden``/``--cells`` narrow it)::

    python -m benchmarks.row_blocks --threads 1 --note "..." --name row-blocks-cpu

It writes ``benchmarks/results/<name>.json`` (times, machine) and ``<name>.png`` (cost per stream-step).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks import cases, plot, torch_impls
from models_torch.ops import paths
from models_torch.ops.kernels import Stack

BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", "1.0"))  # timed seconds per step and shape, roughly
MIN_ROUNDS, MAX_ROUNDS = 5, 41
REWARM_S = 0.2  # ``flatness``: calls shorter than this run once untimed before each timed call
ARMS = ("multistate", "one-call", "raw")


@contextlib.contextmanager
def one_call() -> Iterator[None]:
    """The rule planted to one call per chunk, as the layer ran before row blocks."""
    rule = paths.block_rows
    paths.block_rows = lambda stack, rows, steps, device: rows
    try:
        yield
    finally:
        paths.block_rows = rule


def _in_one_call(step: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with one_call():
            return step()

    return run


def _time(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _step(job: str, cell: str, shape: cases.Shape, impl: cases.Impl) -> Callable[[], object]:
    return torch_impls.build_step(cases.Case(cases.JOBS[job], cell, shape, impl))[0]


def measure(job: str, cell: str, shape: cases.Shape) -> dict:
    """Median seconds of each arm on one shape, timed in rounds that rotate which arm goes first."""
    multi = functools.partial(_step, job, cell, shape, cases.TORCH_MULTISTATE)
    steps = [multi(), _in_one_call(multi()), _step(job, cell, shape, cases.TORCH_FUSED)]
    for step in steps:  # the first calls warm up
        step()
    times: list[list[float]] = [[] for _ in steps]
    rounds = MIN_ROUNDS
    for r in range(MAX_ROUNDS):
        for i in (r % 3, (r + 1) % 3, (r + 2) % 3):
            times[i].append(_time(steps[i]))
        if r == 0:  # sized by the slowest arm's first timed call
            rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(t[0] for t in times))))
        if r + 1 >= rounds:
            break
    medians = dict(zip(ARMS, (statistics.median(t) for t in times)))
    return {
        **{f"{arm}_s": seconds for arm, seconds in medians.items()},
        "multistate/raw": medians["multistate"] / medians["raw"],
        "multistate/one-call": medians["multistate"] / medians["one-call"],
        "one-call/raw": medians["one-call"] / medians["raw"],
        "rounds": rounds,
    }


def flatness(cell: str, hidden: int, rows: list[int], rounds: int) -> dict:
    """µs per stream-step of the layer's and the raw call's forward at each of ``rows``, timed in rotating rounds."""
    arms = {}
    for n in rows:
        shape = cases.Shape(1, n, 16, cases.SMALL.F, hidden)
        for arm, impl in (("multistate", cases.TORCH_MULTISTATE), ("raw", cases.TORCH_FUSED)):
            arms[(arm, n)] = _step("rows", cell, shape, impl)
    keys = list(arms)
    once = {key: _time(arms[key]) for key in keys}  # the first calls warm up
    times: dict[tuple, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            if once[key] < REWARM_S:  # a short call right after a long one finds the caches cold
                arms[key]()
            times[key].append(_time(arms[key]) / (key[1] * 16) * 1e6)
    medians = {f"{arm} {n}": statistics.median(times[(arm, n)]) for arm, n in keys}
    spans = {}
    for arm in ("multistate", "raw"):
        per_row = [medians[f"{arm} {n}"] for n in rows]
        spans[arm] = max(per_row) / min(per_row)
    return {
        "cell": cell,
        "H": hidden,
        "rounds": rounds,
        "us_per_stream_step": medians,
        "max/min": spans,
        "loadavg": os.getloadavg()[0],
    }


def _results(module: torch.nn.Module, x: torch.Tensor, train: bool) -> list[torch.Tensor]:
    """Outputs and final states from zero states (stateless call); in training, then the gradients."""
    zeros = [torch.zeros(module.num_layers, *x.shape[:2], module.hidden_size) for _ in module.state_names]
    module.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(train):
        out, states = module(x, initial_state=zeros, return_state=True)
    if not train:
        return [out, *states]
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    return [p.grad for p in module.parameters()]


def difference(job: str, cell: str, shape: cases.Shape) -> float:
    """Forward: 0.0 where the blocked layer's outputs and states equal one call's bit for bit; in training, the
    largest gradient difference over that gradient's largest entry."""
    module = torch_impls.make_module(cell, shape)
    x = torch.randn(shape.B, shape.S, shape.T, shape.F, generator=torch.Generator().manual_seed(1))
    train = cases.JOBS[job].train
    blocked = _results(module, x, train)
    with one_call():
        single = _results(module, x, train)
    return max(float((a - b).abs().max() / (b.abs().max() if train else 1)) for a, b in zip(blocked, single))


def machine() -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "last_level_cache_bytes": paths.cache_bytes(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _cpu_model() -> str:
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def run(cells: list[str], hidden: list[int], rows: list[int], train_rows: int, note: str) -> dict:
    """Time every (job, cell, H, rows) of the sweep; training only up to ``train_rows`` rows."""
    results = []
    for job in ("rows", "rows-train"):
        for cell in cells:
            for h in hidden:
                for n in (r for r in rows if job == "rows" or r <= train_rows):
                    shape = cases.Shape(1, n, 16, cases.SMALL.F, h)
                    stack = Stack(cell, [torch_impls.make_module(cell, shape).rnn._flat_weights])
                    size = paths.block_rows(stack, n, shape.T, "cpu")
                    entry = {"job": job, "cell": cell, "H": h, "rows": n, "T": shape.T, "F": shape.F}
                    entry |= {"block_rows": size, "blocks": max(1, n // size)} | measure(job, cell, shape)
                    entry["difference"] = difference(job, cell, shape) if size < n else None
                    entry["loadavg"] = os.getloadavg()[0]
                    print(json.dumps(entry), flush=True)
                    results.append(entry)
    return {"machine": machine() | {"note": note}, "results": results}


def panels(data: dict) -> dict[str, dict[str, dict[int, float]]]:
    """Per job (and ``"flatness"``), per series (cell, H, arm), µs per stream-step by rows: what ``plot.save_rows``
    draws."""
    found: dict[str, dict[str, dict[int, float]]] = {}
    for entry in data["results"]:
        for arm in ARMS:
            series = found.setdefault(entry["job"], {}).setdefault(f"{entry['cell']} H={entry['H']} {arm}", {})
            series[entry["rows"]] = entry[f"{arm}_s"] / (entry["rows"] * entry["T"]) * 1e6
    for run in data.get("flatness", []):
        for key, us in run["us_per_stream_step"].items():
            arm, rows = key.split()
            found.setdefault("flatness", {}).setdefault(f"{run['cell']} H={run['H']} {arm}", {})[int(rows)] = us
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--hidden", nargs="+", type=int, default=list(cases.ROWS_HIDDEN))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16, 256, 1024, 4096, 16384, 65536])
    parser.add_argument("--train-rows", type=int, default=16384, help="time training up to this many rows")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    parser.add_argument("--name", default="row-blocks-cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--note", default="", help="what the machine was, e.g. shared with other work")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from <name>.json")
    parser.add_argument("--differences", action="store_true", help="recompute the blocked shapes' differences")
    parser.add_argument("--flatness", type=int, metavar="ROUNDS", help="add flatness runs (rows >= 256) to the JSON")
    args = parser.parse_args()
    json_path = args.out / f"{args.name}.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flatness:
        data = json.loads(json_path.read_text())
        rows = [n for n in args.rows if n >= 256]
        data["flatness"] = [flatness(c, h, rows, args.flatness) for c in args.cells for h in args.hidden]
        print(json.dumps(data["flatness"], indent=1), flush=True)
        json_path.write_text(json.dumps(data, indent=1) + "\n")
    elif args.differences:
        data = json.loads(json_path.read_text())
        for entry in (e for e in data["results"] if e["difference"] is not None):
            shape = cases.Shape(1, entry["rows"], entry["T"], entry["F"], entry["H"])
            entry["difference"] = difference(entry["job"], entry["cell"], shape)
            print(entry["job"], entry["cell"], entry["H"], entry["rows"], entry["difference"], flush=True)
        json_path.write_text(json.dumps(data, indent=1) + "\n")
    elif args.plot_only:
        data = json.loads(json_path.read_text())
    else:
        data = run(args.cells, args.hidden, args.rows, args.train_rows, args.note)
        json_path.write_text(json.dumps(data, indent=1) + "\n")
    plot.save_rows(panels(data), data["machine"]["note"], args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
