"""numpy's BLAS at one thread while a heavy method runs, restored after."""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from cfx.blas import quiet_blas
from cfx.data.mvtec import MVTecDataset
from cfx.explainers.base import Explainer


def blas_threads() -> list[int]:
    np.dot(np.ones((4, 4)), np.ones((4, 4)))  # numpy's BLAS is loaded
    return sorted(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas")


def test_one_thread_inside_restored_after():
    before = blas_threads()
    with quiet_blas():
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


def test_a_heavy_method_runs_with_one_blas_thread(demo_bundle, demo_root):
    seen: dict[str, list[int]] = {}

    class Probe(Explainer):
        name, kind, label, defaults = "zz_probe", "heatmap", "Probe", {}

        def _explain(self, image, target, seed, params):
            seen[type(self).__name__] = blas_threads()
            e = self.base(image, target)
            e.heatmap = np.zeros(image.shape[1:], np.float32)
            return e

    class LightProbe(Probe):
        heavy = False

    b = demo_bundle("brick")
    image = MVTecDataset(demo_root, "brick", "test", image_size=b.image_size, channels=b.channels).arrays().images[0]
    before = blas_threads()
    Probe(b).attribute(image)
    LightProbe(b).attribute(image)
    assert set(seen["Probe"]) == {1}
    assert seen["LightProbe"] == before
    assert blas_threads() == before
