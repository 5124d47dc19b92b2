"""The command line refuses bad input with a clear message and exit status 1, and leaves no file behind."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.porting.files import write_torch_file
from tests.helpers import F, H

pytestmark = pytest.mark.keras  # porting a torch file writes a Keras one


@pytest.fixture
def lstm_pt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lstm.pt"
    write_torch_file(torch.nn.LSTM(F, H, batch_first=True).state_dict(), path)
    return path


def _port(capsys, *args) -> tuple[int, str]:
    status = main(["port", *map(str, args)])
    return status, capsys.readouterr().err


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_port_writes_a_verified_file(lstm_pt, tmp_path, capsys):
    status, _ = _port(capsys, lstm_pt, tmp_path / "out.keras", "--streams", 2, "--batch", 2)
    assert status == 0 and (tmp_path / "out.keras").exists()
    assert _files(tmp_path) == {"lstm.pt", "out.keras"}


def _proj_size(tmp_path):
    path = tmp_path / "proj.pt"
    write_torch_file(torch.nn.LSTM(F, H, proj_size=2, batch_first=True).state_dict(), path)
    return path


def _truncated(tmp_path):
    path = tmp_path / "cut.pt"
    write_torch_file(torch.nn.GRU(F, H, batch_first=True).state_dict(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    os.unlink(tmp_path / "whole.pt")
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickle_payload(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight_ih_l0": print}, f)
    return path


def _spectral_norm(tmp_path):
    """A parametrization that is not weight norm (``weight_hh_l0_orig``/``_u``/``_v``): refused, naming the keys."""
    path = tmp_path / "spectral.pt"
    write_torch_file(torch.nn.utils.spectral_norm(torch.nn.GRU(F, H), "weight_hh_l0").state_dict(), path)
    return path


SOURCES = {  # README rows 17, 21, 22, 23
    "proj_size": (_proj_size, "out.keras", "proj_size"),
    "truncated file": (_truncated, "out.keras", "cannot read"),
    "pickle payload": (_pickle_payload, "out.keras", "cannot read"),
    "unknown suffix": (lambda p: p / "w.onnx", "out.keras", "unsupported weight file"),
    "same framework": (lambda p: p / "a.pt", "b.safetensors", "are both torch files"),
    "missing file": (lambda p: p / "missing.pt", "out.keras", "no such weight file"),
    "spectral norm": (_spectral_norm, "out.keras", "no weight_hh_l0 among the keys ['bias_hh_l0', 'bias_ih_l0', 'w"),
}


@pytest.mark.parametrize("case", SOURCES)
def test_bad_source_is_refused(case, tmp_path, capsys):
    make, out, message = SOURCES[case]
    src = make(tmp_path)
    before = _files(tmp_path)
    status, err = _port(capsys, src, tmp_path / out)
    assert status == 1 and message in err, err
    assert _files(tmp_path) == before


def test_bad_options_are_refused(lstm_pt, tmp_path, capsys):
    for option in (["--batch", "-1"], ["--batch", "0"], ["--streams", "0"]):
        status, err = _port(capsys, lstm_pt, tmp_path / "out.keras", *option)
        assert status == 1 and "must be a positive integer" in err, err
    assert _files(tmp_path) == {"lstm.pt"}


@pytest.mark.parametrize(("dst", "message"), [("locked/out.keras", "not writable"), ("kept.keras", "read-only")])
def test_read_only_destinations_are_refused(dst, message, lstm_pt, tmp_path, capsys, monkeypatch):
    """The refusal asks ``os.access`` too (ACLs, read-only mounts), faked here; the real permission bits, as
    root included, are held in ``tests/multistate_core/test_read_only_writes.py``."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "kept.keras").write_text("the user's file")
    denied = {str(tmp_path / "locked"), str(tmp_path / "kept.keras")}
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) not in denied)
    status, err = _port(capsys, lstm_pt, tmp_path / dst)
    assert status == 1 and message in err, err
    assert (tmp_path / "kept.keras").read_text() == "the user's file"
    assert _files(tmp_path / "locked") == set()


