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
(:class:`EditModel`): within the smallest region whose real-content fill the detector accepts
(the minimal edit without a method, ``R*``), ``G`` sets how strongly it is filled by how much it
changes there, ``x + a R* (C - x)`` with ``a = clip(mean_R* |G - G0| / (tau mean_R* |G_C - G0|), 0, 1)``
where ``G_C`` is the generator's own image of the content (a move half as far as the one that
takes the generator's image of the original to its image of the normal content fills it fully); so CLEAR's
regression and DiCE's search see a boundary under a detector that rejects every decoding, and it
lies where the method moves far enough where the detector looks. Since such an edit is a function
of its strength ``a`` alone, a search's hundreds of candidates lie on one line of images, and the
target's score along it is a function of one number: the searches read it from a table of exact
scores, :data:`STRENGTH_CELLS` cells wide, refined where it crosses the threshold
(:meth:`EditModel.score_strengths`; measured on demo and real defects: the same side of the
threshold for every strength read and the same counterfactuals as scoring every strength, for a
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
#: resolution of a search's table of the score by edit strength (:meth:`EditModel.score_strengths`):
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


def score_once(bundle, images: np.ndarray, target: str, scored: dict[bytes, float] | None) -> tuple[np.ndarray, int]:
    """The target's scores of ``images``, those already in ``scored`` (by the images' bytes) not
    scored again; returns (scores, images scored). ``scored`` takes the new ones."""
    if scored is None:
        return bundle.score_numpy(images, target), len(images)
    import hashlib

    keys = [hashlib.blake2b(im.tobytes(), digest_size=16, person=target.encode()[:16]).digest() for im in images]
    new = list(dict.fromkeys(k for k in keys if k not in scored))
    if new:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        s = bundle.score_numpy(images[[first[k] for k in new]], target)
        scored.update({k: float(v) for k, v in zip(new, s)})
    return np.array([scored[k] for k in keys], np.float64), len(new)


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
    regions = level_regions(priority_map(heat, change))
    names = list(contents)
    n_lv = len(regions)
    thr = bundle.threshold_for(target)
    step = max(1, int(chunk or getattr(bundle, "forward_batch", 0) or n_lv * len(names)) // len(names))
    s = np.full((len(names), n_lv), np.inf)
    done = evaluations = 0
    while done < n_lv:
        lv = slice(done, min(n_lv, done + step))
        batch = np.concatenate([compose(x, contents[n], regions[lv]) for n in names])
        scores, n_new = score_once(bundle, batch, target, scored)
        s[:, lv] = scores.reshape(len(names), -1)
        evaluations += n_new
        done = lv.stop
        ok = s <= thr
        if ok.any() and done > min(n_lv - 1, int(np.argmax(ok.any(0))) + margin_levels):
            break  # the smallest valid level and its margin levels are scored
    ok = s <= thr
    if ok.any():
        lvl = int(np.argmax(ok.any(0)))
        c = int(np.argmax(ok[:, lvl]))
        for _ in range(margin_levels):
            if lvl + 1 < n_lv and ok[c, lvl + 1]:
                lvl += 1
    else:
        lvl, c = n_lv - 1, int(np.argmin(s[:, -1]))
    return Edit(compose(x, contents[names[c]], regions[lvl]), regions[lvl], float(SHARES[lvl]), names[c],
                float(s[c, lvl]), bool(ok[c, lvl]), evaluations, contents[names[c]])


class EditModel:
    """A generator's images turned into local edits of ``x`` for a search: ``G`` (N, C, H, W) ->
    ``compose(x, content, a * region)``, ``a = clip(mean over region of |G - G0| / scale, 0, 1)``
    with ``scale = tau * mean over region of |g_content - G0|`` (see the module docstring).

    Every edit is a function of its strength ``a`` alone, so the target's score along a search is
    a function of one number, ``s(a)`` on [0, 1]; :meth:`scores` reads it from a table of exact
    scores (see there).

    Args:
        x: the original; g0: the generator's image of it; content: the real normal content;
        region: ``R*``; g_content: the generator's image of ``content``.
        cells: the strength table's resolution: ``s(a)`` is scored exactly at the ends of the
            cell of width ``1 / cells`` that holds ``a``, and read between them where both lie on
            the same side of the threshold (0: every distinct strength is scored).
    """

    def __init__(self, x: np.ndarray, g0: np.ndarray, content: np.ndarray, region: np.ndarray,
                 g_content: np.ndarray, tau: float = TAU, cells: int = 0) -> None:
        self.x, self.g0, self.content, self.region = x, g0, content, region
        self.w = region / max(float(region.sum()), 1e-12)
        # the strength reads only the region's bounding box (the weights are 0 outside it)
        ys, xs = np.nonzero(region > 0)
        self._box = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)) \
            if len(ys) else (slice(0, 0), slice(0, 0))
        self._w_box = self.w[self._box]
        self._g0_box = np.asarray(g0, np.float32)[(slice(None), *self._box)]
        self.tau = max(float(tau) * float((np.abs(g_content - g0).mean(0) * self.w).sum()), 1e-3)
        self.cells = max(0, int(cells))
        #: exact target scores by strength ``a`` (:meth:`scores`), and how many images the model scored
        self.memo: dict[tuple[str, float], float] = {}
        self.evaluations = 0
        #: strengths whose score was read from the table rather than scored
        self.read = 0

    @property
    def box(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The bounding box of ``R*``, ``((r0, r1), (c0, c1))`` half-open: the only pixels of a
        generator's image that its strength reads (a generator may decode just these)."""
        return tuple((int(sl.start), int(sl.stop)) for sl in self._box)  # type: ignore[return-value]

    def strength(self, g: np.ndarray) -> np.ndarray:
        """``a`` of each image (N,) (read inside the region's bounding box, where its weights are).
        ``g`` is (N, C, H, W) generator images, or their crops to :attr:`box` (N, C, h, w)."""
        g = np.asarray(g, np.float32)
        if g.shape[-2:] != self._w_box.shape:
            g = g[(slice(None), slice(None), *self._box)]
        d = np.abs(g - self._g0_box).mean(1)
        return np.clip((d * self._w_box).sum((1, 2)) / self.tau, 0, 1)

    def regions(self, g: np.ndarray) -> np.ndarray:
        return (self.strength(g)[:, None, None] * self.region[None]).astype(np.float32)

    def images(self, g: np.ndarray) -> np.ndarray:
        return compose(self.x, self.content, self.regions(np.asarray(g, np.float32)))

    def scores(self, bundle, g: np.ndarray, target: str, batch: int | None = None,
               exact: bool = False) -> np.ndarray:
        """The target's scores (N,) of the edits of generator images ``g`` (whole, or cropped to
        :attr:`box`).

        An edit is a function of its strength ``a`` alone, so generator images with the same ``a``
        (every one that moves at least as far as the content, ``a`` = 1, above all) are the same
        image, scored once (measured on demo defects: DiCE's 462 edits held 11-128 distinct
        strengths). With ``cells`` the scores come from a table of ``s(a)``
        (:meth:`score_strengths`: a search's hundreds of edits lie on one line of images, and
        its decisions need their side of the threshold; ``exact`` scores every one)."""
        a = self.strength(np.asarray(g, np.float32)).astype(np.float64)
        return self.score_strengths(bundle, a, target, batch, exact=exact)

    def score_strengths(self, bundle, a: np.ndarray, target: str, batch: int | None = None,
                        exact: bool = False) -> np.ndarray:
        """``s(a)`` at strengths ``a`` (N,).

        Without ``cells`` (or with ``exact``) every distinct strength not seen before is scored.
        With ``cells``, a strength is read from the table when the exactly scored strengths
        nearest to it on either side lie within one cell of each other and on the same side of
        the threshold (the score is then their linear interpolation, and its side theirs); the
        rest are scored: first the ends of their cells, then, inside a cell whose ends lie on
        either side of the threshold, the middle one of those in each gap, until every strength
        is scored or read. Each strength's side of the threshold is then exact unless the score
        crosses the threshold twice within one cell (measured on demo and real defects: see
        BENCHMARKS.md); the strengths next to a crossing are always scored.
        """
        a = np.asarray(a, np.float64)
        want = sorted(set(a.tolist()))
        seen = {v for t, v in self.memo if t == target}
        new = [v for v in want if v not in seen]
        if exact or not self.cells:
            self._score(bundle, new, target, batch)
            return np.array([self.memo[(target, float(v))] for v in a], np.float64)
        thr = bundle.threshold_for(target)
        # the cells' ends, shared by every later call of the search (scored even where a call has
        # fewer strengths than ends: the next calls read from them)
        self._score(bundle, sorted({c for v in new for c in self._cell(v)} - seen), target, batch)
        while True:
            known = np.array(sorted(v for t, v in self.memo if t == target))
            vals = np.array([self.memo[(target, v)] for v in known])
            todo = [v for v in want if (target, v) not in self.memo]
            gaps: dict[int, list[float]] = {}
            for v in todo:
                j = int(np.searchsorted(known, v))  # known[j - 1] < v < known[j]
                if (vals[j - 1] > thr) != (vals[j] > thr) or known[j] - known[j - 1] > 1.0 / self.cells + 1e-12:
                    gaps.setdefault(j, []).append(v)
            if not gaps:
                break
            self._score(bundle, [g[len(g) // 2] for g in gaps.values()], target, batch)
        out = np.empty(len(a))
        for i, v in enumerate(a):
            if (target, float(v)) in self.memo:
                out[i] = self.memo[(target, float(v))]
            else:
                j = int(np.searchsorted(known, v))
                t = (v - known[j - 1]) / (known[j] - known[j - 1])
                out[i] = (1 - t) * vals[j - 1] + t * vals[j]
                self.read += 1
        return out

    def _cell(self, v: float) -> tuple[float, float]:
        """The ends of the table's cell that holds strength ``v`` (both ``v`` on a node)."""
        k = self.cells
        lo, hi = int(np.floor(v * k)), int(np.ceil(v * k))
        lo -= lo / k > v  # rounding of v * k
        hi += hi / k < v
        return max(lo, 0) / k, min(hi, k) / k

    def _score(self, bundle, strengths: list[float], target: str, batch: int | None) -> None:
        if not strengths:
            return
        st = np.asarray(strengths, np.float32)[:, None, None]
        s = bundle.score_numpy(compose(self.x, self.content, st * self.region[None]), target, batch=batch)
        self.evaluations += len(strengths)
        self.memo.update({(target, float(v)): float(x) for v, x in zip(strengths, s)})
