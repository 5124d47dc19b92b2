"""A captured-graph streaming step: one fixed-size chunk of a multi-state module, replayed as a CUDA graph.

Streaming one step at a time costs a kernel launch per op, far more than the math
for small layers. ``GraphStep`` captures one chunk of the module into a
``torch.cuda.CUDAGraph`` on static buffers and replays it: a handful of launches per
call, whatever the module does inside.

The module stays the owner of the carried state. Each call copies the module's
carried state into the static state buffers, replays, and hands the new state back
with ``module.set_states`` (a copy), so ``module.get_states()``, ``reset_states()``,
``set_states()`` and checkpoints between calls work as they do without the graph.
That bookkeeping is the same with ``capture=False`` (an ordinary eager call on the
same static buffers, the default off CUDA), which is how it is tested on the CPU.

Limits: inference only (runs under ``torch.no_grad()``); the whole batch and every
stream each call (no ``stream=``, ``resets=``, ``lengths=``: reset with
``module.reset_states`` between calls); no ``check_finite`` (it reads back to the host)
and no dropout in training mode. The graph holds the addresses of the module's
parameters: updating them in place (``copy_``, ``load_state_dict``) is seen by the next
replay, while replacing or moving them is refused (make a new ``GraphStep``). The graph
keeps the kernels chosen at capture, TF32 included: for parity with the CPU, capture (and
replay) inside ``harness.parity.full_precision_matmul()``.

Example:
    >>> import torch
    >>> from models_torch import MultiStateLSTM
    >>> module = MultiStateLSTM(4, 8, num_streams=3).eval()      # .cuda() to capture a real graph
    >>> step = GraphStep(module, batch_size=2, chunk=1)           # on the CPU: capture=False
    >>> step(torch.zeros(2, 3, 1, 4)).shape
    torch.Size([2, 3, 1, 8])
    >>> module.get_states()[0].shape                              # the module carries the state on
    torch.Size([1, 2, 3, 8])
"""

from __future__ import annotations

import torch

from models_torch.multistate import MultiStateBase

State = tuple[torch.Tensor, ...]


class GraphStep:
    """Run ``module`` on ``(batch_size, num_streams, chunk, input_size)`` chunks, replaying a captured CUDA graph.

    Args:
        module: a ``models_torch`` multi-state module (its weights' device decides where it runs).
        batch_size: the batch of every call (a graph has fixed shapes).
        chunk: time steps per call.
        capture: capture a CUDA graph (default: when the module is on CUDA). ``False`` runs the
            same bookkeeping with an ordinary call: the path tested on the CPU.
        warmup: eager calls on a side stream before the capture (cuDNN and the allocator settle).
        clone_output: return a copy of the output; ``False`` returns the static output buffer,
            which the next call overwrites.

    Example:
        >>> from models_torch import MultiStateGRU
        >>> step = GraphStep(MultiStateGRU(4, 8, num_streams=2), batch_size=1, chunk=5, capture=False)
        >>> step.captured, step.input_shape
        (False, (1, 2, 5, 4))
    """

    def __init__(
        self,
        module: MultiStateBase,
        batch_size: int,
        chunk: int = 1,
        *,
        capture: bool | None = None,
        warmup: int = 3,
        clone_output: bool = True,
    ) -> None:
        weight = module.rnn.weight_ih_l0
        self.module = module
        self.device = weight.device
        capture = self.device.type == "cuda" if capture is None else capture
        if capture and self.device.type != "cuda":
            raise ValueError(f"capture=True needs the module on a CUDA device; it is on {self.device}")
        if module.check_finite:
            raise ValueError("GraphStep cannot run a module with check_finite=True: the check reads back to the host")
        if module.training and module.rnn.dropout:
            raise ValueError("GraphStep runs inference: call module.eval() first (dropout is on in training mode)")
        if batch_size < 1 or chunk < 1:
            raise ValueError(f"batch_size and chunk must be >= 1, got batch_size={batch_size}, chunk={chunk}")
        self._check_batch(batch_size)
        self.batch_size = batch_size
        self.chunk = chunk
        self.clone_output = clone_output
        # The static buffers: the graph reads and writes these addresses on every replay.
        self.x = weight.new_zeros(self.input_shape)
        self.states: State = tuple(
            weight.new_zeros(module.num_layers, batch_size, module.num_streams, module.hidden_size)
            for _ in module.state_names
        )
        self.output: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._parameters = self._parameter_addresses()
        if capture:
            self._capture(warmup)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The shape every call takes: ``(batch_size, num_streams, chunk, input_size)``."""
        return (self.batch_size, self.module.num_streams, self.chunk, self.module.input_size)

    @property
    def captured(self) -> bool:
        """Whether calls replay a captured CUDA graph (else they run the module eagerly)."""
        return self.graph is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run one chunk ``x`` (any device; copied into the static input) and carry the module's state on.

        Returns the output ``(batch_size, num_streams, chunk, hidden_size)`` on the module's device.
        """
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"GraphStep takes inputs of shape {self.input_shape}, got {tuple(x.shape)}")
        if x.dtype != self.x.dtype:
            raise ValueError(f"input dtype must match the weights: expected {self.x.dtype}, got {x.dtype}")
        if self._parameter_addresses() != self._parameters:
            raise RuntimeError(
                "the module's parameters were replaced or moved since this GraphStep was made; make a new one"
            )
        self._check_batch(self.batch_size)
        with torch.no_grad():
            self.x.copy_(x)
            self._state_in()
            if self.graph is None:
                self._compute()
            else:
                self.graph.replay()
            self.module.set_states(self.states)  # a copy: the next call may overwrite the static buffers
        assert self.output is not None
        return self.output.clone() if self.clone_output else self.output

    # ---- bookkeeping (the same with and without a graph) ----------------------------------------

    def _compute(self) -> None:
        """The work a graph holds: one chunk from the static state into the static output and state."""
        out, new = self.module(self.x, initial_state=self.states, return_state=True)
        for static, value in zip(self.states, new):
            static.copy_(value)
        self.output = out

    def _state_in(self) -> None:
        """Copy the module's carried state into the static state buffers (zeros where it has none yet)."""
        carried = self.module._carried  # read without the clone of get_states(): copied just below
        if carried is None:
            for static in self.states:
                static.zero_()
        else:
            for static, value in zip(self.states, carried):
                static.copy_(value)

    def _check_batch(self, batch_size: int) -> None:
        held = self.module.batch_size
        if held is not None and held != batch_size:
            raise ValueError(
                f"the module carries a state of batch size {held}, not {batch_size}: "
                "reset_states() it or make the GraphStep for that batch size"
            )

    def _parameter_addresses(self) -> tuple[tuple[torch.device, int], ...]:
        return tuple((p.device, p.data_ptr()) for p in self.module.parameters())

    # ---- capture (CUDA only) ----------------------------------------------------------------------

    def _capture(self, warmup: int) -> None:
        """Warm up on a side stream, then capture ``_compute`` into ``self.graph``."""
        with torch.no_grad(), torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._compute()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._compute()
        self.graph = graph
