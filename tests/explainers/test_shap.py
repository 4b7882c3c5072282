"""SHAP over superpixels (issue 14): the hierarchy merges neighbours first, the map is one value
per superpixel, and the grid masker stays available."""
from __future__ import annotations

import numpy as np
import pytest

from cfx.explainers import REGISTRY, explain
from cfx.explainers.lime import superpixels
from cfx.explainers.shap import complete_tree_values, partition_values, region_hierarchy


def test_region_hierarchy_merges_neighbours_first():
    segments = np.kron(np.arange(16).reshape(4, 4), np.ones((8, 8), int))  # a 4x4 grid of 8-px blocks
    z = region_hierarchy(segments)
    assert z.shape == (15, 4) and z[-1, 3] == 16  # K - 1 merges, the last one holds every region
    a, b = int(z[0, 0]), int(z[0, 1])
    (ya, xa), (yb, xb) = divmod(a, 4), divmod(b, 4)
    assert abs(ya - yb) + abs(xa - xb) == 1  # the first merge joins two adjacent blocks


def test_shap_map_is_one_value_per_superpixel(demo_bundle, demo_root):
    from cfx.data.mvtec import MVTecDataset

    b = demo_bundle("tablet")
    arr = MVTecDataset(demo_root, "tablet", "test", image_size=b.image_size, channels=b.channels).arrays()
    image = arr.images[int(np.flatnonzero(arr.labels == 1)[0])]
    e = REGISTRY["shap"](b).attribute(image, max_evals=300)
    seg = superpixels(image, 100, "slic", 0)
    assert e.info["segments"] == seg.max() + 1
    for k in range(seg.max() + 1):
        assert np.ptp(e.heatmap[seg == k]) == 0
    assert e.info["sum"] == pytest.approx(float(sum(e.heatmap[seg == k][0] for k in range(seg.max() + 1))), rel=1e-4)
    g = REGISTRY["shap"](b).attribute(image, max_evals=300, regions="grid", grid=16)
    assert g.heatmap.shape == image.shape[1:] and "segments" not in g.info
    bad = explain(b, image, ["shap"], params={"shap": {"regions": "hexagons"}})["shap"]
    assert bad.error and "superpixels or grid" in bad.error


@pytest.mark.parametrize("context", ["hidden", "shown", "average"])
def test_complete_trees_in_one_batch_equal_shaps_partition_explainer(context):
    """The whole fixed-context trees scored in one batch give shap's own values (its
    PartitionExplainer with ``fixed_context``) on a non-additive model, with 2k - 2 evaluations a
    tree besides "nothing" and "everything"."""
    import shap
    from scipy.cluster.hierarchy import linkage

    rng = np.random.default_rng(0)
    k = 23
    w, v = rng.normal(size=k), rng.normal(size=(k, k)) * 0.3
    calls = []

    def f(m):
        m = np.asarray(m, np.float64)
        calls.append(len(m))
        return m @ w + np.einsum("ni,ij,nj->n", m, v, m) + np.max(m * w, axis=1)

    z = linkage(rng.random((k, 2)), "ward")
    values, base = complete_tree_values(f, z, k, context)
    trees = 2 if context == "average" else 1
    assert calls == [2 + trees * (2 * k - 2)]
    explainer = shap.PartitionExplainer(f, shap.maskers.Partition(np.zeros((1, k)), clustering=z))
    expected, expected_base = partition_values(explainer, np.ones((1, k)), context, 10_000, 512)
    assert np.allclose(values, expected[0], atol=1e-12) and base == pytest.approx(float(np.ravel(expected_base)[0]))
    assert values.sum() == pytest.approx(f(np.ones((1, k)))[0] - f(np.zeros((1, k)))[0])


