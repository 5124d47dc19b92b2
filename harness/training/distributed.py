"""Distributed training parity: the same truncated-BPTT run data-parallel and in one process, compared.

Each engine trains a multi-state LSTM/GRU/RNN with plain SGD, one update per chunk,
the state carried across chunks, once data-parallel over ``replicas`` and once in one
process on the concatenated (global) batch, from the same weights. The report holds
every step's loss on both sides, the largest weight difference and the largest
difference of the global carried state (every replica's rows) after the run:

- ``"torch-ddp"``: ``DistributedDataParallel`` over ``replicas`` gloo processes on the CPU
  (spawned here); the global state comes from ``models_torch.distributed.gather_states``.
  The run also proves resuming across replica counts: rank 0 saves the global state
  (``save_global_states``), one process resumes it, and the ranks resume the one-process
  checkpoint (``load_global_states``); both continue one chunk and are compared.
- ``"tf-mirrored"``: ``tf.distribute.MirroredStrategy`` over ``replicas`` devices (logical CPU
  devices: configure them before TensorFlow starts, see ``logical_cpus``), trained with ``fit``.
- ``"jax-data-parallel"``: ``keras.distribution`` with the state sharded along its batch axis
  (``models_keras.distributed.sharded_data_parallel``); virtual CPU devices need
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX is imported.

The tests plant faults (a row dropped from the gathered state, the state in DDP-broadcast buffers) by
wrapping ``_torch_parallel``/``_keras_run`` or with their own module; nothing here takes a fault.

Example:
    >>> report = check_distributed_training_parity("torch-ddp", "lstm")  # doctest: +SKIP
    >>> report.ok, report.max_state_error                                 # doctest: +SKIP
    (True, 5.96e-08)
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from harness.parity.tolerances import default_tolerance

ENGINES = ("torch-ddp", "tf-mirrored", "jax-data-parallel")
_ONE_PROCESS: dict[tuple, dict] = {}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of the check: the model (cell, sizes, dtype), the data split and the SGD schedule."""

    engine: str
    cell: str
    replicas: int
    rows: int  # batch rows per replica
    steps: int  # SGD updates, one per chunk
    chunk: int  # time steps per chunk
    lr: float
    dtype: str
    backend: str = "gloo"  # torch-ddp's process group
    features: int = 4
    units: int = 5
    streams: int = 3

    @property
    def global_batch(self) -> int:
        return self.replicas * self.rows


@dataclasses.dataclass
class DistributedParityReport:
    """Losses per step on both sides and the largest differences found (absolute)."""

    engine: str
    single_losses: list[float]
    parallel_losses: list[float]
    max_loss_error: float
    max_weight_error: float
    max_state_error: float
    atol: float
    resume_errors: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        worst = max([self.max_loss_error, self.max_weight_error, self.max_state_error, *self.resume_errors.values()])
        return worst <= self.atol

    def table(self) -> str:
        lines = [f"{self.engine}: {'step':>4} {'one process':>14} {'parallel':>14} {'abs diff':>10}"]
        for i, (a, b) in enumerate(zip(self.single_losses, self.parallel_losses)):
            lines.append(f"{'':>{len(self.engine)}}  {i:>4} {a:>14.8g} {b:>14.8g} {abs(a - b):>10.2e}")
        resumed = "".join(f", resume {k} {v:.2e}" for k, v in self.resume_errors.items())
        lines.append(
            f"losses {self.max_loss_error:.2e}, weights {self.max_weight_error:.2e}, states {self.max_state_error:.2e}"
            f"{resumed} (allowed {self.atol:g}): {'ok' if self.ok else 'FAIL'}"
        )
        return "\n".join(lines)


