"""Checkpoints on disk and the loaded bundle of a category's models.

Layout: ``<models dir>/<dataset>/<category>/{ae.pt, vae.pt, classifier.pt, card.json}`` (plus the
optional ``ensemble.pt`` and ``concepts.pt`` of later explainers). Each ``.pt`` is
``{"config": {...}, "state_dict": {...}}`` of plain tensors and numbers, loaded with
``torch.load(..., weights_only=True)``. Network weights are stored in float16 (the models were
rounded to it before their statistics and thresholds were computed, so nothing shifts on load).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfx import config
from cfx.atomic import write_bytes, write_json
from cfx.detectors import TARGETS, MultiScoreDetector
from cfx.errors import ModelMissingError
from cfx.models.nets import VAE, Classifier, ConvAutoencoder

HALF_PREFIXES = ("enc.", "dec.", "to_latent.", "from_latent.", "to_logvar.", "body.", "features.", "head.",
                 "vae.enc.", "vae.dec.", "vae.to_latent.", "vae.from_latent.", "vae.to_logvar.")


def category_dir(dataset: str, category: str, root: Path | None = None) -> Path:
    return (root or config.models_dir()) / dataset / category


def round_to_half(module: torch.nn.Module) -> torch.nn.Module:
    """Round every floating parameter to float16 precision (kept as float32)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def save_module(path: Path, module: torch.nn.Module, cfg: dict[str, Any]) -> str:
    """Write ``{"config", "state_dict"}`` atomically; network weights as float16. Returns the sha256."""
    sd = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and k.startswith(HALF_PREFIXES) and "running_" not in k:
            v = v.half()
        sd[k] = v.contiguous()
    buf = io.BytesIO()
    torch.save({"config": cfg, "state_dict": sd}, buf)
    data = buf.getvalue()
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with float16 tensors brought back to float32."""
    if not path.exists():
        raise ModelMissingError(f"missing model file {path}")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck["state_dict"] = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in ck["state_dict"].items()}
    return ck


@dataclass
class ModelBundle:
    """All models of one dataset/category, in eval mode on one device.

    Attributes:
        dataset, category: where they were trained.
        ae: the convolutional autoencoder (CLEAR's latent space).
        detector: the multi-score detector (holds the VAE).
        classifier: the normal/anomalous CNN.
        ae_latent_mean, ae_latent_std: statistics of the AE latents of train/good (CLEAR samples with them).
        classifier_threshold: P(anomalous) above which the classifier calls an image anomalous.
        card: the model card (JSON).
        extras: models of later features (latent ensemble, concept generator), by name.
    """

    dataset: str
    category: str
    ae: ConvAutoencoder
    detector: MultiScoreDetector
    classifier: Classifier
    ae_latent_mean: torch.Tensor
    ae_latent_std: torch.Tensor
    classifier_threshold: float
    card: dict[str, Any]
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def vae(self) -> VAE:
        return self.detector.vae

    @property
    def channels(self) -> int:
        return self.ae.channels

    @property
    def image_size(self) -> int:
        return self.ae.image_size

    @property
    def forward_batch(self) -> int:
        """Images per forward pass when many are scored (:func:`cfx.config.forward_batch`)."""
        return config.forward_batch(self.device)

    @property
    def threshold(self) -> float:
        return float(self.detector.threshold)

    @property
    def content_hash(self) -> str:
        return str(self.card.get("content_hash", ""))[:12]

    def key(self) -> str:
        """Identifies the weights (for caches): dataset/category@hash."""
        return f"{self.dataset}/{self.category}@{self.content_hash}"

    def threshold_for(self, target: str) -> float:
        """The decision threshold on a target's scale (``score``, ``recon``, ``mahalanobis``, ``classifier``)."""
        if target == "classifier":
            return self.classifier_threshold
        if target == "score":
            return self.threshold
        return float(self.card.get("thresholds", {}).get(target, self.threshold))

    def score(self, x: torch.Tensor, target: str = "score") -> torch.Tensor:
        """The chosen target for a batch (N, C, H, W) on the bundle's device; differentiable.

        ``score``: the combined anomaly score; ``recon`` and ``mahalanobis``: its parts;
        ``classifier``: P(anomalous).
        """
        if target == "classifier":
            return self.classifier.proba(x)
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
        return self.detector.scores(x, {"score": "score", "recon": "recon_score",
                                        "mahalanobis": "mahalanobis_score"}[target])

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(images, dtype=np.float32))
        if t.ndim == 3:
            t = t[None]
        return t.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def score_numpy(self, images: np.ndarray, target: str = "score", batch: int | None = None) -> np.ndarray:
        """Scores of float arrays (N, C, H, W) in [0, 1], batched (default: :attr:`forward_batch`), as float64."""
        batch = int(batch or self.forward_batch)
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        out = [self.score(self.to_tensor(images[i:i + batch]), target).double().cpu().numpy()
               for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros(0)

    @torch.inference_mode()
    def analyse(self, images: np.ndarray, batch: int | None = None) -> dict[str, np.ndarray]:
        """Detector and classifier outputs for arrays (N, C, H, W): score, parts, decision,
        reconstruction, heatmap, classifier probability."""
        batch = int(batch or self.forward_batch)
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        parts: dict[str, list] = {}
        for i in range(0, len(images), batch):
            x = self.to_tensor(images[i:i + batch])
            a = self.detector.analyse(x)
            a["classifier"] = self.classifier.proba(x)
            for k, v in a.items():
                parts.setdefault(k, []).append(v.float().cpu().numpy())
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["anomalous"] = out["score"] > self.threshold
        out["classifier_anomalous"] = out["classifier"] > self.classifier_threshold
        return out


def model_exists(dataset: str, category: str) -> bool:
    d = category_dir(dataset, category)
    return all((d / f).exists() for f in ("ae.pt", "vae.pt", "classifier.pt", "card.json"))


def available_models(dataset: str) -> list[str]:
    root = config.models_dir() / dataset
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if model_exists(dataset, p.name))


