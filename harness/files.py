"""Weight files: torch ``.pt``/``.pth``/``.safetensors`` and Keras ``.keras``/``.weights.h5``.

Reads are safe (``torch.load(weights_only=True)``, safetensors, Keras
``safe_mode=True``) and turn any unreadable file into a ``ValueError`` that names
it; writes are atomic (a temporary file beside the target, then a rename).

Example:
    >>> module = torch_module_from_state(read_torch_file("lstm.pt"), num_streams=3)  # doctest: +SKIP
    >>> write_keras_file(keras_twin(module, batch_size=1), "lstm.keras")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.spec.atomic import atomic_path
from harness.spec.cells import cell_of_gates

TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")
KERAS_SUFFIXES = (".keras", ".weights.h5")


def file_kind(path: str | os.PathLike) -> str:
    """ "torch" or "keras" by the file name's suffix."""
    name = str(path)
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    if name.endswith(KERAS_SUFFIXES):
        return "keras"
    raise ValueError(f"unsupported weight file {name!r}: expected one of {TORCH_SUFFIXES + KERAS_SUFFIXES}")


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such weight file: {path}")
    try:
        yield
    except Exception as e:
        raise ValueError(f"cannot read {path}: not a valid or safe weight file ({type(e).__name__}: {e})") from e


# ---- torch state dicts --------------------------------------------------------------------------


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a torch ``state_dict`` file, as numpy arrays."""
    with _reading(path):
        if str(path).endswith(".safetensors"):
            from safetensors.numpy import load_file

            return load_file(str(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("expected a state_dict (a dict of tensors)")
        return {k: v.numpy() for k, v in state.items()}


def write_torch_file(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a ``state_dict`` as ``.pt``/``.pth`` or ``.safetensors``, atomically."""
    import torch

    tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(tensors, tmp)
        else:
            torch.save(tensors, tmp)


_TORCH_KEY = re.compile(r"^(?:.*\.)?(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def torch_module_from_state(
    state: dict[str, np.ndarray], num_streams: int, *, nonlinearity: str = "tanh", batch_size: int | None = None
) -> Any:
    """A ``models_torch`` multi-state module whose cell and sizes are read off ``state``'s names and shapes.

    Gate count gives the cell (4 LSTM, 3 GRU, 1 RNN); a simple RNN's nonlinearity
    cannot be read off the weights and comes from ``nonlinearity``.
    """
    import torch

    from harness.porting import torch_class

    keys = {m.groups(): k for k in state if (m := _TORCH_KEY.match(k))}
    if not keys:
        raise ValueError(f"no recurrent weights (weight_ih_l0, ...) among the keys {sorted(state)[:8]}")
    if any(name == "weight_hr" for name, _, _ in keys):
        raise ValueError("torch LSTM with proj_size > 0 is not portable: Keras LSTM has no projection")
    if any(rev for _, _, rev in keys):
        raise ValueError(
            "bidirectional weights do not fit a multi-state module; port them to keras.layers.Bidirectional"
        )
    weight_ih, weight_hh = state[keys["weight_ih", "0", None]], state[keys["weight_hh", "0", None]]
    hidden = weight_hh.shape[1]
    gates = weight_ih.shape[0] // hidden
    cell = cell_of_gates(gates)
    if cell is None:
        raise ValueError(f"weight_ih_l0 has {weight_ih.shape[0]} rows for hidden size {hidden}: not 4, 3 or 1 gates")
    module = torch_class(cell)(
        weight_ih.shape[1],
        hidden,
        num_streams,
        num_layers=1 + max(int(layer) for _, layer, _ in keys),
        bias=any(name == "bias_ih" for name, _, _ in keys),
        batch_size=batch_size,
        dtype=torch.from_numpy(np.zeros(0, weight_ih.dtype)).dtype,
        **({"nonlinearity": nonlinearity} if cell == "rnn" else {}),
    )
    module.rnn.load_state_dict(
        {f"{n}_l{layer}": torch.from_numpy(np.array(state[k])) for (n, layer, _), k in keys.items()}
    )
    return module


# ---- Keras files --------------------------------------------------------------------------------


def write_keras_file(model: Any, path: str | os.PathLike) -> None:
    """Save a Keras model as ``.keras`` (whole model) or ``.weights.h5`` (weights only), atomically."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".keras"):
            model.save(tmp)
        else:
            model.save_weights(tmp)


def read_keras_file(path: str | os.PathLike, like: Any = None) -> Any:
    """Load a ``.keras`` model (``safe_mode=True``), or ``.weights.h5`` into the model ``like``."""
    import keras

    import models_keras  # noqa: F401  (registers the multi-state layers for deserialization)

    with _reading(path):
        if str(path).endswith(".keras"):
            return keras.models.load_model(path, safe_mode=True)
        if like is None:
            raise TypeError("a .weights.h5 file holds no architecture: pass the model to load it into")
        like.load_weights(path)
        return like


def keras_weights_file_groups(path: str | os.PathLike) -> dict[str, list[tuple[tuple[int, ...], str]]]:
    """The (shape, dtype) of each array in a ``.weights.h5`` file by group, in variable order."""
    import h5py

    groups: dict[str, list[tuple[int, ...]]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            group, _, index = name.rpartition("/")
            groups.setdefault(group, []).append((int(index), obj.shape, str(obj.dtype)))

    with _reading(path), h5py.File(path, "r") as f:
        f.visititems(visit)
    return {g: [(shape, dtype) for _, shape, dtype in sorted(v)] for g, v in groups.items()}


def multistate_spec_from_keras_weights(path: str | os.PathLike) -> dict[str, int | str]:
    """Cell, input size, units, layers, batch and streams of a multi-state model's ``.weights.h5``."""
    groups = {g: [shape for shape, _ in v] for g, v in keras_weights_file_groups(path).items()}
    dtype = next(iter(keras_weights_file_groups(path).values()))[0][1]
    cells = [v for v in groups.values() if len(v) in (2, 3) and len(v[0]) == 2 and len(v[1]) == 2]
    states = [v for v in groups.values() if v and all(len(shape) == 4 for shape in v)]
    if not cells or len(states) != 1:
        raise ValueError(f"{path} does not hold one multi-state layer's weights (found groups {sorted(groups)})")
    (input_size, cols), (units, _) = cells[0][:2]
    layers, batch, streams, _ = states[0][0]
    cell = cell_of_gates(cols // units) if cols % units == 0 else None
    if cell is None or len(cells) != layers:
        raise ValueError(f"{path}: cannot tell the cell from a kernel of shape {(input_size, cols)}")
    return {
        "cell": cell,
        "input_size": input_size,
        "units": units,
        "num_layers": layers,
        "batch_size": batch,
        "num_streams": streams,
        "use_bias": len(cells[0]) == 3,
        "dtype": dtype,
    }
