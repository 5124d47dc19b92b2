"""PyTorch recurrent layers that share weights across streams and keep a state per stream.

Streams are folded into the batch: ``(B, S, T, F)`` becomes ``(B*S, T, F)``
(row ``b*S + s``), runs through ONE fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call
with the carried state as initial state (``inner_rnn.run``, on the path ``ops.paths.path_for`` names),
and is unfolded again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from models_torch import inner_rnn, streaming
from models_torch.ops.kernels import step_by_cells
from models_torch.ops.paths import Path, path_for
from multistate_core import contract
from multistate_core.cells import CELLS, cell_of_class
from multistate_core.checkpoint import StateCheckpoints

State = tuple[torch.Tensor, ...]
Array = torch.Tensor | np.ndarray

# Guards the read-modify-write of one stream's slice (``stream=k`` calls from several threads).
# One lock for all modules: a module holding a lock could no longer be deep-copied or pickled.
_STATE_LOCK = threading.Lock()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class MultiStateBase(StateCheckpoints, nn.Module):
    """One recurrent layer (``self.rnn``) used on ``num_streams`` streams, each with its own state.

    A subclass's cell is the cell table's row that names it (``Cell.torch_multistate``, read by
    ``multistate_core.cells.cell_of_class``).
    Carried states, each ``(num_layers, batch, num_streams, hidden_size)``, are kept as plain
    tensors, not buffers: ``.to(device)`` moves them (``_apply``), ``state_dict()`` leaves
    them out, and ``DistributedDataParallel`` does not broadcast rank 0's state over the
    other ranks' streams. They keep the weights' dtype under ``torch.autocast``.
    ``detach_states=False`` keeps the graph across calls (full BPTT); ``check_finite=True``
    refuses inputs holding NaN or Inf (off by default: it costs a pass and a device sync).
    """

    cell: str

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cell = cell_of_class(cls)
        if cell is None:
            expected = ", ".join(c.torch_multistate for c in CELLS.values())
            raise TypeError(f"{cls.__name__}: a multi-state layer subclasses one of {expected} (its cell)")
        cls.cell = cell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_streams: int,
        *,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        batch_size: int | None = None,
        detach_states: bool = True,
        check_finite: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **rnn_kwargs: object,
    ) -> None:
        super().__init__()
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rnn_class = getattr(nn, CELLS[self.cell].torch_class)
        self.rnn = rnn_class(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            dropout=dropout,
            batch_first=True,
            device=device,
            dtype=dtype,
            **rnn_kwargs,
        )
        if getattr(self.rnn, "proj_size", 0) or self.rnn.bidirectional:
            raise ValueError("multi-state layers support neither proj_size > 0 nor bidirectional=True")
        self.num_streams = num_streams
        self._fixed_batch_size = batch_size
        self.detach_states = detach_states
        self.check_finite = check_finite
        self._carried: State | None = None
        if batch_size is not None:
            self._store(self._zeros(batch_size))

    @classmethod
    def from_module(cls, module: nn.RNNBase, num_streams: int, **kwargs: Any) -> MultiStateBase:
        """A multi-state layer with the weights of a plain ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on ``num_streams`` streams.

        The result computes, per stream, what ``module`` computes. It is a new module: the weights
        are copied, not shared, so training one leaves the other as it was. Input and hidden size,
        layers, bias, dropout, a simple RNN's nonlinearity, dtype, device and train/eval mode come
        from ``module``. ``batch_first`` does not matter (the weights do not depend on it): the
        multi-state layer takes ``(B, S, T, F)``. Other keyword arguments (``batch_size=``,
        ``detach_states=``, ...) go to the constructor; ``dropout=``, ``dtype=`` and ``device=``
        there override ``module``'s. ``MultiStateBase.from_module`` picks the class by the cell.

        Example:
            >>> lstm = nn.LSTM(4, 8, num_layers=2)
            >>> MultiStateLSTM.from_module(lstm, num_streams=3)(torch.zeros(2, 3, 10, 4)).shape
            torch.Size([2, 3, 10, 8])
        """
        cls = cls._class_for(module)
        maker = f"{cls.__name__}.from_module"
        if module.bidirectional:
            raise ValueError(
                f"{maker} expects a one-directional module (a multi-state layer runs forward in time, "
                "carrying each stream's state), got bidirectional=True"
            )
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{maker} expects proj_size=0 (no projection), got proj_size={module.proj_size}")
        taken: dict[str, Any] = {
            "input_size": module.input_size,
            "hidden_size": module.hidden_size,
            "num_layers": module.num_layers,
            "bias": module.bias,
            **cls._cell_options(module),
        }
        contract.check_taken_from_source(maker, taken, kwargs)
        weight = module.weight_ih_l0
        defaults: dict[str, Any] = {"dropout": module.dropout, "dtype": weight.dtype, "device": weight.device}
        made = cls(num_streams=num_streams, **{**defaults, **taken, **kwargs})
        with torch.no_grad():
            for name, param in made.rnn.named_parameters():
                param.copy_(getattr(module, name))  # getattr: a parametrized weight is computed
        return made.train(module.training)

    @classmethod
    def _class_for(cls, module: object) -> type[MultiStateBase]:
        """The multi-state class for ``module``'s cell: ``cls`` itself, or by the cell where ``cls`` is the base."""
        cell = cell_of_class(module) if isinstance(module, nn.RNNBase) else None
        own = getattr(cls, "cell", None)
        if cell is None or own not in (None, cell):
            expected = " or ".join(f"nn.{c.torch_class}" for k, c in CELLS.items() if own in (None, k))
            hint = f"; for it use {CELLS[cell].torch_multistate}.from_module" if cell else ""
            raise TypeError(f"{cls.__name__}.from_module expects a plain {expected}, got {type(module).__name__}{hint}")
        return globals()[CELLS[cell].torch_multistate] if own is None else cls

    @classmethod
    def _cell_options(cls, module: nn.RNNBase) -> dict[str, object]:
        """Constructor arguments, beyond sizes and bias, that ``from_module`` reads from ``module``."""
        return {}

    def _load_from_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Also take a plain ``nn.LSTM``/``nn.GRU``/``nn.RNN`` state_dict: its ``weight_ih_l0``, ... are ``rnn.``'s.

        Only the inner layer's own names are mapped, and only where the ``rnn.`` key is absent;
        every other key is left for ``load_state_dict``'s missing/unexpected reports.
        """
        for key in self.rnn.state_dict(keep_vars=True):
            plain, ours = prefix + key, prefix + "rnn." + key
            if plain in state_dict and ours not in state_dict:
                state_dict[ours] = state_dict.pop(plain)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @property
    def state_names(self) -> tuple[str, ...]:
        return CELLS[self.cell].state_names

    @property
    def input_size(self) -> int:
        return self.rnn.input_size

    @property
    def hidden_size(self) -> int:
        return self.rnn.hidden_size

    units = hidden_size

    @property
    def num_layers(self) -> int:
        return self.rnn.num_layers

    @property
    def batch_size(self) -> int | None:
        """Batch size of the carried state, or None before the first call."""
        return None if self._carried is None else self._carried[0].shape[1]

    @property
    def fixed_batch_size(self) -> int | None:
        """The ``batch_size=`` given at construction (None: taken from the first call)."""
        return self._fixed_batch_size

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MultiStateBase:
        super()._apply(fn, recurse)
        if self._carried is not None:
            self._carried = tuple(fn(s) for s in self._carried)
        return self

    @property
    def _weight_dtype(self) -> torch.dtype:
        """The weights' dtype (not autocast's), read without ``nn.Module.__getattr__``'s lookups per call."""
        return self.rnn._flat_weights[0].dtype

    def _store(self, states: State) -> None:
        dtype = self._weight_dtype  # not autocast's
        detach = self.detach_states
        kept = tuple(s.detach() if detach and s.requires_grad else s for s in states)
        # Straight into __dict__: nn.Module.__setattr__ costs more than a one-step chunk's bookkeeping.
        self.__dict__["_carried"] = tuple(s if s.dtype == dtype else s.to(dtype) for s in kept)

    def _zeros(self, batch_size: int) -> State:
        weight = self.rnn.weight_ih_l0
        shape = (self.num_layers, batch_size, self.num_streams, self.hidden_size)
        return tuple(weight.new_zeros(shape) for _ in self.state_names)

    def _check_x(self, x: torch.Tensor, stream: int | None, batch_size: int | None) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        expected = self._weight_dtype
        # A streaming loop sends the same shape every call: what passed once passes again.
        key = (x.shape, x.dtype, expected, batch_size, stream) if stream is None or type(stream) is int else None
        if key is not None and key == self.__dict__.get("_passed"):
            return self._check_finite(x)
        contract.check_input(
            tuple(x.shape),
            _dtype_name(x.dtype),
            num_streams=self.num_streams,
            input_size=self.input_size,
            batch_size=batch_size,
            stream=stream,
            fixed_batch=None if self._fixed_batch_size is None else contract.TORCH_DECLARED_BATCH,
        )
        if x.dtype != expected:
            raise ValueError(
                f"input dtype must match the weights: expected {_dtype_name(expected)}, got {_dtype_name(x.dtype)}"
            )
        self._check_finite(x)
        self.__dict__["_passed"] = key

    def _check_finite(self, x: torch.Tensor) -> None:
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"input holds NaN or Inf ({int((~torch.isfinite(x)).sum())} elements); state left as it was"
            )

    def _step_args(
        self, x: torch.Tensor, resets: Array | None, lengths: Array | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``resets`` and ``lengths`` as tensors on ``x``'s device, folded to ``(N, T)`` and ``(N,)``."""
        if resets is None and lengths is None:
            return None, None
        r = None if resets is None else torch.as_tensor(resets, device=x.device)
        n = None if lengths is None else torch.as_tensor(lengths, device=x.device)
        contract.check_step_args(
            tuple(x.shape),
            resets=None if r is None else (tuple(r.shape), _dtype_name(r.dtype)),
            lengths=None
            if n is None
            else (tuple(n.shape), _dtype_name(n.dtype), *((int(n.min()), int(n.max())) if n.numel() else (0, 0))),
        )
        rows = x.shape[0] * (x.shape[1] if x.dim() == 4 else 1)
        return (
            None if r is None else r.reshape(rows, x.shape[-2]),
            None if n is None else n.reshape(rows).long(),
        )

    def forward(
        self,
        x: torch.Tensor,
        stream: int | None = None,
        *,
        resets: Array | None = None,
        lengths: Array | None = None,
        initial_state: Sequence[torch.Tensor] | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Run a chunk and carry each stream's state to the next call.

        Args:
            x: ``(B, S, T, F)``, or ``(B, T, F)`` together with ``stream``.
            stream: run only stream ``k``; the other streams' states stay as they are.
            resets: ``(B, S, T)`` bools (``(B, T)`` with ``stream``): where True, that stream's
                state is zeroed before step t (an episode starts there).
            lengths: ``(B, S)`` ints (``(B,)`` with ``stream``) in ``[0, T]``: steps ``>= length``
                neither change that stream's state nor produce output (zeros there).
            initial_state: stateless use: start from these ``(L, B, S, H)`` states
                (``(L, B, H)`` with ``stream``) and leave the carried state alone.
            return_state: also return the final states (same layout as ``initial_state``).

        Returns:
            ``(B, S, T, H)`` (``(B, T, H)`` with ``stream``), and the states if asked.

        Every check runs before any carried state is touched: a refused or failed call
        leaves every state as it was.

        Example:
            >>> m = MultiStateLSTM(4, 8, num_streams=3)
            >>> m(torch.zeros(2, 3, 10, 4)).shape
            torch.Size([2, 3, 10, 8])
        """
        stateless = initial_state is not None
        self._check_x(x, stream, None if stateless else self.batch_size)
        folded_resets, folded_lengths = self._step_args(x, resets, lengths)
        if initial_state is not None:  # stateless
            states = self._check_initial_state(initial_state, x.shape[0], stream)
        else:
            states = self._carried or self._zeros(x.shape[0])
            if stream is not None:
                states = tuple(s[:, :, stream] for s in states)

        if stream is None:
            batch, streams, steps, features = x.shape
            rnn = self.rnn
            layers, hidden, rows = rnn.num_layers, rnn.hidden_size, batch * streams
            folded = tuple(s.reshape(layers, rows, hidden) for s in states)
            stack = inner_rnn.stack_of(rnn, x, folded)
            plain = folded_resets is None and folded_lengths is None
            path = path_for(stack, rows, steps, x.device.type) if plain else None
            if path is Path.CELL_OPS:
                # The chooser's one-frame path, run on the frame as it comes: no time axis to fold and unfold
                # (two views, a tenth of a small frame's cost; docs/measurements.md, "one frame").
                out, new = step_by_cells(stack, x.reshape(rows, features), folded)
            else:  # a plain chunk's path goes along, read once
                x = x.reshape(rows, steps, features)
                out, new = inner_rnn.run(
                    rnn, x, folded, resets=folded_resets, lengths=folded_lengths, stack=stack, path=path
                )
            out = out.reshape(batch, streams, steps, hidden)
            new = tuple(s.reshape(layers, batch, streams, hidden) for s in new)
            if not stateless:
                self._store(new)
        else:
            out, new = inner_rnn.run(self.rnn, x, states, resets=folded_resets, lengths=folded_lengths)
            if not stateless:
                self._store_stream(stream, new, x.shape[0])
        return (out, new) if return_state else out

    def _store_stream(self, stream: int, new: State, batch: int) -> None:
        """Write one stream's new state into the carried state, atomically against other threads."""
        index = torch.tensor([stream], device=new[0].device)
        with _STATE_LOCK:
            current = self._carried or self._zeros(batch)
            self._store(tuple(old.index_copy(2, index, s.unsqueeze(2).to(old.dtype)) for old, s in zip(current, new)))

    def _check_initial_state(self, initial_state: Sequence[torch.Tensor], batch: int, stream: int | None) -> State:
        states = tuple(initial_state)
        expected = (self.num_layers, batch) + (() if stream is not None else (self.num_streams,)) + (self.hidden_size,)
        if len(states) != len(self.state_names) or any(tuple(s.shape) != expected for s in states):
            got = [tuple(s.shape) for s in states]
            raise ValueError(f"initial_state must be {len(self.state_names)} tensor(s) of shape {expected}, got {got}")
        return states

    def reset_states(self, streams: Sequence[int] | None = None, mask: Array | None = None) -> None:
        """Zero carried states: all of them, the listed ``streams``, or where the ``(B, S)`` ``mask`` is True.

        Zeros are assigned (not multiplied in), so a reset also clears NaN or Inf. With no
        arguments and no fixed ``batch_size``, the state is dropped, so the next call may
        use another batch size.
        """
        mask_t = None if mask is None else torch.as_tensor(mask)
        contract.check_reset_args(
            None if streams is None else list(streams),
            None if mask_t is None else tuple(mask_t.shape),
            None if mask_t is None else _dtype_name(mask_t.dtype),
            num_streams=self.num_streams,
            batch_size=self.batch_size,
        )
        if streams is None and mask_t is None:
            self._carried = None if self._fixed_batch_size is None else self._zeros(self._fixed_batch_size)
            return
        if self._carried is None:
            return
        if mask_t is None:
            assert streams is not None and self.batch_size is not None  # neither: returned above; state: carried
            mask_t = torch.zeros(self.batch_size, self.num_streams, dtype=torch.bool)
            mask_t[:, list(streams)] = True
        cleared = mask_t.to(self._carried[0].device)[None, :, :, None]
        self._store(tuple(torch.where(cleared, 0, s) for s in self._carried))

    def get_states(self) -> State:
        """The carried states, each ``(L, B, S, H)``: ``(h, c)`` for LSTM, ``(h,)`` otherwise."""
        if self._carried is None:
            raise RuntimeError(
                f"{type(self).__name__} has no state yet: call it once, pass batch_size=, or use set_states()"
            )
        return tuple(s.clone() for s in self._carried)

    def numpy_states(self) -> tuple[np.ndarray, ...]:
        """The carried states as numpy arrays (on the CPU, without graph)."""
        return tuple(s.detach().cpu().numpy() for s in self.get_states())

    def set_states(self, states: Sequence[Array]) -> None:
        """Replace the carried states with ``states`` (tensors or numpy arrays, each ``(L, B, S, H)``)."""
        weight = self.rnn.weight_ih_l0
        tensors = tuple(torch.as_tensor(s) for s in states)
        contract.check_states(
            [tuple(t.shape) for t in tensors],
            expected_count=len(self.state_names),
            num_layers=self.num_layers,
            num_streams=self.num_streams,
            units=self.hidden_size,
            batch_size=self._fixed_batch_size,
        )
        self._store(tuple(t.to(device=weight.device, dtype=weight.dtype).clone() for t in tensors))

    def streaming_step(self, compiled: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """``step(x) -> y``: ``self(x)`` for frame-by-frame inference, without the module's per-call cost.

        The same output and carried state as ``self(x)`` under ``torch.no_grad()``, straight through
        the ops that ``self(x)`` calls; inference only: no autograd, ``stream``, ``resets``,
        ``lengths`` or ``initial_state``. ``compiled=True``: compiled ahead of time by AOTInductor
        (CPU; seconds per input shape; faster again). ``models_torch.streaming`` says more.

        Example:
            >>> gru = MultiStateGRU(4, 8, num_streams=3).eval()
            >>> step = gru.streaming_step()
            >>> step(torch.zeros(2, 3, 1, 4)).shape
            torch.Size([2, 3, 1, 8])
        """
        return streaming.StreamingStep(self, compiled)

    def extra_repr(self) -> str:
        return f"num_streams={self.num_streams}, batch_size={self.batch_size}"


class MultiStateLSTM(MultiStateBase):
    """A shared ``nn.LSTM`` with an ``(h, c)`` state per stream.

    Example:
        >>> lstm = MultiStateLSTM(input_size=4, hidden_size=8, num_streams=3)
        >>> y = lstm(torch.randn(2, 3, 50, 4))           # whole sequence
        >>> lstm.reset_states()
        >>> parts = [lstm(torch.randn(2, 3, 25, 4)) for _ in range(2)]  # in chunks
    """


class MultiStateGRU(MultiStateBase):
    """A shared ``nn.GRU`` with an ``h`` state per stream. See ``MultiStateLSTM``."""


class MultiStateRNN(MultiStateBase):
    """A shared ``nn.RNN`` (``nonlinearity="tanh"`` or ``"relu"``) with an ``h`` state per stream."""

    def __init__(
        self, input_size: int, hidden_size: int, num_streams: int, *, nonlinearity: str = "tanh", **kwargs: Any
    ) -> None:
        super().__init__(input_size, hidden_size, num_streams, nonlinearity=nonlinearity, **kwargs)

    @classmethod
    def _cell_options(cls, module: nn.RNNBase) -> dict[str, object]:
        return {"nonlinearity": module.nonlinearity}
