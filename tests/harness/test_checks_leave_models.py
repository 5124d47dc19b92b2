"""The checks (``check_parity``, ``check_training_parity``, ``port``, ``export``) leave every model they are
given exactly as they found it: weights, carried states, batch size, train/eval mode, gradients and (Keras)
optimizer variables.

``snapshot`` copies everything about a model that a check could change; ``differences`` lists what moved
between two snapshots (with the largest absolute change). One parametrized test runs each check on a model
that is mid-stream (states carried at batch 2), in eval mode, with gradients (torch) or optimizer variables
(Keras); the planted fault ("a check that mutates its input") takes the protection away and must be caught.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from harness.porting import port_weights, torch_class
from tests.helpers import B, F, H, S, keras_backend

T = 6


# ---- snapshot and compare ---------------------------------------------------------------------------------------


def _is_keras(model: Any) -> bool:
    import sys

    return "keras" in sys.modules and isinstance(model, sys.modules["keras"].layers.Layer)


def _torch_snapshot(model: torch.nn.Module) -> dict[str, Any]:
    from models_torch import MultiStateBase

    shot: dict[str, Any] = {}
    for name, p in model.named_parameters():
        shot[f"param {name}"] = p.detach().clone().numpy()
        shot[f"requires_grad {name}"] = p.requires_grad
        shot[f"grad {name}"] = None if p.grad is None else p.grad.clone().numpy()
    shot |= {f"buffer {name}": b.clone().numpy() for name, b in model.named_buffers()}
    shot |= {f"training {name or '.'}": m.training for name, m in model.named_modules()}
    for name, m in model.named_modules():
        if isinstance(m, MultiStateBase):
            shot[f"batch_size {name or '.'}"] = m.batch_size
            shot[f"fixed_batch_size {name or '.'}"] = m.fixed_batch_size
            carried = m.__dict__["_carried"]
            shot[f"states {name or '.'}"] = None if carried is None else [s.detach().clone().numpy() for s in carried]
    return shot


def _keras_snapshot(model: Any) -> dict[str, Any]:
    import keras

    from models_keras import multistate_layers

    shot: dict[str, Any] = {f"variable {v.path}": keras.ops.convert_to_numpy(v.value).copy() for v in model.variables}
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        shot |= {f"optimizer {v.path}": keras.ops.convert_to_numpy(v.value).copy() for v in optimizer.variables}
    for layer in multistate_layers(model):
        shot[f"batch_size {layer.name}"] = layer.batch_size
        shot[f"states {layer.name}"] = list(layer.get_states())
    return shot


def snapshot(model: Any) -> dict[str, Any]:
    """Everything about ``model`` a check could change, as plain copies (numpy arrays, flags, sizes)."""
    return _keras_snapshot(model) if _is_keras(model) else _torch_snapshot(model)


def _difference(a: Any, b: Any) -> str | None:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = [d for d in map(_difference, a, b) if d]
        return "; ".join(found) or None
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return f"shape {a.shape} -> {b.shape}"
        if np.array_equal(a, b, equal_nan=True):
            return None
        return f"max abs change {np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))):.3g}"
    return None if type(a) is type(b) and a == b else f"{a!r} -> {b!r}"


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What moved between two snapshots, one line per item (empty: the model is as it was)."""
    keys = sorted(set(before) | set(after))
    found = [(k, _difference(before.get(k), after.get(k))) for k in keys]
    return [f"{k}: {d}" for k, d in found if d]


# ---- the models, as a caller holds them mid-stream -----------------------------------------------------------------


def _torch_model(rng: np.random.Generator) -> torch.nn.Module:
    """An LSTM carrying states at batch 2 (no fixed batch size), in eval mode, with gradients."""
    torch.manual_seed(0)
    model = torch_class("lstm")(F, H, S)
    model(torch.from_numpy(rng.standard_normal((B, S, T, F)).astype("float32"))).square().sum().backward()
    return model.eval()


def _keras_model(rng: np.random.Generator) -> Any:
    """A functional Keras model around an LSTM, fixed batch 2, with optimizer variables (momenta) and
    carrying states."""
    import keras

    from tests.keras_helpers import functional

    model = functional("lstm")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    for v in model.optimizer.variables:
        v.assign(rng.standard_normal(v.shape).astype(v.dtype))
    model(rng.standard_normal((B, S, T, F)).astype("float32"))  # eager: the states move on
    return model


def _parity(model: Any, rng: np.random.Generator, tmp_path: Any) -> None:
    from harness import check_parity

    batch = B if _is_keras(model) else 1  # torch: another batch size than the carried state's
    check_parity({"m": model}, rng.standard_normal((batch, S, T, F)), "halves")


