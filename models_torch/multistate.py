"""PyTorch recurrent layers that share weights across streams and keep a state per stream.

Streams are folded into the batch: ``(B, S, T, F)`` becomes ``(B*S, T, F)``
(row ``b*S + s``), runs through ONE fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call
with the carried state as initial state, and is unfolded again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from harness import checkpoint, contract

State = tuple[torch.Tensor, ...]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class MultiStateBase(nn.Module):
    """One recurrent layer (``self.rnn``) used on ``num_streams`` streams, each with its own state.

    Subclasses name the torch module in ``rnn_class`` and the state tensors in
    ``state_names``. Carried states are non-persistent buffers of shape
    ``(num_layers, batch, num_streams, hidden_size)``: ``.to(device)`` moves them,
    ``state_dict()`` leaves them out. ``detach_states=False`` keeps the graph across
    calls (full BPTT); ``check_finite=True`` refuses inputs holding NaN or Inf (off by
    default: it costs a pass over the input and a device sync per call).
    """

    rnn_class: type[nn.RNNBase]
    cell: str
    state_names: tuple[str, ...] = ("h",)

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
        self.rnn = self.rnn_class(
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
        self.fixed_batch_size = batch_size
        self.detach_states = detach_states
        self.check_finite = check_finite
        for name in self.state_names:
            self.register_buffer(name, None, persistent=False)
        if batch_size is not None:
            self._zero_states(batch_size)

    @property
    def input_size(self) -> int:
        return self.rnn.input_size

    @property
    def hidden_size(self) -> int:
        return self.rnn.hidden_size

    @property
    def num_layers(self) -> int:
        return self.rnn.num_layers

    @property
    def batch_size(self) -> int | None:
        """Batch size of the carried state, or None before the first call."""
        first = getattr(self, self.state_names[0])
        return None if first is None else first.shape[1]

    def _states(self) -> State | None:
        states = tuple(getattr(self, name) for name in self.state_names)
        return None if states[0] is None else states

    def _store(self, states: State) -> None:
        for name, value in zip(self.state_names, states):
            setattr(self, name, value.detach() if self.detach_states else value)

    def _zero_states(self, batch_size: int) -> State:
        weight = self.rnn.weight_ih_l0
        shape = (self.num_layers, batch_size, self.num_streams, self.hidden_size)
        states = tuple(weight.new_zeros(shape) for _ in self.state_names)
        self._store(states)
        return states

    def _check_x(self, x: torch.Tensor, stream: int | None, batch_size: int | None) -> None:
        contract.check_input(
            tuple(x.shape),
            _dtype_name(x.dtype),
            num_streams=self.num_streams,
            input_size=self.input_size,
            batch_size=batch_size,
            stream=stream,
        )
        expected = self.rnn.weight_ih_l0.dtype
        if x.dtype != expected:
            raise ValueError(
                f"input dtype must match the weights: expected {_dtype_name(expected)}, got {_dtype_name(x.dtype)}"
            )
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"input holds NaN or Inf ({int((~torch.isfinite(x)).sum())} elements); state left as it was"
            )

    def _fused(self, x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        """Run ``self.rnn`` on ``x`` (N, T, F) from ``states`` (each (L, N, H))."""
        hx = tuple(s.contiguous() for s in states)
        out, new = self.rnn(x, hx if len(hx) > 1 else hx[0])
        return out, (new if isinstance(new, tuple) else (new,))

    def forward(
        self,
        x: torch.Tensor,
        stream: int | None = None,
        *,
        initial_state: Sequence[torch.Tensor] | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, State]:
        """Run a chunk and carry each stream's state to the next call.

        Args:
            x: ``(B, S, T, F)``, or ``(B, T, F)`` together with ``stream``.
            stream: run only stream ``k``; the other streams' states stay as they are.
            initial_state: stateless use: start from these ``(L, B, S, H)`` states
                (``(L, B, H)`` with ``stream``) and leave the carried state alone.
            return_state: also return the final states (same layout as ``initial_state``).

        Returns:
            ``(B, S, T, H)`` (``(B, T, H)`` with ``stream``), and the states if asked.

        Example:
            >>> m = MultiStateLSTM(4, 8, num_streams=3)
            >>> m(torch.zeros(2, 3, 10, 4)).shape
            torch.Size([2, 3, 10, 8])
        """
        stateless = initial_state is not None
        self._check_x(x, stream, None if stateless else self.batch_size)
        if stateless:
            states = self._check_initial_state(initial_state, x.shape[0], stream)
        else:
            states = self._states() or self._zero_states(x.shape[0])
            if stream is not None:
                states = tuple(s[:, :, stream] for s in states)

        if stream is None:
            batch, streams, steps, features = x.shape
            folded = tuple(s.reshape(self.num_layers, batch * streams, self.hidden_size) for s in states)
            out, new = self._fused(x.reshape(batch * streams, steps, features), folded)
            out = out.reshape(batch, streams, steps, self.hidden_size)
            new = tuple(s.reshape(self.num_layers, batch, streams, self.hidden_size) for s in new)
            if not stateless:
                self._store(new)
        else:
            out, new = self._fused(x, states)
            if not stateless:
                index = torch.tensor([stream], device=x.device)
                self._store(tuple(old.index_copy(2, index, s.unsqueeze(2)) for old, s in zip(self._states(), new)))
        return (out, new) if return_state else out

    def _check_initial_state(self, initial_state: Sequence[torch.Tensor], batch: int, stream: int | None) -> State:
        states = tuple(initial_state)
        expected = (self.num_layers, batch) + (() if stream is not None else (self.num_streams,)) + (self.hidden_size,)
        if len(states) != len(self.state_names) or any(tuple(s.shape) != expected for s in states):
            got = [tuple(s.shape) for s in states]
            raise ValueError(f"initial_state must be {len(self.state_names)} tensor(s) of shape {expected}, got {got}")
        return states

    def reset_states(
        self,
        streams: Sequence[int] | None = None,
        mask: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Zero carried states: all of them, the listed ``streams``, or where the ``(B, S)`` ``mask`` is True.

        With no arguments and no fixed ``batch_size``, the state is dropped, so the
        next call may use another batch size.
        """
        mask_t = None if mask is None else torch.as_tensor(mask)
        contract.check_reset_args(
            None if streams is None else list(streams),
            None if mask_t is None else tuple(mask_t.shape),
            None if mask_t is None else _dtype_name(mask_t.dtype),
            num_streams=self.num_streams,
            batch_size=self.batch_size,
        )
        states = self._states()
        if streams is None and mask_t is None:
            if self.fixed_batch_size is not None:
                self._zero_states(self.fixed_batch_size)
            else:
                for name in self.state_names:
                    setattr(self, name, None)
            return
        if states is None:
            return
        if mask_t is None:
            mask_t = torch.zeros(self.batch_size, self.num_streams, dtype=torch.bool)
            mask_t[:, list(streams)] = True
        keep = ~mask_t.to(states[0].device)[None, :, :, None]
        self._store(tuple(s * keep for s in states))

    def get_states(self) -> State:
        """The carried states, each ``(L, B, S, H)``: ``(h, c)`` for LSTM, ``(h,)`` otherwise."""
        states = self._states()
        if states is None:
            raise RuntimeError(
                f"{type(self).__name__} has no state yet: call it once, pass batch_size=, or use set_states()"
            )
        return tuple(s.clone() for s in states)

    def set_states(self, states: Sequence[torch.Tensor | np.ndarray]) -> None:
        """Replace the carried states with ``states`` (tensors or numpy arrays, each ``(L, B, S, H)``)."""
        weight = self.rnn.weight_ih_l0
        tensors = tuple(torch.as_tensor(s) for s in states)
        contract.check_states(
            [tuple(t.shape) for t in tensors],
            expected_count=len(self.state_names),
            num_layers=self.num_layers,
            num_streams=self.num_streams,
            units=self.hidden_size,
            batch_size=self.fixed_batch_size,
        )
        self._store(tuple(t.to(device=weight.device, dtype=weight.dtype).clone() for t in tensors))

    def save_states(self, path: str | os.PathLike) -> None:
        """Write the carried states to a framework-neutral ``.npz`` checkpoint (see ``harness.checkpoint``)."""
        states = {n: s.detach().cpu().numpy() for n, s in zip(self.state_names, self.get_states())}
        checkpoint.save_state_file(path, states, self._checkpoint_meta())

    def load_states(self, path: str | os.PathLike) -> None:
        """Resume the streams saved by ``save_states`` (in torch or in Keras); a misfit is refused untouched."""
        states = checkpoint.load_state_file(path, self._checkpoint_meta(), self.state_names)
        self.set_states([states[n] for n in self.state_names])

    def _checkpoint_meta(self) -> dict:
        return {
            "cell": self.cell,
            "num_layers": self.num_layers,
            "num_streams": self.num_streams,
            "units": self.hidden_size,
            "batch_size": self.fixed_batch_size,
        }

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

    rnn_class = nn.LSTM
    cell = "lstm"
    state_names = ("h", "c")


class MultiStateGRU(MultiStateBase):
    """A shared ``nn.GRU`` with an ``h`` state per stream. See ``MultiStateLSTM``."""

    rnn_class = nn.GRU
    cell = "gru"


class MultiStateRNN(MultiStateBase):
    """A shared ``nn.RNN`` (``nonlinearity="tanh"`` or ``"relu"``) with an ``h`` state per stream."""

    rnn_class = nn.RNN
    cell = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, num_streams: int, *, nonlinearity: str = "tanh", **kwargs: object
    ) -> None:
        super().__init__(input_size, hidden_size, num_streams, nonlinearity=nonlinearity, **kwargs)
