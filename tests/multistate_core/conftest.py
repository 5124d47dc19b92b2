"""The floor's promises (``multistate_core``), held on both frameworks: the input contract and its table of bad
calls (``tests/helpers.BAD_CALLS``), per-step resets and lengths against the step-by-step reference
(``tests/reference.py``), the state checkpoint format, atomic and read-only-safe writes, and the soundness of the
carried state. Torch cases are unmarked; Keras cases carry the ``keras`` marker and run once per backend.

Fixtures (``rng``, ``dtype``) come from the repository's ``conftest.py``; the shared shapes from ``tests/helpers``.
"""
