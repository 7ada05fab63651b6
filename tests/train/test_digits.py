"""A real training run: a small CNN on scikit-learn's 8x8 digits reaches >= 97% test accuracy."""
from __future__ import annotations

import time

import numpy as np
import pytest

import convc
from train import nets

sklearn = pytest.importorskip("sklearn")


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=d.target)


@pytest.mark.slow
def test_digits_cnn_reaches_97_percent():
    x_train, x_test, y_train, y_test = digits_split()
    batch, epochs = 32, 12
    start = time.perf_counter()
    trainer = convc.Trainer(nets.digits_cnn(c1=16, c2=32, dropout=0.25, seed=0), input_shape=(batch, 1, 8, 8),
                            loss="cross_entropy", optimizer=convc.optim.Adam(3e-3), seed=0)
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        trainer.lr = 3e-3 * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # a cosine schedule, set between steps
        order = rng.permutation(len(x_train))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            trainer.step(x_train[idx], y_train[idx])
    metrics = trainer.evaluate(x_test, y_test)
    elapsed = time.perf_counter() - start
    print(f"digits: test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"{trainer.steps_done} steps, {elapsed:.1f} s including compilation")
    assert metrics["accuracy"] >= 0.97
