"""The floor under both model packages: what they share, importing only the standard library and numpy.

- ``cells``: the one table of cells (classes, gates, activations, weight layout).
- ``contract``: the checks of the public input contract, on plain shapes and dtype names.
- ``checkpoint``: the framework-neutral state checkpoint and the ``save_states``/``load_states`` mixin.
- ``atomic``: atomic file writing.

``models_torch`` and ``models_keras`` import only this package from ``harness``; the
engine, porting and CLI stand above the models (see ``docs/architecture.md``).
"""
