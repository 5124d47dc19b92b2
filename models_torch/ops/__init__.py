"""The torch kernels both model packages run on the torch side, from a stack's weights.

- ``kernels``: the fused sequence op or the cell ops for one plain chunk (``Stack``, ``run_plain``).
- ``row_blocks``: a large chunk as blocks of rows, one fused call each (``paths.block_rows`` sizes them).
- ``saturate``: resets and lengths as saturated gates, one plain call per layer.
- ``segments``: resets and lengths as packed segments or cuts of the time axis.
- ``step_runs``: what a streaming step runs for one fixed chunk shape.

``models_torch`` calls them with its ``nn.LSTM``/``GRU``/``RNN``'s weights; the Keras torch backend
imports them lazily, with tensors built from its variables.
"""
