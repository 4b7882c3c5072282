"""The shared skeleton of the counterfactual methods (CLEAR, DiCE, gradient, concepts).

A counterfactual answers "what would have made this image look normal?". Every method here
implements only its search, :meth:`CounterfactualExplainer._propose`, which returns
:class:`Proposal` s: the method's own image ``G`` in its generator (what changes) and the
generator's image of the original ``G0``. The base class does the rest, the same for all:

* an image the target already calls normal is its own counterfactual (zero edit, valid);
* each proposal becomes the smallest local edit of the real image that the target calls normal
  (:func:`cfx.explainers.edit.minimal_edit`: where = the detector's map times the method's change,
  content = the nearest normal train image, ``G`` or, with the VAE detector, its reconstruction,
  whichever makes the smaller valid edit; the Explanation's ``info["content"]`` says which);
* validity, metrics (``locality``, ``edit_area``, ``realism``, ``l1``, ``l2``), the slider path
  (the original morphing into the edit, inside the edited region only) and the order (closest
  valid first). "No counterfactual found" is a result with a message.

What every search on an image starts from (the detector's map, the normal content, the region
``R*`` and the scores of the edits' compositions) is computed once per models, target and image
and shared by the methods (:meth:`CounterfactualExplainer.setup`).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cfx.explainers import edit as E
from cfx.explainers.base import Counterfactual, Explainer, Explanation
from cfx.explainers.edit_model import EditModel
from cfx.metrics.edits import defect_mask, edit_diversity, edit_metrics, repair_properties, top_region


@dataclass
class Proposal:
    """What a method's search found.

    Attributes:
        image: ``G``, the method's counterfactual in its generator (C, H, W).
        reference: ``G0``, the generator's image of the original (the change is ``G - G0``).
        latent, latent0: the latents of ``G`` and of the original, if the method has any.
        path: the generator's images from ``G0`` to ``G`` (S, C, H, W), for the slider.
        contents: the contents this proposal's edit may fill its region with, by name (default:
            the method's :attr:`CounterfactualExplainer.contents` of the real ones and ``G``).
        allowed: where its edit may lie (H, W; True = allowed), or None for anywhere.
        concept: the name of the kind of change it is (the concepts method), else "".
        fallback: when no edit with ``contents`` is valid, try the method's usual contents
            (False: the contents are the point, as a concept's kind of change is).
    """

    image: np.ndarray
    reference: np.ndarray
    latent: np.ndarray | None = None
    latent0: np.ndarray | None = None
    path: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    contents: dict[str, np.ndarray] | None = None
    allowed: np.ndarray | None = None
    concept: str = ""
    fallback: bool = True


@dataclass
class SearchContext:
    """What every search may use: the original, the detector's map of it, real normal content, the
    region ``R*`` and :class:`~cfx.explainers.edit_model.EditModel` s built from them."""

    image: np.ndarray
    target: str
    threshold: float
    heat: np.ndarray
    content: np.ndarray
    region: np.ndarray  # R*: the smallest region whose real-content fill the target calls normal
    #: the resolution of the edit models' strength table (the method's ``strength_cells``; 0: none)
    cells: int = 0

    def edit_model(self, reference: np.ndarray, g_content: np.ndarray) -> EditModel:
        """Edits of the original from a generator whose image of the original is ``reference`` and
        of the normal content ``g_content``."""
        return EditModel(self.image, reference, self.content, self.region, g_content, cells=self.cells)


def counterfactual_metrics(bundle, original: np.ndarray, images: np.ndarray, target: str, mask: np.ndarray | None = None,
          latent0: np.ndarray | None = None, latents: np.ndarray | None = None,
          heat: np.ndarray | None = None) -> list[Counterfactual]:
    """Score counterfactual images with the real models and measure them as edits of ``original``.

    ``valid`` means the target calls the image normal; ``detector_valid`` / ``classifier_valid``
    the same for the selected detector and the classifier (False when there is none).
    ``repair_properties`` are AR-Pro's four (:func:`cfx.metrics.edits.repair_properties`) with the
    selected detector's map, in the top 10% of its map of ``original`` and (key ``mask``) in the
    ground-truth mask when one is given. ``heat``: the selected detector's map of ``original``
    when the caller has it (else computed here).
    """
    images = np.clip(np.asarray(images, np.float32), 0, 1)
    a = bundle.analyse(images)
    heat_x = E.detector_heat(bundle, original) if heat is None else heat
    w_det = top_region(heat_x)
    w_mask = defect_mask(mask)
    t = bundle.target(target)
    tgt = t.read(a)
    clf = a.get("classifier")
    out = []
    for k, m in enumerate(edit_metrics(bundle, original, images, mask)):
        if latents is not None and latent0 is not None:
            dz = np.asarray(latents[k], np.float64) - latent0
            m["latent_l1"] = float(np.abs(dz).sum())
            m["latent_l2"] = float(np.sqrt((dz ** 2).sum()))
        rp = repair_properties(original, images[k], heat_x, a["heatmap"][k], float(a["score"][k]), w_det)
        if w_mask is not None:
            rp["mask"] = repair_properties(original, images[k], heat_x, a["heatmap"][k], float(a["score"][k]), w_mask)
        out.append(Counterfactual(
            image=images[k], score_after=float(tgt[k]), valid=bool(tgt[k] <= t.threshold),
            detector_score=float(a["score"][k]), detector_valid=bool(not a["anomalous"][k]),
            classifier_prob=float("nan") if clf is None else float(clf[k]),
            classifier_valid=False if clf is None else bool(not a["classifier_anomalous"][k]),
            metrics=m, latent=None if latents is None else np.asarray(latents[k], np.float32),
            repair_properties=rp))
    return out


@dataclass
class EditSetup:
    """What every counterfactual search on one image starts from (:meth:`CounterfactualExplainer.setup`).

    Attributes:
        heat: the detector's map of the image (H, W).
        fills: the real contents by name (the nearest normal image; the VAE's reconstruction).
        content_info: where the nearest normal content came from (:func:`~cfx.explainers.edit.normal_content`).
        base_edit: the smallest edit that the fills make valid (its region is ``R*``).
        scored: the target's scores of the edits' compositions by image (:func:`~cfx.explainers.edit.score_once`).
    """

    heat: np.ndarray
    fills: dict[str, np.ndarray]
    content_info: dict[str, Any]
    base_edit: E.Edit
    scored: dict[bytes, float]


class CounterfactualExplainer(Explainer):
    """Base of the counterfactual methods (see the module docstring); subclasses implement
    :meth:`_propose`."""

    kind: ClassVar[str] = "counterfactual"
    #: the contents tried inside the edit region, in order of preference on a tie (the detector's
    #: reconstruction only with the VAE detector)
    contents: ClassVar[tuple[str, ...]] = ("nearest normal", "reconstruction", "generator")
    #: slider steps from the original to the edit
    path_steps: ClassVar[int] = 8

    def setup(self, image: np.ndarray, target: str) -> tuple["EditSetup", bool]:
        """What every search on ``image`` starts from, computed once per (models, target, image)
        and kept in the bundle's :attr:`~cfx.models.parts.LoadedParts.edit_setups` (so CLEAR, DiCE,
        the gradient and concepts on one image share it; each is a function of the models and
        the image alone). Returns (the setup, whether it was computed by this call)."""
        import hashlib

        from cfx.models.parts import EDIT_SETUPS

        b = self.bundle
        key = (b.key(), target, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        cache = b.loaded.edit_setups
        with b.lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key], False
        heat = E.detector_heat(b, image)
        near, cinfo = E.normal_content(b, image, target, heat)
        fills = {"nearest normal": near}
        if b.detector_name == "vae":  # measured: the VAE rejects pasted texture seams, accepts its own recon
            from cfx.explainers._util import reconstruction

            fills["reconstruction"] = reconstruction(b, image)
        scored: dict[bytes, float] = {}  # the edits' compositions, each scored once
        base_edit = E.minimal_edit(b, image, target, heat, fills, None, margin_levels=0, scored=scored)
        out = EditSetup(heat, fills, cinfo, base_edit, scored)
        with b.lock:
            cache[key] = out
            while len(cache) > EDIT_SETUPS:
                cache.popitem(last=False)
        return out, True

    @abstractmethod
    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        """The method's search: proposals, best first (may be empty; ``exp.info`` takes its numbers)."""

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        b = self.bundle
        exp = self.base(image, target)
        if exp.score_before <= exp.threshold:
            exp.counterfactuals = counterfactual_metrics(b, image, image[None], target, self.mask)
            exp.info["message"] = "already normal: the counterfactual is the image itself (no edit)"
            return exp
        setup, fresh = self.setup(image, target)
        heat, fills, cinfo, base_edit = setup.heat, setup.fills, setup.content_info, setup.base_edit
        content = base_edit.content_image
        region = E.soft(base_edit.region, 2.0)
        ctx = SearchContext(image, target, exp.threshold, heat, content, region, int(params.get("strength_cells", 0)))
        proposals = self._propose(ctx, seed, params, exp)
        if not proposals:
            exp.info.setdefault("message", "no counterfactual found")
            return exp
        default = [{k: v for k, v in {**fills, "generator": np.clip(p.image, 0, 1).astype(np.float32)}.items()
                    if k in self.contents} for p in proposals]
        cands = [p.contents if p.contents is not None else d for p, d in zip(proposals, default)]
        changes = [E.change_map(p.image, p.reference) for p in proposals]
        # the proposals' scans in lockstep: their small chunks share the device's batches
        edits = E.minimal_edits(b, image, target, heat, cands, changes, scored=setup.scored,
                                allowed=[p.allowed for p in proposals])
        again = [i for i, (p, e) in enumerate(zip(proposals, edits)) if p.contents is not None and p.fallback
                 and not e.valid]
        if again:  # a proposal's own content that no region makes valid: the method's usual contents
            for i, e in zip(again, E.minimal_edits(b, image, target, heat, [default[i] for i in again],
                                                   [changes[i] for i in again], scored=setup.scored)):
                e.evaluations += edits[i].evaluations
                edits[i] = e
        lat = [p.latent for p in proposals]
        cfs = counterfactual_metrics(b, image, np.stack([e.image for e in edits]), target, self.mask,
                    proposals[0].latent0, None if any(z is None for z in lat) else np.stack(lat), heat=heat)
        for c, e, p in zip(cfs, edits, proposals):
            c.metrics["edit_share"] = e.share
            c.path_images = self._path(image, e, p, int(params.get("path_steps", self.path_steps)))
            c.content, c.region, c.concept = e.content, e.region, p.concept
        self._path_scores(image, exp.score_before, cfs, target)
        order = sorted(range(len(cfs)), key=lambda i: (not cfs[i].valid, cfs[i].metrics["l1"]))
        exp.counterfactuals = [cfs[i] for i in order]
        if len(cfs) > 1:
            exp.info.update(edit_diversity(image, [c.image for c in exp.counterfactuals]))
        exp.info.update({"content": [edits[i].content for i in order], "proposal_order": order,
                         "edit_evaluations": base_edit.evaluations * fresh + sum(e.evaluations for e in edits),
                         "setup_shared": not fresh, "search_region_share": base_edit.share,
                         "normal_content": dict(cinfo), "search_content": base_edit.content})
        if not any(c.valid for c in cfs):
            exp.info["message"] = ("no counterfactual found: even replacing the whole image with the nearest "
                                   "normal training image does not make the target call it normal")
        return exp

    def _path_scores(self, x: np.ndarray, score_x: float, cfs: list[Counterfactual], target: str) -> None:
        """Set the target's scores of the sliders' images (``path_scores``), all scored in one
        call; a slider's ends, the original and the edit itself when they are exactly those
        images, take the scores already known."""
        todo, out = [], []
        for c in cfs:
            known = [score_x if np.array_equal(p, x) else c.score_after if np.array_equal(p, c.image) else None
                     for p in c.path_images]
            out.append(np.array([np.nan if k is None else k for k in known], np.float64))
            todo += [(len(out) - 1, i) for i, k in enumerate(known) if k is None]
        if todo:
            s = self.bundle.score_numpy(np.stack([cfs[j].path_images[i] for j, i in todo]), target)
            for (j, i), v in zip(todo, s):
                out[j][i] = v
        for c, o in zip(cfs, out):
            c.path_scores = o

    @staticmethod
    def _path(x: np.ndarray, e: E.Edit, p: Proposal, steps: int) -> np.ndarray:
        """The slider: the original morphing into the edit, inside its region only. With the
        generator as content the morph follows the method's own path (when it has one)."""
        steps = max(2, steps)
        if e.content == "generator" and p.path is not None and len(p.path) > 1:
            idx = np.unique(np.linspace(0, len(p.path) - 1, steps - 1).round().astype(int))
            return np.concatenate([x[None], E.compose(x, np.asarray(p.path[idx], np.float32), e.region[None]
                                                      .repeat(len(idx), 0))])
        t = np.linspace(0.0, 1.0, steps)
        return np.stack([E.compose(x, e.content_image, a * e.region) for a in t])
