"""What the suite measures: shapes, jobs, implementations, and the one plan that combines them.

A case is one (job, cell, shape, implementation). ``PLAN`` lists them table-driven, so adding a
shape or an implementation is one line; ``flops_per_call`` gives the work each case does. Everything
about a cell (gates, classes) comes from ``multistate_core.cells.CELLS``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from multistate_core.cells import CELLS

TRAIN_FLOP_FACTOR = 3  # forward + backward (about twice the forward) for one training step; an estimate
PER_STREAM_LOOP_CAP_CPU = 256  # the per-stream loop is skipped above this many streams on CPU, to bound the run time
EPISODE_SEED = 0  # seeds the reset positions and lengths of the episode jobs


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation: its framework (``"torch"`` or ``"keras"``) and its name there.

    ``backend`` is the Keras backend a Keras result was measured on (``Impl.on``); it stays empty in
    the plan and for torch, whose results do not depend on the Keras backend.
    """

    framework: str
    name: str
    backend: str = ""

    @property
    def id(self) -> str:
        """``<framework>-<name>``, e.g. ``torch-multistate``: the name in case ids and in ``extra_info``."""
        return f"{self.framework}-{self.name}"

    @property
    def is_keras(self) -> bool:
        return self.framework == "keras"

    def on(self, backend: str | None) -> Impl:
        """This implementation as measured on the Keras ``backend`` (torch ones are returned unchanged)."""
        return dataclasses.replace(self, backend=backend or "") if self.is_keras else self

    @property
    def label(self) -> str:
        """``keras-fused (jax)``: the id, with the Keras backend where there is one."""
        return f"{self.id} ({self.backend})" if self.backend else self.id


