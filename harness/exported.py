"""Run an exported multi-state chunk model (``.onnx``) in onnxruntime, as a parity-engine ``Runner``.

The file must have the signature ``harness.export`` writes: inputs ``x`` ``(B, S, t, F)``
then the carried states in ``get_states()`` order (``h``, ``c`` for LSTM; ``h`` otherwise),
each ``(L, B, S, H)``; outputs ``y`` ``(B, S, t, H)`` then ``h_out`` (``c_out``). The runner
keeps the states between calls, so a stream of chunks runs like the torch module.

Example:
    >>> from harness.parity import check_parity
    >>> report = check_parity({"torch": module, "onnx": OnnxRunner("lstm.onnx")}, x, "random")  # doctest: +SKIP
    >>> report.ok                                                                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _describe(values: Sequence[Any]) -> str:
    return ", ".join(f"{v.name} {v.type} {v.shape}" for v in values) or "none"


class OnnxRunner:
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
        self._states: dict[str, np.ndarray] | None = None

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [i.name for i in inputs[1:]]
        expected_outputs = ["y"] + [f"{n}_out" for n in names]
        ok = (
            len(inputs) >= 2
            and inputs[0].name == "x"
            and names in (["h"], ["h", "c"])
            and [o.name for o in outputs] == expected_outputs
            and all(len(v.shape) == 4 and v.type == inputs[0].type for v in inputs + outputs)
            and inputs[0].type in _ORT_DTYPES
        )
        if ok:
            x_shape, state_shape = inputs[0].shape, inputs[1].shape
            fixed = (x_shape[1], x_shape[3], state_shape[0], state_shape[2], state_shape[3])
            ok = all(isinstance(d, int) for d in fixed) and x_shape[1] == state_shape[2]
            ok = ok and all(i.shape[0] == state_shape[0] and i.shape[2:] == state_shape[2:] for i in inputs[1:])
        if not ok:
            raise ValueError(
                f"{self.path} is not a multi-state chunk model: expected inputs x (B, S, t, F), h[, c] "
                f"(L, B, S, H) and outputs y, h_out[, c_out] of one float type; "
                f"got inputs [{_describe(inputs)}], outputs [{_describe(outputs)}]"
            )
        self.state_names: tuple[str, ...] = tuple(names)
        self.dtype = np.dtype(_ORT_DTYPES[inputs[0].type])
        self.num_streams, self.input_size = int(x_shape[1]), int(x_shape[3])
        self.num_layers, self.hidden_size = int(state_shape[0]), int(state_shape[3])
        self.frames: int | None = x_shape[2] if isinstance(x_shape[2], int) else None  # exported with frames=

    def reset(self) -> None:
        """Zero the carried states (they take the batch size of the next chunk)."""
        self._states = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one chunk ``(B, S, t, F)``, carry the states on, return ``(B, S, t, H)``.

        A model exported with fixed ``frames`` takes any multiple of them, one session call per group.
        """
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.ndim != 4 or x.shape[1] != self.num_streams or x.shape[3] != self.input_size or x.shape[2] < 1:
            raise ValueError(
                f"x must be (batch, {self.num_streams} streams, time >= 1, {self.input_size} features), "
                f"got shape {x.shape}"
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
        for start in range(0, x.shape[2], step):  # one session call, or one per group of ``frames`` steps
            y, *new = self.session.run(None, {"x": x[:, :, start : start + step], **self._states})
            self._states = dict(zip(self.state_names, new))
            outputs.append(y)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=2)

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
