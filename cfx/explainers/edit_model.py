"""The edit model of the counterfactual searches: a generator's images as local edits of the
original along one line of images, and the table of the target's score along it (see
:mod:`cfx.explainers.edit`, "Inside the searches")."""
from __future__ import annotations

import numpy as np

from cfx.explainers.edit import TAU, compose


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
