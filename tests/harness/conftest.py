"""The harness (``harness``): the parity engine and its reports, weight and model porting, ONNX and TFLite export,
the command line, the pytest plugin, matmul precision, (distributed) training parity, the checks leaving
models as found, and the planted faults the engine must catch. Tests that need Keras carry the ``keras`` marker.

Fixtures (``rng``, ``dtype``) come from the repository's ``conftest.py``; the shared shapes from ``tests/helpers``.
"""
