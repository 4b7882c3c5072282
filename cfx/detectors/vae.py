"""The multi-score VAE detector (the seed's): reconstruction error and latent Mahalanobis distance.

Each score is normalised on held-out normal images (z-scores), then combined with weight
``alpha`` on reconstruction: ``combined = alpha * z_recon + (1 - alpha) * z_mahalanobis``.
Everything is a differentiable torch function of the image, so gradient methods and the concept
generator can pull on it.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from cfx.detectors.base import Detector, blur_axis as _blur_axis, gaussian_kernel
from cfx.models.nets import VAE
from cfx.precision import network


class MultiScoreDetector(Detector):
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

    name: ClassVar[str] = "vae"
    label: ClassVar[str] = "VAE multi-score"
    differentiable: ClassVar[bool] = True
    parts: ClassVar[dict[str, tuple[str, str]]] = {
        "recon_score": ("recon", "reconstruction part"), "mahalanobis_score": ("mahalanobis", "Mahalanobis part")}
    filename: ClassVar[str] = "vae.pt"

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
        with network(self, x):
            z = self.vae.encode(x)
            recon = self.vae.decode(z)
        z, recon = z.float(), recon.float()
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
        with network(self, x):
            z = self.vae.encode(x)
        need_recon = which == "recon_score" or (which == "score" and self.alpha != 0.0)
        need_maha = which == "mahalanobis_score" or (which == "score" and self.alpha != 1.0)
        r = m = 0.0
        if need_recon:
            with network(self, x):
                recon = self.vae.decode(z)
            r = (self.recon_raw(self.error_map(x, recon.float())) - self.norm[0]) / self.norm[1]
            if which == "recon_score":
                return r
        if need_maha:
            m = (self.maha_raw(z.float()) - self.norm[2]) / self.norm[3]
            if which == "mahalanobis_score":
                return m
        if which != "score":
            raise ValueError(f"unknown score {which!r}")
        return self.alpha * r + (1 - self.alpha) * m  # a part not computed is 0.0 and weighted 0

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The combined anomaly score (N,)."""
        return self.scores(x, "score")

    def part_score(self, x: torch.Tensor, key: str) -> torch.Tensor:
        return self.scores(x, key)

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "sigma": self.sigma, "top_fraction": self.top_fraction}

    def net_config(self) -> dict[str, Any]:
        v = self.vae
        return {"channels": v.channels, "latent_dim": v.latent_dim, "image_size": v.image_size,
                "widths": list(v.widths)}

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """Network weights as float16 (the VAE was rounded to it before fitting), statistics float32."""
        out = {}
        for k, v in self.state_dict().items():
            v = v.detach().cpu()
            if v.is_floating_point() and k.startswith("vae.") and "running_" not in k:
                v = v.half()
            out[k] = v.contiguous()
        return out

    def checkpoint_config(self) -> dict[str, Any]:
        """The layout of the shipped demo weights: ``net`` (the VAE) and ``detector`` (this
        module's keyword arguments)."""
        return {"net": self.net_config(), "detector": self.config()}

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> "MultiScoreDetector":
        det = cls(VAE(**ck["config"]["net"]), **ck["config"]["detector"])
        det.load_state_dict(ck["state_dict"])
        return det

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
