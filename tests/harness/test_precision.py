"""Matmul precision switches: set inside the block, the user's settings back after it, also on error."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.parity.precision import _SWITCHES, FRAMEWORKS, full_precision_matmul, matmul_settings


def _read_direct(name: str) -> dict[str, Any]:
    """The settings read straight from the framework, not through ``harness.parity.precision``."""
    module = importlib.import_module(name)
    if name == "torch":
        return {
            "cuda.matmul.allow_tf32": module.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": module.backends.cudnn.allow_tf32,
            "float32_matmul_precision": module.get_float32_matmul_precision(),
        }
    if name == "jax":
        return {"precision": module.config.jax_default_matmul_precision}
    return {"tf32": module.config.experimental.tensor_float_32_execution_enabled()}


EXPECTED = {
    "torch": {
        False: {"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False, "float32_matmul_precision": "highest"},
        True: {"cuda.matmul.allow_tf32": True, "cudnn.allow_tf32": True, "float32_matmul_precision": "high"},
    },
    "jax": {False: {"precision": "highest"}, True: {"precision": "tensorfloat32"}},
    "tensorflow": {False: {"tf32": False}, True: {"tf32": True}},
}

# A user's non-default settings, to check that those (not the defaults) come back.
USER_SETTINGS: dict[str, Callable[[Any], None]] = {
    "torch": lambda torch: torch.set_float32_matmul_precision("medium"),
    "jax": lambda jax: jax.config.update("jax_default_matmul_precision", "bfloat16"),
    "tensorflow": lambda tf: tf.config.experimental.enable_tensor_float_32_execution(False),
}


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each installed framework; its settings as they were are put back after the test, whatever it did."""
    name = request.param
    module = pytest.importorskip(name)
    _read, save, _set, restore = _SWITCHES[name]
    saved = save(module)
    yield name
    restore(module, saved)


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_switched_inside_and_restored_after(framework, allow_tf32):
    before = _read_direct(framework), matmul_settings([framework])
    with full_precision_matmul(allow_tf32=allow_tf32, frameworks=[framework]) as settings:
        assert _read_direct(framework) == EXPECTED[framework][allow_tf32]
        assert settings == matmul_settings([framework])
    assert (_read_direct(framework), matmul_settings([framework])) == before


def test_restored_when_the_body_raises(framework):
    before = matmul_settings([framework])
    with pytest.raises(ZeroDivisionError):
        with full_precision_matmul(frameworks=[framework]):
            assert _read_direct(framework) == EXPECTED[framework][False]
            _ = 1 / 0
    assert matmul_settings([framework]) == before


def test_the_users_own_settings_come_back(framework):
    USER_SETTINGS[framework](importlib.import_module(framework))
    users = matmul_settings([framework])
    with full_precision_matmul(frameworks=[framework]):
        assert _read_direct(framework) == EXPECTED[framework][False]
    assert matmul_settings([framework]) == users


def test_nested_blocks_restore_the_outer_one(framework):
    with full_precision_matmul(frameworks=[framework]):
        with full_precision_matmul(allow_tf32=True, frameworks=[framework]):
            assert _read_direct(framework) == EXPECTED[framework][True]
        assert _read_direct(framework) == EXPECTED[framework][False]


def test_default_switches_every_imported_framework():
    import torch  # noqa: F401  (imported: so it must be switched)

    with full_precision_matmul() as settings:
        assert "torch" in settings
        assert settings["torch"]["cuda.matmul.allow_tf32"] is False
        assert set(settings) <= set(FRAMEWORKS)


def test_unknown_framework_is_refused():
    with pytest.raises(ValueError, match="unknown framework"):
        with full_precision_matmul(frameworks=["mxnet"]):
            pass


def test_torch_per_operator_flags_come_back_exactly(framework):
    if framework != "torch":
        pytest.skip("torch's per-operator fp32_precision flags")
    import torch

    if not hasattr(torch.backends.cudnn.rnn, "fp32_precision"):
        pytest.skip("torch < 2.9 has no per-operator fp32_precision flags")
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # conv keeps tf32: the legacy cudnn flag reads "mixed"
    users = matmul_settings(["torch"])
    assert users["torch"]["cudnn.allow_tf32"] == "mixed"
    with full_precision_matmul(frameworks=["torch"]) as settings:
        assert settings["torch"]["cudnn.rnn.fp32_precision"] == settings["torch"]["cudnn.conv.fp32_precision"] == "ieee"
    assert matmul_settings(["torch"]) == users
