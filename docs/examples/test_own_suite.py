"""A torch model and its Keras port, their parity asserted in a test (`pip install multistate-rnn[test]`)."""

import numpy as np
import torch

import models_keras
from harness import port_weights
from models_torch import MultiStateLSTM


def test_keras_port_matches_torch(parity):
    torch.manual_seed(0)
    model = MultiStateLSTM(input_size=4, hidden_size=8, num_streams=3)
    port = models_keras.MultiStateLSTM(8, num_streams=3)
    port_weights(model, port)  # torch -> Keras; port_weights(port, model) goes the other way

    x = np.random.default_rng(0).standard_normal((2, 3, 6, 4)).astype("float32")  # (batch, streams, time, features)
    report = parity({"torch": model, "keras": port}, x, "halves")  # fails the test with the errors unless parity holds
    assert report.comparisons  # the report is yours too: report.table(), report.max_abs_error, report.to_json()
