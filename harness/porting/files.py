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

from multistate_core.atomic import atomic_path
from multistate_core.cells import CELLS, cell_of_gates

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


NONLINEARITIES = ("tanh", "relu")


def rnn_nonlinearity(nonlinearity: str | None, source: str) -> str:
    """A simple RNN's activation as given by the caller: its weights do not record it, so none is guessed.

    ``source`` names what was read (for the message). Raises ``ValueError`` when it is missing or unknown.
    """
    if nonlinearity is None:
        raise ValueError(
            f"{source} holds a simple RNN, whose weights do not record its nonlinearity (tanh or relu): "
            "give it with --nonlinearity tanh|relu (nonlinearity= in Python)"
        )
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    return nonlinearity


_TORCH_PARAM = r"(?:weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l\d+(?:_reverse)?"
_TORCH_KEY = re.compile(r"^(?:(.*)\.)?(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
# weight norm: ``weight_hh_l0_g``/``_v`` (torch.nn.utils.weight_norm) or
# ``parametrizations.weight_hh_l0.original0``/``1`` (torch.nn.utils.parametrizations.weight_norm)
_WEIGHT_NORM_KEY = re.compile(rf"^(.*?)(?:parametrizations\.({_TORCH_PARAM})\.original([01])|({_TORCH_PARAM})_([gv]))$")


def _weight_norm_part(key: str) -> tuple[str, str] | None:
    """``(parameter name, "g" or "v")`` of a weight-norm key, None for any other key."""
    if not (m := _WEIGHT_NORM_KEY.match(key)):
        return None
    prefix, param, index, hook_param, part = m.groups()
    return (prefix + param, "gv"[int(index)]) if param else (prefix + hook_param, part)


def _weight_norm(g: np.ndarray, v: np.ndarray, name: str) -> np.ndarray:
    """The weight ``g * v / ||v||`` exactly as torch computes it; the norm runs over every axis but the one
    ``g`` keeps (``dim``), or over all of ``v`` when ``g`` is a scalar (``dim=None``)."""
    import torch

    kept = [d for d in range(g.ndim) if g.shape[d] != 1]
    if g.ndim not in (0, v.ndim) or len(kept) > 1 or any(g.shape[d] != v.shape[d] for d in kept):
        raise ValueError(f"weight norm of {name}: g of shape {g.shape} does not fit v of shape {v.shape}")
    dim = kept[0] if kept else -1
    return torch._weight_norm(torch.from_numpy(np.array(v)), torch.from_numpy(np.array(g)), dim).numpy()


def without_weight_norm(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` with each weight-normed parameter (a ``g``/``v`` pair in either of torch's two forms)
    replaced by the plain tensor torch computes from them, bit for bit (``torch._weight_norm``, which both
    forms call). Other keys, an unpaired ``_v`` (spectral norm's) among them, are kept as they are."""
    pairs: dict[str, dict[str, str]] = {}
    for key in state:
        if part := _weight_norm_part(key):
            pairs.setdefault(part[0], {})[part[1]] = key
    complete = {name: keys for name, keys in pairs.items() if set(keys) == {"g", "v"}}
    folded = {key for keys in complete.values() for key in keys.values()}
    plain = {k: v for k, v in state.items() if k not in folded}
    plain.update({name: _weight_norm(state[keys["g"]], state[keys["v"]], name) for name, keys in complete.items()})
    return plain


ParamKey = tuple[str, str, str | None]  # (parameter name, layer index, "_reverse" or None): "weight_ih", "0", None


def recurrent_layers(state: dict[str, np.ndarray]) -> dict[str, dict[ParamKey, str]]:
    """The recurrent layers (``nn.LSTM``/``GRU``/``RNN``) of a state_dict by their path, "" for a bare one:
    each maps its parameters' ``ParamKey`` to their key in ``state``.

    Example:
        >>> w = np.zeros((4, 2))
        >>> recurrent_layers({"enc.weight_ih_l0": w, "weight_hh_l0": w, "head.weight": w})
        {'enc': {('weight_ih', '0', None): 'enc.weight_ih_l0'}, '': {('weight_hh', '0', None): 'weight_hh_l0'}}
    """
    found: dict[str, dict[ParamKey, str]] = {}
    for key in state:
        if m := _TORCH_KEY.match(key):
            path, name, layer, reverse = m.groups()
            found.setdefault(path or "", {})[name, layer, reverse] = key
    return found


_LISTED = 10  # the most parameters besides the recurrent layers that a refusal lists


def _holdings(state: dict[str, np.ndarray], layers: dict[str, dict[ParamKey, str]]) -> str:
    """What a state_dict holds, for a refusal: its recurrent layers by path, then its other parameters."""
    named = [f"{path!r}" if path else "'' (unprefixed)" for path in layers]
    taken = {key for keys in layers.values() for key in keys.values()}
    others = [f"{k} {tuple(np.shape(v))}" for k, v in state.items() if k not in taken]
    text = f"recurrent layers {', '.join(named) or 'none'}"
    if others:
        more = f" and {len(others) - _LISTED} more" if len(others) > _LISTED else ""
        text += f"; other parameters {', '.join(others[:_LISTED])}{more}"
    return text


WHOLE_MODEL_HINT = (
    "port one recurrent layer by its path with --layer NAME (layer= in Python), or the whole model in Python "
    "with harness.porting.port_weights(torch_model, keras_model)"
)


def one_recurrent_layer(state: dict[str, np.ndarray], layer: str | None, source: str) -> dict[ParamKey, str]:
    """The parameters of the recurrent layer to port from ``state`` (``recurrent_layers``' entry): the one at
    path ``layer``, or, with ``layer`` None, the only thing ``state`` holds.

    ``ValueError`` listing what ``state`` holds when ``layer`` names none of its recurrent layers, or when
    ``layer`` is None and ``state`` holds more than one recurrent layer or parameters besides one: a port
    never drops a parameter without being told.
    """
    layers = recurrent_layers(state)
    if layer is not None:
        if layer not in layers:
            raise ValueError(f"{source} has no recurrent layer at {layer!r}: it holds {_holdings(state, layers)}")
        return layers[layer]
    if len(layers) > 1:
        raise ValueError(
            f"{source} holds more than one recurrent layer ({_holdings(state, layers)}): {WHOLE_MODEL_HINT}"
        )
    return next(iter(layers.values()), {})


def _refuse_extra_parameters(state: dict[str, np.ndarray], keys: dict[ParamKey, str], source: str) -> None:
    """``ValueError`` when ``state`` holds parameters besides ``keys``, the one recurrent layer it was read as."""
    if any(k not in keys.values() for k in state):
        layers = recurrent_layers(state)
        raise ValueError(
            f"{source} holds parameters besides one recurrent layer ({_holdings(state, layers)}): {WHOLE_MODEL_HINT}"
        )


def torch_module_from_state(
    state: dict[str, np.ndarray],
    num_streams: int,
    *,
    nonlinearity: str | None = None,
    batch_size: int | None = None,
    layer: str | None = None,
) -> Any:
    """A ``models_torch`` multi-state module whose cell and sizes are read off ``state``'s names and shapes.

    Gate count gives the cell (4 LSTM, 3 GRU, 1 RNN); a simple RNN's nonlinearity
    cannot be read off the weights and must come from ``nonlinearity`` (``ValueError`` without it, and for
    an LSTM or GRU with it). ``layer`` picks the recurrent layer at that path (``"enc"`` for the keys
    ``enc.weight_ih_l0``, ...) of a state_dict that holds more; without it, a state_dict holding more than
    one recurrent layer, or parameters besides it, is refused (``one_recurrent_layer``).
    """
    import torch

    from harness.porting.layers import activation_is_chosen, torch_class

    state = without_weight_norm(state)
    keys = one_recurrent_layer(state, layer, "the state_dict")
    indices = sorted({index for _, index, _ in keys} or {"0"})
    missing = [f"{n}_l{i}" for i in indices for n in ("weight_ih", "weight_hh") if (n, i, None) not in keys]
    if missing:
        raise ValueError(
            f"no {', '.join(missing)} among the keys {sorted(state)[:12]}: expected the parameters of an "
            "nn.LSTM/GRU/RNN (weight norm is read; for another parametrization, save the state_dict after "
            "torch.nn.utils.parametrize.remove_parametrizations, or remove_spectral_norm)"
        )
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
    if layer is None:
        _refuse_extra_parameters(state, keys, "the state_dict")
    chosen = activation_is_chosen(cell)
    if nonlinearity is not None and not chosen:
        raise ValueError(
            f"nonlinearity={nonlinearity!r} applies to a simple RNN only; the state_dict holds "
            f"{CELLS[cell].torch_class} weights"
        )
    module = torch_class(cell)(
        weight_ih.shape[1],
        hidden,
        num_streams,
        num_layers=1 + max(int(index) for _, index, _ in keys),
        bias=any(name == "bias_ih" for name, _, _ in keys),
        batch_size=batch_size,
        dtype=torch.from_numpy(np.zeros(0, weight_ih.dtype)).dtype,
        **({"nonlinearity": rnn_nonlinearity(nonlinearity, "the state_dict")} if chosen else {}),
    )
    module.rnn.load_state_dict(
        {f"{n}_l{index}": torch.from_numpy(np.array(state[k])) for (n, index, _), k in keys.items()}
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


def keras_model_like(spec: dict, nonlinearity: str | None) -> Any:
    """A Keras multi-state model of the architecture ``spec`` (``multistate_spec_from_keras_weights``; random
    weights, to load a file into); a simple RNN's ``nonlinearity`` must be given (a ``.weights.h5`` file does not
    record it)."""
    import torch

    from harness.porting.layers import activation_is_chosen, keras_twin, torch_class

    chosen = activation_is_chosen(spec["cell"])
    module = torch_class(spec["cell"])(
        spec["input_size"],
        spec["units"],
        spec["num_streams"],
        num_layers=spec["num_layers"],
        bias=spec["use_bias"],
        dtype=getattr(torch, spec["dtype"]),
        **({"nonlinearity": rnn_nonlinearity(nonlinearity, "the .weights.h5 file")} if chosen else {}),
    )
    return keras_twin(module, batch_size=spec["batch_size"])


def read_keras_model(path: str | os.PathLike, nonlinearity: str | None) -> Any:
    """The Keras model of a ``.keras`` file, or of a multi-state layer's ``.weights.h5`` (its architecture read off
    the arrays; a simple RNN's ``nonlinearity`` must be given)."""
    if str(path).endswith(".keras"):
        return read_keras_file(path)
    return read_keras_file(path, like=keras_model_like(multistate_spec_from_keras_weights(path), nonlinearity))


def keras_weights_file_groups(path: str | os.PathLike) -> dict[str, list[tuple[tuple[int, ...], str]]]:
    """The (shape, dtype) of each array in a ``.weights.h5`` file by group, in variable order."""
    import h5py

    groups: dict[str, list[tuple[int, tuple[int, ...], str]]] = {}

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
