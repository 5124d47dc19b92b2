"""The Keras layers (``models_keras``) on the active backend (``KERAS_BACKEND``, fixed at import): against their
torch twins and against themselves. Every test here is marked ``keras`` and so runs once per backend.

Builders (a seeded torch module and its Keras twin, a functional model, its one layer) come from
``tests/keras_helpers.py``; fixtures (``rng``, ``dtype``) from the repository's ``conftest.py``.
"""
