"""The anchor of the one-frame ``.tflite`` benchmark: litert-torch's static one-frame graph of our torch modules.

litert-torch is not a dependency of the package (it pulls transformers, torchao, its own converter); run this in a
venv of its own that has it, with the repository on ``PYTHONPATH``. It writes one ``.tflite`` per shape of
``ANCHOR_SHAPES`` into a folder; ``python -m benchmarks.test_export_stream --tflite FOLDER`` (the main venv)
times them side by side with the harness's own files, after checking each against the same torch module.

The module of a shape is ``anchor_module(cell, streams, hidden, layers)``: seeded, so that both venvs (same
torch version) build the same weights; it is converted as the pure one-frame function
``(x (1, S, 1, F), h[, c] (L, 1, S, H)) -> (y, h_out[, c_out])`` (``harness.export.to_onnx``'s chunk module).

Example:
    PYTHONPATH=$PWD /path/to/litert-venv/bin/python -m benchmarks.litert_anchor /tmp/anchor
"""

from __future__ import annotations

import os
import sys
from typing import Any

# name -> (cell, streams S, hidden H = input F, layers L), batch 1: the shapes of issue #24's acceptance.
ANCHOR_SHAPES = {
    "gru-S33-H16": ("gru", 33, 16, 1),
    "lstm-S31-H32": ("lstm", 31, 32, 1),
    "lstm-S4-H8-L2": ("lstm", 4, 8, 2),
}


def anchor_module(cell: str, streams: int, hidden: int, layers: int) -> Any:
    """The seeded ``models_torch`` module of a shape (``F = H``), in eval mode."""
    import torch

    from harness.porting import torch_class

    torch.manual_seed(0)
    return torch_class(cell)(hidden, hidden, streams, num_layers=layers).eval()


def anchor_inputs(module: Any) -> tuple[Any, ...]:
    """One frame and zero states of ``module`` as torch tensors, ``(x, h[, c])``."""
    import torch

    x = torch.zeros(1, module.num_streams, 1, module.input_size)
    shape = (module.num_layers, 1, module.num_streams, module.hidden_size)
    return (x, *(torch.zeros(shape) for _ in module.state_names))


def write_anchor(name: str, folder: str) -> str:
    """Convert shape ``name``'s module with litert-torch to ``folder/NAME.litert-torch.tflite``; its path."""
    path = os.path.join(folder, f"{name}.litert-torch.tflite")
    convert_with_litert_torch(anchor_module(*ANCHOR_SHAPES[name]), path)
    return path


def convert_with_litert_torch(module: Any, path: str) -> None:
    """Write litert-torch's static one-frame graph of the ``models_torch`` ``module`` (batch 1) to ``path``."""
    import litert_torch

    from harness.export.to_onnx import _chunk_module

    litert_torch.convert(_chunk_module(module, frames=1), anchor_inputs(module)).export(path)


def main(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name in ANCHOR_SHAPES:
        print(write_anchor(name, folder))


if __name__ == "__main__":
    main(sys.argv[1])
