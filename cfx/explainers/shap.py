"""SHAP: Shapley values of image regions, hidden regions filled from the reconstruction (or a blur).

By default (``regions="superpixels"``) the regions are LIME's ~100 SLIC superpixels (same
segmentation, same seed), and the values are shap's **Partition** values over a Ward hierarchy of
the superpixels' centroids (neighbours merge first), scored in large batches, deterministic.

``context`` says how each split of the hierarchy is measured (shap's ``fixed_context``):

* ``hidden``: a group's value is split between its two halves by showing each half alone,
  everything outside the group hidden (the fill); the interaction of the halves stays with the
  group and is shared by size. Two evaluations a merge: the whole tree of K superpixels in
  2(K - 1) + 2 evaluations (about 200), every superpixel reached.
* ``shown``: the same with everything outside the group shown.
* ``average`` (the default): the mean of the ``hidden`` and ``shown`` values, both trees complete
  (4K - 2 evaluations, about 380). At the top split this is the Owen value exactly; below it,
  Owen's average over every state of the siblings is approximated by its two extremes.
* ``owen``: Owen values, each split averaged over both states of the sibling at every level, so
  the (group, context) pairs double with depth; ``max_evals`` caps them and the groups not split
  by then keep their value, shared by size (1,200-1,400 evaluations to converge on the demo).

With a fixed context every mask is known in advance, so when ``max_evals`` covers the whole trees
they are scored in one batch (:func:`complete_tree_values`, equal to shap's explainer to 1e-15);
otherwise shap's ``PartitionExplainer`` spends the budget, shared between the trees, level by level.

Measured (BENCHMARKS.md, issue 14, sixth part; PatchCore): ``average`` reached the optimal Jaccard
J* with the mask of the 5000-evaluation Owen reference on all six demo defects (Owen values at
1,500 evaluations: five of six) and equalled or beat Owen at 1,500 on real bottle and screw
defects except two (0.31 against 0.36, 0.247 against 0.258). Each context alone failed somewhere:
``shown`` on the demo scratches and four of five bottle defects (hiding one piece of a
multi-piece defect barely moves a max-pooled score), ``hidden`` on a screw (0.03 against 0.26:
pieces of a rotated screw shown over the nearest normal screw look anomalous wherever they are).

``estimator="kernel"`` uses shap's **KernelExplainer** over the same superpixels instead (Kernel
SHAP: a Shapley-kernel weighted regression over sampled coalitions, which shap spends first on
every single region shown and every single region hidden; ``max_evals`` samples, seeded). On the
demo defects its J* equalled its own 5000-sample reference from 300 samples with both detectors,
but on real bottle defects (PatchCore) 400 samples gave clearly lower J* than Partition at 1,500
(0.38-0.52 against 0.58-0.73 where they differ: defects that span several superpixels, whose
single-region coalitions barely move a max-pooled score), so it is not the default.

With ``regions="grid"`` (always Partition) the masker works on a ``grid`` x ``grid`` map of cells
(4x4 px at 128 px and grid 32) shared by all channels: shap's Image masker masks the cell map, and
the model function turns each masked cell map into an image (shown cells from the original, hidden
ones from the fill). shap splits a grid axis by axis, so a small defect is isolated only deep in
the tree: at 1,000-5,000 evaluations its map was still far from its reference. ``grid=0`` masks
the image's pixels directly, as shap's documentation does.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar

import numpy as np

from cfx.explainers._util import fill_image, score_images
from cfx.explainers.base import Explainer, Explanation, register


#: shap's ``fixed_context`` of each tree a ``context`` computes (their values are averaged)
CONTEXTS: dict[str, tuple[int | None, ...]] = {"average": (0, 1), "hidden": (0,), "shown": (1,), "owen": (None,)}


def partition_values(explainer, x: np.ndarray, context: str, max_evals: int, batch_size: int):
    """shap's Partition values of ``x`` (one row) under ``context`` (:data:`CONTEXTS`), the
    evaluations shared equally between its trees: ``(values, base_values)`` as shap's Explanation."""
    contexts = CONTEXTS[context]
    runs = [explainer(x, max_evals=max(3, max_evals // len(contexts)), fixed_context=fc, batch_size=batch_size,
                      silent=True) for fc in contexts]
    values = np.mean([np.asarray(r.values) for r in runs], axis=0)
    return values, np.asarray(runs[0].base_values)


def complete_tree_evaluations(k: int, context: str, max_evals: int) -> int | None:
    """Evaluations of :func:`complete_tree_values` for ``k`` regions, or None when it does not
    apply: Owen values (or an unknown context), or a budget short of the whole trees."""
    trees = CONTEXTS.get(context, (None,))
    whole = None if None in trees else 2 + len(trees) * (2 * k - 2)
    return whole if whole is not None and whole <= max_evals else None


def complete_tree_values(f: Callable[[np.ndarray], np.ndarray], linkage: np.ndarray, k: int,
                         context: str) -> tuple[np.ndarray, float]:
    """shap's Partition values with a fixed context over the whole hierarchy, in one batch.

    With a fixed context every mask the recursion evaluates is known in advance: in the hidden
    tree (shap's ``fixed_context=0``) a group shown alone, in the shown tree (``1``) everything but
    a group. So each group's two masks are scored together (nothing, everything, and those of the
    2k - 2 groups below the root; one batch instead of one per level of the tree), and the values
    follow shap's recursion: a group keeps the interaction of its halves,
    ``f(G) - f(L) - f(R) + f(nothing)`` hidden and ``-(f(all) - f(all - R) - f(all - L) + f(all - G))``
    shown, a region keeps its own effect, and each group's credit is passed down to its halves by
    size (shap's ``lower_credit``). Equal to shap's ``PartitionExplainer`` (tested).

    Args:
        f: region masks (N, k) in {0, 1} -> scores (N,).
        linkage: scipy linkage matrix of the k regions (k - 1 rows).
        k: the number of regions; context: ``average``, ``hidden`` or ``shown``.

    Returns:
        (values (k,), f(nothing): the base value).
    """
    n = 2 * k - 1
    members = np.zeros((n, k), bool)
    members[np.arange(k), np.arange(k)] = True
    kids = linkage[:, :2].astype(int)
    for j, (a, b) in enumerate(kids):
        members[k + j] = members[a] | members[b]
    below = members[:-1]  # every group but the root (the root's masks are "everything" and "nothing")
    fcs = CONTEXTS[context]
    masks = [np.zeros((1, k), bool), np.ones((1, k), bool)] + [below if fc == 0 else ~below for fc in fcs]
    out = np.asarray(f(np.concatenate(masks)), np.float64)
    f_none, f_all = out[0], out[1]
    parts = dict(zip(fcs, np.split(out[2:], len(fcs))))
    alone = np.append(parts.get(0, np.zeros(n - 1)), f_all)  # f(group shown alone), the root: everything
    all_but = np.append(parts.get(1, np.zeros(n - 1)), f_none)  # f(everything but the group), the root: nothing
    size = members.sum(1).astype(np.float64)
    trees = []
    for fc in fcs:
        d = np.zeros(n)
        if fc == 0:
            d[:k] = alone[:k] - f_none
            d[k:] = alone[k:] - alone[kids[:, 0]] - alone[kids[:, 1]] + f_none
        else:
            d[:k] = f_all - all_but[:k]
            d[k:] = -(f_all - all_but[kids[:, 1]] - all_but[kids[:, 0]] + all_but[k:])
        for i in range(n - 1, k - 1, -1):  # parents before their halves
            a, b = kids[i - k]
            d[a] += d[i] * size[a] / size[i]
            d[b] += d[i] * size[b] / size[i]
        trees.append(d[:k])
    return np.mean(trees, axis=0), float(f_none)


def grid_segments(g: int, size: tuple[int, int]) -> np.ndarray:
    """The cell index (row * g + column) of each pixel of an image of ``size`` cut into a g x g grid
    (H, W multiples of g, else index mapping)."""
    h, w = size
    return ((np.arange(h) * g) // h)[:, None] * g + ((np.arange(w) * g) // w)[None, :]


def grid_model(bundle, image: np.ndarray, fill: np.ndarray, target: str, batch: int | None = None
               ) -> Callable[[np.ndarray], np.ndarray]:
    """f(cell maps (N, g, g, 1) in {0, 1}) -> target scores (N,) of the images they select."""
    def f(cells: np.ndarray) -> np.ndarray:
        cells = np.asarray(cells)
        segments = grid_segments(cells.shape[1], image.shape[-2:])
        return region_model(bundle, image, fill, segments, target, batch)(cells.reshape(len(cells), -1))
    return f


def region_model(bundle, image: np.ndarray, fill: np.ndarray, segments: np.ndarray, target: str,
                 batch: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """f(region masks (N, K) in {0, 1}) -> target scores (N,) of the images they select (region k
    shown where ``segments == k``, the fill elsewhere)."""
    def f(keep: np.ndarray) -> np.ndarray:
        # np.take, not keep[:, segments]: numpy lays that result out with the batch as its fastest
        # axis, and each batch's copy into the detector's layout then gathers scattered floats
        # (0.35 ms an image, a fifth of a VAE evaluation)
        k = np.take(np.asarray(keep) > 0.5, segments, axis=1)[:, None]  # (N, 1, H, W), row-major
        return score_images(bundle, np.where(k, image[None], fill[None]).astype(np.float32, copy=False), target,
                            batch=batch)
    return f


def region_hierarchy(segments: np.ndarray) -> np.ndarray:
    """A scipy linkage matrix over the regions of ``segments``: Ward clustering of their centroids."""
    from scipy.cluster.hierarchy import linkage

    k = int(segments.max()) + 1
    yy, xx = np.indices(segments.shape)
    counts = np.bincount(segments.ravel(), minlength=k).clip(1)
    cent = np.stack([np.bincount(segments.ravel(), yy.ravel(), k) / counts,
                     np.bincount(segments.ravel(), xx.ravel(), k) / counts], 1)
    return linkage(cent, "ward")


def pixel_model(bundle, target: str, batch: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """f(images (N, H, W, C)) -> target scores (N,)."""
    def f(imgs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(imgs, np.float32).transpose(0, 3, 1, 2))
        return score_images(bundle, x, target, batch=batch)
    return f


@register
class Shap(Explainer):
    """Shapley values of superpixels (shap's Partition explainer, or Kernel SHAP), hidden regions
    filled from the reconstruction, batched."""

    name: ClassVar[str] = "shap"
    order: ClassVar[int] = 3
    kind: ClassVar[str] = "heatmap"
    label: ClassVar[str] = "SHAP"
    defaults: ClassVar[dict[str, Any]] = {"max_evals": 500, "fill": "auto", "regions": "superpixels",
                                          "estimator": "partition", "context": "average", "n_segments": 100,
                                          "segmentation": "slic", "grid": 32, "batch_size": 512}

    @classmethod
    def planned_evaluations(cls, params: dict[str, Any]) -> int | None:
        if params["regions"] == "superpixels" and params["estimator"] == "kernel":
            return int(params["max_evals"]) + 3  # the samples, the fill, the image, the original
        if params["regions"] == "superpixels":
            whole = complete_tree_evaluations(int(params["n_segments"]), params["context"], int(params["max_evals"]))
            if whole is not None:
                return whole + 1  # the whole trees (about n_segments regions) and the original
            trees = len(CONTEXTS.get(params["context"], (None,)))
            return trees * (int(params["max_evals"]) // trees) + 1  # the budget, shared by the trees
        return int(params["max_evals"]) + 1  # the budget and the original

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        import shap

        b = self.bundle
        exp = self.base(image, target)
        fill = fill_image(b, image, params["fill"])
        g = int(params["grid"])
        c, h, w = image.shape
        if params["regions"] not in ("superpixels", "grid"):
            raise ValueError(f"unknown regions {params['regions']!r}; choose superpixels or grid")
        if params["context"] not in CONTEXTS:
            raise ValueError(f"unknown context {params['context']!r}; choose {', '.join(CONTEXTS)}")
        if params["estimator"] not in ("kernel", "partition"):
            raise ValueError(f"unknown estimator {params['estimator']!r}; choose kernel or partition")
        if params["regions"] == "superpixels":
            from cfx.explainers.lime import superpixels

            segments = superpixels(image, params["n_segments"], params["segmentation"], seed)
            k = int(segments.max()) + 1
            f = region_model(b, image, fill, segments, target)
            if params["estimator"] == "kernel":
                explainer = shap.KernelExplainer(f, np.zeros((1, k)))  # background: every region hidden
                state = np.random.get_state()  # shap samples coalitions with numpy's global generator
                np.random.seed(seed)
                try:
                    with warnings.catch_warnings():  # fewer samples than regions: shap's least squares
                        warnings.simplefilter("ignore")
                        vals = explainer.shap_values(np.ones((1, k)), nsamples=int(params["max_evals"]),
                                                     l1_reg=False, silent=True)
                finally:
                    np.random.set_state(state)
                vals, base = np.asarray(vals).reshape(1, k), np.ravel(explainer.expected_value)
                exp.info["estimator"] = "kernel"
            else:
                tree = region_hierarchy(segments)
                if complete_tree_evaluations(k, params["context"], int(params["max_evals"])) is not None:
                    vals, base = complete_tree_values(f, tree, k, params["context"])
                    vals = vals[None]
                else:  # Owen values, or a budget short of the whole tree: shap's budgeted traversal
                    explainer = shap.PartitionExplainer(f, shap.maskers.Partition(np.zeros((1, k)), clustering=tree))
                    vals, base = partition_values(explainer, np.ones((1, k)), params["context"],
                                                  int(params["max_evals"]), int(params["batch_size"]))
                exp.info["estimator"] = "partition"
            values = np.asarray(vals)[0].astype(np.float32)  # (K,): attribution of each superpixel
            exp.heatmap = values[segments]  # as LIME's map: each pixel shows its superpixel's value
            exp.info["segments"] = k
            total = float(values.sum())
        elif g > 0:
            if g > min(h, w):
                raise ValueError(f"grid {g} is finer than the image ({h}x{w})")
            masker = shap.maskers.Image(np.zeros((g, g, 1), np.float32))
            explainer = shap.PartitionExplainer(grid_model(b, image, fill, target), masker)
            vals, base = partition_values(explainer, np.ones((1, g, g, 1), np.float32), params["context"],
                                          int(params["max_evals"]), int(params["batch_size"]))
            cells = vals[0, ..., 0].astype(np.float32).ravel()  # attribution of each cell
            segments = grid_segments(g, (h, w))
            counts = np.bincount(segments.ravel(), minlength=g * g)
            exp.heatmap = (cells / counts)[segments].astype(np.float32)  # pixel's share of its cell
            total = float(exp.heatmap.sum())
        else:
            masker = shap.maskers.Image(fill.transpose(1, 2, 0).astype(np.float64))
            explainer = shap.PartitionExplainer(pixel_model(b, target), masker)
            vals, base = partition_values(explainer, image.transpose(1, 2, 0)[None].astype(np.float64),
                                          params["context"], int(params["max_evals"]), int(params["batch_size"]))
            exp.heatmap = vals[0].sum(-1).astype(np.float32)
            total = float(exp.heatmap.sum())
        exp.signed = True
        if "estimator" not in exp.info or exp.info["estimator"] == "partition":
            exp.info["context"] = params["context"]
        base = np.asarray(base).ravel()
        exp.info.update({"base_value": float(base[0]) if base.size else None, "sum": total})
        return exp