@pytest.mark.parametrize("option", ["--json", "--report"])
@pytest.mark.parametrize(("dst", "message"), [("no/such/x.json", "no such folder"), ("x.json/", "it is a folder")])
def test_parity_destinations_are_checked_before_the_job(option, dst, message, tmp_path, capsys, monkeypatch):
    """``parity --json``/``--report`` to a path it cannot write: exit status 1 at once, the job never starts."""
    from harness import cli

    started = []
    monkeypatch.setattr(cli, "_run_backend", lambda backend, args: started.append(backend) or [])
    (tmp_path / "x.json").mkdir()
    status = main(["parity", "--backend", "torch", "--cell", "gru", option, str(tmp_path / dst)])
    err = capsys.readouterr().err
    assert (status, started) == (1, []), f"status {status}, backends run {started}; stderr: {err}"
    assert f"error: {option}: cannot write {tmp_path / dst}" in err and message in err, err


@pytest.mark.parametrize(("dst", "runtime"), [("m.onnx", "verified in onnxruntime"), ("m.tflite", "LiteRT")])
def test_export_says_where_the_file_was_verified(dst, runtime, tmp_path, capsys, monkeypatch):
    """A TFLite export used to say "verified in onnxruntime"; the export itself is faked here (the real ones
    run in tests/harness/test_export_*.py), the message is the CLI's."""
    from types import SimpleNamespace

    from harness.export import pipeline

    report = SimpleNamespace(plan=[3, 5], max_abs_error=1e-7)
    done = SimpleNamespace(report=report, state_names=("h",), cell="gru", num_streams=1, exporter="x")
    monkeypatch.setattr(pipeline, "export", lambda *args, **kwargs: done)
    assert main(["export", "m.keras", str(tmp_path / dst)]) == 0
    out = capsys.readouterr().out
    assert runtime in out and ("onnxruntime" in out) == dst.endswith(".onnx"), out


def test_parity_refuses_a_backend_that_is_not_installed(capsys, monkeypatch):
    """A GPU machine without TensorFlow: naming keras-tensorflow is refused up front, not a crashed worker."""
    from harness import cli

    started = []
    monkeypatch.setattr(cli, "_run_backend", lambda backend, args: started.append(backend) or [])
    monkeypatch.setattr(cli, "installed_backends", lambda: ["torch", "keras-jax", "onnx"])
    status = main(["parity", "--backend", "torch", "keras-tensorflow", "tflite", "--cell", "gru"])
    err = capsys.readouterr().err
    assert (status, started) == (1, []), f"status {status}, backends run {started}; stderr: {err}"
    assert "error: --backend keras-tensorflow tflite: not installed here" in err, err
    assert "installed: torch keras-jax onnx" in err, err


@pytest.mark.parametrize("dst", ["folder.keras", "no/such/folder/out.keras"])
def test_bad_destination_paths_are_refused(dst, lstm_pt, tmp_path, capsys):
    (tmp_path / "folder.keras").mkdir()
    status, err = _port(capsys, lstm_pt, tmp_path / dst)
    assert status == 1 and "cannot write" in err, err


def test_port_of_a_simple_rnn_file_needs_its_nonlinearity(tmp_path, capsys):
    """Neither a state_dict nor a ``.weights.h5`` file says tanh or relu: without ``--nonlinearity`` the port
    is refused (it used to build a tanh model and prove the port against that); with it, the Keras file
    computes the relu RNN."""
    import keras

    from harness.porting.files import keras_model_like, multistate_spec_from_keras_weights, read_keras_file

    torch.manual_seed(0)
    rnn = torch.nn.RNN(F, H, nonlinearity="relu", batch_first=True)
    write_torch_file(rnn.state_dict(), tmp_path / "relu.pt")
    h5 = tmp_path / "relu.weights.h5"
    status, err = _port(capsys, tmp_path / "relu.pt", h5)
    assert status == 1 and "do not record its nonlinearity" in err and "--nonlinearity" in err, (status, err)
    assert _files(tmp_path) == {"relu.pt"}
    assert _port(capsys, tmp_path / "relu.pt", h5, "--nonlinearity", "relu")[0] == 0
    model = read_keras_file(h5, like=keras_model_like(multistate_spec_from_keras_weights(h5), "relu"))
    x = np.random.default_rng(0).standard_normal((1, 1, 6, F)).astype("float32")
    with torch.no_grad():
        expected = rnn(torch.from_numpy(x[:, 0]))[0].numpy()
    error = float(np.abs(keras.ops.convert_to_numpy(model(x))[:, 0] - expected).max())
    assert error <= 1e-6, f"the ported file is off the relu RNN by {error:.3g}"
    status, err = _port(capsys, h5, tmp_path / "back.pt")
    assert status == 1 and "the .weights.h5 file holds a simple RNN" in err, (status, err)
    assert _files(tmp_path) == {"relu.pt", "relu.weights.h5"}


