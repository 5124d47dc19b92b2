"""Every writer refuses a read-only file and a locked folder, also when the process runs as root.

Real permission bits (``chmod``), nothing faked: root passes every ``os.access`` check, so this
suite (run as root in CI containers) catches a writability check that asks ``os.access`` alone.
A refusal names the path, leaves the file's bytes and modification time as they were and creates
nothing in the locked folder; the command line says so with exit status 1 before any job runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness import scenarios
from harness.cli import main
from harness.export import export
from harness.porting import files
from models_torch.distributed import save_global_states
from multistate_core import atomic
from multistate_core.atomic import check_writable
from tests.helpers import F, H, S

KEPT = b"the user's file"


def _torch_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.GRU(F, H, batch_first=True)


def _multistate() -> torch.nn.Module:
    from models_torch import MultiStateGRU

    torch.manual_seed(0)
    return MultiStateGRU(F, H, S, batch_size=1)


def _keras_model():
    from harness.porting import keras_twin

    return keras_twin(_multistate(), batch_size=1)


def _source_pt(folder: Path) -> Path:
    path = folder / "gru.pt"
    files.write_torch_file(_torch_module().state_dict(), path)
    return path


def _cli(*args) -> Callable[[Path, Path], int]:
    return lambda src, dst: main([a.format(src=src, dst=dst) for a in args])


WRITERS = {  # name: (destination suffix, writer(source folder, destination) -> CLI status or None)
    "write_torch_file": (".pt", lambda src, dst: files.write_torch_file(_torch_module().state_dict(), dst)),
    "write_keras_file": (".keras", lambda src, dst: files.write_keras_file(_keras_model(), dst)),
    "torch save_states": (".npz", lambda src, dst: _multistate().save_states(dst)),
    "keras save_states": (".npz", lambda src, dst: _keras_model().layers[-1].save_states(dst)),
    "save_global_states": (".npz", lambda src, dst: save_global_states(_multistate(), dst)),
    "scenarios.write_json": (".json", lambda src, dst: scenarios.write_json(dst, [{"ok": True}])),
    "port .pt -> .keras": (".keras", _cli("port", "{src}/gru.pt", "{dst}")),
    "export .onnx": (".onnx", _cli("export", "{src}/gru.pt", "{dst}")),
    "export .tflite": (".tflite", lambda src, dst: export(_keras_model(), dst)),
    "parity --json": (".json", _cli("parity", "--backend", "torch", "--cell", "gru", "--json", "{dst}")),
}


@pytest.fixture
def locked(tmp_path):
    """A read-only file (0444) and a locked folder (0555) beside a source folder holding ``gru.pt``."""
    (tmp_path / "src").mkdir()
    _source_pt(tmp_path / "src")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    yield tmp_path
    folder.chmod(0o755)  # so that pytest can clean up when not running as root


def _refusal(write: Callable, src: Path, dst: Path, capsys) -> str:
    """The message with which ``write`` refused ``dst`` (an exception, or a CLI's exit status 1 and stderr)."""
    try:
        status = write(src, dst)
    except ValueError as e:
        return str(e)
    err = capsys.readouterr().err
    assert status == 1, f"{dst} was accepted (status {status!r}); stderr: {err}"
    return err


def _check_read_only_file(writer: str, folder: Path, capsys) -> None:
    suffix, write = WRITERS[writer]
    dst = folder / f"kept{suffix}"
    dst.write_bytes(KEPT)
    dst.chmod(0o444)
    before = dst.stat().st_mtime_ns
    message = _refusal(write, folder / "src", dst, capsys)
    assert str(dst) in message and "read-only" in message, message
    assert (dst.read_bytes(), dst.stat().st_mtime_ns) == (KEPT, before), f"{dst} changed: {dst.read_bytes()[:40]!r}"
    assert sorted(p.name for p in folder.iterdir()) == [dst.name, "locked", "src"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_file_is_never_replaced(writer, locked, capsys):
    _check_read_only_file(writer, locked, capsys)


@pytest.mark.parametrize("writer", WRITERS)
def test_nothing_is_created_in_a_locked_folder(writer, locked, capsys):
    suffix, write = WRITERS[writer]
    dst = locked / "locked" / f"out{suffix}"
    message = _refusal(write, locked / "src", dst, capsys)
    assert str(dst) in message and "not writable" in message, message
    assert list((locked / "locked").iterdir()) == []


def test_a_writable_file_and_folder_are_accepted(tmp_path):
    """The refusal is about write bits, not ownership or existence: 0644 files and 0755 folders pass."""
    (tmp_path / "open.pt").write_bytes(KEPT)
    (tmp_path / "open.pt").chmod(0o644)
    for path in (tmp_path / "open.pt", tmp_path / "new.pt"):
        check_writable(path)
        files.write_torch_file(_torch_module().state_dict(), path)
        assert files.read_torch_file(path).keys() == _torch_module().state_dict().keys()


@pytest.mark.skipif(os.geteuid() != 0, reason="os.access refuses a 0444 file to other users: the fault needs root")
def test_planted_os_access_check_is_caught_as_root(locked, capsys, monkeypatch):
    """Planted fault: writability by ``os.access`` alone (the old check), which answers yes to root."""
    monkeypatch.setattr(atomic, "writable", lambda path: os.access(path, os.W_OK))
    with pytest.raises(AssertionError, match="was accepted") as caught:
        _check_read_only_file("scenarios.write_json", locked, capsys)
    print(f"planted os.access check caught: {caught.value}")
