"""Run an exported multi-state chunk model as a parity-engine ``Runner``: ``.onnx`` in onnxruntime
(``OnnxRunner``), ``.tflite`` in the LiteRT interpreter (``TFLiteRunner``).

The file must have the signature ``harness.export.to_onnx`` writes: inputs ``x`` ``(B, S, t, F)``
then the carried states in ``get_states()`` order (``h``, ``c`` for LSTM; ``h`` otherwise),
each ``(L, B, S, H)``, and last, if the file was exported with resets, ``reset`` ``(B, S, t)`` bool;
outputs ``y`` ``(B, S, t, H)`` then ``h_out`` (``c_out``). The runner keeps the states between calls,
so a stream of chunks runs like the source model; ``run(x, resets=)`` feeds the reset input.

Example:
    >>> from harness.parity.engine import check_parity
    >>> report = check_parity({"torch": module, "onnx": OnnxRunner("lstm.onnx")}, x, "random")  # doctest: +SKIP
    >>> report.ok                                                                                  # doctest: +SKIP
    True
    >>> check_parity({"keras": layer, "tflite": TFLiteRunner("lstm.tflite")}, x, "ones").ok        # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from multistate_core.cells import CELLS

_STATE_LAYOUTS = {tuple(cell.state_names) for cell in CELLS.values()}  # the carried states a chunk file may hold
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _describe(values: Sequence[Any]) -> str:
    return ", ".join(f"{v.name} {v.type} {v.shape}" for v in values) or "none"


class _ChunkRunner:
    """The state carrying and checks shared by the runners; a subclass sets the sizes and ``_call``."""

    path: str
    state_names: tuple[str, ...]
    dtype: np.dtype
    num_streams: int
    input_size: int
    num_layers: int
    hidden_size: int
    _states: dict[str, np.ndarray] | None
    frames: int | None = None  # steps per call of a file exported with fixed frames
    batch_size: int | None = None  # the batch of a file exported with a fixed batch (the static form), else None
    has_reset: bool = False  # the file takes a per-step ``reset`` input (B, S, t) bool

    def _call(self, x: np.ndarray, states: dict[str, np.ndarray], reset: np.ndarray | None) -> list[np.ndarray]:
        """One chunk through the file: ``[y, *new states]`` in ``state_names`` order.

        ``reset`` is the chunk's ``(B, S, t)`` bool resets when the file has a reset input, else None.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Zero the carried states (they take the batch size of the next chunk)."""
        self._states = None

    def run(self, x: np.ndarray, resets: np.ndarray | None = None, lengths: np.ndarray | None = None) -> np.ndarray:
        """Run one chunk ``(B, S, t, F)``, carry the states on, return ``(B, S, t, H)``.

        A file exported with fixed ``frames`` takes any multiple of them, one call per group.
        ``resets`` ``(B, S, t)`` bool zero a stream's state before a step, as the layers' ``resets=``
        do; only a file exported with a reset input takes them (without them it gets all False).
        Exported files take no ``lengths``.
        """
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.ndim != 4 or x.shape[1] != self.num_streams or x.shape[3] != self.input_size or x.shape[2] < 1:
            raise ValueError(
                f"x must be (batch, {self.num_streams} streams, time >= 1, {self.input_size} features), "
                f"got shape {x.shape}"
            )
        reset = self._checked_reset(x, resets, lengths)
        if self.batch_size is not None and x.shape[0] != self.batch_size:
            raise ValueError(
                f"{self.path} was exported for a fixed batch of {self.batch_size}: x must have batch "
                f"{self.batch_size}, got shape {x.shape}"
            )
        if self.frames is not None and x.shape[2] % self.frames:
            raise ValueError(
                f"{self.path} was exported for {self.frames} steps per call: x must have a multiple of "
                f"{self.frames} steps, got {x.shape[2]}"
            )
        if self._states is None:
            shape = (self.num_layers, x.shape[0], self.num_streams, self.hidden_size)
            self._states = {n: np.zeros(shape, self.dtype) for n in self.state_names}
        elif next(iter(self._states.values())).shape[1] != x.shape[0]:
            raise ValueError(
                f"x has batch {x.shape[0]} but the carried state has batch "
                f"{next(iter(self._states.values())).shape[1]}: call reset() first"
            )
        step = self.frames or x.shape[2]
        outputs = []
        for start in range(0, x.shape[2], step):  # one call, or one per group of ``frames`` steps
            chunk_reset = None if reset is None else reset[:, :, start : start + step]
            y, *new = self._call(x[:, :, start : start + step], self._states, chunk_reset)
            self._states = dict(zip(self.state_names, new))
            outputs.append(y)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)

    def _checked_reset(self, x: np.ndarray, resets: np.ndarray | None, lengths: np.ndarray | None) -> np.ndarray | None:
        """The reset input to feed for chunk ``x`` (None for a file without one); refuses what the file cannot take."""
        if lengths is not None:
            raise ValueError(f"{self.path} takes no lengths: an exported chunk model runs every step of every stream")
        if resets is not None and not self.has_reset:
            raise ValueError(f"{self.path} has no reset input: export it with resets=True (--resets) to pass resets")
        if not self.has_reset:
            return None
        if resets is None:
            return np.zeros(x.shape[:3], bool)
        resets = np.asarray(resets)
        if resets.shape != x.shape[:3] or resets.dtype != bool:
            raise ValueError(
                f"resets must be bool {x.shape[:3]} (batch, streams, time), got {resets.dtype} {resets.shape}"
            )
        return np.ascontiguousarray(resets)

    def states(self) -> dict[str, np.ndarray]:
        """The carried states by name, each ``(L, B, S, H)`` (copies)."""
        if self._states is None:
            raise RuntimeError(f"{self.path} has no state yet: run a chunk first, or use set_states()")
        return {n: s.copy() for n, s in self._states.items()}

    def set_states(self, states: Mapping[str, np.ndarray]) -> None:
        """Replace the carried states (name -> ``(L, B, S, H)``), e.g. to resume a torch module's streams."""
        missing = [n for n in self.state_names if n not in states]
        if missing:
            raise ValueError(f"states lack {missing}: expected {self.state_names}")
        arrays = {n: np.ascontiguousarray(states[n], dtype=self.dtype) for n in self.state_names}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) != 1 or any(
            len(s) != 4 or s[0] != self.num_layers or s[2:] != (self.num_streams, self.hidden_size) for s in shapes
        ):
            raise ValueError(
                f"states must be {self.state_names}, each (L={self.num_layers}, B, S={self.num_streams}, "
                f"H={self.hidden_size}), all the same shape; got {[a.shape for a in arrays.values()]}"
            )
        self._states = arrays


