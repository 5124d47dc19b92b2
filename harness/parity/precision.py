"""Matmul precision switches: full float32 matmuls while a parity check runs, the user's settings back afterwards.

On NVIDIA GPUs since Ampere, torch's cuDNN (convolutions and RNNs), JAX/XLA and
TensorFlow may run float32 matmuls in TF32 (10-bit mantissa): results then differ
from the CPU by ~1e-3, far outside the float32 parity tolerance (1e-5). And
``torch.set_float32_matmul_precision("medium")`` lets oneDNN use bfloat16 on the CPU
as well. ``full_precision_matmul()`` switches all of that off, in every framework
already imported (or named), for the length of a ``with`` block, and restores what
was set before, also when the block raises.

Per framework:

- torch: ``torch.set_float32_matmul_precision("highest")``,
  ``torch.backends.cuda.matmul.allow_tf32 = False``, ``torch.backends.cudnn.allow_tf32 = False``;
  on torch >= 2.9 also the per-operator ``fp32_precision`` flags (``"ieee"``) of
  ``cuda.matmul``, ``cudnn.conv``, ``cudnn.rnn`` and ``mkldnn.matmul/conv/rnn``.
  These are restored exactly (the new flags where torch has them, else the legacy ones).
- JAX: the ``jax_default_matmul_precision`` config (``jax.default_matmul_precision``) set to
  ``"highest"``. A thread-local ``with jax.default_matmul_precision(...)`` of the caller wins over it.
- TensorFlow: ``tf.config.experimental.enable_tensor_float_32_execution(False)``.

``allow_tf32=True`` does the opposite on purpose (TF32 on everywhere), to measure what
TF32 costs. The settings are process-wide: the switch is not meant for several threads
running different checks at once (nesting is fine).

Example:
    >>> import torch
    >>> with full_precision_matmul() as settings:
    ...     settings["torch"]["float32_matmul_precision"]
    'highest'
    >>> sorted(matmul_settings())        # what is in force now, per imported framework  # doctest: +SKIP
    ['jax', 'tensorflow', 'torch']
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

FRAMEWORKS = ("torch", "jax", "tensorflow")

# ---- torch ----------------------------------------------------------------------------------------

# The per-operator flags of torch >= 2.9 (``torch.backends.<path>.fp32_precision``), parents before
# children: restoring in this order leaves every child exactly as it was.
_TORCH_FP32_FLAGS = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
# The flags switched, each to its (full, reduced) value; the parents stay as they are. oneDNN (the CPU)
# keeps full precision either way: TF32 is a GPU matter.
_TORCH_SET = {
    "cuda.matmul": ("ieee", "tf32"),
    "cudnn.conv": ("ieee", "tf32"),
    "cudnn.rnn": ("ieee", "tf32"),
    "mkldnn.matmul": ("ieee", "ieee"),
    "mkldnn.conv": ("ieee", "ieee"),
    "mkldnn.rnn": ("ieee", "ieee"),
}


def _torch_backend(torch: Any, path: str) -> Any:
    obj = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def _torch_has_fp32_flags(torch: Any) -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _read_or_mixed(read: Any) -> Any:
    """A legacy torch flag, or "mixed" where torch refuses to read it (legacy and new API set differently)."""
    try:
        return read()
    except RuntimeError:
        return "mixed"


def _torch_read(torch: Any) -> dict[str, Any]:
    settings = {
        "float32_matmul_precision": _read_or_mixed(torch.get_float32_matmul_precision),
        "cuda.matmul.allow_tf32": _read_or_mixed(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": _read_or_mixed(lambda: torch.backends.cudnn.allow_tf32),
    }
    if _torch_has_fp32_flags(torch):
        for path in _TORCH_FP32_FLAGS:
            settings[f"{path or 'generic'}.fp32_precision"] = _torch_backend(torch, path).fp32_precision
    return settings


def _torch_save(torch: Any) -> dict[str, Any]:
    saved = {
        "legacy": {
            "precision": _read_or_mixed(torch.get_float32_matmul_precision),
            "cublas": _read_or_mixed(lambda: torch.backends.cuda.matmul.allow_tf32),
            "cudnn": _read_or_mixed(lambda: torch.backends.cudnn.allow_tf32),
        }
    }
    if _torch_has_fp32_flags(torch):
        saved["flags"] = {path: _torch_backend(torch, path).fp32_precision for path in _TORCH_FP32_FLAGS}
    return saved


def _torch_set(torch: Any, allow_tf32: bool) -> None:
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    if _torch_has_fp32_flags(torch):
        for path, (full, reduced) in _TORCH_SET.items():
            _torch_backend(torch, path).fp32_precision = reduced if allow_tf32 else full


def _torch_restore(torch: Any, saved: dict[str, Any]) -> None:
    # torch >= 2.9 keeps the legacy flags beside the new per-operator ones and refuses to read a legacy
    # flag that disagrees with them ("mixed"): restore the legacy flags first (those that could be read),
    # then the new ones over them. Before 2.9, cuBLAS's allow_tf32 is a view of the matmul precision
    # ("high"/"medium" allow TF32): set the precision first and touch allow_tf32 only where it still
    # differs, so "medium" survives.
    legacy = saved["legacy"]
    if legacy["precision"] != "mixed":
        torch.set_float32_matmul_precision(legacy["precision"])
    if (
        legacy["cublas"] != "mixed"
        and _read_or_mixed(lambda: torch.backends.cuda.matmul.allow_tf32) != legacy["cublas"]
    ):
        torch.backends.cuda.matmul.allow_tf32 = legacy["cublas"]
    if legacy["cudnn"] != "mixed":
        torch.backends.cudnn.allow_tf32 = legacy["cudnn"]
    for path, value in saved.get("flags", {}).items():  # parents before children
        _torch_backend(torch, path).fp32_precision = value


# ---- JAX --------------------------------------------------------------------------------------------


def _jax_read(jax: Any) -> dict[str, Any]:
    return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}


def _jax_save(jax: Any) -> Any:
    return jax.config.jax_default_matmul_precision


def _jax_set(jax: Any, allow_tf32: bool) -> None:
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allow_tf32 else "highest")


def _jax_restore(jax: Any, saved: Any) -> None:
    jax.config.update("jax_default_matmul_precision", saved)


# ---- TensorFlow ---------------------------------------------------------------------------------------


def _tf_read(tf: Any) -> dict[str, Any]:
    return {"tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled()}


def _tf_save(tf: Any) -> Any:
    return tf.config.experimental.tensor_float_32_execution_enabled()


def _tf_set(tf: Any, allow_tf32: bool) -> None:
    tf.config.experimental.enable_tensor_float_32_execution(allow_tf32)


def _tf_restore(tf: Any, saved: Any) -> None:
    tf.config.experimental.enable_tensor_float_32_execution(saved)


# What ``full_precision_matmul()`` sets, per framework and setting (the read-back names of ``matmul_settings``).
FULL_PRECISION: dict[str, dict[str, Any]] = {
    "torch": {
        "float32_matmul_precision": "highest",
        "cuda.matmul.allow_tf32": False,
        "cudnn.allow_tf32": False,
        **{f"{path}.fp32_precision": full for path, (full, _reduced) in _TORCH_SET.items()},
    },
    "jax": {"jax_default_matmul_precision": "highest"},
    "tensorflow": {"tensor_float_32_execution": False},
}


def reduced_precision(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entries of ``settings`` (``matmul_settings()``'s form) that differ from full float32 matmuls
    (``FULL_PRECISION``), per framework; empty when every framework ran at full precision.

    Example:
        >>> reduced_precision({"jax": {"jax_default_matmul_precision": "tensorfloat32"},
        ...                    "tensorflow": {"tensor_float_32_execution": False}})
        {'jax': {'jax_default_matmul_precision': 'tensorfloat32'}}
    """
    found = {
        name: {k: v for k, v in values.items() if k in FULL_PRECISION.get(name, {}) and v != FULL_PRECISION[name][k]}
        for name, values in settings.items()
    }
    return {name: values for name, values in found.items() if values}


