"""torch on CUDA against torch on the CPU over 1,000 steps, with TF32 off and on: the numbers behind docs/gpu.md.

The pytest check (``tests/test_gpu.py``) asserts the bound; this prints the measured errors, and the matmul
settings before, inside and after ``full_precision_matmul()`` (TF32 off inside, the user's settings back
after). Each cell runs 1,000 steps in chunks of 100 from the same weights on both devices; the error is
the largest absolute difference of outputs and carried states at every chunk boundary.

    python -m benchmarks.gpu_fidelity --json gpu-fidelity.json
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch

from harness.parity.precision import full_precision_matmul, matmul_settings
from harness.porting import torch_class

FEATURES, UNITS, STREAMS, BATCH, LAYERS = 4, 16, 3, 2, 2  # tests/helpers.py's shape
STEPS, CHUNK = 1_000, 100


def cuda_vs_cpu(cell: str, dtype: str, allow_tf32: bool) -> float:
    """The largest difference, outputs and states, between the module on CUDA and on the CPU."""
    torch.manual_seed(0)
    cpu = torch_class(cell)(FEATURES, UNITS, STREAMS, num_layers=LAYERS, dtype=getattr(torch, dtype)).eval()
    cuda = copy.deepcopy(cpu).cuda()
    x = torch.from_numpy(np.random.default_rng(1234).standard_normal((BATCH, STREAMS, STEPS, FEATURES)).astype(dtype))
    worst = 0.0
    with full_precision_matmul(allow_tf32=allow_tf32), torch.no_grad():
        for start in range(0, STEPS, CHUNK):
            part = x[:, :, start : start + CHUNK]
            pairs = [(cuda(part.cuda()), cpu(part)), *zip(cuda.get_states(), cpu.get_states())]
            worst = max(worst, *(float((g.cpu() - c).abs().max()) for g, c in pairs))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs CUDA (torch.cuda.is_available() is False)")
        return 1
    before = matmul_settings()
    with full_precision_matmul() as inside:
        pass
    after = matmul_settings()
    print(f"matmul settings before: {before}\n  inside full_precision_matmul(): {inside}\n  after: {after}")
    rows = []
    for cell in ("lstm", "gru", "rnn"):
        for dtype, tf32 in (("float32", False), ("float64", False), ("float32", True)):
            error = cuda_vs_cpu(cell, dtype, tf32)
            rows.append({"cell": cell, "dtype": dtype, "tf32": tf32, "steps": STEPS, "max_abs": error})
            tf32_state = "on " if tf32 else "off"
            print(f"{cell:<5} {dtype} TF32 {tf32_state}: CUDA vs CPU over {STEPS} steps max abs {error:.3g}")
    if args.json:
        with open(args.json, "w") as f:
            found = {"device": torch.cuda.get_device_name(), "settings": [before, inside, after], "rows": rows}
            json.dump(found, f, indent=1, default=str)
    return 0 if before == after else 1


if __name__ == "__main__":
    raise SystemExit(main())
