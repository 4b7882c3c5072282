"""Early stop of the sampling methods (issue 14): a run stops once its top regions have not
changed over the last quarter of its samples, and a stopped run is what it claims to be."""
from __future__ import annotations

import numpy as np
import pytest

from cfx.explainers import REGISTRY
from cfx.explainers._util import EarlyStop
from cfx.explainers.clear import clear_search


def test_early_stop_needs_the_same_top_over_the_last_quarter_and_min_samples():
    a, b = frozenset({1, 2, 3}), frozenset({1, 2, 4})
    s = EarlyStop(min_samples=200, check_every=50)
    # checks at 50 .. 300: the top changes at 150, then holds
    seq = [(50, a), (100, a), (150, b), (200, b), (250, b), (300, b)]
    got = [s.stable(n, t) for n, t in seq]
    # at 200 the state at 150 (= 3/4 of 200) is b: stable; before 200 min_samples holds it back
    assert got == [False, False, False, True, True, True]
    assert s.stopped_at == 300
    s = EarlyStop(min_samples=50, check_every=50)
    assert not s.stable(50, a)  # no check at or before 3/4 of the first one
    assert s.stable(100, a)
    s = EarlyStop(min_samples=0)
    # at 200 the state at 150 is the check at 100 (a): changed; at 300 the state at 225 is 200's (b)
    assert [s.stable(n, t) for n, t in [(100, a), (200, b), (300, b)]] == [False, False, True]
    assert not s.stable(400, a)  # changed within the last quarter


def test_lime_stops_early_and_equals_a_run_of_that_many_samples(demo_bundle, detected_defect):
    b = demo_bundle("brick")
    image, mask = detected_defect("brick")
    lime = REGISTRY["lime"](b)
    stopped = lime.attribute(image, num_samples=1000, min_samples=100)
    n = int(stopped.info["samples"])
    assert n < 1000 and stopped.info["evaluations"] == n + 1 and "stopped after" in stopped.info["early_stop"]
    full = lime.attribute(image, num_samples=n, early_stop=False)
    assert full.info["evaluations"] == n + 1 and "early_stop" not in full.info
    np.testing.assert_allclose(stopped.heatmap, full.heatmap, rtol=1e-4, atol=1e-6)


def test_lime_without_early_stop_scores_every_planned_sample(demo_bundle, detected_defect):
    b = demo_bundle("brick")
    image, _ = detected_defect("brick")
    e = REGISTRY["lime"](b).attribute(image, num_samples=300, min_samples=100, early_stop=False)
    assert e.info["evaluations"] == 301 and e.info["samples"] == 300


def test_clear_search_stops_on_a_linear_model_and_still_crosses():
    rng = np.random.default_rng(1)
    d = 16
    a = rng.normal(size=d)
    std = np.full(d, 0.5)
    z0 = a / np.linalg.norm(a) * 0.5
    calls = []

    def score_latents(Z):
        calls.append(len(Z))
        return np.asarray(Z) @ a

    stop = EarlyStop(min_samples=200, check_every=100)
    res = clear_search(score_latents, 0.0, z0, std, want_anomalous=False, n_samples=3000, seed=0,
                       fidelity_dims=-1, early_stop=stop)
    assert stop.stopped_at is not None and res.n_samples == stop.stopped_at < 3000
    assert sum(calls) == res.n_samples + len(res.candidates)  # only the samples it used were scored
    assert res.z_cf is not None and res.z_cf @ a < 0  # the counterfactual still crosses


@pytest.fixture(scope="module")
def detected_defect(demo_bundle, demo_root):
    """category -> (image, mask) of the first defect with a mask that the VAE detector flags."""
    from cfx.data.mvtec import MVTecDataset

    def get(category: str):
        b = demo_bundle(category)
        arr = MVTecDataset(demo_root, category, "test", image_size=b.image_size, channels=b.channels).arrays()
        s = b.score_numpy(arr.images)
        i = next(i for i in np.flatnonzero(arr.labels == 1) if s[i] > b.threshold and arr.masks[i].any())
        return arr.images[i], arr.masks[i]
    return get