def training_data(config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded inputs ``(B, S, T, F)`` and targets ``(B, S, T, H)`` of the global batch, ``T`` = one chunk more
    than the training steps (the chunk after resuming)."""
    rng = np.random.default_rng(0)
    batch, steps = config.global_batch, (config.steps + 1) * config.chunk
    x = rng.standard_normal((batch, config.streams, steps, config.features)).astype(config.dtype)
    return x, rng.standard_normal((batch, config.streams, steps, config.units)).astype(config.dtype)


def _max_abs(a: Any, b: Any) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def _report(engine: str, single: dict, parallel: dict, dtype: str, atol: float | None, **resume: float) -> Any:
    return DistributedParityReport(
        engine,
        [float(v) for v in single["losses"]],
        [float(v) for v in parallel["losses"]],
        _max_abs([single["losses"]], [parallel["losses"]]),
        _max_abs(single["weights"], parallel["weights"]),
        _max_abs(single["states"], parallel["states"]),
        default_tolerance("parallel", dtype, atol=atol).atol,
        resume,
    )


def check_distributed_training_parity(
    engine: str,
    cell: str,
    *,
    replicas: int = 2,
    rows: int = 2,
    steps: int = 3,
    chunk: int = 4,
    lr: float = 0.5,
    dtype: str = "float32",
    atol: float | None = None,
    backend: str = "gloo",
) -> DistributedParityReport:
    """Train data-parallel over ``replicas`` (``rows`` batch rows each) and in one process; compare.

    Args:
        engine: one of ``ENGINES``.
        cell: a key of ``multistate_core.cells.CELLS``.
        steps, chunk: SGD updates and the time steps of each chunk (the state carries over).
        atol: allowed absolute difference (default: the "parallel" row of ``harness.parity.tolerances``).
        backend: ``torch-ddp`` only: ``"gloo"`` (CPU processes) or ``"nccl"`` (one GPU per rank; the
            one-process run on ``cuda:0``; never run here: marked ``gpu`` in the suite).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    config = RunConfig(engine, cell, replicas, rows, steps, chunk, lr, dtype, backend)
    x, y = training_data(config)
    if engine == "torch-ddp":
        return _torch_ddp(config, x, y, atol)
    key = (config, x.shape)
    if key not in _ONE_PROCESS:  # the one-process side of a configuration is the same every time: run it once
        _ONE_PROCESS[key] = _keras_run(config, x, y, parallel=False)
    parallel = _keras_run(config, x, y, parallel=True)
    return _report(engine, _ONE_PROCESS[key], parallel, dtype, atol, **parallel.get("resume", {}))


# -- torch DDP ---------------------------------------------------------------------------------------


def _torch_module(config: RunConfig, batch: int) -> Any:
    import torch

    from harness.porting.layers import torch_class

    torch.manual_seed(0)
    module = torch_class(config.cell)(
        config.features, config.units, config.streams, batch_size=batch, dtype=getattr(torch, config.dtype)
    )
    return module.to("cuda:0" if config.backend == "nccl" else "cpu")


def _torch_train(model: Any, module: Any, x: np.ndarray, y: np.ndarray, chunks: range, config: RunConfig) -> list:
    """SGD on MSE, one update per chunk; returns each step's local loss (a tensor)."""
    import torch

    optimizer = torch.optim.SGD(module.parameters(), lr=config.lr)
    device = next(module.parameters()).device
    losses = []
    for c in chunks:
        part = slice(c * config.chunk, (c + 1) * config.chunk)
        optimizer.zero_grad()
        xc, yc = (torch.from_numpy(a[:, :, part]).to(device) for a in (x, y))
        loss = torch.nn.functional.mse_loss(model(xc), yc)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def _weights(module: Any) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in module.parameters()]


