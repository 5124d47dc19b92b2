"""Input checks that must run inside the computation, where tracing left the values or shapes unknown.

Static checks (rank, sizes, dtype) run at trace time in ``harness.contract``; these
cover what only the data can tell: the batch size where TensorFlow relaxed it to
``None`` on retracing, and non-finite values.
"""

from __future__ import annotations

import keras
from keras import ops

NON_FINITE = "input holds NaN or Inf; state left as it was"


def at_run_time(inputs, batch: int, check_finite: bool):
    """``inputs``, checked for the batch size (where unknown) and, if asked, for NaN/Inf.

    TensorFlow gets assertion ops the rest of the step depends on; eager backends
    raise ``ValueError`` at once; inside a JAX trace the finiteness check is left
    to the caller's guard (values are not known there).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if inputs.shape[0] is None:
            inputs = tf.ensure_shape(inputs, (batch,) + tuple(inputs.shape[1:]))
        if check_finite:
            inputs = tf.debugging.assert_all_finite(inputs, NON_FINITE)
        return inputs
    if check_finite and _is_concrete(inputs) and not bool(ops.all(ops.isfinite(inputs))):
        raise ValueError(NON_FINITE)
    return inputs


def _is_concrete(x) -> bool:
    if keras.backend.backend() == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    return True