def test_a_port_that_fails_parity_leaves_nothing(lstm_pt, tmp_path, capsys, monkeypatch):
    """Planted fault: the written file is corrupted before the check; the check fails and nothing is left."""
    from harness.porting import files

    write = files.write_keras_file

    def corrupt(model, path):
        layer = model.layers[-1]
        layer.rnn_layers[0].cell.kernel.assign(layer.rnn_layers[0].cell.kernel * 1.01)
        write(model, path)

    monkeypatch.setattr(files, "write_keras_file", corrupt)
    status, err = _port(capsys, lstm_pt, tmp_path / "out.keras")
    assert status == 1 and "was not written" in err, err
    assert _files(tmp_path) == {"lstm.pt"}


class _EncoderDecoder(torch.nn.Module):
    """A user's checkpoint: two LSTMs and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.LSTM(F, H, batch_first=True)
        self.dec = torch.nn.LSTM(H, H, batch_first=True)
        self.head = torch.nn.Linear(H, 2)


@pytest.fixture
def two_lstms_pt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    write_torch_file(_EncoderDecoder().state_dict(), path)
    return path


def test_a_checkpoint_of_more_than_one_layer_is_refused_with_what_it_holds(two_lstms_pt, tmp_path, capsys):
    """It used to port ``dec`` (the last LSTM read), drop ``enc`` and the head without a word, and print PASS."""
    status, err = _port(capsys, two_lstms_pt, tmp_path / "out.keras")
    assert status == 1, err
    for named in (
        "more than one recurrent layer",
        "'enc'",
        "'dec'",
        f"head.weight (2, {H})",
        "--layer",
        "port_weights",
    ):
        assert named in err, (named, err)
    status, err = _port(capsys, two_lstms_pt, tmp_path / "out.keras", "--layer", "mid")
    assert status == 1 and "no recurrent layer at 'mid'" in err and "'enc', 'dec'" in err, err
    assert _files(tmp_path) == {"model.pt"}


def test_extra_parameters_beside_one_lstm_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.rnn, model.head = torch.nn.LSTM(F, H, batch_first=True), torch.nn.Linear(H, 2)
    write_torch_file(model.state_dict(), tmp_path / "policy.pt")
    status, err = _port(capsys, tmp_path / "policy.pt", tmp_path / "out.keras")
    assert status == 1 and "parameters besides one recurrent layer" in err and "head.bias (2,)" in err, err
    assert _files(tmp_path) == {"policy.pt"}


def test_layer_picks_one_lstm_and_options_that_do_not_fit_are_refused(two_lstms_pt, lstm_pt, tmp_path, capsys):
    """``--layer enc`` ports ``enc`` (the Keras file computes ``enc``, not ``dec``) and the port says S and B.
    ``--nonlinearity`` on an LSTM, and ``--streams``/``--batch`` against a Keras file holding others, used to be
    ignored silently; now they are refused before anything is written."""
    import keras

    from harness.porting.files import read_keras_file

    status = main(["port", str(two_lstms_pt), str(tmp_path / "enc.keras"), "--layer", "enc", "--streams", "3"])
    out = capsys.readouterr().out
    assert status == 0 and "S=3 streams, B=1 batch (--streams and --batch; default 1)" in out, out
    torch.manual_seed(0)
    enc = _EncoderDecoder().enc
    x = np.random.default_rng(0).standard_normal((1, 3, 5, F)).astype("float32")
    with torch.no_grad():
        expected = enc(torch.from_numpy(x[0]))[0].numpy()
    got = keras.ops.convert_to_numpy(read_keras_file(tmp_path / "enc.keras")(x))[0]
    error = float(np.abs(got - expected).max())
    assert error <= 1e-6, f"the ported file is off enc by {error:.3g}"

    status, err = _port(capsys, lstm_pt, tmp_path / "out.keras", "--nonlinearity", "relu")
    assert status == 1 and "applies to a simple RNN only" in err and "LSTM weights" in err, err
    before = _files(tmp_path)
    for option, message in (
        (["--streams", "5"], "num_streams=5 but"),
        (["--batch", "2"], "batch_size=2 but"),
        (["--nonlinearity", "tanh"], "applies to a simple RNN only"),
        (["--layer", "enc"], "picks a layer of a torch state_dict"),
    ):
        status, err = _port(capsys, tmp_path / "enc.keras", tmp_path / "back.pt", *option)
        assert status == 1 and message in err, (option, err)
    assert _files(tmp_path) == before
