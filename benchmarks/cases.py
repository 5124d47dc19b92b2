"""What the suite measures: shapes, jobs, implementations, and the one plan that combines them.

A case is one (job, cell, shape, implementation). ``PLAN`` lists them table-driven, so adding a
shape or an implementation is one line; ``flops_per_call`` gives the work each case does.
"""

from __future__ import annotations

import dataclasses

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TRAIN_FLOP_FACTOR = 3  # forward + backward (about twice the forward) for one training step; an estimate
PER_STREAM_LOOP_CAP_CPU = 256  # the per-stream loop is skipped above this many streams on CPU, to bound the run time


@dataclasses.dataclass(frozen=True)
class Shape:
    """Batch, streams, time steps, features and hidden units of a case; ``gpu_only`` shapes skip without a GPU."""

    B: int
    S: int
    T: int
    F: int
    H: int
    gpu_only: bool = False

    @property
    def name(self) -> str:
        return f"B{self.B}-S{self.S}-T{self.T}-F{self.F}-H{self.H}"


@dataclasses.dataclass(frozen=True)
class Job:
    """What one timed call does.

    ``chunk``: time steps per call (None: the whole sequence ``T``); ``train``: forward, backward and
    SGD update instead of inference.
    """

    name: str
    chunk: int | None = None
    train: bool = False

    def steps(self, shape: Shape) -> int:
        return self.chunk or shape.T


JOBS = {
    job.name: job
    for job in (
        Job("forward"),  # the whole sequence in one call
        Job("train", train=True),  # one truncated-BPTT step over the whole sequence
        Job("stream-1", chunk=1),  # streaming: one call per chunk of 1 step, state carried
        Job("stream-16", chunk=16),
        Job("scaling"),  # forward at B=1 over a sweep of stream counts
        Job("gemm", chunk=1),  # one matmul of the per-step shape (B*S, F+H) @ (F+H, G*H)
    )
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: ``impl`` is ``<framework>-<name>``, e.g. ``torch-multistate`` or ``keras-fused``."""

    job: Job
    cell: str
    shape: Shape
    impl: str

    @property
    def framework(self) -> str:
        return self.impl.split("-", 1)[0]

    @property
    def variant(self) -> str:
        return self.impl.split("-", 1)[1]

    @property
    def id(self) -> str:
        return f"{self.job.name}-{self.cell}-{self.shape.name}-{self.impl}"

    @property
    def group(self) -> str:
        if self.job.name == "scaling":
            return f"scaling S={self.shape.S}"
        return f"{self.job.name} {self.cell} {self.shape.name}"


SMALL = Shape(4, 8, 100, 32, 128)
LARGE = Shape(8, 16, 256, 128, 256)
GPU_ONLY = Shape(64, 16, 100, 256, 512, gpu_only=True)
SCALING_STREAMS = (1, 4, 16, 64, 256, 1024, 4096)
SCALING_SHAPES = tuple(Shape(1, s, 16, SMALL.F, SMALL.H) for s in SCALING_STREAMS)

TORCH_IMPLS = ("torch-multistate", "torch-fused", "torch-loop")
KERAS_IMPLS = ("keras-multistate", "keras-per-stream", "keras-fused")
MULTISTATE_AND_FUSED = ("torch-multistate", "torch-fused", "keras-multistate", "keras-fused")

# (cells, jobs, shapes, implementations): every combination in a row is one case.
PLAN = (
    (("lstm",), ("forward", "train", "stream-1", "stream-16"), (SMALL, LARGE, GPU_ONLY), TORCH_IMPLS + KERAS_IMPLS),
    (("gru", "rnn"), ("forward", "train"), (SMALL,), MULTISTATE_AND_FUSED),
    (("lstm",), ("scaling",), SCALING_SHAPES, TORCH_IMPLS + ("keras-multistate",)),
    (("lstm",), ("gemm",), (SMALL, LARGE, GPU_ONLY), ("torch-gemm",)),
    (("gru", "rnn"), ("gemm",), (SMALL,), ("torch-gemm",)),
)


def all_cases() -> list[Case]:
    """Every case of ``PLAN``, in plan order."""
    return [
        Case(JOBS[job], cell, shape, impl)
        for cells, jobs, shapes, impls in PLAN
        for job in jobs
        for cell in cells
        for shape in shapes
        for impl in impls
    ]


def flops_per_step(cell: str, shape: Shape) -> int:
    """FLOPs of one time step of one layer: ``2 * B*S * (F + H) * G*H`` (G gates: 4 LSTM, 3 GRU, 1 RNN)."""
    return 2 * shape.B * shape.S * (shape.F + shape.H) * GATES[cell] * shape.H


def flops_per_call(case: Case) -> int:
    """FLOPs of one timed call: per step times steps per call, times ``TRAIN_FLOP_FACTOR`` for a training step."""
    factor = TRAIN_FLOP_FACTOR if case.job.train else 1
    return factor * flops_per_step(case.cell, case.shape) * case.job.steps(case.shape)
