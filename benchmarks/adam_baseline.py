"""The backpropagation baseline: the same ONNX model trained by Adam in JAX, same data and batch.

The model's forward pass is projc's lowered program (the function the projection step starts
from), differentiated by JAX; the loss is softmax cross-entropy; the optimiser is optax's
Adam. Used by the time-to-accuracy comparisons; run alone it tunes the learning rate over a
small grid and prints test accuracy per epoch and the time per minibatch:
`python benchmarks/adam_baseline.py models/mlp_digits.onnx digits [--epochs 20] [--lr 1e-3 3e-3 1e-2]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import projc


def train_adam(model: str, data: str, *, lr: float, epochs: int, seed: int = 0, batch_size: int = 256,
               target: float | None = None) -> dict:
    """Adam on ``model``; test accuracy after every epoch and the stepping time to ``target``."""
    program = projc.compile(model, batch_size=batch_size, iterations=1)
    predict = program._predict
    x, y, xt, yt = program.fit(projc.load_dataset(data))
    params = {k: jnp.asarray(v) for k, v in program.params.items()}
    opt = optax.adam(lr)
    state = opt.init(params)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy(predict(p, xb), yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        grads = jax.grad(loss)(p, xb, yb)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    rng = np.random.default_rng(seed)
    times, accs, stepping, to_target, first = [], [], 0.0, None, None
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for i in range(len(x) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            t0 = time.perf_counter()
            params, state = jax.block_until_ready(step(params, state, x[idx], program.one_hot(y[idx])))
            dt = time.perf_counter() - t0
            if first is None:
                first = dt
            else:
                times.append(dt)
                stepping += dt
        accs.append(program.accuracy(xt, yt, {k: np.asarray(v) for k, v in params.items()}))
        if target is not None and to_target is None and accs[-1] >= target - 1e-9:
            to_target = {"epochs": epoch + 1, "minibatches": (epoch + 1) * (len(x) // batch_size), "seconds": stepping}
    return {"lr": lr, "test_by_epoch": accs, "minibatch_s": statistics.median(times) if times else None,
            "first_minibatch_s": first, "to_target": to_target}


def best_adam(model: str, data: str, *, epochs: int, lrs=(1e-3, 3e-3, 1e-2), seed: int = 0,
              target: float | None = None) -> tuple[dict, list[dict]]:
    """Adam at each learning rate; the best by final test accuracy, and all of them."""
    runs = [train_adam(model, data, lr=lr, epochs=epochs, seed=seed, target=target) for lr in lrs]
    return max(runs, key=lambda r: r["test_by_epoch"][-1]), runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, nargs="*", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float)
    args = parser.parse_args(argv)
    best, runs = best_adam(args.model, args.data, epochs=args.epochs, lrs=args.lr, seed=args.seed, target=args.target)
    for r in runs:
        print(f"Adam lr {r['lr']:g}: test by epoch " + " ".join(f"{100 * a:.2f}" for a in r["test_by_epoch"])
              + f"; minibatch {1e3 * r['minibatch_s']:.2f} ms; to target {r['to_target']}")
    print(f"best lr {best['lr']:g}: {100 * best['test_by_epoch'][-1]:.2f}%")


if __name__ == "__main__":
    main()
