"""Checkpoints on disk and the loaded bundle of a category's models.

Layout: ``<models dir>/<dataset>/<category>/{card.json, patchcore.pt, vae.pt, ae.pt, classifier.pt}``
(each detector's file is optional: a category may have only PatchCore fitted, which needs no
training; plus the optional ``ensemble.pt`` of the gradient method). Each ``.pt`` is
``{"config": {...}, "state_dict": {...}}`` of plain tensors and numbers, loaded with
``torch.load(..., weights_only=True)``. Network weights are stored in float16 (the models were
rounded to it before their statistics and thresholds were computed, so nothing shifts on load).
"""
from __future__ import annotations

import logging
import os
import shlex
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cfx import config, gpu, precision
from cfx.atomic import file_sha256
from cfx.detectors import DETECTORS, Detector, MultiScoreDetector, detector_class, read_checkpoint, write_checkpoint
from cfx.batches import map_batches, split_batches, workers_for
from cfx.errors import ModelMissingError
from cfx.meter import tick
from cfx.models.card import check_channels, check_file, read_card, train_hint as _train_hint
from cfx.models.identity import check_card_data, dataset_name  # noqa: F401 (dataset_name: re-exported)
from cfx.models.nets import VAE, Classifier, ConvAutoencoder
from cfx.models.parts import LoadedParts

HALF_PREFIXES = ("enc.", "dec.", "to_latent.", "from_latent.", "to_logvar.", "body.", "features.", "head.",
                 "vae.enc.", "vae.dec.", "vae.to_latent.", "vae.from_latent.", "vae.to_logvar.")


def category_dir(dataset: str, category: str, root: Path | None = None) -> Path:
    """The folder of a category's models (:func:`cfx.config.models_dir` of its dataset, or ``root``)."""
    return (root or config.models_dir(dataset)) / dataset / category


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
    return write_checkpoint(path, cfg, sd)


#: ``torch.load(weights_only=True)`` with float16 tensors brought back to float32 (one readable
#: line for a missing, truncated or foreign file).
load_checkpoint = read_checkpoint


@dataclass(frozen=True)
class Target:
    """What an explainer explains: one number per image and its decision threshold.

    Attributes:
        name: ``score`` (the selected detector), a part of it (``recon``, ``mahalanobis`` for
            the VAE detector) or ``classifier``.
        label: words for the user.
        key: its column in :meth:`ModelBundle.analyse`'s output.
        threshold: an image is anomalous on this target when its value > threshold.
    """

    name: str
    label: str
    key: str
    threshold: float

    def read(self, analysis: dict[str, Any]) -> Any:
        """This target's column of an analysis result."""
        return analysis[self.key]