def _ddp_worker(rank: int, port: int, config: RunConfig, x: np.ndarray, y: np.ndarray, folder: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from models_torch import distributed

    world = config.replicas
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if config.backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(config.backend, rank=rank, world_size=world)
    try:
        module = _torch_module(config, config.rows).to(f"cuda:{rank}" if config.backend == "nccl" else "cpu")
        mine = slice(rank * config.rows, (rank + 1) * config.rows)
        ddp = DistributedDataParallel(module)
        losses = _torch_train(ddp, module, x[mine], y[mine], range(config.steps), config)
        global_losses = torch.stack(losses)
        dist.all_reduce(global_losses)  # equal local batches: the global MSE is the mean of the local ones
        states = distributed.gather_states(module)
        distributed.save_global_states(module, f"{folder}/parallel.npz")
        weights = _weights(module)
        # Resume the one-process checkpoint (1 -> world replicas) and continue one chunk.
        distributed.load_global_states(module, f"{folder}/single.npz")
        resume_chunk = range(config.steps, config.steps + 1)
        _torch_train(DistributedDataParallel(module), module, x[mine], y[mine], resume_chunk, config)
        resumed = distributed.gather_states(module)
        if rank == 0:
            np.savez(
                f"{folder}/result.npz",
                losses=(global_losses / world).cpu().numpy(),
                **{f"weight{i}": w for i, w in enumerate(weights)},  # type: ignore[arg-type]  # mypy fits it to allow_pickle
                states=np.array([s.cpu().numpy() for s in states]),
                resumed=np.array([s.cpu().numpy() for s in resumed]),
            )
        dist.barrier()  # no rank tears the group down while another still talks to it
    except BaseException:
        dist.destroy_process_group()
        raise
    leave_worker()


def leave_worker() -> None:
    """End a spawned data-parallel worker whose ranks all finished (past a barrier) and wrote what they
    owe: at once, without tearing the gloo group down, whose teardown now and then aborts a finished worker
    (SIGABRT, "terminate called without an active exception"; docs/distributed.md has the measurements)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torch_parallel(config: RunConfig, x: np.ndarray, y: np.ndarray, folder: str) -> dict:
    """The data-parallel run (spawned ranks; they resume ``folder/single.npz`` too): its losses, weights, the
    gathered global states, and ``resumed``, the global states one chunk after that resume."""
    import torch.multiprocessing as mp

    args = (_free_port(), config, x, y, folder)
    mp.start_processes(_ddp_worker, args, nprocs=config.replicas, start_method="spawn")
    with np.load(f"{folder}/result.npz") as got:
        weights = [got[f"weight{i}"] for i in range(sum(k.startswith("weight") for k in got.files))]
        return {"losses": got["losses"], "states": tuple(got["states"]), "weights": weights,
                "resumed": tuple(got["resumed"])}  # fmt: skip


def _torch_ddp(config: RunConfig, x: np.ndarray, y: np.ndarray, atol: float | None) -> DistributedParityReport:
    import torch

    single = _torch_module(config, config.global_batch)
    losses = _torch_train(single, single, x, y, range(config.steps), config)
    expected = {"losses": [float(v) for v in losses], "states": single.numpy_states()}
    resume_chunk = range(config.steps, config.steps + 1)
    with tempfile.TemporaryDirectory() as folder:
        single.save_states(f"{folder}/single.npz")
        after_training = _weights(single)
        _torch_train(single, single, x, y, resume_chunk, config)  # one chunk more, from the checkpoint
        parallel = _torch_parallel(config, x, y, folder)
        # world -> 1: one process resumes the ranks' checkpoint and goes on from the same weights.
        one = _torch_module(config, config.global_batch)
        with torch.no_grad():
            for p, w in zip(one.parameters(), after_training):
                p.copy_(torch.from_numpy(w))
        one.load_states(f"{folder}/parallel.npz")
        _torch_train(one, one, x, y, resume_chunk, config)
    expected["weights"] = after_training
    replicas = config.replicas
    return _report(
        "torch-ddp",
        expected,
        parallel,
        config.dtype,
        atol,
        **{
            f"{replicas}->1": _max_abs(one.numpy_states(), single.numpy_states()),
            f"1->{replicas}": _max_abs(parallel["resumed"], single.numpy_states()),
        },
    )


# -- Keras: tf.distribute and keras.distribution ------------------------------------------------------


def logical_cpus(count: int) -> None:
    """Split the CPU into ``count`` logical TensorFlow devices (before TensorFlow's runtime starts)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


_STRATEGIES: dict[tuple[str, ...], Any] = {}


def _keras_scope(engine: str, replicas: int | None) -> Callable[[], Any]:
    """A context factory under which the model is built data-parallel (a no-op for one process)."""
    import contextlib

    import keras

    if replicas is None:
        return contextlib.nullcontext
    if engine == "tf-mirrored":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
        if len(devices) < replicas:
            raise RuntimeError(f"{replicas} replicas need {replicas} logical CPUs: call logical_cpus() first")
        if tuple(devices) not in _STRATEGIES:  # one per process and devices: new ones would reuse collective keys
            _STRATEGIES[tuple(devices)] = tf.distribute.MirroredStrategy(devices)
        return _STRATEGIES[tuple(devices)].scope
    from models_keras.distributed import sharded_data_parallel

    devices = keras.distribution.list_devices()[:replicas]
    if len(devices) < replicas:
        raise RuntimeError(f"{replicas} replicas need {replicas} devices: set XLA_FLAGS before importing JAX")
    return sharded_data_parallel(devices).scope


def _keras_model(config: RunConfig) -> Any:
    import keras

    from harness.porting.layers import keras_class

    keras.utils.set_random_seed(0)
    dtype = config.dtype
    inputs = keras.Input(batch_shape=(config.global_batch, config.streams, None, config.features), dtype=dtype)
    model = keras.Model(inputs, keras_class(config.cell)(config.units, config.streams, dtype=dtype)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    return model


def _keras_run(config: RunConfig, x: np.ndarray, y: np.ndarray, *, parallel: bool) -> dict:
    """Train with ``fit`` (one update per chunk), in one process or data-parallel over ``config.replicas``;
    the parallel run also round-trips ``model.save``."""
    import keras

    from models_keras import multistate_layers

    floatx = keras.config.floatx()
    keras.config.set_floatx(str(x.dtype))
    try:
        replicas = config.replicas if parallel else None
        scope = _keras_scope(config.engine, replicas)
        losses = []
        with scope():
            model = _keras_model(config)
            model.optimizer.learning_rate.assign(config.lr)
            for c in range(config.steps):
                part = slice(c * config.chunk, (c + 1) * config.chunk)
                history = model.fit(x[:, :, part], y[:, :, part], batch_size=x.shape[0], shuffle=False, verbose=0)
                losses.append(history.history["loss"][0])
        (layer,) = multistate_layers(model)
        states = layer.get_states()
        result: dict[str, object] = {
            "losses": losses,
            "states": states,
            "weights": [np.asarray(w) for w in model.trainable_weights],
        }
        if replicas is not None:
            with tempfile.TemporaryDirectory() as folder:
                model.save(f"{folder}/m.keras")  # the global state, read back by one process
                back = multistate_layers(keras.models.load_model(f"{folder}/m.keras"))[0].get_states()
            result["resume"] = {f"save {replicas}->load 1": _max_abs(back, layer.get_states())}
        return result
    finally:
        keras.config.set_floatx(floatx)
