"""Helpers shared by the explanation methods: batched scoring, fills, decoding, train images.

Nothing here is a method; see the modules beside it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cfx.errors import DataError


def score_images(bundle, images: np.ndarray, target: str, batch: int | None = None) -> np.ndarray:
    """Target scores (float64, (N,)) of float images (N, C, H, W), batched (default: the device's
    :attr:`ModelBundle.forward_batch`), no autograd."""
    return bundle.score_numpy(np.asarray(images, np.float32), target, batch=batch)


def to_probability(bundle, scores: np.ndarray, target: str, temperature: float = 1.0) -> np.ndarray:
    """A probability of "anomalous" that is 0.5 exactly at the target's threshold.

    ``classifier``: the classifier's probability shifted on the logit scale so that its threshold
    maps to 0.5; detector targets (z-scores): ``sigmoid((score - threshold) / temperature)``.
    """
    s = np.asarray(scores, np.float64)
    thr = bundle.threshold_for(target)
    if target == "classifier":
        p = np.clip(s, 1e-7, 1 - 1e-7)
        t = min(max(thr, 1e-7), 1 - 1e-7)
        z = np.log(p / (1 - p)) - math.log(t / (1 - t))
    else:
        z = (s - thr) / temperature
    return 1.0 / (1.0 + np.exp(-z))


@torch.inference_mode()
def reconstruction(bundle, image: np.ndarray) -> np.ndarray:
    """The detector's (VAE) reconstruction of one image, float32 (C, H, W)."""
    x = bundle.to_tensor(image[None])
    return bundle.vae(x)[0].float().cpu().numpy()


def blurred(image: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """A strong Gaussian blur of one image (C, H, W)."""
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(c, sigma, mode="reflect") for c in image]).astype(np.float32)


def nearest_normal(bundle, image: np.ndarray) -> np.ndarray:
    """The train/good image nearest to ``image`` in pixel space (C, H, W): real normal content,
    aligned with the image as far as the training set allows."""
    normals = train_images(bundle)
    d = ((normals.reshape(len(normals), -1) - image.reshape(1, -1)) ** 2).sum(1)
    return np.asarray(normals[int(np.argmin(d))], np.float32)


def fill_image(bundle, image: np.ndarray, fill: str) -> np.ndarray:
    """What hidden regions are replaced with: ``auto`` (``recon`` for the VAE detector, else
    ``nearest``), ``recon`` (the VAE's reconstruction, i.e. what that model expects there),
    ``nearest`` (the nearest normal training image: real content that PatchCore, which rejects
    blurred reconstructions, accepts as normal), ``blur`` or ``mean`` (the image's mean colour)."""
    if fill == "auto":
        fill = "recon" if bundle.detector_name == "vae" else "nearest"
    if fill == "nearest":
        return nearest_normal(bundle, image)
    if fill == "recon":
        return reconstruction(bundle, image)
    if fill == "blur":
        return blurred(image)
    if fill == "mean":
        return np.broadcast_to(image.mean((1, 2), keepdims=True), image.shape).astype(np.float32).copy()
    raise ValueError(f"unknown fill {fill!r}; choose auto, recon, nearest, blur or mean")


# ------------------------------------------------------------------ train images
def set_data_root(bundle, root: str | Path) -> None:
    """Tell the bundle where its training data lives (DiCE's PCA and the latent ensemble read
    train/good from it). The CLI and the app call this after loading a bundle (every page run:
    the same root does not wait for the bundle's lock)."""
    if bundle.loaded.data_root == Path(root):
        return
    with bundle.lock:
        bundle.loaded.set_data_root(root)


def _data_root(bundle) -> Path:
    root = bundle.loaded.data_root
    if root is not None and Path(root).is_dir():
        return Path(root)
    from cfx import config
    from cfx.resolve import recorded_root

    card_root = recorded_root(bundle.card.get("data_root"))
    if card_root is not None:
        return card_root

    if bundle.dataset == config.DEMO_NAME:
        from cfx.data.demo import ensure_demo

        return ensure_demo()
    raise DataError(f"the train images of {bundle.dataset}/{bundle.category} are needed but their data root is "
                    f"unknown: pass --data-root")


def train_images(bundle) -> np.ndarray:
    """The category's train/good images at the bundle's size and channels (read once per bundle)."""
    with bundle.lock:
        if bundle.loaded.train_images is None:
            from cfx.data.mvtec import MVTecDataset

            ds = MVTecDataset(_data_root(bundle), bundle.category, "train", image_size=bundle.image_size,
                              channels=bundle.channels)
            arr = ds.arrays()
            if len(arr.images) == 0:
                raise DataError(f"no train/good images for {bundle.category}")
            bundle.loaded.train_images = arr.images
        return bundle.loaded.train_images


class EarlyStop:
    """Stop a sampling run once its top regions have not changed over the last quarter of the samples.

    Args:
        min_samples: never stop before this many samples.
        check_every: samples between two checks.
        top_share: the share of the regions (superpixels, latent dimensions) that counts as "top" (at least 3).
    """

    def __init__(self, min_samples: int = 200, check_every: int = 50, top_share: float = 0.05) -> None:
        self.min_samples, self.check_every, self.top_share = int(min_samples), max(1, int(check_every)), top_share
        self.history: list[tuple[int, frozenset[int]]] = []
        self.stopped_at: int | None = None

    def top_k(self, n_regions: int) -> int:
        return max(3, int(round(self.top_share * n_regions)))

    def stable(self, n: int, top: frozenset[int]) -> bool:
        """Record the top regions after ``n`` samples; True when they are the same at every check
        from the last one at or before 3/4 n up to n, and n >= ``min_samples``."""
        self.history.append((n, top))
        start = max((i for i, (m, _) in enumerate(self.history) if m <= 0.75 * n), default=None)
        if n >= self.min_samples and start is not None and all(t == top for _, t in self.history[start:]):
            self.stopped_at = n
            return True
        return False
