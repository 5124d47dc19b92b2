"""torch DDP keeps each rank's stream states: 2 gloo processes on the CPU equal one process on the whole batch."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from harness import default_tolerance
from harness.porting import torch_class
from harness.training.distributed import leave_worker
from models_torch import MultiStateLSTM
from models_torch.distributed import gather_states
from tests.helpers import F, H, S

RANKS, ROWS, CHUNKS, STEPS = 2, 2, 3, 5  # ROWS batch rows per rank
PARALLEL = default_tolerance("parallel", "float32")  # DDP vs one process; the row's rtol is 0: max abs decides


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((RANKS * ROWS, S, CHUNKS * STEPS, F)).astype("float32")
    return x, rng.standard_normal((RANKS * ROWS, S, CHUNKS * STEPS, H)).astype("float32")


def _train(model: torch.nn.Module, trained: torch.nn.Module, rows: slice) -> None:
    """Truncated-BPTT SGD over the chunks on ``rows`` of the data (``model`` may be the DDP wrapper)."""
    x, y = (torch.from_numpy(a[rows]) for a in _data())
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    for c in range(CHUNKS):
        part = slice(c * STEPS, (c + 1) * STEPS)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x[:, :, part]), y[:, :, part]).backward()
        optimizer.step()


class StateInBuffers(MultiStateLSTM):
    """Planted fault: the carried state also registered as buffers, which DDP broadcasts from rank 0."""

    def _store(self, states: tuple[torch.Tensor, ...]) -> None:
        super()._store(states)
        for name, state in zip(self.state_names, self._carried):
            self._buffers[f"state_{name}"] = state


def _rank(rank: int, port: int, out: str, planted: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    torch.manual_seed(0)
    module = (StateInBuffers if planted else MultiStateLSTM)(F, H, S, batch_size=ROWS)  # state exists at wrapping
    _train(DistributedDataParallel(module), module, slice(rank * ROWS, (rank + 1) * ROWS))
    h, c = module.numpy_states()
    np.savez(f"{out}/rank{rank}.npz", h=h, c=c, **{k: v.detach().numpy() for k, v in module.rnn.state_dict().items()})
    _gather_unequal_batches(rank, out)
    dist.barrier()  # no rank tears the group down while another still talks to it
    leave_worker()


def _gather_unequal_batches(rank: int, out: str) -> None:
    """Rank r carries r + 1 rows: ``gather_states`` must raise on every rank (it aborted the worker inside
    gloo), and the group must still work afterwards (the caller's barrier). Writes the message."""
    try:
        gather_states(MultiStateLSTM(F, H, S, batch_size=rank + 1))
        message = "no error"
    except ValueError as e:
        message = str(e)
    with open(f"{out}/refusal{rank}.txt", "w") as f:
        f.write(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worst_state_error(tmp_path, planted: bool) -> tuple[float, float]:
    """Largest state and weight differences of any rank against one process on the whole batch."""
    mp.spawn(_rank, args=(_free_port(), str(tmp_path), planted), nprocs=RANKS, join=True)
    torch.manual_seed(0)
    single = torch_class("lstm")(F, H, S, batch_size=RANKS * ROWS)
    _train(single, single, slice(None))
    h, c = single.numpy_states()
    state_error = weight_error = 0.0
    for rank in range(RANKS):
        got = np.load(tmp_path / f"rank{rank}.npz")
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        for name, expected in (("h", h[:, rows]), ("c", c[:, rows])):
            state_error = max(state_error, float(np.abs(got[name] - expected).max()))
        for name, value in single.rnn.state_dict().items():
            weight_error = max(weight_error, float(np.abs(got[name] - value.numpy()).max()))
    return state_error, weight_error


@pytest.fixture(scope="module")
def unplanted_run(tmp_path_factory):
    """One run of the ranks (spawning them is the slow part) for the tests that read it."""
    folder = tmp_path_factory.mktemp("ddp")
    return folder, _worst_state_error(folder, planted=False)


def test_ddp_keeps_each_ranks_stream_states(unplanted_run):
    _, (state_error, weight_error) = unplanted_run
    atol = PARALLEL.atol
    measured = f"DDP vs one process: states off by {state_error:.3g}, weights by {weight_error:.3g} (atol={atol:g})"
    print(measured)
    assert state_error <= atol and weight_error <= atol, measured


def test_gather_states_refuses_unequal_local_batches_on_every_rank(unplanted_run):
    """Unequal local batches used to abort the workers inside gloo (SIGABRT); now a ValueError on each rank,
    before the data is gathered, naming every rank's batch."""
    folder, _ = unplanted_run
    for rank in range(RANKS):
        message = (folder / f"refusal{rank}.txt").read_text()
        assert "rank 0: batch 1" in message and "rank 1: batch 2" in message, f"rank {rank}: {message}"


def test_planted_state_in_buffers_is_caught(tmp_path):
    """The check can fail: with the state in DDP's broadcast buffers, rank 1 ends off one process."""
    state_error, weight_error = _worst_state_error(tmp_path, planted=True)
    print(f"state in buffers: state {state_error:.3g}, weights {weight_error:.3g} off one process")
    assert state_error > PARALLEL.atol, f"the planted fault passed: states off by {state_error:.3g}, within {PARALLEL}"
