"""The multi-score detector: VAE reconstruction error and latent Mahalanobis distance.

Each score is normalised on held-out normal images (z-scores), then combined with weight
``alpha`` on reconstruction: ``combined = alpha * z_recon + (1 - alpha) * z_mahalanobis``.
Everything is a differentiable torch function of the image, so gradient methods and the concept
generator can pull on it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cfx.models.nets import VAE

TARGETS = ("score", "recon", "mahalanobis", "classifier")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur_axis(e: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D convolution of (N, H, W) maps with the odd kernel ``k`` along ``dim`` (-1 or -2),
    replicate padding."""
    r = k.numel() // 2
    pad = (r, r, 0, 0) if dim == -1 else (0, 0, r, r)
    p = nn.functional.pad(e[:, None], pad, mode="replicate")[:, 0]
    n = e.shape[dim]
    w = k.tolist()
    out = p.narrow(dim, 0, n) * w[0]  # a new tensor: the in-place sums below are safe for autograd
    for i in range(1, len(w)):
        out.add_(p.narrow(dim, i, n), alpha=w[i])
    return out


class MultiScoreDetector(nn.Module):
    """Scores images with a trained VAE.

    Args:
        vae: the trained VAE.
        alpha: weight of the reconstruction score in the combined score (default 0.6).
        sigma: Gaussian smoothing of the per-pixel error, in pixels.
        top_fraction: the reconstruction score is the mean of this top share of the smoothed
            per-pixel error (sensitive to small defects, unlike the global mean).

    Buffers (set by :meth:`fit`): latent mean and precision (Ledoit-Wolf shrinkage), mean and SD
    of each score on held-out normals, the heat scale (a high percentile of normal per-pixel
    error) and the decision threshold on the combined score.
    """

    def __init__(self, vae: VAE, alpha: float = 0.6, sigma: float = 2.0, top_fraction: float = 0.01) -> None:
        super().__init__()
        self.vae = vae
        self.alpha = float(alpha)
        self.sigma = float(sigma)
        self.top_fraction = float(top_fraction)
        d = vae.latent_dim
        self.register_buffer("kernel", gaussian_kernel(sigma))
        self.register_buffer("lat_mean", torch.zeros(d))
        self.register_buffer("lat_prec", torch.eye(d))
        self.register_buffer("norm", torch.tensor([0.0, 1.0, 0.0, 1.0]))  # recon mu, sd, maha mu, sd
        self.register_buffer("heat_scale", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.0))

    # ------------------------------------------------------------------ pieces
    def smooth(self, e: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of (N, H, W) maps (replicate padding), differentiable.

        Written as a weighted sum of shifted slices: a one-channel ``conv2d`` with this kernel
        cost 0.58 ms per 128x128 map on the 2-core CPU (a quarter of a detector score), the slices
        0.11 ms, with the same result (bench/bench_scoring.py)."""
        return _blur_axis(_blur_axis(e, self.kernel, -1), self.kernel, -2)

    def error_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Smoothed squared error averaged over channels, (N, H, W), uncalibrated."""
        return self.smooth(((x - recon) ** 2).mean(1))

    def recon_raw(self, err: torch.Tensor) -> torch.Tensor:
        k = max(1, int(round(self.top_fraction * err[0].numel())))
        return err.flatten(1).topk(k, dim=1).values.mean(1)

    def maha_raw(self, z: torch.Tensor) -> torch.Tensor:
        d = z - self.lat_mean
        return torch.sqrt(((d @ self.lat_prec) * d).sum(1).clamp_min(0))

    # ------------------------------------------------------------------ API
    def analyse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything about a batch: latents, reconstruction, calibrated heatmap and scores.

        Returns:
            dict with ``z`` (N, D), ``recon`` (N, C, H, W), ``heatmap`` (N, H, W; 1.0 = the
            heat scale of normal images), ``recon_score``, ``mahalanobis_score`` and ``score``
            (normalised, N each).
        """
        z = self.vae.encode(x)
        recon = self.vae.decode(z)
        err = self.error_map(x, recon)
        r = (self.recon_raw(err) - self.norm[0]) / self.norm[1]
        m = (self.maha_raw(z) - self.norm[2]) / self.norm[3]
        return {
            "z": z, "recon": recon, "heatmap": err / self.heat_scale,
            "recon_score": r, "mahalanobis_score": m, "score": self.alpha * r + (1 - self.alpha) * m,
        }

    def scores(self, x: torch.Tensor, which: str = "score") -> torch.Tensor:
        """One score (N,) computing only what it needs: ``score`` (combined), ``recon_score`` or
        ``mahalanobis_score``. The decoder (more than half the cost) is skipped for the
        Mahalanobis part and for a combined score with alpha = 0; equal to :meth:`analyse`'s."""
        z = self.vae.encode(x)
        need_recon = which == "recon_score" or (which == "score" and self.alpha != 0.0)
        need_maha = which == "mahalanobis_score" or (which == "score" and self.alpha != 1.0)
        r = m = 0.0
        if need_recon:
            r = (self.recon_raw(self.error_map(x, self.vae.decode(z))) - self.norm[0]) / self.norm[1]
            if which == "recon_score":
                return r
        if need_maha:
            m = (self.maha_raw(z) - self.norm[2]) / self.norm[3]
            if which == "mahalanobis_score":
                return m
        if which != "score":
            raise ValueError(f"unknown score {which!r}")
        return self.alpha * r + (1 - self.alpha) * m  # a part not computed is 0.0 and weighted 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The combined anomaly score (N,)."""
        return self.scores(x, "score")

    @torch.no_grad()
    def fit(self, train: torch.Tensor, val_normal: torch.Tensor, batch: int = 64) -> None:
        """Latent statistics from ``train`` normals; score normalisation and heat scale from ``val_normal``."""
        from sklearn.covariance import LedoitWolf

        z = torch.cat([self.vae.encode(train[i:i + batch]) for i in range(0, len(train), batch)]).double().cpu().numpy()
        lw = LedoitWolf().fit(z)
        self.lat_mean.copy_(torch.from_numpy(lw.location_).float())
        self.lat_prec.copy_(torch.from_numpy(np.linalg.inv(lw.covariance_)).float())
        errs, rs, ms = [], [], []
        for i in range(0, len(val_normal), batch):
            xb = val_normal[i:i + batch]
            zb = self.vae.encode(xb)
            e = self.error_map(xb, self.vae.decode(zb))
            errs.append(e.flatten())
            rs.append(self.recon_raw(e))
            ms.append(self.maha_raw(zb))
        r, m = torch.cat(rs), torch.cat(ms)
        self.norm.copy_(torch.tensor([r.mean(), r.std().clamp_min(1e-8), m.mean(), m.std().clamp_min(1e-8)]))
        allerr = torch.cat(errs)
        sample = allerr[torch.randperm(len(allerr), generator=torch.Generator().manual_seed(0))[:200000]]
        self.heat_scale.copy_(torch.quantile(sample, 0.999).clamp_min(1e-8))


def choose_threshold(scores_normal: np.ndarray, scores_anomalous: np.ndarray, rule: str = "f1") -> float:
    """A decision threshold between normal and anomalous scores.

    Args:
        rule: ``"f1"`` (maximise F1 of the anomalous class) or ``"gmean"`` (maximise
            sqrt(TPR * (1 - FPR))).

    Returns:
        The threshold t; an image is anomalous when its score > t.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.r_[np.zeros(len(scores_normal)), np.ones(len(scores_anomalous))]
    s = np.r_[scores_normal, scores_anomalous].astype(np.float64)
    if rule == "f1":
        p, r, t = precision_recall_curve(y, s)
        f1 = 2 * p * r / np.clip(p + r, 1e-12, None)
        i = int(np.argmax(f1[:-1]))
        thr = t[i]
    elif rule == "gmean":
        fpr, tpr, t = roc_curve(y, s)
        i = int(np.argmax(np.sqrt(tpr * (1 - fpr))))
        thr = t[i]
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    # put the threshold midway to the next lower score so that "score > threshold" holds at t
    lower = s[s < thr]
    return float((thr + lower.max()) / 2) if len(lower) else float(thr - 1e-6)
