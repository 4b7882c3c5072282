"""Counterfactuals as local edits of the real image: where to edit, with what, and how it measures.

Every counterfactual the user sees is ``x' = x * (1 - R) + C * R``: the original ``x`` outside a
soft region ``R`` (H, W) in [0, 1], realistic content ``C`` inside it. The methods
(:mod:`cfx.explainers.counterfactual`) decide *what* changes (their generator's image ``G``: an
AE/VAE decoding, an inverse-PCA image, a concept edit); this module decides *where*, as little as
possible, and checks validity on the selected detector:

1. **Priority** (:func:`priority_map`): ``heat * (1 + change) / 2``, both scaled to [0, 1]: the
   detector's own map (where it sees the anomaly), ordered within by the method's change
   ``|G - G0|`` (smoothed), so an edit starts where both agree. (Measured on the demo: the
   geometric mean of the two spread the edits over the AE's blur and lost locality.)
2. **Regions** (:func:`level_regions`): the top ``share`` of the priority for the shares in
   :data:`SHARES` (0.2% of the pixels up to the whole image), soft-edged.
3. **Content** (:func:`normal_content`): the nearest train/good image to ``x`` outside the hot
   region, among the :data:`NEAREST_K` nearest, each shifted by up to :data:`ALIGN_SHIFT` px to
   match the original, the first that the detector itself calls normal (real texture, aligned);
   and the method's own ``G``.
   Measured on the demo (BENCHMARKS.md): PatchCore rejects every AE decoding, even blended into
   the hot region only, and accepts the nearest-normal fill; the demo VAE accepts both.
4. **Minimal edit** (:func:`minimal_edit`): the shares from the smallest up, every content of a
   share together, a forward batch at a time until one is valid; the smallest share whose
   composition the detector calls normal wins (real content first on a tie), plus
   :data:`MARGIN_LEVELS` level(s) so the edit's seam is not in the halo of what is left.

Inside the searches the same composition gives a detector that a generator's image can cross
(:class:`~cfx.explainers.edit_model.EditModel`): within the smallest region whose real-content
fill the detector accepts (the minimal edit without a method, ``R*``), ``G`` sets how strongly it is filled by how much it
changes there, ``x + a R* (C - x)`` with ``a = clip(mean_R* |G - G0| / (tau mean_R* |G_C - G0|), 0, 1)``
where ``G_C`` is the generator's own image of the content (a move half as far as the one that
takes the generator's image of the original to its image of the normal content fills it fully); so CLEAR's
regression and DiCE's search see a boundary under a detector that rejects every decoding, and it
lies where the method moves far enough where the detector looks. Since such an edit is a function
of its strength ``a`` alone, a search's hundreds of candidates lie on one line of images, and the
target's score along it is a function of one number: the searches read it from a table of exact
scores, :data:`STRENGTH_CELLS` cells wide, refined where it crosses the threshold
(:meth:`~cfx.explainers.edit_model.EditModel.score_strengths`; measured on demo and real defects:
the same side of the threshold for every strength read and the same counterfactuals as scoring every strength, for a
fraction of the evaluations).

**Metrics** (:func:`cfx.metrics.edits.edit_metrics`): ``locality`` (share of ``|x' - x|`` inside the defect mask
dilated by :data:`~cfx.metrics.edits.LOCALITY_DILATION` px), ``edit_area`` (share of pixels changed by more than
:data:`~cfx.metrics.edits.CHANGE_EPS`), ``realism`` (:func:`~cfx.metrics.edits.independent_realism`: PatchCore's nearest-normal-patch
distance over the edited region relative to that of real normal images; about 1 = as normal as a
good part; independent of every generator), plus ``l1`` and ``l2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter


#: region sizes tried, as shares of the image's pixels
SHARES = (0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024, 0.032, 0.045, 0.06, 0.09, 0.12, 0.18, 0.25, 0.5, 1.0)
#: train images considered as content (the nearest ones outside the hot region)
NEAREST_K = 8
#: soft edge of the regions (Gaussian sigma, px at the working size)
EDGE_SIGMA = 1.5
#: inside a search, the generator fills the region fully when it changes there by this share of
#: the change from its image of the original to its image of the normal content
TAU = 0.5
#: shifts (px) tried to align the normal content with the original
ALIGN_SHIFT = 3
#: resolution of a search's table of the score by edit strength (:meth:`~cfx.explainers.edit_model.EditModel.score_strengths`):
#: cells of width 1/32 of the strength
STRENGTH_CELLS = 32
#: levels added to the smallest valid one, so the edit is normal with a margin and its seam
#: does not sit in the detector's halo of what is left (measured: realism)
MARGIN_LEVELS = 1


def scaled(a: np.ndarray) -> np.ndarray:
    """``a`` moved and scaled to [0, 1] (zeros when constant)."""
    a = np.asarray(a, np.float64)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def change_map(g: np.ndarray, ref: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Smoothed mean absolute change over channels, (H, W)."""
    return gaussian_filter(np.abs(np.asarray(g, np.float32) - ref).mean(0), sigma)


