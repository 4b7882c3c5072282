"""One interface and one result type for every explanation method.

Every method explains a *target* of the models in a :class:`~cfx.models.bundle.ModelBundle`
through :meth:`ModelBundle.score`:

* ``"score"``: the detector's combined anomaly score (anomalous when > the threshold);
* ``"recon"`` / ``"mahalanobis"``: its two normalised parts;
* ``"classifier"``: the classifier's P(anomalous).

and returns an :class:`Explanation`: a heatmap (H, W; signed where the method is signed) and/or
counterfactual images, the target score before and after, validity, timing, parameters and seed.
Pages, export, metrics and the audit use only this type.
"""
from __future__ import annotations

import contextlib
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

from cfx.blas import quiet_blas
from cfx.meter import Cancelled, metered

#: the error of a method the user cancelled (never stored; the next run computes it)
CANCELLED = "cancelled by the user"


@dataclass
class Counterfactual:
    """One counterfactual image and how it scores.

    Attributes:
        image: float32 (C, H, W) in [0, 1].
        score_after: the explained target's value on ``image``.
        valid: whether the explained target calls ``image`` normal (at most its threshold).
        detector_score, detector_valid: the selected detector's score of ``image`` and whether
            the detector calls it normal.
        classifier_prob, classifier_valid: the same for the classifier (NaN / False without one).
        metrics: ``l1``, ``l2`` (pixels, mean absolute / root mean square), ``edit_area`` (share
            of pixels changed by more than 0.05), ``locality`` (share of the change inside the
            defect mask dilated by 4 px; NaN without a mask), ``realism`` (PatchCore's
            nearest-normal-patch distance of the edited region over that of real normal images;
            about 1 = as normal as a good part), ``realism_pixels`` (the same on pixel patches,
            no network), ``seam`` (the edit border's visibility), ``edit_share`` (the region's size),
            ``latent_l1``, ``latent_l2`` (when the method has a latent);
            see :mod:`cfx.explainers.edit`.
        latent: the method's latent of the counterfactual, if any.
        path_images, path_scores: steps from the original to the edit (for a slider; only the
            edited region morphs), images (S, C, H, W) and target scores (S,).
        content: what fills the edited region: ``nearest normal``, ``reconstruction``, ``generator``
            or a concept's content (:mod:`cfx.concepts`).
        concept: the kind of change (the concepts method; "" for the others).
        region: the soft edited region (H, W) in [0, 1].
        repair_properties: AR-Pro's ``overall``, ``similarity``, ``localized``,
            ``non_degradation`` with the detector's map, in the top 10% of its map of the original,
            and under ``mask`` the same four in the ground-truth mask (when there is one); see
            :func:`cfx.metrics.edits.repair_properties`.
    """

    image: np.ndarray
    score_after: float
    valid: bool
    detector_score: float
    detector_valid: bool
    classifier_prob: float
    classifier_valid: bool
    metrics: dict[str, float] = field(default_factory=dict)
    latent: np.ndarray | None = None
    path_images: np.ndarray | None = None
    path_scores: np.ndarray | None = None
    content: str = ""
    region: np.ndarray | None = None
    repair_properties: dict[str, Any] = field(default_factory=dict)
    concept: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"score_after": self.score_after, "valid": self.valid, "detector_score": self.detector_score,
                "detector_valid": self.detector_valid, "classifier_prob": self.classifier_prob,
                "classifier_valid": self.classifier_valid, "content": self.content, "concept": self.concept,
                **self.metrics,
                "repair_properties": self.repair_properties}