def load_bundle(dataset: str, category: str, device: torch.device | str | None = None) -> ModelBundle:
    """Load a category's models (weights_only) onto ``device`` (default: CUDA if available, else CPU).

    Raises:
        ModelMissingError: with the command that trains them.
    """
    d = category_dir(dataset, category)
    if not model_exists(dataset, category):
        hint = f"python -m cfx train --category {category}"
        if dataset != config.DEMO_NAME:
            hint = f"python -m cfx train --data-root <your MVTec root> --category {category}"
        raise ModelMissingError(f"no trained model for {dataset}/{category} in {d}: run {hint}")
    dev = torch.device(device) if device is not None else config.device()
    card = json.loads((d / "card.json").read_text())
    ae_ck = load_checkpoint(d / "ae.pt")
    ae = ConvAutoencoder(**ae_ck["config"]["net"])
    stats = {k: ae_ck["state_dict"].pop(k) for k in ("latent_mean", "latent_std")}
    ae.load_state_dict(ae_ck["state_dict"])
    vae_ck = load_checkpoint(d / "vae.pt")
    vae = VAE(**vae_ck["config"]["net"])
    det = MultiScoreDetector(vae, **vae_ck["config"]["detector"])
    det.load_state_dict(vae_ck["state_dict"])
    clf_ck = load_checkpoint(d / "classifier.pt")
    clf = Classifier(**clf_ck["config"]["net"])
    clf.load_state_dict(clf_ck["state_dict"])
    mods = []
    for m in (ae, det, clf):
        m.eval().requires_grad_(False)
        mods.append(m.to(dev).to(memory_format=torch.channels_last))
    return ModelBundle(dataset, category, mods[0], mods[1], mods[2], stats["latent_mean"].to(dev),
                       stats["latent_std"].to(dev), float(clf_ck["config"].get("threshold", 0.5)), card, dev)


def dataset_name(root: str | os.PathLike | None) -> str:
    """The models/ sub-folder for a data root: ``demo`` for the embedded default, else the folder's name."""
    from cfx.data.demo import is_demo_root

    if root is None or is_demo_root(root):
        return config.DEMO_NAME
    return Path(root).expanduser().resolve().name
