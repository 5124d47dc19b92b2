"""What a parity report records about where it ran: package versions and the Keras backend.

Example:
    >>> sorted(package_versions())            # those installed here  # doctest: +SKIP
    ['jax', 'keras', 'numpy', 'onnxruntime', 'tensorflow', 'torch']
"""

from __future__ import annotations

import importlib.metadata
import sys

PACKAGES = ("numpy", "torch", "keras", "tensorflow", "jax", "onnxruntime", "ai-edge-litert")


def package_versions() -> dict[str, str]:
    """The installed version of each of ``PACKAGES`` (those not installed are left out)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def keras_backend() -> str | None:
    """The backend of the Keras imported in this process, or None where Keras was not imported."""
    keras = sys.modules.get("keras")
    return None if keras is None else keras.backend.backend()
