"""Every path on CUDA (``-m gpu``; skipped where torch sees no CUDA device), and the CPU checks of the GPU plumbing.

Run on a GPU machine, once per Keras backend (``docs/gpu.md``):

    python -m pytest -m gpu tests/test_gpu.py
    KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -m gpu tests/test_gpu.py
    KERAS_BACKEND=torch python -m pytest -m gpu tests/test_gpu.py

GPU tolerance: the harness table's "cross" row (``tests/conformance.assert_twins_match``), float32 against the CPU
over 1,000 steps (chunks of 100) with TF32 off (``full_precision_matmul``), and float64.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from harness import check_parity, check_training_parity
from harness.cli import main
from harness.parity import full_precision_matmul
from harness.porting import keras_twin, port_weights, read_weights, torch_class
from harness.scenarios import run_backend
from models_torch.graphs import GraphStep
from multistate_core.cells import to_keras
from tests.conformance import assert_twins_match
from tests.helpers import B, F, H, S, T, cuda_available, keras_backend, random_input

CELLS = ("lstm", "gru", "rnn")
LONG, CHUNK = 1_000, 100


def cpu_and_cuda(cell: str, dtype: str, layers: int = 2) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A seeded module on the CPU and its copy (same weights) on CUDA, both in eval mode."""
    torch.manual_seed(0)
    cpu = torch_class(cell)(F, H, S, num_layers=layers, dtype=getattr(torch, dtype)).eval()
    return cpu, copy.deepcopy(cpu).cuda()


# ---- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_cuda_matches_cpu_over_1000_steps(cell, dtype, rng):
    cpu, cuda = cpu_and_cuda(cell, dtype)
    x = torch.from_numpy(random_input(rng, (B, S, LONG, F), dtype))
    with full_precision_matmul(), torch.no_grad():
        for start in range(0, LONG, CHUNK):
            part = x[:, :, start : start + CHUNK]
            what = f"{cell} {dtype}, CUDA vs CPU, steps {start}+{CHUNK}"
            assert_twins_match(cuda(part.cuda()), cpu(part), f"{what}: output")
            assert_twins_match(cuda.get_states(), cpu.get_states(), f"{what}: states")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_graph_step_replays_what_the_module_computes(dtype, rng):
    module, _ = cpu_and_cuda("lstm", dtype)
    module = module.cuda()
    reference = copy.deepcopy(module)
    x = torch.from_numpy(random_input(rng, (B, S, 200, F), dtype)).cuda()
    with full_precision_matmul(), torch.no_grad():
        step = GraphStep(module, batch_size=B, chunk=1)  # captured inside: the graph keeps TF32 off
        assert step.captured
        for t in range(200):
            if t == 120:
                for m in (module, reference):
                    m.reset_states(streams=[1])
            part = x[:, :, t : t + 1].contiguous()
            assert_twins_match(step(part), reference(part), f"{dtype} graph replay vs the module, step {t}: output")
            assert_twins_match(module.get_states(), reference.get_states(), f"{dtype} step {t}: states")


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_state_checkpoint_saved_on_cuda_resumes_on_cpu(cell, tmp_path, rng):
    cpu, cuda = cpu_and_cuda(cell, "float64")
    x = torch.from_numpy(random_input(rng, (B, S, 40, F), "float64"))
    path = tmp_path / "streams.npz"
    with torch.no_grad():
        whole = cuda(x.cuda()).cpu()
        cuda.reset_states()
        first = cuda(x[:, :, :15].cuda()).cpu()
        cuda.save_states(path)
        cpu.load_states(path)
        second = cpu(x[:, :, 15:])
        cuda.load_states(path)  # and back onto the GPU from the same file
        assert cuda.get_states()[0].is_cuda
    assert_twins_match(torch.cat([first, second], 2), whole, f"{cell}: resumed on the CPU vs whole on CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_porting_from_and_to_a_cuda_module(cell, rng):
    cpu, cuda = cpu_and_cuda(cell, "float64")
    model = keras_twin(cuda, batch_size=B)  # from CUDA
    x = random_input(rng, (B, S, 30, F), "float64")
    with full_precision_matmul():
        report = check_parity({"torch-cpu": cpu, "keras": model}, x, "random")
    assert report.ok, report.table()
    back = torch_class(cell)(F, H, S, num_layers=2, dtype=torch.float64).cuda()
    port_weights(model.layers[-1], back)  # to CUDA
    assert back.rnn.weight_ih_l0.is_cuda
    for a, b in zip(read_weights(back).layers, read_weights(cpu).layers):  # Keras's form: biases merged
        for got, expected in zip(to_keras(cell, a), to_keras(cell, b), strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu
@pytest.mark.keras
def test_training_parity_with_the_module_on_cuda(rng):
    torch.manual_seed(0)
    module = torch_class("gru")(F, H, S, dtype=torch.float64).cuda()
    x, target = random_input(rng, (B, S, 12, F), "float64"), random_input(rng, (B, S, 12, H), "float64")
    report = check_training_parity(module, x, target, "random", lr=0.3, steps=6)
    assert report.device.startswith("cuda")
    assert report.ok, report.table()


@pytest.mark.gpu
@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "torch", reason="the Keras torch backend's fused cuDNN path")
@pytest.mark.parametrize("cell", CELLS)
def test_keras_torch_backend_on_cuda_matches_torch_on_cpu(cell, rng):
    from models_keras import backends, fast_paths

    cpu, _ = cpu_and_cuda(cell, "float32")
    model = keras_twin(cpu, batch_size=B)
    layer = model.layers[-1]
    assert fast_paths.path_name(layer) == "torch-fused"
    params = backends.active.parameters(layer)
    assert all(p.is_cuda and p.is_contiguous() for p in params.values())
    x = random_input(rng, (B, S, 60, F))
    with full_precision_matmul():
        report = check_parity({"torch-cpu": cpu, "keras-torch-cuda": model}, x, "random")
    assert report.ok, report.table()


@pytest.mark.gpu
@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "jax", reason="Keras on JAX")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_keras_jax_on_gpu_matches_torch_on_cpu(cell, dtype, rng):
    import jax

    if jax.default_backend() != "gpu":
        pytest.skip(f"JAX runs on {jax.default_backend()}, not a GPU (is jax[cuda] installed?)")
    cpu, _ = cpu_and_cuda(cell, dtype)
    model = keras_twin(cpu, batch_size=B)
    x = random_input(rng, (B, S, 60, F), dtype)
    with full_precision_matmul() as settings:
        assert settings["jax"]["jax_default_matmul_precision"] == "highest"
        report = check_parity({"torch-cpu": cpu, "keras-jax-gpu": model}, x, "random", whole_state_checks=4)
    assert report.ok, report.table()