def _training(model: Any, rng: np.random.Generator, tmp_path: Any) -> None:
    from harness import check_training_parity

    x, target = rng.standard_normal((1, S, T, F)), rng.standard_normal((1, S, T, H))
    check_training_parity(model, x.astype("float32"), target.astype("float32"), "halves", steps=2)


def _port(model: Any, rng: np.random.Generator, tmp_path: Any) -> None:
    from harness.porting import keras_class, torch_twin
    from models_keras import multistate_layers

    if _is_keras(model):
        (layer,) = multistate_layers(model)
        port_weights(layer, torch_twin(layer))
    else:
        port_weights(model, keras_class("lstm")(H, S))


def _export(model: Any, rng: np.random.Generator, tmp_path: Any) -> None:
    from harness.export import export

    export(model, tmp_path / "m.onnx", verify_steps=T)


CHECKS: dict[str, Callable[[Any, np.random.Generator, Any], None]] = {
    "check_parity": _parity,
    "check_training_parity": _training,
    "port_weights source": _port,
    "export": _export,
}
KERAS_CHECKS = ("check_parity", "port_weights source", "export")  # training takes a torch model


def _leaves_it(make: Callable[[np.random.Generator], Any], check: str, rng: np.random.Generator, tmp_path) -> None:
    model = make(rng)
    before = snapshot(model)
    CHECKS[check](model, rng, tmp_path)
    moved = differences(before, snapshot(model))
    assert not moved, f"{check} changed the caller's model:\n" + "\n".join(moved)


@pytest.mark.parametrize("check", list(CHECKS))
def test_checks_leave_a_torch_model_as_found(check, rng, tmp_path):
    if check == "check_training_parity":
        pytest.importorskip("keras")
    _leaves_it(_torch_model, check, rng, tmp_path)


@pytest.mark.keras
@pytest.mark.parametrize("check", KERAS_CHECKS)
def test_checks_leave_a_keras_model_as_found(check, rng, tmp_path):
    _leaves_it(_keras_model, check, rng, tmp_path)


def test_cli_file_port_leaves_the_source_file(rng, tmp_path):
    from harness.porting import convert_file
    from harness.porting.files import write_torch_file

    src = tmp_path / "m.pt"
    write_torch_file(_torch_model(rng).rnn.state_dict(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    convert_file(src, tmp_path / "m.keras", num_streams=S, batch_size=B, steps=T)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest, "the port rewrote its source file"


# ---- planted fault: a check that mutates its input ----------------------------------------------------------------


@contextlib.contextmanager
def _no_protection(models):
    yield


@pytest.mark.parametrize("check", ["check_parity", "check_training_parity"])
def test_planted_fault_a_check_that_mutates_its_input_is_caught(check, rng, tmp_path, monkeypatch):
    """Without ``left_as_found`` the checks change the caller's model, and the snapshots must say so."""
    if check == "check_training_parity":
        pytest.importorskip("keras")
    monkeypatch.setattr("harness.parity.engine.left_as_found", _no_protection)
    monkeypatch.setattr("harness.training.twins.left_as_found", _no_protection)
    model = _torch_model(rng)
    before = snapshot(model)
    CHECKS[check](model, rng, tmp_path)
    moved = differences(before, snapshot(model))
    print(f"planted fault ({check} unprotected) caught:", *moved, sep="\n  ")
    assert moved and any(line.startswith("states") for line in moved), moved


@pytest.mark.keras
def test_planted_fault_unprotected_keras_check_is_caught(rng, tmp_path, monkeypatch):
    monkeypatch.setattr("harness.parity.engine.left_as_found", _no_protection)
    model = _keras_model(rng)
    before = snapshot(model)
    _parity(model, rng, tmp_path)
    moved = differences(before, snapshot(model))
    assert any(line.startswith("states") for line in moved), f"{keras_backend()}: {moved}"


@pytest.mark.keras
def test_an_unbuilt_keras_layer_is_left_built_from_zero_and_checks_again(rng):
    """Keras cannot unbuild a layer: the check leaves it built for its batch size with zero states, so a
    second check runs and measures what the first did."""
    from harness import check_parity
    from models_keras import MultiStateLSTM

    layer = MultiStateLSTM(H, S)
    x = rng.standard_normal((B, S, T, F)).astype("float32")
    first, second = (check_parity({"m": layer}, x, "halves") for _ in range(2))
    assert layer.batch_size == B and all(not np.any(state) for state in layer.get_states())
    assert first.ok and second.ok and first.to_json() == second.to_json(), (first.table(), second.table())