# name -> (read, save, set, restore)
_SWITCHES = {
    "torch": (_torch_read, _torch_save, _torch_set, _torch_restore),
    "jax": (_jax_read, _jax_save, _jax_set, _jax_restore),
    "tensorflow": (_tf_read, _tf_save, _tf_set, _tf_restore),
}


def _modules(frameworks: Iterable[str] | None) -> dict[str, Any]:
    """The framework modules to switch: the imported ones, or those named (imported here if need be)."""
    if frameworks is None:
        return {name: sys.modules[name] for name in FRAMEWORKS if name in sys.modules}
    names = list(frameworks)
    unknown = [n for n in names if n not in _SWITCHES]
    if unknown:
        raise ValueError(f"unknown framework(s) {unknown}: expected some of {list(FRAMEWORKS)}")
    return {name: importlib.import_module(name) for name in names}


def matmul_settings(frameworks: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The matmul precision settings in force now, per framework (default: every imported one).

    Example:
        >>> import torch
        >>> matmul_settings(["torch"])["torch"]["cuda.matmul.allow_tf32"]
        False
    """
    return {name: _SWITCHES[name][0](module) for name, module in _modules(frameworks).items()}


@contextlib.contextmanager
def full_precision_matmul(
    allow_tf32: bool = False, frameworks: Iterable[str] | None = None
) -> Iterator[dict[str, dict[str, Any]]]:
    """Full float32 matmuls (no TF32, no bfloat16) in ``frameworks`` for the ``with`` block; restored after.

    Args:
        allow_tf32: switch reduced precision ON instead (TF32 in torch, JAX and TensorFlow),
            to show what it costs a parity check.
        frameworks: names among ``FRAMEWORKS`` (imported if need be); default: every one
            already imported. A framework first imported inside the block is not switched.

    Yields:
        The settings in force inside the block, per framework, as read back after switching
        (a plain dict, for a report to print).

    Example:
        >>> import torch
        >>> with full_precision_matmul(frameworks=["torch"]) as settings:
        ...     torch.backends.cudnn.allow_tf32, settings["torch"]["cudnn.allow_tf32"]
        (False, False)
        >>> torch.backends.cudnn.allow_tf32      # torch's default, as it was before
        True
    """
    modules = _modules(frameworks)
    saved: dict[str, Any] = {}
    try:
        for name, module in modules.items():
            _read, save, switch, _restore = _SWITCHES[name]
            saved[name] = save(module)
            switch(module, allow_tf32)
        yield matmul_settings(modules)
    finally:
        errors = []
        for name in reversed(list(saved)):
            try:
                _SWITCHES[name][3](modules[name], saved[name])
            except Exception as e:  # restore the others before reporting
                errors.append(f"{name}: {type(e).__name__}: {e}")
        if errors:
            raise RuntimeError("could not restore the matmul precision settings of " + "; ".join(errors))
