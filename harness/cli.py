"""Command line: ``python -m harness parity`` (the main job), ``seed``, ``port``, ``export`` and ``bench-report``.

Example:
    python -m harness parity                       # every cell, plan, dtype and backend
    python -m harness parity --cell lstm --dtype float64 --backend torch jax --json out.json
    python -m harness export lstm.pt lstm.onnx --streams 31   # one streaming chunk, verified in onnxruntime
    python -m harness parity --device cuda         # the torch reference on the GPU
    python -m harness bench-report results.json --out report.md --plot report.png  # pytest-benchmark JSON
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from harness import scenarios
from harness.export.formats import FORMATS, format_of
from multistate_core.cells import CELLS

KERAS_BACKENDS = ("tensorflow", "jax", "torch")


NONLINEARITY_HELP = "a simple RNN's activation: required for one in a .pt/.pth/.safetensors/.weights.h5 file"


def installed_backends() -> list[str]:
    """``torch`` (the reference), every Keras backend whose framework is importable, and the export formats
    (``FORMATS``) whose modules are installed."""
    found = ["torch"] if importlib.util.find_spec("torch") else []
    if importlib.util.find_spec("keras"):
        found += [f"keras-{b}" for b in KERAS_BACKENDS if importlib.util.find_spec(b)]
    return found + [name for name, fmt in FORMATS.items() if all(importlib.util.find_spec(m) for m in fmt.needs)]


def _run_backend(backend: str, args: argparse.Namespace) -> list[dict]:
    """Run one backend's scenarios in a fresh process (the Keras backend is fixed at import)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if backend.startswith("keras-"):
        env["KERAS_BACKEND"] = backend.removeprefix("keras-")
    if backend in FORMATS and (keras_backend := FORMATS[backend].keras_backend):
        env["KERAS_BACKEND"] = keras_backend  # e.g. the TFLite converter takes TensorFlow graphs
    if backend == "keras-jax":
        env["JAX_ENABLE_X64"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "_worker",
        backend,
        "--streams",
        str(args.streams),
        "--cell",
        *args.cell,
        "--dtype",
        *args.dtype,
        "--device",
        args.device,
        "--episodes",
        str(args.episodes),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        rows.append(
            {
                "backend": backend,
                "cell": "-",
                "dtype": "-",
                "plan": "-",
                "pair": "worker crashed",
                "max_abs": float("nan"),
                "bit_identical": False,
                "ok": False,
                "error": tail,
            }
        )
    return rows


def cuda_problem() -> str | None:
    """Why ``--device cuda`` cannot run here, or None when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written (``check_writable``), or None: asked before a job whose results it keeps."""
    from multistate_core.atomic import check_writable

    try:
        check_writable(path)
    except ValueError as e:
        return str(e)
    return None


def _parity(args: argparse.Namespace) -> int:
    if args.device == "cuda" and (problem := cuda_problem()):
        print(f"error: --device cuda: {problem}", file=sys.stderr)
        return 1
    for option, path in (("--json", args.json), ("--report", args.report)):
        if path and (problem := _unwritable(path)):
            print(f"error: {option}: {problem}", file=sys.stderr)
            return 1
    installed = installed_backends()
    if missing := [b for b in args.backend or () if b not in installed]:
        print(
            f"error: --backend {' '.join(missing)}: not installed here (its framework or extra cannot be imported); "
            f"installed: {' '.join(installed) or 'none'}",
            file=sys.stderr,
        )
        return 1
    backends = args.backend or installed
    if args.episodes:  # a chunk file takes no lengths: it gets the resets through its reset input
        for backend in (b for b in backends if b in FORMATS):
            print(f"{backend}: its file with a reset input, fed the resets only (it takes no lengths)", file=sys.stderr)
    rows: list[dict] = []
    for i, backend in enumerate(backends, 1):
        started = time.perf_counter()
        print(f"[{i}/{len(backends)}] {backend} ...", end=" ", flush=True, file=sys.stderr)
        new = _run_backend(backend, args)
        rows += new
        print(f"{sum(r['ok'] for r in new)}/{len(new)} ok ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print(scenarios.format_summary(rows))
    failed = [r for r in rows if not r["ok"]]
    for r in failed:
        if r.get("error"):
            print(f"\n{r['backend']}: {r['error']}")
    worst = max((r["max_abs"] for r in rows if r["ok"]), default=0.0)
    print(
        f"\n{len(rows) - len(failed)}/{len(rows)} checks passed on {', '.join(backends)}; "
        f"largest passing error {worst:.3g}. {'PASS' if not failed else 'FAIL'}"
    )
    if args.json:
        scenarios.write_json(args.json, rows)
    if args.report:
        command = (
            f"python -m harness parity --backend {' '.join(backends)} --cell {' '.join(args.cell)} "
            f"--dtype {' '.join(args.dtype)} --streams {args.streams} --device {args.device} --episodes {args.episodes}"
        )
        scenarios.write_text(args.report, scenarios.markdown_report(rows, command))
        print(f"every check written to {args.report}")
    return 0 if rows and not failed else 1


def _worker(args: argparse.Namespace) -> int:
    rows = scenarios.run_backend(
        args.which, args.cell, args.dtype, args.streams, device=args.device, episodes=args.episodes
    )
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


def _port(args: argparse.Namespace) -> int:
    from harness.porting.convert import ParityFailed, convert_file
    from harness.porting.files import KERAS_SUFFIXES
    from harness.porting.layers import only_multistate_layer

    try:
        result = convert_file(
            args.src,
            args.dst,
            num_streams=args.streams,
            batch_size=args.batch,
            nonlinearity=args.nonlinearity,
            layer=args.layer,
        )
    except ParityFailed as e:
        print(e.result.report.table())
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.report.table())
    layer = only_multistate_layer(result.keras_model)
    chosen = "" if args.src.endswith(KERAS_SUFFIXES) else " (--streams and --batch; default 1)"
    print(
        f"\nported {args.src} -> {args.dst}: {layer.cell}, {layer.num_layers} layer(s), {layer.units} units, "
        f"S={layer.num_streams} streams, B={layer.batch_size} batch{chosen}; "
        f"max abs error {result.report.max_abs_error:.3g}. PASS"
    )
    return 0


def _rate(text: str) -> float:
    """An argparse type: a probability in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _export(args: argparse.Namespace) -> int:
    from harness.export.pipeline import export

    try:
        result = export(
            args.src,
            args.dst,
            num_streams=args.streams,
            batch_size=args.batch,
            nonlinearity=args.nonlinearity,
            exporter=args.exporter,
            frames=args.frames,
            resets=args.resets,
        )
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = result.report
    states = ", ".join(result.state_names)
    outs = ", ".join(f"{n}_out" for n in result.state_names)
    fmt = format_of(args.dst)
    assert fmt is not None, "export() wrote a file of a known format"
    batch, steps = (args.batch if args.frames and args.batch else "B"), args.frames or "t"
    reset = f", reset ({batch}, S, {steps}) bool" if args.resets else ""
    print(
        f"exported {args.src} -> {args.dst} ({result.cell}, {result.num_streams} streams, {result.exporter} exporter)\n"
        f"  inputs:  x ({batch}, S, {steps}, F), {states} (L, {batch}, S, H){reset}\n"
        f"  outputs: y ({batch}, S, {steps}, H), {outs} (L, {batch}, S, H)\n"
        f"verified in {fmt.runtime} against the source over {sum(report.plan)} steps in "
        f"{len(report.plan)} chunks "
        f"(outputs and states at every boundary): max abs error {report.max_abs_error:.3g}. PASS"
    )
    return 0


def _bench_report(args: argparse.Namespace) -> int:
    from harness import bench_report

    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path and (problem := _unwritable(path)):
            print(f"error: {option}: {problem}", file=sys.stderr)
            return 1
    try:
        loaded = {path: bench_report.load(path) for path in args.results}
        benchmarks = [bench for found, _ in loaded.values() for bench in found]
        text = bench_report.markdown(benchmarks, {path: header for path, (_, header) in loaded.items()}, args.baseline)
    except bench_report.BadResults as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, end="")
    if args.out:
        scenarios.write_text(args.out, text)
    if args.plot:
        from multistate_core.atomic import atomic_path

        with atomic_path(args.plot) as tmp:
            bench_report.figure(benchmarks).savefig(tmp, dpi=120)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _seed(args: argparse.Namespace) -> int:
    import keras

    from harness.seed import seed_errors

    errors = seed_errors(steps=args.steps)
    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}: one LSTM shared by 3 bands, "
        f"{args.steps} steps predicted whole vs in two halves"
    )
    for name, error in errors.items():
        print(f"  {name:<42} max abs error {error:.3g}")
    return 0 if errors["multi-state layer (this project)"] <= 1e-6 else 1


def _drift(args: argparse.Namespace) -> int:
    import numpy as np

    from harness.parity.engine import check_parity
    from harness.porting.layers import keras_twin
    from harness.scenarios import torch_model

    module = torch_model(args.cell, 2, "float32")
    x = np.random.default_rng(0).standard_normal((1, 2, args.steps, 4)).astype("float32")
    models = {"torch": module}
    if args.keras:
        models["keras"] = keras_twin(module, batch_size=1)
    plan = [args.chunk] * (args.steps // args.chunk) + ([args.steps % args.chunk] if args.steps % args.chunk else [])
    report = check_parity(models, x, plan, whole_state_checks=2)
    pairs = sorted({c.pair for c in report.comparisons})
    print(f"{'step':>8} " + " ".join(f"{p:>28}" for p in pairs))
    curves = {p: dict(report.curve(p)) for p in pairs}
    for i, end in enumerate(np.cumsum(plan)):
        print(f"{end:>8} " + " ".join(f"{curves[p].get(i, float('nan')):>28.3g}" for p in pairs))
    print(f"max abs error {report.max_abs_error:.3g}: {'PASS' if report.ok else 'FAIL'}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("parity", "parity run on built-in defaults (the main job)"),
        ("_worker", argparse.SUPPRESS),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "_worker":
            p.add_argument("which")
        else:
            backends = ["torch", *[f"keras-{b}" for b in KERAS_BACKENDS], *FORMATS]
            p.add_argument("--backend", nargs="+", choices=backends)
            p.add_argument("--json", metavar="PATH", help="also write every result as JSON")
            p.add_argument(
                "--report", metavar="PATH", help="also write every result as a Markdown table, with the environment"
            )
        p.add_argument("--cell", nargs="+", default=list(CELLS), choices=list(CELLS))
        p.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
        p.add_argument("--streams", type=_positive, default=3)
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the torch model runs")
        p.add_argument(
            "--episodes",
            type=_rate,
            default=0.0,
            metavar="RATE",
            help="streams restart inside chunks: per-step resets at this rate and lengths in [T/2, T]",
        )
    port = sub.add_parser("port", help="port a weight file between torch and Keras, then check parity")
    port.add_argument("src", help="source file: .pt, .pth, .safetensors, .keras or .weights.h5")
    port.add_argument("dst", help="destination file in the other framework's format")
    port.add_argument(
        "--streams",
        type=_positive,
        help="streams S of the Keras model made from a torch file (default 1); a Keras "
        "file holds its own, which this must equal if given",
    )
    port.add_argument(
        "--batch",
        type=_positive,
        help="batch size B of the Keras model made from a torch file (default 1); a Keras "
        "file holds its own, which this must equal if given",
    )
    port.add_argument("--nonlinearity", choices=["tanh", "relu"], help=NONLINEARITY_HELP)
    port.add_argument(
        "--layer",
        metavar="NAME",
        help="the recurrent layer to port from a torch file holding more, by its path "
        "(enc for enc.weight_ih_l0); a whole model ports in Python with harness.porting.port_weights",
    )
    exp = sub.add_parser(
        "export", help="export a model to ONNX or TFLite as one streaming chunk, verified in onnxruntime or LiteRT"
    )
    exp.add_argument("src", help="source file: .pt, .pth, .safetensors, .keras or .weights.h5")
    exp.add_argument("dst", help="destination .onnx or .tflite file (written only once verified)")
    exp.add_argument("--streams", type=_positive, default=None, help="streams S of a torch file's model (default 1)")
    exp.add_argument(
        "--batch",
        type=_positive,
        default=None,
        help="batch of the verification input; the axis stays dynamic, except with --frames: a fully static graph",
    )
    exp.add_argument("--nonlinearity", choices=["tanh", "relu"], help=NONLINEARITY_HELP)
    exp.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy", help="torch.onnx exporter")
    exp.add_argument(
        "--frames", type=_positive, default=None, help="fix the time axis at this many steps per call (leaner graph)"
    )
    exp.add_argument(
        "--resets",
        action="store_true",
        help="one more input, last: reset (B, S, t) bool, zeroing a stream's state before that step (.onnx)",
    )
    seed = sub.add_parser("seed", help="reproduce the original problem on the active Keras backend")
    seed.add_argument("--steps", type=int, default=20)
    drift = sub.add_parser("drift", help="error curve of a long run in chunks (float32), torch and Keras")
    drift.add_argument("--steps", type=_positive, default=10_000)
    drift.add_argument("--chunk", type=_positive, default=1_000)
    drift.add_argument("--cell", choices=list(CELLS), default=next(iter(CELLS)), help="default: the table's first")
    drift.add_argument("--no-keras", dest="keras", action="store_false", help="torch alone")
    bench = sub.add_parser("bench-report", help="Markdown tables and a plot of pytest-benchmark JSON files")
    bench.add_argument("results", nargs="+", metavar="RESULTS.json", help="written by pytest --benchmark-json=PATH")
    bench.add_argument("--out", metavar="PATH", help="also write the report (Markdown) here")
    bench.add_argument("--plot", metavar="PATH", help="also plot the medians here (.png, .svg, .pdf; needs matplotlib)")
    bench.add_argument(
        "--baseline",
        metavar="NAME-SUBSTRING",
        help="each group's ratios are to the benchmark whose name contains this (default: the group's fastest)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its message; a refusal is exit status 1 like the others
        return 1 if e.code else 0
    commands = {
        "parity": _parity,
        "_worker": _worker,
        "port": _port,
        "seed": _seed,
        "drift": _drift,
        "export": _export,
        "bench-report": _bench_report,
    }
    return commands[args.command](args)
