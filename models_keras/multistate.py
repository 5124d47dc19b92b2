"""Keras 3 recurrent layers that share weights across streams and keep a state per stream.

Streams are folded into the batch: ``(B, S, T, F)`` becomes ``(B*S, T, F)``
(row ``b*S + s``) and runs through ONE Keras ``LSTM``/``GRU``/``SimpleRNN`` call per
layer (or one fused call for the whole stack, see ``fast_paths``), starting from the
carried state. Carried states are non-trainable
variables of shape ``(num_layers, batch, num_streams, units)``, assigned (with
gradients stopped) at the end of every call, so ``predict``, ``fit`` and
``evaluate`` carry them on TensorFlow, JAX and torch alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from models_keras import backends, distributed, exact, fast_paths, stepping, streaming
from multistate_core import contract
from multistate_core.cells import CELLS
from multistate_core.checkpoint import StateCheckpoints

# Guards the read-modify-write of one stream's slice in eager ``stream=k`` calls from several threads.
_STATE_LOCK = threading.Lock()


class MultiStateBase(StateCheckpoints, keras.layers.Layer):
    """One stack of Keras recurrent layers used on ``num_streams`` streams, each with its own state.

    Subclasses name the Keras layer in ``rnn_class`` and their cell (a key of
    ``multistate_core.cells.CELLS``, found from it). Extra keyword arguments (``activation``, initializers, ...)
    go to every inner recurrent layer.

    Args:
        units: size of the hidden state.
        num_streams: number of parallel streams that share the weights.
        num_layers: stacked recurrent layers.
        use_bias: whether the inner layers use a bias.
        return_sequences: ``(B, S, T, units)`` if True, else the last step ``(B, S, units)``.
        batch_size: batch size of the carried state; otherwise taken from
            ``Input(batch_shape=...)`` or the first call, and fixed from then on.
        check_finite: refuse inputs holding NaN or Inf (off by default). Eager calls
            and TensorFlow graphs raise; a compiled JAX step cannot raise, so there the
            carried state is left as it was and the output shows the NaN.
        fused: take the backend's fast path where the configuration allows (one fused
            torch RNN call on the torch backend, XLA on TensorFlow; see ``fast_paths``);
            False forces the generic per-layer Keras path.

    Call arguments:
        inputs: ``(B, S, T, F)``, or ``(B, T, F)`` together with ``stream``.
        stream: run only stream ``k``; the other streams' states stay as they are.
        resets: ``(B, S, T)`` bools (``(B, T)`` with ``stream``): where True, that stream's
            state is zeroed before step t (an episode starts there).
        lengths: ``(B, S)`` ints (``(B,)`` with ``stream``) in ``[0, T]``: steps ``>= length``
            neither change that stream's state nor produce output (zeros there); the carried
            state is the state after the stream's last valid step.
        mask: Keras's mask (from ``Masking``, ``Embedding(mask_zero=True)`` or ``mask=``),
            right-padded ``(B, S, T)`` bools, read as lengths (with ``lengths`` too, the smaller
            one counts). See ``stepping.mask_to_lengths`` for masks that are not right-padded.

    With resets, lengths or a mask the recurrence runs through ``stepping`` (one packed fused
    call on the torch backend, one ``keras.ops.scan`` elsewhere); eager calls whose resets fall
    only on the first step and whose lengths are full keep the fast path.
    With ``return_sequences=False``, the output is each stream's output at its last valid step
    in this chunk, and zeros for a stream with none (length 0), as ``models_torch``'s ``y[..., length - 1, :]``.

    Example:
        >>> layer = MultiStateLSTM(8, num_streams=3)
        >>> x = np.zeros((2, 3, 10, 4), "float32")
        >>> resets = np.zeros((2, 3, 10), bool); resets[0, 1, 4] = True
        >>> tuple(layer(x, resets=resets, lengths=np.full((2, 3), 7)).shape)
        (2, 3, 10, 8)
    """

    rnn_class: type[keras.layers.Layer]
    cell: str

    def __init__(
        self,
        units: int,
        num_streams: int,
        *,
        num_layers: int = 1,
        use_bias: bool = True,
        return_sequences: bool = True,
        batch_size: int | None = None,
        check_finite: bool = False,
        fused: bool = True,
        name: str | None = None,
        dtype: object = None,
        trainable: bool = True,
        **rnn_kwargs: object,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if num_streams < 1 or num_layers < 1:
            raise ValueError(f"num_streams and num_layers must be >= 1, got {num_streams} and {num_layers}")
        backends.active.check_dtype(self.dtype_policy.variable_dtype)
        self.units = units
        self.num_streams = num_streams
        self.num_layers = num_layers
        self.use_bias = use_bias
        self.return_sequences = return_sequences
        self.batch_size = batch_size
        self.check_finite = check_finite
        self.fused = fused
        self.rnn_kwargs = rnn_kwargs
        self.rnn_layers = [
            self.rnn_class(
                units,
                use_bias=use_bias,
                return_sequences=True,
                return_state=True,
                dtype=self.dtype_policy,
                name=f"rnn_{i}",
                **exact.safe_rnn_kwargs(self.rnn_class, use_bias, rnn_kwargs),
            )
            for i in range(num_layers)
        ]
        self.input_size: int | None = None
        self.state_variables: list[keras.Variable] = []
        # Plain attribute, outside Keras/TensorFlow tracking; freed with the layer (no global cache).
        object.__setattr__(self, "_xla", {})

    @classmethod
    def from_layer(cls, layer: keras.layers.Layer, num_streams: int, **kwargs: object) -> MultiStateBase:
        """A multi-state layer with the weights of a built Keras ``LSTM``/``GRU``/``SimpleRNN``, run on ``num_streams``.

        The result computes, per stream, what ``layer`` computes. It is a new layer: the weights are
        copied, not shared, so training one leaves the other as it was. Units, activations, bias,
        dropout, regularizers, constraints, ``return_sequences``, dtype policy and ``trainable`` come
        from ``layer``; ``num_layers`` is 1 (a Keras recurrent layer is one layer). ``stateful`` and
        ``return_state`` do not carry over: the multi-state layer carries each stream's state itself
        (``get_states()``). Other keyword arguments (``batch_size=``, ``name=``, ...) go to the
        constructor and may override the settings that do not fix the weights (``return_sequences``,
        ``dropout``, ...). ``MultiStateBase.from_layer`` picks the class by the cell.

        Example:
            >>> lstm = keras.layers.LSTM(8, return_sequences=True)
            >>> lstm.build((None, None, 4))
            >>> layer = MultiStateLSTM.from_layer(lstm, num_streams=3)
            >>> tuple(layer(np.zeros((2, 3, 10, 4), "float32")).shape)
            (2, 3, 10, 8)
        """
        cls = cls._class_for(layer)
        maker = f"{cls.__name__}.from_layer"
        if layer.go_backwards:
            raise ValueError(f"{maker} expects a layer that runs forward in time, got go_backwards=True")
        if not layer.built:
            raise ValueError(
                f"{maker}: Keras {type(layer).__name__} {layer.name!r} has no weights yet: build it first "
                "(call it on an input, or layer.build((None, None, features)))"
            )
        cell = layer.cell
        taken = {
            "units": cell.units,
            "num_layers": 1,
            "use_bias": cell.use_bias,
            **{attr: _activation_argument(getattr(cell, attr)) for attr in CELLS[cls.cell].activations},
            **({"reset_after": cell.reset_after} if hasattr(cell, "reset_after") else {}),
        }
        contract.check_taken_from_source(maker, taken, kwargs)
        defaults = {
            "return_sequences": layer.return_sequences,
            "dtype": layer.dtype_policy,
            "trainable": layer.trainable,
            **{k: getattr(cell, k) for k in _CARRIED_OPTIONS if getattr(cell, k, None) is not None},
        }
        made = cls(num_streams=num_streams, **{**defaults, **taken, **kwargs})
        made.build_weights(cell.kernel.shape[0])
        for target, source in zip(_cell_weights(made.rnn_layers[0].cell), _cell_weights(cell), strict=True):
            target.assign(ops.convert_to_numpy(source).astype(target.dtype))  # through numpy: a copy
        return made

    @classmethod
    def _class_for(cls, layer: object) -> type[MultiStateBase]:
        """The multi-state class for ``layer``'s cell: ``cls`` itself, or by the cell where ``cls`` is the base."""
        cell = next((k for k, c in CELLS.items() if _is_plain(layer, c.keras_class)), None)
        own = getattr(cls, "cell", None)
        if cell is None or own not in (None, cell):
            expected = " or ".join(f"keras.layers.{c.keras_class}" for k, c in CELLS.items() if own in (None, k))
            hint = f"; for it use {CELLS[cell].keras_multistate}.from_layer" if cell else ""
            raise TypeError(f"{cls.__name__}.from_layer expects a {expected}, got {type(layer).__name__}{hint}")
        return globals()[CELLS[cell].keras_multistate] if own is None else cls

    @property
    def state_names(self) -> tuple[str, ...]:
        return CELLS[self.cell].state_names

    @property
    def fixed_batch_size(self) -> int | None:
        """The batch size the carried state is fixed to (None until known): ``batch_size``, under the name that
        both frameworks' layers give it (``StateCheckpoints`` and the harness read it)."""
        return self.batch_size

    def build_weights(self, input_size: int) -> None:
        """Build the inner layers' weights for ``input_size`` features (idempotent).

        ``build`` calls it; weight porting calls it alone, so the carried state can
        still take its batch size from the first call.
        """
        if self.input_size not in (None, input_size):
            raise ValueError(f"{self.name} was built for {self.input_size} input features, got {input_size}")
        self.input_size = input_size
        for i, rnn in enumerate(self.rnn_layers):
            if not rnn.built:
                rnn.build((None, None, input_size if i == 0 else self.units))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f"{self.name} needs a known number of input features, got input shape {input_shape}")
        self.build_weights(input_shape[-1])
        self.batch_size = self.batch_size or input_shape[0]
        if self.batch_size is not None:
            if self.batch_size < 1:
                raise ValueError(f"{self.name} needs a batch of at least one row, got batch size {self.batch_size}")
            # Under a tf.distribute strategy each replica keeps the rows it runs (see ``distributed``).
            rows = distributed.local_batch(self.batch_size, distributed.strategy_replicas())
            shape = (self.num_layers, rows, self.num_streams, self.units)
            # autocast=False: under a mixed policy the state stays in the variable dtype and is assigned there.
            self.state_variables = [
                self.add_weight(shape=shape, initializer="zeros", trainable=False, autocast=False, name=f"state_{n}")
                for n in self.state_names
            ]

    def _check(self, shape: Sequence[int | None], dtype: str, stream: int | None) -> None:
        assert self.input_size is not None  # Keras (and streaming.step) build the layer before any call
        contract.check_input(
            shape,
            keras.backend.standardize_dtype(dtype),
            num_streams=self.num_streams,
            input_size=self.input_size,
            batch_size=distributed.rows_here(self.batch_size, self._first_state()),
            stream=stream,
            fixed_batch=contract.KERAS_BATCH,
        )

    def _first_state(self) -> keras.Variable | None:
        return self.state_variables[0] if self.state_variables else None

    def compute_output_spec(
        self,
        inputs: keras.KerasTensor,
        stream: int | None = None,
        training: bool | None = None,
        resets: keras.KerasTensor | None = None,
        lengths: keras.KerasTensor | None = None,
        mask: keras.KerasTensor | None = None,
    ):
        self._check(inputs.shape, inputs.dtype, stream)
        self._check_step_args(inputs, resets, lengths, mask, concrete=False)
        lead = inputs.shape[:-1] if self.return_sequences else inputs.shape[:-2]
        return keras.KerasTensor(lead + (self.units,), dtype=self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        """The input's mask goes on with the sequence (padded steps are zeros); none for the last step."""
        return mask if self.return_sequences else None

    def _check_step_args(self, inputs, resets, lengths, mask, *, concrete: bool) -> None:
        """``contract.check_step_args`` on shapes and dtypes, and on the lengths' values where they are known."""

        def spec(t):
            return (tuple(t.shape), keras.backend.standardize_dtype(t.dtype))

        bounds: tuple[int, int] | tuple[None, None] = (None, None)
        if lengths is not None and concrete and int(np.prod(lengths.shape)):
            values = keras.ops.convert_to_numpy(lengths)
            bounds = (int(values.min()), int(values.max())) if values.dtype.kind in "iu" else bounds
        contract.check_step_args(
            tuple(inputs.shape),
            resets=None if resets is None else spec(resets),
            lengths=None if lengths is None else (*spec(lengths), *bounds),
            mask=None if mask is None else spec(mask),
        )

    def _step_args(self, inputs, resets, lengths, mask, concrete: bool) -> tuple[object, object, bool]:
        """Checked ``resets``/``lengths`` tensors (a mask folded into lengths), and whether they change anything."""
        resets, lengths, mask = (None if a is None else ops.convert_to_tensor(a) for a in (resets, lengths, mask))
        self._check_step_args(inputs, resets, lengths, mask, concrete=concrete)
        if mask is not None:
            from_mask = stepping.mask_to_lengths(mask)
            lengths = from_mask if lengths is None else ops.minimum(ops.cast(lengths, "int32"), from_mask)
        if lengths is not None:
            lengths = _checked_lengths(ops.cast(lengths, "int32"), ops.shape(inputs)[-2], concrete)
        if resets is None and lengths is None:
            return None, None, False
        if not concrete:
            return resets, lengths, True
        inner = resets is not None and bool(ops.any(resets[..., 1:]))
        ragged = lengths is not None and bool(ops.any(lengths != ops.shape(inputs)[-2]))
        return resets, lengths, inner or ragged

    def call(
        self,
        inputs,
        stream: int | None = None,
        training: bool | None = None,
        resets=None,
        lengths=None,
        mask=None,
    ):
        self._check(inputs.shape, inputs.dtype, stream)
        if not self.state_variables:
            raise ValueError(
                f"{self.name} needs a fixed batch size to carry state: pass batch_size= "
                "or use keras.Input(batch_shape=(batch, ...))"
            )
        assert self.batch_size is not None  # the state variables are made only for a known batch size
        if distributed.tracing_across_replicas(self._first_state()):
            return distributed.shape_only(inputs, self.units, self.return_sequences)
        concrete = backends.is_concrete(inputs)
        resets, lengths, stepped = self._step_args(inputs, resets, lengths, mask, concrete)
        batch, streams, units = (
            distributed.rows_to_run(self.batch_size, self._first_state()),
            self.num_streams,
            self.units,
        )
        # A copy, so that assigning the variable below cannot alter a value the backward pass needs.
        carried = [ops.cast(ops.copy(v.value), self.compute_dtype) for v in self.state_variables]
        inputs = backends.active.run_time_checks(inputs, batch, self.check_finite, concrete)
        finite = ops.all(ops.isfinite(inputs)) if self.check_finite else None
        if stream is None:
            x = ops.reshape(inputs, (batch * streams, ops.shape(inputs)[2], self.input_size))
            initial = [ops.reshape(s, (self.num_layers, batch * streams, units)) for s in carried]
            if resets is not None:
                resets = ops.reshape(resets, (batch * streams, -1))
            if lengths is not None:
                lengths = ops.reshape(lengths, (batch * streams,))
        else:
            x, initial = inputs, [s[:, :, stream] for s in carried]

        path = fast_paths.path_for(fast_paths.facts_for(self, training=training, stepped=stepped, concrete=concrete))
        x, finals = fast_paths.RUNNERS[path](self, x, initial, resets, lengths, training)

        for variable, final in zip(self.state_variables, finals):
            new = ops.cast(ops.stop_gradient(final), variable.dtype)
            if stream is None:
                variable.assign(self._unless_non_finite(finite, ops.reshape(new, variable.shape), variable))
            else:
                with _STATE_LOCK:
                    updated = ops.slice_update(variable.value, (0, 0, stream, 0), new[:, :, None])
                    variable.assign(self._unless_non_finite(finite, updated, variable))

        if not self.return_sequences:
            x = _last_outputs(x, finals[0][-1], lengths, stepped)
        if stream is None:
            x = ops.reshape(x, (batch, streams, -1, units) if self.return_sequences else (batch, streams, units))
        return x

    @staticmethod
    def _unless_non_finite(finite, new, variable):
        return new if finite is None else ops.where(finite, new, variable.value)

    def streaming_step(self, compiled: bool = False) -> Callable[[Any], Any]:
        """``step(x) -> y``: one chunk on the carried state without Keras's per-call cost, for inference loops.

        The same numbers and carried state as ``self(x)``; no ``training``, ``stream``, ``resets``,
        ``lengths`` or ``mask``. ``compiled=True``: on the torch backend, compiled ahead of time by
        AOTInductor (CPU; seconds per input shape); JAX and TensorFlow steps are compiled anyway
        (``models_keras.streaming`` says how each backend runs it).

        Example:
            >>> layer = MultiStateGRU(16, num_streams=33, batch_size=1)
            >>> step = layer.streaming_step()
            >>> tuple(step(np.zeros((1, 33, 1, 16), "float32")).shape)
            (1, 33, 1, 16)
        """
        return streaming.step_function(self, compiled)

    def reset_states(self, streams: Sequence[int] | None = None, mask: np.ndarray | None = None) -> None:
        """Zero carried states: all of them, the listed ``streams``, or where the ``(B, S)`` ``mask`` is True.

        Zeros are assigned (not multiplied in), so a reset also clears NaN or Inf.
        """
        mask_np = None if mask is None else np.asarray(keras.ops.convert_to_numpy(mask))
        contract.check_reset_args(
            None if streams is None else list(streams),
            None if mask_np is None else mask_np.shape,
            None if mask_np is None else str(mask_np.dtype),
            num_streams=self.num_streams,
            batch_size=self.batch_size,
        )
        if not self.state_variables:
            return
        assert self.batch_size is not None  # the state variables are made only for a known batch size
        if streams is None and mask_np is None:
            mask_np = np.ones((self.batch_size, self.num_streams), dtype=bool)
        elif mask_np is None:
            assert streams is not None  # the branch above took "neither"
            mask_np = np.zeros((self.batch_size, self.num_streams), dtype=bool)
            mask_np[:, list(streams)] = True
        if distributed.state_replicas(self.state_variables[0]) > 1:  # each replica holds its rows: go global
            self.set_states([np.where(mask_np[None, :, :, None], 0, s) for s in self.get_states()])
            return
        cleared = ops.convert_to_tensor(mask_np[None, :, :, None])
        for v in self.state_variables:
            v.assign(ops.where(cleared, ops.zeros_like(v.value), v.value))

    reset_state = reset_states

    def get_states(self) -> tuple[np.ndarray, ...]:
        """The carried states as numpy arrays, each ``(L, B, S, units)``: ``(h, c)`` for LSTM, ``(h,)`` otherwise."""
        if not self.state_variables:
            raise RuntimeError(f"{self.name} has no state yet: build it with a batch size or call it once")
        return tuple(distributed.read_global(v) for v in self.state_variables)

    numpy_states = get_states

    def set_states(self, states: Sequence[np.ndarray]) -> None:
        """Replace the carried states (numpy arrays or tensors, each ``(L, B, S, units)``)."""
        arrays = [np.asarray(keras.ops.convert_to_numpy(s)) for s in states]
        contract.check_states(
            [a.shape for a in arrays],
            expected_count=len(self.state_names),
            num_layers=self.num_layers,
            num_streams=self.num_streams,
            units=self.units,
            batch_size=self.batch_size,
        )
        if not self.state_variables:
            raise RuntimeError(f"{self.name} has no state yet: build it with a batch size or call it once")
        for v, a in zip(self.state_variables, arrays):
            distributed.assign_global(v, a.astype(self.variable_dtype))

    def save_own_variables(self, store) -> None:
        """``model.save``: the whole (global) state, whichever replicas hold its rows."""
        if not self._owns_only_states():
            return super().save_own_variables(store)
        for i, state in enumerate(self.get_states()):
            store[str(i)] = state

    def load_own_variables(self, store) -> None:
        """``load_model``: the saved global state, split over this model's replicas (any number)."""
        if not self._owns_only_states() or len(store.keys()) != len(self.state_variables):
            return super().load_own_variables(store)
        self.set_states([np.asarray(store[str(i)]) for i in range(len(self.state_variables))])

    def _owns_only_states(self) -> bool:
        own = self._trainable_variables + self._non_trainable_variables
        return bool(own) and [id(v) for v in own] == [id(v) for v in self.state_variables]

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "units": self.units,
            "num_streams": self.num_streams,
            "num_layers": self.num_layers,
            "use_bias": self.use_bias,
            "return_sequences": self.return_sequences,
            "batch_size": self.batch_size,
            "check_finite": self.check_finite,
            "fused": self.fused,
            **self.rnn_kwargs,
        }