def priority_map(heat: np.ndarray, change: np.ndarray | None) -> np.ndarray:
    """Where to edit first: the detector's map, ordered within by the method's change
    (``heat * (1 + change) / 2``, both scaled to [0, 1])."""
    h = scaled(heat)
    return h if change is None else h * (0.5 + 0.5 * scaled(change))


def soft(region: np.ndarray, sigma: float = EDGE_SIGMA) -> np.ndarray:
    """A binary region with a soft edge that still covers it fully."""
    return np.clip(1.5 * gaussian_filter(region.astype(np.float32), sigma), 0, 1).astype(np.float32)


def level_regions(priority: np.ndarray, shares: tuple[float, ...] = SHARES) -> np.ndarray:
    """Soft regions (L, H, W): the top ``share`` of ``priority`` for each share (1.0: everything)."""
    out = []
    flat = np.sort(priority.ravel())[::-1]
    for s in shares:
        if s >= 1:
            out.append(np.ones_like(priority, np.float32))
            continue
        k = max(1, int(round(s * flat.size)))
        out.append(soft(priority >= flat[k - 1]))
    return np.stack(out)


def compose(x: np.ndarray, content: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``x * (1 - R) + content * R`` for one region (H, W) or several (L, H, W)."""
    r = region[:, None] if region.ndim == 3 else region[None]
    return np.clip(x * (1 - r) + content * r, 0, 1).astype(np.float32)


def normal_content(bundle, x: np.ndarray, target: str, heat: np.ndarray, k: int = NEAREST_K
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Real normal content for ``x``: of the ``k`` train/good images nearest to ``x`` where the
    detector's map is cool, the nearest one the target calls normal (else the lowest-scoring).

    Returns:
        (image (C, H, W), info: ``content_index`` into train/good, ``content_score``).
    """
    from cfx.explainers._util import train_images

    normals = train_images(bundle)
    w = (1.0 - scaled(heat)).astype(np.float32)
    d = (((normals - x[None]) ** 2).mean(1) * w[None]).reshape(len(normals), -1).sum(1)
    near = np.argsort(d)[: max(1, k)]
    cands, shifts = zip(*(aligned(normals[i], x, w) for i in near))
    s = bundle.score_numpy(np.stack(cands), target)
    ok = s <= bundle.threshold_for(target)
    j = int(np.argmax(ok)) if ok.any() else int(np.argmin(s))
    return np.asarray(cands[j], np.float32), {"content_index": int(near[j]), "content_score": float(s[j]),
                                              "content_shift": list(shifts[j])}


def aligned(normal: np.ndarray, x: np.ndarray, w: np.ndarray, r: int = ALIGN_SHIFT) -> tuple[np.ndarray, tuple[int, int]]:
    """``normal`` shifted by up to ``r`` px (edges replicated) to match ``x`` where ``w`` is high."""
    pad = np.pad(normal, ((0, 0), (r, r), (r, r)), mode="edge")
    h, wd = x.shape[1:]
    best, arg = np.inf, (0, 0)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            c = pad[:, r + dy:r + dy + h, r + dx:r + dx + wd]
            e = float((((c - x) ** 2).mean(0) * w).sum())
            if e < best:
                best, arg = e, (dy, dx)
    dy, dx = arg
    return pad[:, r + dy:r + dy + h, r + dx:r + dx + wd].copy(), (int(dy), int(dx))


def detector_heat(bundle, x: np.ndarray) -> np.ndarray:
    """The selected detector's calibrated map of one image (H, W)."""
    return bundle.analyse(x[None])["heatmap"][0]


@dataclass
class Edit:
    """The smallest valid edit found by :func:`minimal_edit`."""

    image: np.ndarray
    region: np.ndarray
    share: float
    content: str  # "nearest normal" or "generator"
    score: float
    valid: bool
    evaluations: int
    content_image: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]


