"""Keras 3 multi-state recurrent layers: one shared set of weights, one carried state per stream.

Example:
    >>> import numpy as np
    >>> from models_keras import MultiStateLSTM
    >>> lstm = MultiStateLSTM(units=8, num_streams=3)
    >>> tuple(lstm(np.zeros((2, 3, 10, 4), "float32")).shape)
    (2, 3, 10, 8)
"""

from models_keras.callbacks import ResetStates
from models_keras.multistate import (
    MultiStateBase,
    MultiStateGRU,
    MultiStateLSTM,
    MultiStateSimpleRNN,
    multistate_layers,
    reset_all_states,
)

__all__ = [
    "MultiStateBase",
    "MultiStateGRU",
    "MultiStateLSTM",
    "MultiStateSimpleRNN",
    "ResetStates",
    "multistate_layers",
    "reset_all_states",
]
