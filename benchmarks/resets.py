"""Cost of per-step resets and lengths (issue 13), as a ratio to the plain forward of the same layer.

Cases: resets on 1% and 10% of the steps, lengths uniform in ``[T/2, T]``, and both; for the torch
module, the Keras layer on the active backend (a functional model with resets/lengths inputs, through
``predict_on_batch``) and, on the torch run, the per-step Python loop RL libraries fall back to
(SB3/CleanRL: one ``nn.LSTM`` call per step, state multiplied by ``1 - done``).

Run (one Keras backend per process)::

    KERAS_BACKEND=torch python -m benchmarks.resets            # torch module, loop, Keras on torch
    KERAS_BACKEND=jax python -m benchmarks.resets --keras-only
    python -m benchmarks.resets --keras-only                    # TensorFlow

Prints one line per case: median seconds per call and the ratio to ``none`` of the same implementation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

B, S, T, F, H = 4, 8, 100, 32, 128
CASES = ("none", "resets-1%", "resets-10%", "lengths", "resets-10%+lengths")


def plan(case: str, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Resets ``(B, S, T)`` and lengths ``(B, S)`` of one case (None where the case has none)."""
    rate = {"resets-1%": 0.01, "resets-10%": 0.1, "resets-10%+lengths": 0.1}.get(case)
    resets = None if rate is None else rng.random((B, S, T)) < rate
    lengths = rng.integers(T // 2, T + 1, (B, S)) if "lengths" in case else None
    return resets, lengths


def median_time(fn: Callable[[], object], budget_s: float = 1.0) -> float:
    fn()
    fn()  # the first calls compile or trace
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def torch_cases(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    import torch

    from models_torch import MultiStateLSTM

    torch.manual_seed(0)
    module = MultiStateLSTM(F, H, S)
    x = torch.randn(B, S, T, F)
    results: dict[str, dict[str, float]] = {"torch-multistate": {}, "torch-step-loop": {}}
    for case in CASES:
        resets, lengths = plan(case, rng)
        r = None if resets is None else torch.from_numpy(resets)
        n = None if lengths is None else torch.from_numpy(lengths)

        def multistate(r: torch.Tensor | None = r, n: torch.Tensor | None = n) -> object:
            with torch.no_grad():
                return module(x, resets=r, lengths=n)

        results["torch-multistate"][case] = median_time(multistate)

        def loop(r: torch.Tensor | None = r, n: torch.Tensor | None = n) -> object:
            """What SB3/CleanRL do: one call per step, state multiplied by ``1 - done``, lengths by masking."""
            with torch.no_grad():
                flat = x.reshape(B * S, T, F)
                h = torch.zeros(1, B * S, H)
                c = torch.zeros(1, B * S, H)
                done = None if r is None else r.reshape(B * S, T).float()
                valid = None if n is None else (torch.arange(T)[None, :] < n.reshape(B * S, 1)).float()
                outs = []
                for t in range(T):
                    if done is not None:
                        keep = (1.0 - done[:, t])[None, :, None]
                        h, c = h * keep, c * keep
                    out, (h2, c2) = module.rnn(flat[:, t : t + 1], (h, c))
                    if valid is not None:
                        v = valid[:, t][None, :, None]
                        h2, c2 = v * h2 + (1 - v) * h, v * c2 + (1 - v) * c
                        out = out * v[0, :, :, None]
                    h, c = h2, c2
                    outs.append(out)
                return torch.cat(outs, 1)

        results["torch-step-loop"][case] = median_time(loop)
    return results


def keras_cases(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    import keras

    from models_keras import MultiStateLSTM

    x_in = keras.Input(batch_shape=(B, S, None, F))
    r_in = keras.Input(batch_shape=(B, S, None), dtype="bool")
    n_in = keras.Input(batch_shape=(B, S), dtype="int32")
    layer = MultiStateLSTM(H, S)
    plain = keras.Model(x_in, layer(x_in))
    stepped = keras.Model([x_in, r_in, n_in], layer(x_in, resets=r_in, lengths=n_in))
    x = rng.standard_normal((B, S, T, F)).astype("float32")
    name = f"keras-{keras.backend.backend()}"
    results: dict[str, dict[str, float]] = {name: {}}
    for case in CASES:
        resets, lengths = plan(case, rng)
        if case == "none":
            results[name][case] = median_time(lambda: plain.predict_on_batch(x))
            continue
        r = np.zeros((B, S, T), bool) if resets is None else resets
        n = np.full((B, S), T, "int32") if lengths is None else lengths.astype("int32")
        results[name][case] = median_time(lambda r=r, n=n: stepped.predict_on_batch([x, r, n]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-only", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {} if args.keras_only else torch_cases(rng)
    results.update(keras_cases(rng))
    print(f"shape B={B} S={S} T={T} F={F} H={H}, LSTM, forward; median s/call (ratio to 'none')")
    for impl, times in results.items():
        line = ", ".join(f"{case} {t * 1e3:.2f} ms ({t / times['none']:.2f}x)" for case, t in times.items())
        print(f"{impl}: {line}")


if __name__ == "__main__":
    main()