def score_once(bundle, images: np.ndarray, target: str,
               scored: dict[bytes, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """The target's scores of ``images``, those already in ``scored`` (by the images' bytes) not
    scored again; returns (scores, which images this call scored: the first of each new one).
    ``scored`` takes the new ones."""
    if scored is None:
        return bundle.score_numpy(images, target), np.ones(len(images), bool)
    import hashlib

    keys = [hashlib.blake2b(im.tobytes(), digest_size=16, person=target.encode()[:16]).digest() for im in images]
    first = {k: i for i, k in reversed(list(enumerate(keys))) if k not in scored}
    here = np.zeros(len(images), bool)
    if first:
        idx = sorted(first.values())
        s = bundle.score_numpy(images[idx], target)
        scored.update({keys[i]: float(v) for i, v in zip(idx, s)})
        here[idx] = True
    return np.array([scored[k] for k in keys], np.float64), here


def minimal_edit(bundle, x: np.ndarray, target: str, heat: np.ndarray, contents: dict[str, np.ndarray],
                 change: np.ndarray | None, margin_levels: int = MARGIN_LEVELS, chunk: int | None = None,
                 scored: dict[bytes, float] | None = None) -> Edit:
    """The smallest region (of :data:`SHARES`) and content whose composition the target calls normal.

    The levels are scored from the smallest up, ``chunk`` images at a time (every content of a
    level together), and the scan stops at the first chunk that holds a valid level and the
    margin levels after it: the same edit as scoring every level and content at once, for the
    evaluations up to it (a small defect is valid after a few levels of the 16).

    Args:
        bundle: the models; target: the explained target (normal = at most its threshold).
        x: the original (C, H, W); heat: the detector's map (H, W).
        contents: candidate contents by name, in order of preference on a tie.
        change: the method's change map (H, W) or None.
        margin_levels: levels added to the smallest valid one (while still valid).
        chunk: images scored at a time (default: the bundle's forward batch, where a smaller
            batch costs as much per image as a full one).
        scored: scores by image already known (:func:`score_once`), shared by the edits of one
            explanation: proposals whose top regions agree compose the same images.

    Returns:
        The :class:`Edit` (``valid`` False, whole image and the best-scoring content, when none is).
    """
    return minimal_edits(bundle, x, target, heat, [contents], [change], margin_levels, chunk, scored)[0]


@dataclass
class _Scan:
    """One proposal's scan in :func:`minimal_edits`: the scores so far by content and level."""

    contents: dict[str, np.ndarray]
    regions: np.ndarray
    step: int  # levels per round
    s: np.ndarray  # (contents, levels), inf where not scored
    done: int = 0  # levels scored
    evaluations: int = 0

    def next_chunk(self, x: np.ndarray) -> tuple[slice, np.ndarray]:
        lv = slice(self.done, min(len(self.regions), self.done + self.step))
        return lv, np.concatenate([compose(x, c, self.regions[lv]) for c in self.contents.values()])

    def finished(self, thr: float, margin_levels: int) -> bool:
        """Every level scored, or the smallest valid level and its margin levels are."""
        ok = self.s <= thr
        return self.done >= len(self.regions) or bool(
            ok.any() and self.done > min(len(self.regions) - 1, int(np.argmax(ok.any(0))) + margin_levels))

    def edit(self, x: np.ndarray, thr: float, margin_levels: int) -> Edit:
        """The edit the finished scan found (``valid`` False, whole image and the best-scoring
        content, when none is)."""
        s, regions, names, n_lv = self.s, self.regions, list(self.contents), len(self.regions)
        ok = s <= thr
        if ok.any():
            lvl = int(np.argmax(ok.any(0)))
            c = int(np.argmax(ok[:, lvl]))
            for _ in range(margin_levels):
                if lvl + 1 < n_lv and ok[c, lvl + 1]:
                    lvl += 1
        else:
            lvl, c = n_lv - 1, int(np.argmin(s[:, -1]))
        content = self.contents[names[c]]
        return Edit(compose(x, content, regions[lvl]), regions[lvl], float(SHARES[lvl]), names[c],
                    float(s[c, lvl]), bool(ok[c, lvl]), self.evaluations, content)


def minimal_edits(bundle, x: np.ndarray, target: str, heat: np.ndarray, contents: list[dict[str, np.ndarray]],
                  changes: list[np.ndarray | None], margin_levels: int = MARGIN_LEVELS, chunk: int | None = None,
                  scored: dict[bytes, float] | None = None,
                  allowed: list[np.ndarray | None] | None = None) -> list[Edit]:
    """:func:`minimal_edit` of several proposals (``contents[i]``, ``changes[i]``), their scans in
    lockstep: each round scores the next chunk of every scan still open in one call, so small
    chunks fill the device's batches; each scan scores the same images and stops where it would
    alone. An image two scans compose is scored once, counted in the first one's evaluations.
    ``allowed[i]`` (H, W; bool), when given, confines proposal ``i``'s regions to it (a level
    larger than it is all of it)."""
    thr = bundle.threshold_for(target)
    memo = scored if scored is not None or len(contents) == 1 else {}
    scans = []
    for i, (cont, change) in enumerate(zip(contents, changes)):
        keep = None if allowed is None else allowed[i]
        if keep is None:
            regions = level_regions(priority_map(heat, change))
        else:
            keep = np.asarray(keep, bool)
            regions = level_regions(np.where(keep, priority_map(heat, change) + 1.0, 0.0)) * keep[None]
        step = max(1, int(chunk or getattr(bundle, "forward_batch", 0) or len(regions) * len(cont)) // len(cont))
        scans.append(_Scan(cont, regions, step, np.full((len(cont), len(regions)), np.inf)))
    live = scans
    while live:
        chunks = [sc.next_chunk(x) for sc in live]
        scores, here = score_once(bundle, np.concatenate([images for _, images in chunks]), target, memo)
        at = 0
        for sc, (lv, images) in zip(live, chunks):
            sc.s[:, lv] = scores[at:at + len(images)].reshape(len(sc.contents), -1)
            sc.evaluations += int(here[at:at + len(images)].sum())
            sc.done, at = lv.stop, at + len(images)
        live = [sc for sc in live if not sc.finished(thr, margin_levels)]
    return [sc.edit(x, thr, margin_levels) for sc in scans]
