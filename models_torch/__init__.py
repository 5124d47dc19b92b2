"""PyTorch multi-state recurrent layers: one shared set of weights, one carried state per stream.

Example:
    >>> import torch
    >>> from models_torch import MultiStateLSTM
    >>> lstm = MultiStateLSTM(input_size=4, hidden_size=8, num_streams=3)
    >>> lstm(torch.zeros(2, 3, 10, 4)).shape
    torch.Size([2, 3, 10, 8])
"""

from models_torch.multistate import MultiStateBase, MultiStateGRU, MultiStateLSTM, MultiStateRNN

__all__ = ["MultiStateBase", "MultiStateGRU", "MultiStateLSTM", "MultiStateRNN"]