@dataclass
class ModelBundle:
    """The models of one dataset/category, in eval mode on one device, with one detector selected.

    Attributes:
        dataset, category: where they were trained.
        detectors: the fitted detectors by name (:mod:`cfx.detectors`); ``detector_name`` is the
            one explained (:meth:`using` gives a view with another; the views share the models).
        parts: the other fitted networks by name: ``ae`` (CLEAR's latent space) and
            ``classifier`` (a target of its own); read them as :attr:`ae` and :attr:`classifier`.
        ae_latent_mean, ae_latent_std: statistics of the AE latents of train/good.
        classifier_threshold: P(anomalous) above which the classifier calls an image anomalous.
        card: the model card (JSON).
        notes: what the user should know about these models on this data (a train/good that
            changed since the fit; :func:`load_for_root`).
        loaded: the parts loaded or computed on first use (:class:`~cfx.models.parts.LoadedParts`:
            data root, train images, DiCE's PCA, latent ensemble), shared by the views.
    """

    dataset: str
    category: str
    detectors: dict[str, Detector]
    detector_name: str
    parts: dict[str, torch.nn.Module]
    ae_latent_mean: torch.Tensor | None
    ae_latent_std: torch.Tensor | None
    classifier_threshold: float | None
    card: dict[str, Any]
    device: torch.device
    loaded: LoadedParts = field(default_factory=LoadedParts)
    notes: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # ------------------------------------------------------------------ parts
    def using(self, detector: str | None) -> "ModelBundle":
        """A view of these models that explains ``detector`` (None: the default one)."""
        name = detector or default_detector(self.detectors)
        if name not in self.detectors:
            raise ModelMissingError(f"no fitted {name} detector for {self.dataset}/{self.category}: run "
                                    f"{_train_hint(self.dataset, self.category, name)}")
        return self if name == self.detector_name else replace(self, detector_name=name)

    @property
    def detector(self) -> Detector:
        """The selected detector."""
        return self.detectors[self.detector_name]

    def _part(self, name: str, needs: str) -> Any:
        if name not in self.parts:
            raise ModelMissingError(f"{needs} of {self.dataset}/{self.category} is not trained: run "
                                    f"{_train_hint(self.dataset, self.category, 'vae')}")
        return self.parts[name]

    def has(self, part: str) -> bool:
        """Whether a part (``ae``, ``classifier``) or a detector (``vae``, ``patchcore``) is fitted."""
        return part in self.parts or part in self.detectors

    @property
    def ae(self) -> ConvAutoencoder:
        return self._part("ae", "the autoencoder")

    @property
    def classifier(self) -> Classifier:
        return self._part("classifier", "the classifier")

    @property
    def vae_detector(self) -> MultiScoreDetector:
        """The VAE detector (its VAE is the latent space of the gradient method)."""
        if "vae" not in self.detectors:
            raise ModelMissingError(f"the VAE of {self.dataset}/{self.category} is not trained: run "
                                    f"{_train_hint(self.dataset, self.category, 'vae')}")
        return self.detectors["vae"]  # type: ignore[return-value]

    @property
    def vae(self) -> VAE:
        return self.vae_detector.vae

    @property
    def channels(self) -> int:
        return int(self.card["channels"])

    @property
    def image_size(self) -> int:
        return int(self.card["image_size"])

    @property
    def forward_batch(self) -> int:
        """Images per forward pass when many are scored: the selected detector's own
        (:attr:`Detector.forward_batches`) or the device's (:func:`cfx.config.forward_batch`)."""
        return self.detector.forward_batches.get(self.device.type) or config.forward_batch(self.device)

    @property
    def threshold(self) -> float:
        """The selected detector's threshold."""
        return float(self.detector.threshold)

    @property
    def content_hash(self) -> str:
        """Identifies the trained base models (autoencoder, VAE, classifier) of the category."""
        return str(self.card.get("content_hash", ""))[:12]

    @property
    def detector_hash(self) -> str:
        info = self.card.get("detectors", {}).get(self.detector_name, {})
        return str(info.get("sha256") or self.card.get("files", {}).get(self.detector.filename, ""))[:12]

    def key(self) -> str:
        """Identifies the weights and the selected detector (for caches)."""
        return f"{self.dataset}/{self.category}@{self.content_hash}:{self.detector_name}@{self.detector_hash}"

    # ------------------------------------------------------------------ targets
    def targets(self) -> dict[str, Target]:
        """The targets this bundle can explain: the detector's score, its parts, the classifier."""
        det = self.detector
        out = {"score": Target("score", "the detector's anomaly score", "score", self.threshold)}
        card_thr = self.card.get("thresholds", {}) if det.name == "vae" else {}
        for key, (name, label) in det.parts.items():
            out[name] = Target(name, label, key, float(card_thr.get(name, self.threshold)))
        if "classifier" in self.parts:
            out["classifier"] = Target("classifier", "classifier P(anomalous)", "classifier",
                                       float(self.classifier_threshold))
        return out

    def target(self, name: str) -> Target:
        t = self.targets()
        if name not in t:
            raise ValueError(f"unknown target {name!r} for the {self.detector_name} detector of "
                             f"{self.dataset}/{self.category}; choose one of {', '.join(t)}")
        return t[name]

    def threshold_for(self, target: str) -> float:
        """The decision threshold on a target's scale."""
        return self.target(target).threshold

    def score(self, x: torch.Tensor, target: str = "score") -> torch.Tensor:
        """The chosen target for a batch (N, C, H, W) on the bundle's device; differentiable.
        Counted as N evaluations (:func:`cfx.meter.tick`; raises :class:`cfx.meter.Cancelled`
        in a cancelled computation)."""
        tick(len(x))
        return self._evaluate(x, target)

    def _evaluate(self, x: torch.Tensor, target: str) -> torch.Tensor:
        """:meth:`score` without the count."""
        t = self.target(target)
        if t.name == "classifier":
            return gpu.padded(self.classifier.proba, x, self.forward_batch)
        if not self.detector.amp_settled and len(x):
            with self.lock:  # the detector's precision, decided once on the first batch it scores
                precision.settle(self.detector, x.detach())
        fn = self.detector.score if t.name == "score" else (lambda b: self.detector.part_score(b, t.key))
        return gpu.padded(fn, x, self.forward_batch)  # on CUDA: a few batch shapes

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(images, dtype=np.float32))
        t = t[None] if t.ndim == 3 else t
        return t.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def score_numpy(self, images: np.ndarray, target: str = "score", batch: int | None = None) -> np.ndarray:
        """Scores of float arrays (N, C, H, W) in [0, 1], batched (default: :attr:`forward_batch`), as float64.

        Where the detector asks for it (:attr:`Detector.parallel_batches`), several batches are
        scored by single-threaded workers (:mod:`cfx.batches`), each batch counted
        (:func:`cfx.meter.tick`) in the calling thread as its result is taken."""
        batch = int(batch or self.forward_batch)
        images = np.asarray(images, dtype=np.float32)
        images = images[None] if images.ndim == 3 else images
        chunks = split_batches(images, batch, workers_for(self.device, len(images), self.detector.parallel_batches)
                               if self.detector.amp_settled else 1)
        first = [] if self.detector.amp_settled else chunks[:1]  # the precision settles in this thread
        out = [self.score(self.to_tensor(c), target).double().cpu().numpy() for c in first]
        rest = chunks[len(first):]
        out += map_batches(lambda c: self._evaluate(self.to_tensor(c), target).double().cpu().numpy(), rest,
                           workers_for(self.device, len(rest), self.detector.parallel_batches),
                           before=lambda c: tick(len(c)))
        return np.concatenate(out) if out else np.zeros(0)

    @torch.inference_mode()
    def analyse(self, images: np.ndarray, batch: int | None = None) -> dict[str, np.ndarray]:
        """The selected detector's outputs (``score``, ``heatmap``, its parts; the VAE's ``z``
        and ``recon`` too) and the decision ``anomalous`` for arrays (N, C, H, W); with a
        classifier also ``classifier`` (P(anomalous)) and ``classifier_anomalous``."""
        batch = int(batch or self.forward_batch)
        images = np.asarray(images, dtype=np.float32)
        images = images[None] if images.ndim == 3 else images
        parts: dict[str, list] = {}
        clf = self.parts.get("classifier")
        for i in range(0, len(images), batch):
            x = self.to_tensor(images[i:i + batch])
            a = dict(gpu.padded(self.detector.analyse, x, batch))
            if clf is not None:
                a["classifier"] = gpu.padded(clf.proba, x, batch)
            for k, v in a.items():
                parts.setdefault(k, []).append(v.float().cpu().numpy())
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["anomalous"] = out["score"] > self.threshold
        if clf is not None:
            out["classifier_anomalous"] = out["classifier"] > self.classifier_threshold
        return out


