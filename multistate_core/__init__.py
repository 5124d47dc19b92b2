"""What both model packages share, framework-neutral: it imports only the standard library and numpy.

- ``cells``: the one table of cells (classes, gates, activations, weight layout).
- ``contract``: the checks of the public input contract, on plain shapes and dtype names.
- ``checkpoint``: the framework-neutral state checkpoint and the ``save_states``/``load_states`` mixin.
- ``atomic``: atomic file writing.

``models_torch`` and ``models_keras`` stand on this package; ``harness`` (engine, porting, CLI)
stands above the models (see ``docs/architecture.md``). The torch kernels both model packages run
on the torch side live with torch code, in ``models_torch.ops``.
"""
