"""Plain torch modules: the convolutional autoencoder, the VAE and the classifier.

They hold no training code (see :mod:`cfx.training`) and no scoring logic (see
:mod:`cfx.detectors`). Inputs are (N, C, H, W) floats in [0, 1] with H = W a multiple of 16.
"""
from __future__ import annotations

import torch
from torch import nn

WIDTHS = (32, 64, 96, 128)
#: the largest share of the image :meth:`ConvAutoencoder.decode_crop` computes by itself (measured
#: on the demo AEs, 32 latents: a crop of 0.77 of the image cost as much as the whole decoding,
#: one of 0.49 about 0.6 of it, a square of 0.25 about 0.35)
CROP_SHARE = 0.6


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

    def decode_crop(self, z: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """``decode(z)[:, :, r0:r1, c0:c1]``, computed from only the feature cells each layer needs.

        Each transposed convolution is run on the crop of its input that reaches the wanted
        output (its padding then trims the crop's own ends, where the image's cells have inputs
        outside the crop), and the wanted cells are cut from its output; the first linear
        layer computes only the cells of its map that the crop needs. The same sums as
        :meth:`decode` (equal to float rounding), at a fraction of its cost when the crop is small
        (CLEAR reads only the bounding box of its edit region). A crop of more than
        :data:`CROP_SHARE` of the image is cut from the whole decoding, which is then faster.

        Args:
            z: latents (N, latent_dim).
            rows, cols: the half-open output ranges ``(start, stop)``, within the image.

        Returns:
            (N, C, r1 - r0, c1 - c0).
        """
        if rows[1] <= rows[0] or cols[1] <= cols[0]:  # an empty crop
            return z.new_zeros(len(z), self.channels, max(0, rows[1] - rows[0]), max(0, cols[1] - cols[0]))
        if (rows[1] - rows[0]) * (cols[1] - cols[0]) > CROP_SHARE * self.image_size ** 2:
            return self.decode(z)[:, :, rows[0]:rows[1], cols[0]:cols[1]]
        convs = [m for m in self.dec if isinstance(m, nn.ConvTranspose2d)]
        # the input range each layer needs for the output range wanted of it, last layer first
        want = [((rows[0], rows[1] - 1), (cols[0], cols[1] - 1))]
        size = self.image_size
        for conv in reversed(convs):
            size //= conv.stride[0]
            want.append(tuple(_needed(lo, hi, conv, size) for lo, hi in want[-1]))
        want.reverse()
        (y0, y1), (x0, x1) = want[0]
        w = self.from_latent.weight.view(self.widths[-1], self.feat, self.feat, -1)[:, y0:y1 + 1, x0:x1 + 1]
        b = self.from_latent.bias.view(self.widths[-1], self.feat, self.feat)[:, y0:y1 + 1, x0:x1 + 1]
        h = torch.nn.functional.leaky_relu(torch.nn.functional.linear(z, w.reshape(-1, w.shape[-1]), b.reshape(-1)), 0.2)
        # the layers' memory format (channels_last where the bundle put the weights so): a sliced
        # input in another layout takes a slower convolution
        fmt = torch.channels_last if convs[0].weight.is_contiguous(memory_format=torch.channels_last) \
            and not convs[0].weight.is_contiguous() else torch.contiguous_format
        h = h.view(len(z), self.widths[-1], y1 - y0 + 1, x1 - x0 + 1).contiguous(memory_format=fmt)
        k = 0
        for m in self.dec:
            if not isinstance(m, nn.ConvTranspose2d):
                h = m(h)
                continue
            (i0, _), (j0, _) = want[k]
            (o0, o1), (p0, p1) = want[k + 1]
            # padded output cell o of the crop starting at input i0 is the image's o + s * i0
            h = torch.nn.functional.conv_transpose2d(h, m.weight, m.bias, m.stride, m.padding)
            (s, t) = m.stride
            assert o0 - s * i0 >= 0 and p0 - t * j0 >= 0 and o1 - s * i0 < h.shape[2] and p1 - t * j0 < h.shape[3]
            h = h[:, :, o0 - s * i0: o1 - s * i0 + 1, p0 - t * j0: p1 - t * j0 + 1].contiguous(memory_format=fmt)
            k += 1
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def _needed(lo: int, hi: int, conv: nn.ConvTranspose2d, n: int) -> tuple[int, int]:
    """The input cells (inclusive range, within ``0..n-1``) of a transposed convolution that reach
    its output cells ``lo..hi``: full (unpadded) output ``f = s * i + k`` for kernel tap ``k``."""
    s, p, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    return max(0, -(-(lo + p - k + 1) // s)), min(n - 1, (hi + p) // s)


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

    ``features`` is the last convolutional block (Grad-CAM's target layer). The head scores every
    location of it (a linear map of the features, i.e. a 1x1 convolution) and the image's logit is
    the mean of the top ``top_fraction`` of those location logits: a small local defect is not
    diluted by the normal rest of the image, as it is under global average pooling (on the demo
    gravel this raised the test AUROC from 0.83 to 0.98). ``top_fraction=1`` is average pooling.
    """

    def __init__(self, channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 64),
                 top_fraction: float = 1.0) -> None:
        super().__init__()
        self.channels = channels
        self.top_fraction = float(top_fraction)
        layers: list[nn.Module] = []
        cin = channels
        for i, w in enumerate(widths):
            stride = 2 if i < len(widths) - 1 else 1
            layers += [nn.Conv2d(cin, w, 3, stride=stride, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        self.body = nn.Sequential(*layers[:-3])
        self.features = nn.Sequential(*layers[-3:])
        self.head = nn.Linear(cin, 1)

    def logit_map(self, f: torch.Tensor) -> torch.Tensor:
        """Per-location logits (N, h, w) of features ``f`` (N, C, h, w)."""
        return torch.einsum("nchw,c->nhw", f, self.head.weight[0]) + self.head.bias[0]

    def logit_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """The image logits (N,) of the last block's features (N, C, h, w)."""
        if self.top_fraction >= 1.0:
            return self.head(f.mean((2, 3))).squeeze(1)
        m = self.logit_map(f).flatten(1)
        k = max(1, int(round(self.top_fraction * m.shape[1])))
        return m.topk(k, dim=1).values.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_from_features(self.features(self.body(x)))

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(anomalous) for each image."""
        return torch.sigmoid(self.forward(x))