# Cell settings ``from_layer`` carries over where set; they do not fix the weights' shapes.
_CARRIED_OPTIONS = (
    "dropout",
    "recurrent_dropout",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
)


def _cell_of(rnn_class: type) -> str:
    """The cell (a key of ``CELLS``) whose Keras layer class has ``rnn_class``'s name."""
    return next(k for k, c in CELLS.items() if c.keras_class == rnn_class.__name__)


def _is_plain(layer: object, keras_class: str) -> bool:
    """Whether ``layer`` is a one-directional Keras recurrent layer (or ``RNN``) around a ``keras_class`` cell."""
    cell_class = getattr(keras.layers, keras_class + "Cell")
    return isinstance(layer, keras.layers.RNN) and isinstance(getattr(layer, "cell", None), cell_class)


def _cell_weights(cell: keras.layers.Layer) -> list[keras.Variable]:
    """A recurrent cell's kernel, recurrent kernel and bias (if any); not its dropout seed's state."""
    return [cell.kernel, cell.recurrent_kernel] + ([cell.bias] if cell.use_bias else [])


def _activation_argument(function: Callable) -> object:
    """An activation as a constructor argument: its name where Keras knows it ("tanh"), else the function."""
    name = keras.activations.serialize(function)
    return name if isinstance(name, str) else function