@pytest.mark.gpu
def test_cli_parity_on_cuda(capsys):
    assert main(["parity", "--backend", "torch", "--device", "cuda", "--cell", "gru", "--dtype", "float32"]) == 0
    assert "torch=cuda:0" in capsys.readouterr().out


# ---- CPU checks of the GPU plumbing -------------------------------------------------------------


@pytest.mark.skipif(cuda_available(), reason="checks the refusal where there is no CUDA")
def test_cli_refuses_cuda_where_there_is_none(capsys):
    assert main(["parity", "--backend", "torch", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "error: --device cuda:" in err and "Traceback" not in err


def test_scenario_rows_name_each_models_device():
    rows = list(run_backend("torch", ["rnn"], ["float32"], streams=2))
    assert rows and all(r["device"] == {"torch": "cpu"} for r in rows)


@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "torch", reason="the fused path of the Keras torch backend")
@pytest.mark.parametrize("cell", CELLS)
def test_fused_parameters_are_contiguous(cell):
    """cuDNN flattens the weights into one buffer and refuses strided views: the fast path hands it copies."""
    from models_keras import backends

    torch.manual_seed(0)
    layer = keras_twin(torch_class(cell)(F, H, S, num_layers=2))
    params = backends.active.parameters(layer)
    assert len(params) == 2 * (4 if layer.use_bias else 2)
    assert all(p.is_contiguous() for p in params.values())


@pytest.mark.keras
def test_training_parity_feeds_the_module_on_its_own_device(rng):
    torch.manual_seed(0)
    module = torch_class("lstm")(F, H, S, dtype=torch.float64)
    seen = []
    module.register_forward_pre_hook(lambda _module, args: seen.append(args[0].device))
    x, target = random_input(rng, (B, S, 6, F), "float64"), random_input(rng, (B, S, 6, H), "float64")
    report = check_training_parity(module, x, target, "halves", steps=2)
    assert report.ok, report.table()
    assert seen and set(seen) == {next(module.parameters()).device}
    assert report.device == "cpu" and report.matmul["torch"]["float32_matmul_precision"] == "highest"


@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "jax", reason="the cuDNN path of the JAX backend")
@pytest.mark.parametrize("bias", [True, False])
def test_jax_cudnn_weight_layout_matches_the_keras_lstm(bias, rng):
    """On the CPU: the flat cuDNN weights, unpacked and run by JAX's reference LSTM, give the layer's result."""
    import jax.numpy as jnp
    import keras
    from jax.experimental import rnn

    from models_keras import MultiStateLSTM, backends

    layer = MultiStateLSTM(H, S, num_layers=2, use_bias=bias, batch_size=B)
    x = random_input(rng, (B, S, T, F))
    expected = keras.ops.convert_to_numpy(layer(x))
    states = [jnp.asarray(s.reshape(2, B * S, H)) for s in layer.get_states()]
    weights = rnn.unpack_lstm_weights(backends.active.cudnn_lstm_weights(layer), F, H, 2, False)
    lengths = jnp.full((B * S,), T, jnp.int32)
    zeros = [jnp.zeros_like(s) for s in states]
    y, h, c = rnn.lstm_ref(jnp.asarray(x.reshape(B * S, T, F)), *zeros, *weights, lengths, F, H, 2, 0.0, False)
    assert_twins_match(np.asarray(y).reshape(B, S, T, H), expected, "jax's reference LSTM vs the layer: output")
    assert_twins_match([h, c], states, "jax's reference LSTM vs the layer: states")


@pytest.mark.gpu
@pytest.mark.keras
@pytest.mark.skipif(keras_backend() != "jax", reason="the cuDNN path of the JAX backend")
def test_jax_cudnn_path_on_gpu_matches_the_generic_path(rng):
    from models_keras import MultiStateLSTM, fast_paths

    fast, generic = MultiStateLSTM(H, S, num_layers=2, batch_size=B), MultiStateLSTM(H, S, num_layers=2, fused=False)
    x = random_input(rng, (B, S, T, F))
    fast(x[:, :, :1])
    generic.build(x.shape)
    generic.set_weights(fast.get_weights())
    generic.reset_states(), fast.reset_states()
    assert fast_paths.path_name(fast) == "jax-cudnn"
    with full_precision_matmul():
        assert_twins_match(fast(x), generic(x), "the cuDNN path vs the generic path: output")
    assert_twins_match(fast.get_states(), generic.get_states(), "the cuDNN path vs the generic path: states")