@dataclass
class Explanation:
    """The result of one method on one image (see the module docstring).

    Attributes:
        method: the method's registry name.
        target: the explained target.
        image: the original, float32 (C, H, W).
        score_before: the target's value on the original.
        threshold: the target's decision threshold.
        heatmap: float32 (H, W) or None; higher = more responsible for the target being high.
        signed: whether ``heatmap`` has meaningful negative values.
        counterfactuals: closest valid first.
        seconds: wall time of the method (models warm).
        params: the parameters used (defaults filled in).
        seed: the random seed used.
        error: a one-line error when the method failed (then nothing else is meaningful).
        info: method-specific numbers (e.g. CLEAR's fidelity), JSON-serialisable.
    """

    method: str
    target: str
    image: np.ndarray
    score_before: float
    threshold: float
    heatmap: np.ndarray | None = None
    signed: bool = False
    counterfactuals: list[Counterfactual] = field(default_factory=list)
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def best(self) -> Counterfactual | None:
        return self.counterfactuals[0] if self.counterfactuals else None

    @property
    def score_after(self) -> float | None:
        return self.best.score_after if self.best else None

    def difference(self, k: int = 0) -> np.ndarray | None:
        """Signed difference counterfactual - original, averaged over channels (H, W)."""
        if k >= len(self.counterfactuals):
            return None
        return (self.counterfactuals[k].image - self.image).mean(0)

    def to_dict(self) -> dict[str, Any]:
        """Numbers only (no arrays), JSON-serialisable."""
        return {
            "method": self.method, "target": self.target, "score_before": self.score_before,
            "score_after": self.score_after, "threshold": self.threshold, "seconds": round(self.seconds, 4),
            "params": self.params, "seed": self.seed, "error": self.error, "signed": self.signed,
            "has_heatmap": self.heatmap is not None, "info": self.info,
            "counterfactuals": [c.to_dict() for c in self.counterfactuals],
        }


def check_target(bundle, target: str) -> str:
    """``target`` if the bundle offers it (ValueError naming the offered ones otherwise)."""
    bundle.target(target)
    return target


