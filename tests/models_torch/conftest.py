"""The torch modules (``models_torch``) on their own: against plain torch (``tests/helpers.PerStreamLoop``), against
themselves chunked and whole, through ``streaming_step``, ``GraphStep``, weight changes and DDP. No test here
needs Keras: the folder runs in the torch-only job (``-m "not keras"``).

Fixtures (``rng``, ``dtype``) come from the repository's ``conftest.py``; the shared shapes from ``tests/helpers``.
"""