def _detected_brick(demo_bundle, demo_root):
    """The demo brick's bundle, its test arrays and the indices of the defects it detects."""
    from cfx.data.mvtec import MVTecDataset

    b = demo_bundle("brick")
    arr = MVTecDataset(demo_root, "brick", "test", image_size=b.image_size, channels=b.channels).arrays()
    return b, arr, np.flatnonzero((arr.labels == 1) & (b.score_numpy(arr.images) > b.threshold))


def test_kernel_shap_is_seeded_and_puts_its_top_region_on_the_defect(demo_bundle, demo_root):
    """Kernel SHAP over superpixels (``estimator="kernel"``, 400 samples): the same seed gives the
    same map, the global numpy generator is left as it was, and on detected demo defects the
    highest superpixel lies on the marked defect; Partition stays the default."""
    assert REGISTRY["shap"].defaults["estimator"] == "partition"
    b, arr, detected = _detected_brick(demo_bundle, demo_root)
    hits = n = 0
    for i in detected[:4]:
        image, mask = arr.images[i], arr.masks[i] > 0.5
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        e = REGISTRY["shap"](b).attribute(image, seed=3, estimator="kernel", max_evals=400)
        assert np.array_equal(np.random.get_state()[1], before)
        assert e.ok and e.info["estimator"] == "kernel" and e.info["evaluations"] == 403
        if n == 0:
            again = REGISTRY["shap"](b).attribute(image, seed=3, estimator="kernel", max_evals=400)
            assert np.array_equal(e.heatmap, again.heatmap)
        top = e.heatmap == e.heatmap.max()
        hits += bool((top & mask).any())
        n += 1
    assert n >= 3 and hits >= n - 1, f"top superpixel on the defect in {hits}/{n} images"
    p = REGISTRY["shap"](b).attribute(arr.images[0], max_evals=200)
    assert p.ok and p.info["estimator"] == "partition"
    bad = explain(b, arr.images[0], ["shap"], params={"shap": {"estimator": "exact"}})["shap"]
    assert bad.error and "kernel or partition" in bad.error


def test_default_context_completes_both_trees_and_keeps_efficiency(demo_bundle, demo_root):
    """``context="average"`` (the default) runs the whole superpixel tree twice, each split
    measured once with everything outside the group hidden and once with it shown: two
    evaluations a merge a tree, so about 4K in all instead of Owen's 1,500, and still every
    superpixel gets its own value. The values add up to f(image) - f(fill), the top superpixel
    lies on the detected demo defect, and the single-context and Owen variants stay available."""
    from cfx.explainers._util import fill_image, score_images

    assert REGISTRY["shap"].defaults["context"] == "average"
    b, arr, detected = _detected_brick(demo_bundle, demo_root)
    hits = n = 0
    for i in detected[:3]:
        image, mask = arr.images[i], arr.masks[i] > 0.5
        e = REGISTRY["shap"](b).attribute(image)
        k = e.info["segments"]
        assert e.ok and e.info["context"] == "average"
        assert e.info["evaluations"] == 4 * k - 2 + 1  # nothing, everything, 2 x (2k - 2) groups; the original
        seg = superpixels(image, 100, "slic", 0)
        assert len({float(e.heatmap[seg == r][0]) for r in range(k)}) > k // 2  # split down to superpixels
        f1, f0 = score_images(b, np.stack([image, fill_image(b, image, "auto")]), "score")
        assert e.info["sum"] == pytest.approx(f1 - f0, rel=1e-3, abs=1e-3)
        hits += bool((e.heatmap == e.heatmap.max())[mask].any())
        n += 1
    assert n == 3 and hits >= n - 1, f"top superpixel on the defect in {hits}/{n} images"
    for context, evals in (("hidden", 2 * (k - 1) + 2 + 1), ("owen", 301)):
        one = REGISTRY["shap"](b).attribute(image, context=context, max_evals=300)
        assert one.ok and one.info["context"] == context and one.info["evaluations"] == evals
    bad = explain(b, arr.images[0], ["shap"], params={"shap": {"context": "sideways"}})["shap"]
    assert bad.error and "average, hidden, shown, owen" in bad.error