class Explainer(ABC):
    """Base class of the methods: subclasses set ``name``, ``kind``, ``defaults`` and implement
    :meth:`_explain`.

    Args:
        bundle: the loaded models of a category.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "heatmap"  # or "counterfactual"
    label: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: runs only on demand in the app (sampling methods and counterfactual searches)
    heavy: ClassVar[bool] = True
    #: display order in the CLI, the audit and the pages (then by name)
    order: ClassVar[int] = 100
    #: images a run usually scores when :meth:`planned_evaluations` cannot tell in advance (the
    #: search methods; measured with the shipped demo models), for time estimates only
    typical_evaluations: ClassVar[int | None] = None

    #: the trained parts a method needs beyond the detector, by detector (``"*"``: under every
    #: detector): ``ae``, ``classifier``, ``vae`` (see :meth:`missing`)
    needs: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def missing(cls, bundle) -> tuple[str, ...]:
        """The parts of :attr:`needs` that ``bundle`` lacks under its selected detector (() when
        the method can run). The app shows a method with missing parts as needing a fit instead
        of running it into :class:`~cfx.errors.ModelMissingError`."""
        want = (*cls.needs.get("*", ()), *cls.needs.get(bundle.detector_name, ()))
        return tuple(p for p in dict.fromkeys(want) if not bundle.has(p))

    @classmethod
    def planned_evaluations(cls, params: dict[str, Any]) -> int | None:
        """The images a run with ``params`` (defaults filled in) will score through the target,
        where the method fixes that in advance; None otherwise."""
        return None

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        self.mask: np.ndarray | None = None

    def attribute(self, image: np.ndarray, target: str = "score", seed: int = 0, mask: np.ndarray | None = None,
                  *, cancel: threading.Event | None = None, **params: Any) -> Explanation:
        """Explain ``target`` on one image.

        Args:
            image: float32 (C, H, W) in [0, 1], at the bundle's size and channels.
            target: one of ``score``, ``recon``, ``mahalanobis``, ``classifier``.
            seed: the random seed (results are deterministic given it).
            mask: the ground-truth defect mask (H, W), if known (counterfactuals' locality).
            cancel: set from another thread to stop the method at its next model evaluation
                (it raises :class:`cfx.meter.Cancelled`).
            **params: method parameters (see ``defaults``); unknown names raise ``TypeError``.

        Returns:
            The :class:`Explanation`; ``info["evaluations"]`` counts the images the method scored
            through a target. Errors inside the method are not caught here; see :func:`explain`
            for the catching variant.
        """
        check_target(self.bundle, target)
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(self.defaults)}")
        p = {**self.defaults, **params}
        image = np.asarray(image, dtype=np.float32)
        expected = (self.bundle.channels, self.bundle.image_size, self.bundle.image_size)
        if image.shape != expected:
            raise ValueError(f"image shape {image.shape} does not match the models' {expected}")
        torch.manual_seed(seed)
        self.mask = None if mask is None else np.asarray(mask)
        t0 = time.perf_counter()
        with metered(cancel) as meter, quiet_blas() if self.heavy else contextlib.nullcontext():
            exp = self._explain(image, target, seed, p)
        exp.seconds = time.perf_counter() - t0
        exp.params, exp.seed = p, seed
        exp.info["evaluations"] = meter.evaluations
        return exp

    def base(self, image: np.ndarray, target: str) -> Explanation:
        """An empty Explanation with the original's score filled in."""
        s = float(self.bundle.score_numpy(image[None], target)[0])
        return Explanation(self.name, target, image, s, self.bundle.threshold_for(target))

    @abstractmethod
    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        ...


REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator adding a method to :data:`REGISTRY`."""
    REGISTRY[cls.name] = cls
    return cls


def methods() -> dict[str, type[Explainer]]:
    """The registered methods in display order (``order``, then name): the one list the CLI, the
    audit and the pages show."""
    return {m: REGISTRY[m] for m in sorted(REGISTRY, key=lambda m: (REGISTRY[m].order, m))}


def method_label(name: str) -> str:
    """A method's name for a reader: its registered label (its id when it has none or is unknown)."""
    cls = REGISTRY.get(name)
    return (cls.label if cls is not None else "") or name


#: what the parts of :attr:`Explainer.needs` are called for a user
PART_NAMES = {"ae": "the autoencoder", "classifier": "the classifier", "vae": "the VAE detector",
              "ensemble": "the latent ensemble"}


def ready(bundle) -> dict[str, tuple[str, ...]]:
    """Every registered method (display order) -> the parts it lacks on ``bundle`` (() = ready)."""
    return {m: cls.missing(bundle) for m, cls in methods().items()}


def resolve_methods(chosen: str | Iterable[str] | None) -> list[str]:
    """``"all"`` or None -> every registered method in display order; a comma-separated string or
    a list -> those names, checked, duplicates dropped.

    Raises:
        DataError: an unknown name, or none chosen (one line listing the known ones).
    """
    from cfx.errors import DataError

    known = list(methods())
    if chosen is None or chosen == "all" or (not isinstance(chosen, str) and list(chosen) == ["all"]):
        return known
    names = [m.strip() for m in (chosen.split(",") if isinstance(chosen, str) else chosen) if m.strip()]
    bad = [m for m in names if m not in REGISTRY]
    if bad or not names:
        raise DataError(f"unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(known)} or all")
    return list(dict.fromkeys(names))


def explain(bundle, image: np.ndarray, methods: Iterable[str], target: str = "score", seed: int = 0,
            params: dict[str, dict[str, Any]] | None = None, mask: np.ndarray | None = None,
            cancel: threading.Event | None = None) -> dict[str, Explanation]:
    """Run several methods; a method that fails (or is cancelled through ``cancel``) returns an
    Explanation with ``error`` set and the others still run."""
    out: dict[str, Explanation] = {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            if m not in REGISTRY:
                raise KeyError(f"unknown method {m!r}; known: {', '.join(REGISTRY)}")
            out[m] = REGISTRY[m](bundle).attribute(image, target, seed, mask, cancel=cancel,
                                                   **(params or {}).get(m, {}))
        except Cancelled:
            out[m] = Explanation(m, target, np.asarray(image, np.float32), float("nan"), float("nan"),
                                 seconds=time.perf_counter() - t0, seed=seed, error=CANCELLED)
        except Exception as exc:  # noqa: BLE001 - reported in the method's own entry
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            e = Explanation(m, target, np.asarray(image, np.float32), float("nan"), float("nan"),
                            seconds=time.perf_counter() - t0, seed=seed, error=msg)
            e.info["traceback"] = traceback.format_exc(limit=5)
            out[m] = e
    return out