class OnnxRunner(_ChunkRunner):
    """Drives an exported chunk model in onnxruntime and carries its states between ``run`` calls.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (None: onnxruntime's default; 1 for real-time use).
        providers: onnxruntime execution providers (default: CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid ONNX model, or not a multi-state chunk model.

    Example:
        >>> runner = OnnxRunner("gru.onnx", threads=1)                          # doctest: +SKIP
        >>> y = runner.run(np.zeros((1, 33, 1, 16), np.float32))               # one frame  # doctest: +SKIP
        >>> runner.states()["h"].shape                                          # doctest: +SKIP
        (1, 1, 33, 16)
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, providers: Sequence[str] = ()) -> None:
        import onnxruntime as ort

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no such ONNX file: {self.path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle pool threads would otherwise spin after each call and starve the other framework in parity runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                self.path, options, providers=list(providers) or ["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ValueError(f"cannot load {self.path}: not a valid ONNX model ({type(e).__name__}: {e})") from e
        self._check_signature()
        self._states = None

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        reset = inputs[-1] if len(inputs) > 2 and inputs[-1].name == "reset" else None
        inputs = inputs[:-1] if reset is not None else inputs
        names = [i.name for i in inputs[1:]]
        expected_outputs = ["y"] + [f"{n}_out" for n in names]
        ok = (
            len(inputs) >= 2
            and inputs[0].name == "x"
            and tuple(names) in _STATE_LAYOUTS
            and [o.name for o in outputs] == expected_outputs
            and all(len(v.shape) == 4 and v.type == inputs[0].type for v in inputs + outputs)
            and inputs[0].type in _ORT_DTYPES
        )
        if ok:
            x_shape, state_shape = inputs[0].shape, inputs[1].shape
            fixed = (x_shape[1], x_shape[3], state_shape[0], state_shape[2], state_shape[3])
            ok = all(isinstance(d, int) for d in fixed) and x_shape[1] == state_shape[2]
            ok = ok and all(i.shape[0] == state_shape[0] and i.shape[2:] == state_shape[2:] for i in inputs[1:])
            ok = ok and (reset is None or _is_reset_of(reset, x_shape))
        if not ok:
            raise ValueError(
                f"{self.path} is not a multi-state chunk model: expected inputs x (B, S, t, F), h[, c] "
                f"(L, B, S, H)[, reset (B, S, t) bool] and outputs y, h_out[, c_out] of one float type; "
                f"got inputs [{_describe(self.session.get_inputs())}], outputs [{_describe(outputs)}]"
            )
        self.state_names = tuple(names)
        self.dtype = np.dtype(_ORT_DTYPES[inputs[0].type])
        self.num_streams, self.input_size = int(x_shape[1]), int(x_shape[3])
        self.num_layers, self.hidden_size = int(state_shape[0]), int(state_shape[3])
        self.frames = x_shape[2] if isinstance(x_shape[2], int) else None
        self.batch_size = x_shape[0] if isinstance(x_shape[0], int) else None
        self.has_reset = reset is not None

    def _call(self, x: np.ndarray, states: dict[str, np.ndarray], reset: np.ndarray | None) -> list[np.ndarray]:
        feeds = {"x": x, **states} if reset is None else {"x": x, **states, "reset": reset}
        return self.session.run(None, feeds)


def _is_reset_of(reset: Any, x_shape: Sequence[Any]) -> bool:
    """Whether an onnxruntime input is a reset input ``(B, S, t)`` bool for an input ``x`` of ``x_shape``: its fixed
    sizes are x's first three, and where x's size is fixed, so is its."""
    shape = reset.shape
    return (
        reset.type == "tensor(bool)"
        and len(shape) == 3
        and all(not isinstance(d, int) or d == shape[i] for i, d in enumerate(x_shape[:3]))
        and all(not isinstance(d, int) or d == x_shape[i] for i, d in enumerate(shape))
    )


def _interpreter_class() -> type:
    """LiteRT's ``Interpreter`` (``ai-edge-litert``), else TensorFlow's ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