TORCH_MULTISTATE = Impl("torch", "multistate")  # models_torch layer on (B, S, t, F); gets resets/lengths of a job
TORCH_MULTISTATE_PLAIN = Impl("torch", "multistate-plain")  # the same layer called without resets or lengths
TORCH_FUSED = Impl("torch", "fused")  # its inner nn.LSTM on the folded batch: the lower bound
TORCH_LOOP = Impl("torch", "loop")  # one call of the inner module per stream, a list of states
TORCH_STEP_LOOP = Impl("torch", "step-loop")  # one call per time step, state multiplied by (1 - done)
TORCH_GEMM = Impl("torch", "gemm")  # one matmul of the per-step shape
KERAS_MULTISTATE = Impl("keras", "multistate")  # models_keras layer in a functional model
KERAS_MULTISTATE_PLAIN = Impl("keras", "multistate-plain")  # the same, called without resets or lengths
KERAS_PER_STREAM = Impl("keras", "per-stream")  # one plain shared Keras layer called per stream slice
KERAS_FUSED = Impl("keras", "fused")  # the plain Keras layer on the folded batch
IMPLS = {
    impl.id: impl
    for impl in (
        TORCH_MULTISTATE,
        TORCH_MULTISTATE_PLAIN,
        TORCH_FUSED,
        TORCH_LOOP,
        TORCH_STEP_LOOP,
        TORCH_GEMM,
        KERAS_MULTISTATE,
        KERAS_MULTISTATE_PLAIN,
        KERAS_PER_STREAM,
        KERAS_FUSED,
    )
}


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
    SGD update instead of inference. Episode jobs run the whole sequence with per-step ``resets``
    (``reset_rate``: the fraction of steps, drawn at random, where a stream's state is zeroed) or
    per-stream ``lengths`` (uniform in ``[min_length * T, T]``).
    """

    name: str
    chunk: int | None = None
    train: bool = False
    reset_rate: float | None = None
    min_length: float | None = None

    def steps(self, shape: Shape) -> int:
        return self.chunk or shape.T

    @property
    def episodic(self) -> bool:
        """Whether the job passes resets or lengths."""
        return self.reset_rate is not None or self.min_length is not None

    def episodes(self, shape: Shape) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Seeded ``resets`` ``(B, S, T)`` bool and ``lengths`` ``(B, S)`` int64 of this job (None where unused)."""
        rng = np.random.default_rng(EPISODE_SEED)
        steps = self.steps(shape)
        resets = None if self.reset_rate is None else rng.random((shape.B, shape.S, steps)) < self.reset_rate
        lengths = None
        if self.min_length is not None:
            lengths = rng.integers(int(self.min_length * steps), steps, size=(shape.B, shape.S), endpoint=True)
        return resets, lengths


JOBS = {
    job.name: job
    for job in (
        Job("forward"),  # the whole sequence in one call
        Job("train", train=True),  # one truncated-BPTT step over the whole sequence
        Job("stream-1", chunk=1),  # streaming: one call per chunk of 1 step, state carried
        Job("stream-16", chunk=16),
        Job("scaling"),  # forward at B=1 over a sweep of stream counts
        Job("gemm", chunk=1),  # one matmul of the per-step shape (B*S, F+H) @ (F+H, G*H)
        Job("resets-1pct", reset_rate=0.01),  # forward, a reset at 1% of the steps
        Job("resets-10pct", reset_rate=0.10),  # forward, a reset at 10% of the steps
        Job("lengths", min_length=0.5),  # forward, lengths uniform in [T/2, T]
        Job("rows"),  # forward at B=1, T=16, F=32 over a sweep of rows (streams), H=32 and 128: row blocks
        Job("rows-train", train=True),  # the same sweep, one training step
    )
}
EPISODE_JOBS = tuple(name for name, job in JOBS.items() if job.episodic)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: a job of a cell on a shape, run by one implementation."""

    job: Job
    cell: str
    shape: Shape
    impl: Impl

    @property
    def id(self) -> str:
        return f"{self.job.name}-{self.cell}-{self.shape.name}-{self.impl.id}"

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
# The row sweep (``python -m benchmarks.row_blocks`` times it interleaved): all of it with BENCH_ROWS_SWEEP=1
# (many minutes); otherwise one small shape, so that the smoke run stays fast.
ROWS_SWEEP = os.environ.get("BENCH_ROWS_SWEEP") == "1"
ROWS_STREAMS = (1, 16, 256, 1024, 4096, 16384, 65536) if ROWS_SWEEP else (256,)
ROWS_HIDDEN = (32, 128)
ROWS_SHAPES = tuple(Shape(1, s, 16, SMALL.F, h) for h in ROWS_HIDDEN for s in ROWS_STREAMS)

TORCH_IMPLS = (TORCH_MULTISTATE, TORCH_FUSED, TORCH_LOOP)
KERAS_IMPLS = (KERAS_MULTISTATE, KERAS_PER_STREAM, KERAS_FUSED)
MULTISTATE_AND_FUSED = (TORCH_MULTISTATE, TORCH_FUSED, KERAS_MULTISTATE, KERAS_FUSED)
EPISODE_IMPLS = (TORCH_MULTISTATE, TORCH_MULTISTATE_PLAIN, TORCH_STEP_LOOP, KERAS_MULTISTATE, KERAS_MULTISTATE_PLAIN)

# (cells, jobs, shapes, implementations): every combination in a row is one case.
PLAN: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[Shape, ...], tuple[Impl, ...]], ...] = (
    (("lstm",), ("forward", "train", "stream-1", "stream-16"), (SMALL, LARGE, GPU_ONLY), TORCH_IMPLS + KERAS_IMPLS),
    (("gru", "rnn"), ("forward", "train"), (SMALL,), MULTISTATE_AND_FUSED),
    (("lstm",), ("scaling",), SCALING_SHAPES, TORCH_IMPLS + (KERAS_MULTISTATE,)),
    (("lstm",), ("gemm",), (SMALL, LARGE, GPU_ONLY), (TORCH_GEMM,)),
    (("gru", "rnn"), ("gemm",), (SMALL,), (TORCH_GEMM,)),
    (("lstm",), EPISODE_JOBS, (SMALL,), EPISODE_IMPLS),
    (("gru", "lstm"), ("rows", "rows-train"), ROWS_SHAPES, (TORCH_MULTISTATE, TORCH_FUSED)),
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
    """FLOPs of one time step of one layer: ``2 * B*S * (F + H) * G*H`` (G gates, ``CELLS[cell].gates``)."""
    return 2 * shape.B * shape.S * (shape.F + shape.H) * CELLS[cell].gates * shape.H


def flops_per_call(case: Case) -> int:
    """FLOPs of one timed call: per step times steps per call, times ``TRAIN_FLOP_FACTOR`` for a training step.

    Episode jobs count every step, including those past a stream's length.
    """
    factor = TRAIN_FLOP_FACTOR if case.job.train else 1
    return factor * flops_per_step(case.cell, case.shape) * case.job.steps(case.shape)