def _last_outputs(x, top_h, lengths, stepped: bool):
    """``return_sequences=False``: each row's output at its last valid step in this chunk, zeros for a row
    without one (length 0), as Keras's masked RNNs and torch's ``y[..., length - 1, :]`` (zeros) have it.

    ``x``: the outputs ``(N, T, H)``; ``top_h``: the top layer's ``h`` after each row's last valid step
    (its carried ``h`` for length 0); ``lengths``: ``(N,)`` or None.
    """
    if not stepped:
        return x[:, -1]
    if lengths is None:
        return top_h
    return ops.where(lengths[:, None] > 0, top_h, ops.zeros_like(top_h))


def _checked_lengths(lengths, steps, concrete: bool):
    """``lengths``, with an assertion in TensorFlow graphs that they lie in ``[0, steps]`` (eager calls checked them).

    A compiled JAX step cannot raise: there lengths below 0 act as 0 and above ``steps`` as ``steps``.
    """
    if concrete:
        return lengths

    def within() -> Any:
        return ops.all((lengths >= 0) & (lengths <= ops.cast(steps, lengths.dtype)))

    return backends.active.guard(lengths, within, "lengths must lie in [0, T] (the chunk's time steps)", concrete)


@keras.saving.register_keras_serializable(package="multistate_rnn")
class MultiStateLSTM(MultiStateBase):
    """A shared Keras ``LSTM`` with an ``(h, c)`` state per stream.

    Example:
        >>> layer = MultiStateLSTM(units=8, num_streams=3)
        >>> tuple(layer(np.zeros((2, 3, 10, 4), "float32")).shape)
        (2, 3, 10, 8)
    """

    rnn_class = keras.layers.LSTM
    cell = _cell_of(rnn_class)


