"""Train a small CNN on scikit-learn's 8x8 digits with convc, then export it to ONNX.

    python examples/train_digits.py

The network is written with convc.nn (PyTorch-like), compiled once into a single native training
step (forward, loss, backward and Adam update), trained for a few epochs with a cosine learning-rate
schedule, evaluated in eval mode (BatchNorm running statistics, no dropout) and written as an ONNX
model that onnxruntime runs.
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


def main() -> None:
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    batch, epochs, lr = 32, 12, 3e-3
    nn.manual_seed(0)
    start = time.perf_counter()
    trainer = convc.Trainer(DigitsCNN(), input_shape=(batch, 1, 8, 8), loss="cross_entropy",
                            optimizer=convc.optim.Adam(lr), seed=0)
    print(f"compiled the training step in {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        trainer.lr = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        order = rng.permutation(len(x_train))
        losses = [trainer.step(x_train[idx], y_train[idx])
                  for idx in (order[i:i + batch] for i in range(0, len(order) - batch + 1, batch))]
        metrics = trainer.evaluate(x_test, y_test)
        print(f"epoch {epoch + 1:2d}  lr {trainer.lr:.5f}  train loss {np.mean(losses):.4f}  "
              f"test loss {metrics['loss']:.4f}  test accuracy {metrics['accuracy']:.4f}")
    trainer.export_onnx("digits_cnn.onnx")
    print("wrote digits_cnn.onnx")


if __name__ == "__main__":
    main()