def default_detector(detectors: dict[str, Any] | list[str]) -> str:
    """The detector explained unless the user picks another: the first fitted in :data:`DETECTORS`."""
    for name in DETECTORS:
        if name in detectors:
            return name
    raise ModelMissingError("no fitted detector")


def fitted_detectors(dataset: str, category: str) -> list[str]:
    """Names of the detectors whose checkpoint is in the category's folder, in :data:`DETECTORS` order."""
    d = category_dir(dataset, category)
    return [n for n, cls in DETECTORS.items() if (d / cls.filename).exists()]


def model_exists(dataset: str, category: str) -> bool:
    """A card and at least one fitted detector."""
    d = category_dir(dataset, category)
    return (d / "card.json").exists() and bool(fitted_detectors(dataset, category))


def available_models(dataset: str) -> list[str]:
    root = config.models_dir(dataset) / dataset
    return sorted(p.name for p in root.iterdir() if model_exists(dataset, p.name)) if root.is_dir() else []


def _load_parts(d: Path, card: dict[str, Any], dataset: str, category: str, names: list[str], dev: torch.device):
    """The networks, the AE's latent statistics, the classifier's threshold and the detectors of ``d``."""
    def ck(filename: str) -> dict[str, Any]:
        path = check_file(d / filename, card, dataset, category)
        out = load_checkpoint(path)
        check_channels(path, out, card, dataset, category)
        return out

    mods: dict[str, torch.nn.Module] = {}
    mean = std = clf_thr = None
    if (d / "ae.pt").exists():
        ae_ck = ck("ae.pt")
        ae = ConvAutoencoder(**ae_ck["config"]["net"])
        mean, std = (ae_ck["state_dict"].pop(k).to(dev) for k in ("latent_mean", "latent_std"))
        ae.load_state_dict(ae_ck["state_dict"])
        mods["ae"] = ae
    if (d / "classifier.pt").exists():
        clf_ck = ck("classifier.pt")
        clf = Classifier(**clf_ck["config"]["net"])
        clf.load_state_dict(clf_ck["state_dict"])
        mods["classifier"] = clf
        clf_thr = float(clf_ck["config"].get("threshold", 0.5))
    dets = {n: detector_class(n).from_checkpoint(ck(DETECTORS[n].filename)).eval().requires_grad_(False)
            for n in names}
    return mods, mean, std, clf_thr, dets