@keras.saving.register_keras_serializable(package="multistate_rnn")
class MultiStateGRU(MultiStateBase):
    """A shared Keras ``GRU`` (``reset_after=True``, as torch computes it) with an ``h`` state per stream."""

    rnn_class = keras.layers.GRU
    cell = _cell_of(rnn_class)

    def __init__(self, units: int, num_streams: int, **kwargs: Any) -> None:
        if not kwargs.get("reset_after", True):
            raise ValueError(
                "MultiStateGRU supports only reset_after=True (the form torch's GRU computes), got reset_after=False"
            )
        super().__init__(units, num_streams, **kwargs)


@keras.saving.register_keras_serializable(package="multistate_rnn")
class MultiStateSimpleRNN(MultiStateBase):
    """A shared Keras ``SimpleRNN`` (``activation="tanh"`` or ``"relu"``) with an ``h`` state per stream."""

    rnn_class = exact.SimpleRNN
    cell = _cell_of(rnn_class)


def multistate_layers(model: keras.layers.Layer) -> list[MultiStateBase]:
    """Every multi-state layer in ``model`` (the model itself included), depth first.

    Keras 3 has no public walk over nested layers (``Model.layers`` lists only the top
    level, and layers held by a subclassed layer are tracked privately), so this uses
    ``Layer._flatten_layers``; ``tests/models_keras/test_layers.py`` fails loudly if it moves.
    """
    return [layer for layer in model._flatten_layers(include_self=True) if isinstance(layer, MultiStateBase)]


def reset_all_states(model: keras.layers.Layer) -> None:
    """Zero the carried state of every multi-state layer in ``model``, e.g. between independent sequences."""
    for layer in multistate_layers(model):
        layer.reset_states()
