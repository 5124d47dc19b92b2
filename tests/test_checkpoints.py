"""State checkpoints: stop a stream in one framework, resume it in the other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.porting import torch_twin
from tests.helpers import CELLS, B, F, H, S, T, random_input
from tests.keras_helpers import the_layer, torch_and_keras

pytestmark = pytest.mark.keras


@pytest.mark.parametrize("direction", ["torch->keras", "keras->torch"])
@pytest.mark.parametrize("cell", CELLS)
def test_stream_resumes_in_the_other_framework(cell, direction, tmp_path, rng):
    module, model = torch_and_keras(cell, "float64", num_layers=2)
    x = random_input(rng, (B, S, T, F), "float64")
    with torch.no_grad():
        whole = module(torch.from_numpy(x)).numpy()
    module.reset_states()
    path = tmp_path / "streams.npz"
    if direction == "torch->keras":
        with torch.no_grad():
            first = module(torch.from_numpy(x[:, :, :5])).numpy()
        module.save_states(path)
        the_layer(model).load_states(path)
        second = model.predict_on_batch(x[:, :, 5:])
    else:
        first = model.predict_on_batch(x[:, :, :5])
        the_layer(model).save_states(path)
        module.load_states(path)
        with torch.no_grad():
            second = module(torch.from_numpy(x[:, :, 5:])).numpy()
    np.testing.assert_allclose(np.concatenate([first, second], 2), whole, atol=1e-12, rtol=0)


def test_checkpoint_that_does_not_fit_is_refused_untouched(tmp_path, rng):
    module, model = torch_and_keras("lstm", num_layers=2)
    module(torch.from_numpy(random_input(rng, (B, S, T, F))))
    module.save_states(tmp_path / "lstm.npz")
    gru, gru_model = torch_and_keras("gru", num_layers=2)
    layer = the_layer(gru_model)
    gru_model.predict_on_batch(random_input(rng, (B, S, T, F)))
    before = layer.get_states()
    with pytest.raises(ValueError, match="cell: checkpoint has 'lstm', model has 'gru'"):
        layer.load_states(tmp_path / "lstm.npz")
    np.testing.assert_array_equal(layer.get_states()[0], before[0])


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, rng):
    module, _ = torch_and_keras("gru")
    module(torch.from_numpy(random_input(rng, (B, S, T, F))))
    module.save_states(tmp_path / "ok.npz")
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(data[: len(data) // 2])
    before = module.get_states()
    with pytest.raises(ValueError, match="cannot read state checkpoint"):
        module.load_states(tmp_path / "bad.npz")
    torch.testing.assert_close(module.get_states()[0], before[0], atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir()].count("ok.npz") == 1 and len(list(tmp_path.iterdir())) == 2


def test_keras_to_torch_twin_checkpoint_with_other_batch_is_refused(tmp_path, rng):
    _, model = torch_and_keras("rnn")
    model.predict_on_batch(random_input(rng, (B, S, T, F)))
    the_layer(model).save_states(tmp_path / "s.npz")
    fixed = torch_twin(the_layer(model))
    assert fixed.fixed_batch_size == B
    other = type(fixed)(F, H, S, batch_size=B + 1)
    with pytest.raises(ValueError, match="batch_size: checkpoint has 2, model has 3"):
        other.load_states(tmp_path / "s.npz")
