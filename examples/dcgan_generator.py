"""A DCGAN-style generator forward pass written with convc.nn: latent vectors (N, 100, 1, 1) to
images (N, 3, 32, 32) through transposed convolutions, batch normalisation, ReLU and tanh.

The generator is untrained (training arrives with the Trainer); the example compiles it to
native code, checks the images against convc's numpy reference and prints the layer summary.

    python examples/dcgan_generator.py
"""
from __future__ import annotations

import numpy as np

import convc
from convc import nn


class Generator(nn.Module):
    def __init__(self, latent: int = 100, features: int = 16, channels: int = 3):
        super().__init__()
        f = features
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent, f * 4, 4, stride=1, padding=0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(f * 4), nn.ReLU(),
            nn.ConvTranspose2d(f * 4, f * 2, 4, stride=2, padding=1, bias=False),  # 4x4 -> 8x8
            nn.BatchNorm2d(f * 2), nn.ReLU(),
            nn.ConvTranspose2d(f * 2, f, 4, stride=2, padding=1, bias=False),      # 8x8 -> 16x16
            nn.BatchNorm2d(f), nn.ReLU(),
            nn.ConvTranspose2d(f, channels, 4, stride=2, padding=1, bias=False),   # 16x16 -> 32x32
            nn.Tanh(),
        )

    def forward(self, z):
        return self.net(z)

    def output_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The image shape, from the transposed convolutions' shape arithmetic (no tracing)."""
        shape = tuple(latent_shape)
        for layer in self.net:
            if isinstance(layer, nn.ConvTranspose2d):
                shape = layer.output_shape(shape)
        return shape


def main(batch: int = 4, seed: int = 0) -> dict:
    nn.manual_seed(seed)
    generator = Generator()
    z = np.random.default_rng(seed).standard_normal((batch, 100, 1, 1)).astype(np.float32)
    print(f"latent {z.shape} -> images {generator.output_shape(z.shape)}")
    print(generator.summary(z.shape))
    images = convc.compile(generator, input_shape=z.shape)(z)
    max_error = float(np.max(np.abs(images - generator(z))))  # generator(z): the numpy reference
    print(f"images {images.shape}, values in [{images.min():.3f}, {images.max():.3f}]")
    print(f"compiled vs numpy reference: max |difference| = {max_error:.2e}")
    return {"images": images, "max_error": max_error, "model": generator}


if __name__ == "__main__":
    main()