def load_bundle(dataset: str, category: str, device: torch.device | str | None = None,
                detector: str | None = None) -> ModelBundle:
    """Load a category's models (weights_only) onto ``device`` (default: CUDA if available, else CPU).

    Args:
        detector: the detector to explain (default: :func:`default_detector` of the fitted ones).

    Raises:
        ModelMissingError: with the command that trains them.
    """
    d = category_dir(dataset, category)
    card = read_card(dataset, category)
    names = fitted_detectors(dataset, category)
    if not names:
        raise ModelMissingError(f"no trained model for {dataset}/{category} in {d}: run "
                                f"{_train_hint(dataset, category)}")
    dev = torch.device(device) if device is not None else config.device()
    try:
        mods, mean, std, clf_thr, dets = _load_parts(d, card, dataset, category, names, dev)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # weights that do not fit their networks
        raise ModelMissingError(f"the models in {d} do not fit together ({type(exc).__name__}): run "
                                f"{_train_hint(dataset, category)}") from None
    for m in (*mods.values(), *dets.values()):
        m.eval().requires_grad_(False)
        m.to(dev).to(memory_format=torch.channels_last)
    name = detector or default_detector(dets)
    b = ModelBundle(dataset, category, dets, default_detector(dets), mods, mean, std, clf_thr, card, dev)
    gpu.prepare(b)  # CUDA: strict float32, cuDNN's plans for every batch shape
    return b.using(name)


def load_for_root(root: str | os.PathLike, category: str, device: torch.device | str | None = None,
                  detector: str | None = None) -> ModelBundle:
    """The models of ``root``'s category (:func:`~cfx.models.identity.dataset_name`), checked to
    have been fitted on that root (:func:`~cfx.models.identity.check_card_data`; a changed
    train/good becomes a note in :attr:`ModelBundle.notes`).

    Raises:
        ModelMissingError: no models, or models of another root (one line).
    """
    dataset = dataset_name(root)
    try:
        notes = check_card_data(read_card(dataset, category), root, category)
        b = load_bundle(dataset, category, device=device, detector=detector)
    except ModelMissingError as exc:  # the command to run names this root
        raise ModelMissingError(str(exc).replace("<your MVTec root>", shlex.quote(str(root)))) from None
    b.notes[:] = notes
    for note in notes:
        logging.getLogger(__name__).warning(note)
    return b
