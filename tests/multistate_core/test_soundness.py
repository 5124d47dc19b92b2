"""Soundness of the carried state: resets that clear NaN, DDP, autocast and mixed precision, threads, edges."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

from harness.porting import torch_class
from models_torch import inner_rnn
from tests.helpers import CELLS, B, F, H, S, T, keras_backend, random_input


def _keras_lstm():
    from models_keras import MultiStateLSTM

    return MultiStateLSTM(H, S, batch_size=B)


RESETS = {
    "all": ({}, np.ones((B, S), bool)),
    "streams": ({"streams": [1]}, np.array([[False, True, False]] * B)),
    "mask": ({"mask": np.array([[True, False, False], [False, False, True]])}, None),
}


@pytest.mark.parametrize("framework", ["torch", pytest.param("keras", marks=pytest.mark.keras)])
@pytest.mark.parametrize("how", RESETS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_reset_clears_nan_and_inf(framework, how, value):
    model = torch_class("lstm")(F, H, S, batch_size=B) if framework == "torch" else _keras_lstm()
    x = np.full((B, S, 2, F), value, "float32")
    model(torch.from_numpy(x) if framework == "torch" else x)
    kwargs, cleared = RESETS[how]
    cleared = kwargs["mask"] if cleared is None else cleared
    model.reset_states(**kwargs)
    for state in model.numpy_states():
        assert np.all(state[:, cleared] == 0), f"reset {how} left {state[:, cleared]}"
        assert not np.isfinite(state[:, ~cleared]).any()


def test_failed_first_call_fixes_no_batch_size(rng, monkeypatch):
    model = torch_class("gru")(F, H, S)

    def fail(*args, **kwargs):
        raise RuntimeError("planted failure inside the recurrent call")

    monkeypatch.setattr(inner_rnn, "run_segmented", fail)
    with pytest.raises(RuntimeError, match="planted failure"):
        model(torch.from_numpy(random_input(rng, (B, S, T, F))))
    assert model.batch_size is None
    monkeypatch.undo()
    assert model(torch.from_numpy(random_input(rng, (B + 1, S, T, F)))).shape == (B + 1, S, T, H)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_autocast_keeps_the_state_dtype(cell, rng, tmp_path):
    """Under autocast (bfloat16 on the CPU) the carried state stays float32: the next plain call and a save work."""
    model = torch_class(cell)(F, H, S)
    x = torch.from_numpy(random_input(rng, (B, S, T, F)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            model.rnn(x[:, 0])  # torch's own module: oneDNN has no bfloat16 LSTM on some CPUs (AVX2-only)
        except RuntimeError as error:
            pytest.skip(f"torch's own {type(model.rnn).__name__} fails under CPU bfloat16 autocast here: {error}")
        model(x)
    assert {s.dtype for s in model.get_states()} == {torch.float32}
    model(x)
    model.save_states(tmp_path / "s.npz")


@pytest.mark.parametrize("cell", CELLS)
def test_concurrent_per_stream_calls_lose_no_update(cell, rng):
    """Threads each driving their own stream (``stream=k``) end where one thread doing it all would."""
    torch.manual_seed(0)
    model, alone = torch_class(cell)(F, H, S, batch_size=B), torch_class(cell)(F, H, S, batch_size=B)
    alone.load_state_dict(model.state_dict())
    chunks = torch.from_numpy(random_input(rng, (S, 40, B, 2, F)))
    start = threading.Barrier(S)

    def drive(k: int) -> None:
        start.wait()
        with torch.no_grad():
            for chunk in chunks[k]:
                model(chunk, stream=k)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(S)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for k in range(S):
            for chunk in chunks[k]:
                alone(chunk, stream=k)
    for a, b in zip(model.get_states(), alone.get_states(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_state_is_no_buffer_so_ddp_cannot_broadcast_it():
    """DDP broadcasts ``module.buffers()`` from rank 0; the carried state is none of them (see test_distributed)."""
    model = torch_class("lstm")(F, H, S, batch_size=B)
    assert list(model.buffers()) == []
    assert all(s.device.type == "meta" for s in model.to("meta").get_states())


@pytest.mark.keras
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("cell", CELLS)
def test_keras_mixed_precision_carries_state(policy, cell, rng):
    """Under a mixed policy the state variables stay float32 and are carried: chunked == whole (policy tolerance)."""
    import keras

    from harness.porting import keras_class

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = keras_class(cell)(H, S, batch_size=B)
        x = random_input(rng, (B, S, T, F))
        whole = keras.ops.convert_to_numpy(layer(x)).astype("float32")
        layer.reset_states()
        halves = [keras.ops.convert_to_numpy(layer(x[:, :, c])).astype("float32") for c in (slice(0, 5), slice(5, T))]
    finally:
        keras.config.set_dtype_policy(previous)
    assert {str(s.dtype) for s in layer.get_states()} == {"float32"}
    assert np.abs(layer.get_states()[0]).max() > 0, "state not carried"
    error = np.abs(np.concatenate(halves, 2) - whole).max()
    assert error <= (2e-2 if policy == "mixed_bfloat16" else 2e-3), error


@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "tensorflow", reason="the XLA path exists on TensorFlow only")
def test_xla_compiled_layer_is_freed(rng):
    from tests.keras_helpers import functional, the_layer

    model = functional("lstm")
    model.predict_on_batch(random_input(rng, (B, S, T, F)))
    ref = weakref.ref(the_layer(model))
    del model
    gc.collect()
    assert ref() is None, "a layer that ran on the XLA path is still held"


@pytest.mark.keras
def test_private_keras_api_we_rely_on_is_still_there():
    """No public Keras API walks nested layers or tells a symbolic trace; these two private ones must not move."""
    import keras

    from models_keras import MultiStateGRU, backends, multistate_layers

    inner = MultiStateGRU(H, S, batch_size=B)
    model = keras.Sequential([keras.Input(batch_shape=(B, S, None, F)), inner])
    assert multistate_layers(model) == [inner]
    assert backends.symbolic() is False
