"""Plain torch modules: the convolutional autoencoder, the VAE and the classifier.

They hold no training code (see :mod:`cfx.training`) and no scoring logic (see
:mod:`cfx.detectors`). Inputs are (N, C, H, W) floats in [0, 1] with H = W a multiple of 16.
"""
from __future__ import annotations

import torch
from torch import nn

WIDTHS = (32, 64, 96, 128)


def _encoder(channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = channels
    for w in widths:
        layers += [nn.Conv2d(cin, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        cin = w
    return nn.Sequential(*layers)


def _decoder(channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    rev = list(widths[::-1])
    for a, b in zip(rev[:-1], rev[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.ConvTranspose2d(rev[-1], channels, 4, stride=2, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    """A convolutional autoencoder with a flat latent (64-d by default): the space CLEAR works in.

    Args:
        channels: 1 (gray) or 3 (RGB).
        latent_dim: size of the latent vector.
        image_size: input side (a multiple of 16).
    """

    def __init__(self, channels: int = 1, latent_dim: int = 64, image_size: int = 128,
                 widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.channels, self.latent_dim, self.image_size, self.widths = channels, latent_dim, image_size, tuple(widths)
        self.feat = image_size // 2 ** len(widths)
        flat = widths[-1] * self.feat * self.feat
        self.enc = _encoder(channels, self.widths)
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        self.dec = _decoder(channels, self.widths)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) to latents (N, latent_dim)."""
        return self.to_latent(self.enc(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) to images (N, C, H, W) in [0, 1]."""
        h = torch.nn.functional.leaky_relu(self.from_latent(z), 0.2)
        return self.dec(h.view(-1, self.widths[-1], self.feat, self.feat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class VAE(ConvAutoencoder):
    """A variational autoencoder; ``encode`` returns the posterior mean, ``encode_dist`` (mu, logvar)."""

    def __init__(self, channels: int = 1, latent_dim: int = 128, image_size: int = 128,
                 widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__(channels, latent_dim, image_size, widths)
        self.to_logvar = nn.Linear(self.widths[-1] * self.feat * self.feat, latent_dim)

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x).flatten(1)
        return self.to_latent(h), self.to_logvar(h).clamp(-10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the posterior mean."""
        return self.decode(self.encode(x))


class Classifier(nn.Module):
    """A small CNN: normal (0) vs anomalous (1). ``forward`` returns the logit of "anomalous".

    ``features`` is the last convolutional block (Grad-CAM's target layer).
    """

    def __init__(self, channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.channels = channels
        layers: list[nn.Module] = []
        cin = channels
        for i, w in enumerate(widths):
            stride = 2 if i < len(widths) - 1 else 1
            layers += [nn.Conv2d(cin, w, 3, stride=stride, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        self.body = nn.Sequential(*layers[:-3])
        self.features = nn.Sequential(*layers[-3:])
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.body(x))
        return self.head(f.mean((2, 3))).squeeze(1)

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(anomalous) for each image."""
        return torch.sigmoid(self.forward(x))
