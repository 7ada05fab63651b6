"""Train a small CNN on scikit-learn's 8x8 digits with convc, then export it to ONNX.

    python examples/train_digits.py

The network is written with convc.nn (PyTorch-like), compiled once into a single native training
step (forward, loss, backward and Adam update), trained for a few epochs with a cosine learning-rate
schedule, evaluated in eval mode (BatchNorm running statistics, no dropout) and written as an ONNX
model that onnxruntime runs. ``main()`` returns the final test metrics: with seed 0, a test accuracy
of 0.9806 (353 of 360) after 12 epochs, in a few seconds including compilation.
"""
from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import convc
from convc import nn


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(nn.relu(self.bn1(self.conv1(x))))
        x = self.pool(nn.relu(self.bn2(self.conv2(x))))
        return self.fc(self.drop(nn.flatten(x)))


def main(epochs: int = 12, seed: int = 0, onnx_path: str | None = "digits_cnn.onnx") -> dict:
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    batch, lr = 32, 3e-3
    nn.manual_seed(seed)
    start = time.perf_counter()
    trainer = convc.Trainer(DigitsCNN(), input_shape=(batch, 1, 8, 8), loss="cross_entropy",
                            optimizer=convc.optim.Adam(lr), seed=seed)
    print(f"compiled the training step in {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        trainer.lr = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        order = rng.permutation(len(x_train))
        losses = [trainer.step(x_train[idx], y_train[idx])
                  for idx in (order[i:i + batch] for i in range(0, len(order) - batch + 1, batch))]
        metrics = trainer.evaluate(x_test, y_test)
        print(f"epoch {epoch + 1:2d}  lr {trainer.lr:.5f}  train loss {np.mean(losses):.4f}  "
              f"test loss {metrics['loss']:.4f}  test accuracy {metrics['accuracy']:.4f}")
    seconds = time.perf_counter() - start
    print(f"{trainer.steps_done} steps in {seconds:.1f} s including compilation")
    if onnx_path is not None:
        trainer.export_onnx(onnx_path)
        print(f"wrote {onnx_path}")
    return {**metrics, "train_loss": float(np.mean(losses)), "steps": trainer.steps_done, "seconds": seconds,
            "trainer": trainer, "x_test": x_test, "y_test": y_test, "onnx_path": onnx_path}

if __name__ == "__main__":
    main()