class TFLiteRunner(_ChunkRunner):
    """Drives an exported ``.tflite`` chunk model in the LiteRT interpreter and carries its states between calls.

    The file's signature (``harness.export.to_tflite``) names the tensors; batch and time may be dynamic
    (``-1``): the runner resizes the inputs only when a chunk's shape changes, so a stream of
    one-frame chunks costs one ``invoke`` each. A static file (``frames=``) fixes both: ``frames`` and
    ``batch_size`` say to what; a chunk of another batch is refused, one of several groups of ``frames``
    steps runs as that many calls. A file with a ``reset`` input (``has_reset``) takes ``run(x, resets=)``.

    Args:
        path: the ``.tflite`` file.
        threads: interpreter threads (None: the interpreter's default; 1 for real-time use).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a valid TFLite model, or not a multi-state chunk model.

    Example:
        >>> runner = TFLiteRunner("gru.tflite", threads=1)                      # doctest: +SKIP
        >>> y = runner.run(np.zeros((1, 33, 1, 16), np.float32))               # one frame  # doctest: +SKIP
        >>> runner.states()["h"].shape                                          # doctest: +SKIP
        (1, 1, 33, 16)
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no such TFLite file: {self.path}")
        interpreter = _interpreter_class()
        try:
            self.interpreter = interpreter(model_path=self.path, num_threads=threads)
            self.interpreter.allocate_tensors()
            signatures = self.interpreter.get_signature_list()
        except Exception as e:
            raise ValueError(f"cannot load {self.path}: not a valid TFLite model ({type(e).__name__}: {e})") from e
        self.interpreter_name = f"{interpreter.__module__}.{interpreter.__name__}"
        self._check_signature(signatures)
        self._shapes: dict[int, tuple[int, ...]] = {}
        self._states = None

    def _check_signature(self, signatures: dict) -> None:
        found = {k: (sorted(v["inputs"]), sorted(v["outputs"])) for k, v in signatures.items()}
        given = found.get("serving_default", ((), ()))[0]
        states = [n for n in ("h", "c") if n in given]
        extra = ["reset"] if "reset" in given else []
        ok = len(found) == 1 and found.get("serving_default") == (
            sorted(["x", *states, *extra]),
            sorted(["y", *(f"{n}_out" for n in states)]),
        )
        ok = ok and tuple(states) in _STATE_LAYOUTS
        if ok:
            runner = self.interpreter.get_signature_runner("serving_default")
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
            x, state = (tuple(inputs[n]["shape_signature"]) for n in ("x", states[0]))
            floats = ["x", *states]
            ok = all(len(inputs[n]["shape_signature"]) == 4 and inputs[n]["dtype"] == np.float32 for n in floats)
            ok = ok and all(len(v["shape_signature"]) == 4 for v in outputs.values())
            fixed = (x[1], x[3], state[0], state[2], state[3]) if ok else (-1,)
            ok = ok and min(fixed) > 0 and x[1] == state[2] and x[0] == state[1]
            ok = ok and all(tuple(inputs[n]["shape_signature"]) == state for n in states)
            # The reset input, if any: bool (B, S, t), as x.
            ok = ok and all(
                tuple(inputs[n]["shape_signature"]) == x[:3] and inputs[n]["dtype"] == np.bool_ for n in extra
            )
            # The signature must drive the primary subgraph, which ``invoke`` runs.
            main = {d["index"] for d in self.interpreter.get_input_details()}
            ok = ok and main == {v["index"] for v in inputs.values()}
        if not ok:
            raise ValueError(
                f"{self.path} is not a multi-state chunk model: expected one signature 'serving_default' with "
                f"float32 inputs x (B, S, t, F), h[, c] (L, B, S, H), optionally bool reset (B, S, t), and outputs "
                f"y, h_out[, c_out]; got {found}"
            )
        self.state_names = tuple(states)
        self.dtype = np.dtype(np.float32)
        self.num_streams, self.input_size = int(x[1]), int(x[3])
        self.num_layers, self.hidden_size = int(state[0]), int(state[3])
        self.has_reset = bool(extra)
        # A static file (``frames=``): fixed time and batch (-1 where dynamic).
        self.frames = int(x[2]) if x[2] > 0 else None
        self.batch_size = int(x[0]) if x[0] > 0 else None
        # Interpreter tensor index by name, inputs and outputs (to feed the interpreter directly, as benchmarks do).
        self.tensor_index = {n: d["index"] for n, d in (*inputs.items(), *outputs.items())}
        self._outputs = [self.tensor_index[n] for n in ("y", *(f"{s}_out" for s in states))]

    def _call(self, x: np.ndarray, states: dict[str, np.ndarray], reset: np.ndarray | None) -> list[np.ndarray]:
        feeds = {self.tensor_index["x"]: x, **{self.tensor_index[n]: states[n] for n in self.state_names}}
        if reset is not None:
            feeds[self.tensor_index["reset"]] = reset
        resized = False
        for index, value in feeds.items():
            if self._shapes.get(index) != value.shape:
                self.interpreter.resize_tensor_input(index, value.shape, strict=True)
                self._shapes[index], resized = value.shape, True
        if resized:
            self.interpreter.allocate_tensors()
        for index, value in feeds.items():
            self.interpreter.set_tensor(index, value)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in self._outputs]
