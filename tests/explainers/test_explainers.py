"""The explanation methods (issue 3): one interface, real behaviour.

The matrix runs every method x target x (gray brick, RGB tablet) with small sample counts (shapes,
types, consistency with the real models). Behaviour tests use the demo's defect images: heat
inside the ground-truth mask more often than chance, counterfactuals of detected anomalies valid
on >= 90% (tests/explainers/test_counterfactuals.py), determinism under a seed, CLEAR's step on a linear toy model, Grad-CAM under two
threads, a failing method isolated from the others.

Models: the demo's (``models/demo`` or ``$CFX_MODELS_DIR``); tests that need them skip with the
command that trains them when they are absent.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from cfx.errors import ModelMissingError
from cfx.explainers import REGISTRY, Counterfactual, Explainer, Explanation, explain, register
from cfx.explainers.clear import clear_search, clear_step, logit

METHODS = ("recon", "gradcam", "lime", "shap", "clear", "dice", "gradient", "concepts")
HEATMAP_METHODS = ("recon", "gradcam", "lime", "shap")
CF_METHODS = ("clear", "dice", "gradient", "concepts")
TARGETS = ("score", "classifier")
CATEGORIES = ("brick", "tablet")  # gray texture, RGB object
#: small sample counts: the matrix checks shapes and consistency, not quality
FAST = {"lime": {"num_samples": 60}, "shap": {"max_evals": 80},
        "clear": {"n_samples": 150, "fidelity_dims": 2, "path_steps": 3},
        "dice": {"max_iterations": 3, "total_cfs": 2}, "gradient": {"max_steps": 60}, "concepts": {"path_steps": 3}}
#: enough samples for the behaviour tests, still quick
BEHAVIOUR = {"lime": {"num_samples": 250}, "shap": {"max_evals": 250},
             "clear": {"n_samples": 500, "fidelity_dims": -1, "path_steps": 2}, "dice": {"max_iterations": 15},
             "gradient": {}}
N_HEAT = 16  # images for "heat inside the mask more often than chance" (one-sided binomial test)
N_VALID = 10  # images for "valid on >= 90%"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def load(demo_bundle):
    """category, detector="vae" -> the demo bundle (skips when its models are missing)."""
    return demo_bundle


_TEST: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def detected(load, demo_root):
    """category -> (images, masks, classifier flags) of up to N_HEAT defect images with masks that
    the detector flags, spread over the defect types."""
    from cfx.data.mvtec import MVTecDataset

    def get(category: str):
        if category not in _TEST:
            b = load(category)
            arr = MVTecDataset(demo_root, category, "test", image_size=b.image_size, channels=b.channels).arrays()
            a = b.analyse(arr.images)
            idx = [i for i, s in enumerate(arr.samples) if s.defect != "good" and arr.has_mask[i] and a["anomalous"][i]]
            assert len(idx) >= 5, f"the detector flags only {len(idx)} {category} defects"
            idx = idx[::max(1, len(idx) // N_HEAT)][:N_HEAT]
            _TEST[category] = (arr.images[idx], arr.masks[idx], a["classifier_anomalous"][idx])
        return _TEST[category]
    return get


def first_defect(detected, category: str) -> np.ndarray:
    return detected(category)[0][0]


# ------------------------------------------------------------------ registry
def test_all_methods_registered():
    assert set(METHODS) <= set(REGISTRY)
    for m in METHODS:
        cls = REGISTRY[m]
        assert cls.name == m and cls.label
        assert cls.kind == ("heatmap" if m in HEATMAP_METHODS else "counterfactual")
        json.dumps(cls.defaults)  # parameters are plain JSON values (the app shows and caches them)


def test_unknown_parameter_is_refused(load, detected):
    b = load("brick")
    with pytest.raises(TypeError, match="unknown parameter"):
        REGISTRY["lime"](b).attribute(first_defect(detected, "brick"), "score", num_sample=10)


# ------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", METHODS)
def test_matrix_shapes_and_types(load, detected, method, target, category):
    b = load(category)
    img = first_defect(detected, category)
    e = REGISTRY[method](b).attribute(img, target, seed=0, **FAST.get(method, {}))
    assert isinstance(e, Explanation) and e.ok, e.error
    assert e.method == method and e.target == target and e.seed == 0
    assert e.image.shape == img.shape and e.seconds > 0
    assert e.threshold == pytest.approx(b.threshold_for(target))
    assert e.score_before == pytest.approx(float(b.score_numpy(img[None], target)[0]), rel=1e-3, abs=1e-3)
    json.dumps(e.to_dict())  # numbers only
    if method in HEATMAP_METHODS:
        assert e.heatmap is not None and e.heatmap.shape == img.shape[1:] and e.heatmap.dtype == np.float32
        assert np.isfinite(e.heatmap).all() and np.abs(e.heatmap).max() > 0
        if not e.signed:
            assert e.heatmap.min() >= 0
        assert not e.counterfactuals
        return
    assert e.heatmap is None
    if not e.counterfactuals:
        assert "no counterfactual" in e.info["message"]
        return
    thr = b.threshold_for(target)
    for c in e.counterfactuals:
        assert isinstance(c, Counterfactual)
        assert c.image.shape == img.shape and c.image.dtype == np.float32
        assert 0 <= c.image.min() and c.image.max() <= 1
        real = float(b.score_numpy(c.image[None], target)[0])
        # re-checked with the real model (batch composition moves float32 scores by ~1e-5)
        assert c.score_after == pytest.approx(real, rel=1e-3, abs=1e-3)
        assert c.valid == (c.score_after <= thr)  # valid: the target calls the shown image normal
        assert {"l1", "l2", "edit_area", "locality", "realism"} <= set(c.metrics)
    valid = [c.valid for c in e.counterfactuals]
    assert valid == sorted(valid, reverse=True)  # valid ones first
    best = e.counterfactuals[0]
    if e.score_before > thr:
        assert best.path_images is not None and best.path_images.shape[1:] == img.shape
        assert np.array_equal(best.path_images[0], img)  # the slider starts at the original
        assert best.path_scores.shape == (len(best.path_images),)
        # the slider's scores are the real model's (its ends reuse the original's and the edit's)
        np.testing.assert_allclose(best.path_scores, b.score_numpy(best.path_images, target), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ where the heat is
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("method,target", [("recon", "score"), ("gradcam", "classifier"), ("lime", "score"),
                                           ("shap", "score")])
def test_heat_inside_the_mask_more_often_than_chance(load, detected, method, target, category):
    from scipy.stats import binomtest

    b = load(category)
    images, masks, _ = detected(category)
    wins = 0
    for img, mask in zip(images, masks):
        e = REGISTRY[method](b).attribute(img, target, seed=0, **BEHAVIOUR.get(method, {}))
        wins += int(e.heatmap[mask].mean() > e.heatmap[~mask].mean())
    p = binomtest(wins, len(images), 0.5, alternative="greater").pvalue
    assert p < 0.05, f"{method} ({target}): more heat inside the mask on only {wins}/{len(images)} {category} images"


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("method", METHODS)
def test_deterministic_under_a_seed(load, detected, method):
    b = load("brick")
    img = first_defect(detected, "brick")
    runs = [REGISTRY[method](b).attribute(img, "score", seed=3, **FAST.get(method, {})) for _ in range(2)]
    for a, c in zip(runs, runs[1:]):
        assert a.error is None and c.error is None
        if a.heatmap is not None:
            np.testing.assert_allclose(a.heatmap, c.heatmap, rtol=1e-5, atol=1e-7)
        assert len(a.counterfactuals) == len(c.counterfactuals)
        for x, y in zip(a.counterfactuals, c.counterfactuals):
            np.testing.assert_allclose(x.image, y.image, atol=1e-6)


@pytest.mark.parametrize("method", ["lime", "clear"])
def test_the_seed_matters(load, detected, method):
    b = load("brick")
    img = first_defect(detected, "brick")
    a = REGISTRY[method](b).attribute(img, "score", seed=0, **FAST[method])
    c = REGISTRY[method](b).attribute(img, "score", seed=1, **FAST[method])
    if method == "lime":
        assert not np.allclose(a.heatmap, c.heatmap)
    else:
        assert a.info["n_anomalous_samples"] != c.info["n_anomalous_samples"] or \
            a.info["regression_accuracy"] != c.info["regression_accuracy"]


# ------------------------------------------------------------------ isolation of failures
def test_a_failing_method_does_not_break_the_others(load, detected):
    b = load("brick")
    img = first_defect(detected, "brick")

    class Boom(Explainer):
        name, kind, label = "boom_test", "heatmap", "always fails"

        def _explain(self, image, target, seed, params):
            raise RuntimeError("kaput\nsecond line")

    register(Boom)
    try:
        res = explain(b, img, ["boom_test", "recon", "no_such_method", "gradcam"], "score")
    finally:
        REGISTRY.pop("boom_test", None)
    assert res["boom_test"].error == "RuntimeError: kaput"
    assert "unknown method" in res["no_such_method"].error
    assert res["recon"].ok and res["recon"].heatmap is not None
    assert res["gradcam"].ok and res["gradcam"].heatmap is not None


def test_dice_no_counterfactual_is_a_result_not_an_error(load, detected):
    b = load("brick")
    e = REGISTRY["dice"](b).attribute(first_defect(detected, "brick"), "score", max_evaluations=3)
    assert e.ok and not e.counterfactuals
    assert "no counterfactual found" in e.info["message"]


# ------------------------------------------------------------------ CLEAR's step
def test_clear_step_reaches_the_target_probability_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = int(rng.integers(2, 70))
        w, z0, b = rng.normal(size=d), rng.normal(size=d) * 3, float(rng.normal())
        for p in (0.05, 0.45, 0.5, 0.55, 0.95):
            z = clear_step(z0, w, b, p)
            assert w @ z + b == pytest.approx(logit(p), abs=1e-9)
            t = (z - z0) @ w / (w @ w)
            assert np.allclose(z - z0, t * w, atol=1e-9)  # along the regression's normal
        # the seed's sign error moved the other way: from an anomalous point it went further up
        if w @ z0 + b > logit(0.45):
            t = (logit(0.45) - (w @ z0 + b)) / (w @ w)
            wrong = z0 - t * w
            assert w @ wrong + b > w @ z0 + b


def test_clear_on_a_linear_toy_model_lands_just_past_the_boundary():
    rng = np.random.default_rng(1)
    d = 16
    a = rng.normal(size=d)
    std = np.full(d, 0.5)
    z0 = a / np.linalg.norm(a) * 0.5  # score 0.5 * |a| > 0: anomalous

    def score_latents(Z):  # a linear "decoder + model": score = a.z, anomalous above 0
        return np.asarray(Z) @ a

    s0 = score_latents(z0[None])[0]
    for seed in range(3):
        res = clear_search(score_latents, 0.0, z0, std, want_anomalous=False, n_samples=2000, scale=1.0,
                           margin=0.05, seed=seed, fidelity_dims=0)
        reg = res.regression
        assert reg is not None and not res.step_clamped
        # the first candidate is exactly where the regression's probability is p* = 0.45
        assert reg.proba(res.candidates[0]) == pytest.approx(0.45, abs=1e-9)
        # the step goes along the regression's normal, which recovered the true one, towards normal
        step = res.z_cf - z0
        assert step @ -a / (np.linalg.norm(step) * np.linalg.norm(a)) > 0.99
        # the real model calls the counterfactual normal, just past the boundary, after a short walk
        s_cf = score_latents(res.z_cf[None])[0]
        assert -0.1 * s0 < s_cf < 0 and res.walked <= 3
        # White & Garcez fidelity: the regression's boundary per dimension matches the sweep's
        assert res.fidelity >= 0.75


def test_clear_fidelity_finds_the_boundary_between_exact_scores():
    """With a table of scores that has every side right but not the values (as the edit model's
    table may between its cells' ends), the sweep's boundary comes from the exact scores of the
    points either side of the sign change: 0.7 SD, not the 0.75 that the table's values give."""
    from cfx.explainers.clear import LocalRegression, clear_fidelity

    def exact(Z):
        return np.asarray(Z)[:, 0] - 0.7

    def table(Z):  # the right side, not the right value
        return np.sign(exact(Z))

    reg = LocalRegression(np.array([1.0, 0.0]), -0.7, 1.0)
    z0, std = np.zeros(2), np.ones(2)
    _, rough = clear_fidelity(table, 0.0, z0, std, reg, dims=1)
    fid, detail = clear_fidelity(table, 0.0, z0, std, reg, dims=1, exact_scores=exact)
    assert rough[0]["found_sd"] == pytest.approx(0.75) and detail[0]["found_sd"] == pytest.approx(0.7)
    assert detail[0]["predicted_sd"] == pytest.approx(0.7) and fid == 1.0


# ------------------------------------------------------------------ Grad-CAM under threads
def test_gradcam_two_threads_do_not_disturb_each_other(load, detected):
    """Two threads explaining different images at once, while a third keeps running the shared
    classifier (as a page scoring images would): every map equals its sequential twin."""
    b = load("brick")
    images = detected("brick")[0][:3]
    gc = REGISTRY["gradcam"](b)
    expected = [gc.attribute(img, "classifier").heatmap for img in images]
    assert not np.allclose(expected[0], expected[1])
    results: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def explain_loop(tid: int) -> None:
        try:
            for rep in range(8):
                k = (tid + rep) % len(images)
                results.append((k, REGISTRY["gradcam"](b).attribute(images[k], "classifier").heatmap))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def score_loop() -> None:  # plain forwards through classifier.features, no lock
        try:
            while not stop.is_set():
                b.score_numpy(images, "classifier")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    scorer = threading.Thread(target=score_loop)
    scorer.start()
    threads = [threading.Thread(target=explain_loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    scorer.join()
    assert not errors, errors
    assert len(results) == 16
    for k, heat in results:
        np.testing.assert_allclose(heat, expected[k], rtol=1e-4, atol=1e-6)
    assert not b.classifier.features._forward_hooks  # nothing was ever left on the shared layer
    assert not b.classifier.features._forward_pre_hooks


# ------------------------------------------------------------------ the latent ensemble
def test_latent_ensemble_save_load_and_stale_weights(load, tmp_path):
    from cfx.explainers import gradient as G
    from cfx.explainers._util import train_images
    from cfx.training.ensemble import save_latent_ensemble, train_latent_ensemble

    b = load("brick")
    normals = train_images(b)[:24]
    ens = train_latent_ensemble(b, normals, seed=0, members=2, epochs=40)
    path = save_latent_ensemble(b, ens, path=tmp_path / "ensemble.pt")
    ck = torch.load(path, weights_only=True)
    assert set(ck) == {"config", "state_dict"}
    again = G.load_latent_ensemble(b, path=path)  # an explicit path: read, not kept in b.loaded
    z = torch.randn(5, again.latent_dim)
    assert torch.allclose(again(z), ens(z), atol=1e-6)
    # an ensemble written for other weights is not used
    ck["config"]["content_hash"] = "someone-else"
    torch.save(ck, tmp_path / "stale.pt")
    with pytest.raises(ModelMissingError, match="python -m cfx train"):
        G.load_latent_ensemble(b, path=tmp_path / "stale.pt")


# ------------------------------------------------------------------ the CLI
def _cli(argv, capsys):
    from cfx.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_explain_cli_json_and_files(load, demo_root, tmp_path, capsys):
    from pathlib import Path

    load("brick")
    rc, out, err = _cli(["explain", "--category", "brick", "--method", "recon,gradcam,lime,clear",
                         "--params", '{"lime": {"num_samples": 40}, "clear": {"n_samples": 100, "fidelity_dims": -1}}',
                         "--out", str(tmp_path), "--json", "--report", "none"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["image"].split("/")[0] != "good"  # the first defective test image
    assert {"score", "threshold", "anomalous"} <= set(doc["detector"])
    assert list(doc["methods"]) == ["recon", "gradcam", "lime", "clear"]
    for name in ("recon", "gradcam", "lime"):
        m = doc["methods"][name]
        assert m["error"] is None and m["seconds"] >= 0 and Path(m["heatmap"]).is_file()
        assert m["counterfactuals"] == []
    cl = doc["methods"]["clear"]
    assert cl["heatmap"] is None
    for c in cl["counterfactuals"]:
        assert {"path", "score_after", "valid", "l1", "edit_area", "locality", "realism"} <= set(c)
        assert Path(c["path"]).is_file()
    assert (tmp_path / "original.png").is_file()


def test_explain_cli_failing_method_and_bad_input(load, tmp_path, capsys, monkeypatch):
    load("brick")

    class Boom(Explainer):
        name, kind, label = "boom_cli", "heatmap", "always fails"

        def _explain(self, image, target, seed, params):
            raise ValueError("no luck")

    monkeypatch.setitem(REGISTRY, "boom_cli", Boom)
    rc, out, _ = _cli(["explain", "--category", "brick", "--method", "boom_cli,recon", "--image", "0",
                       "--out", str(tmp_path), "--json", "--report", "none"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["methods"]["boom_cli"]["error"] == "ValueError: no luck"
    assert doc["methods"]["recon"]["error"] is None
    rc, _, err = _cli(["explain", "--category", "brick", "--method", "nope", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "unknown method" in err and "Traceback" not in err
    rc, _, err = _cli(["explain", "--category", "brick", "--image", "9999", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "out of range" in err


# ------------------------------------------------------------------ every method against PatchCore
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_patchcore(load, detected, method, category):
    """Same interface, other detector: the target's score and threshold are PatchCore's, and a
    counterfactual's validity is re-checked on PatchCore."""
    b = load(category, "patchcore")
    img = first_defect(detected, category)
    e = REGISTRY[method](b).attribute(img, "score", seed=0, **FAST.get(method, {}))
    assert e.ok, e.error
    assert e.threshold == pytest.approx(float(b.detector.threshold))
    assert e.score_before == pytest.approx(float(b.score_numpy(img[None])[0]), rel=1e-3, abs=1e-3)
    if method in HEATMAP_METHODS:
        assert e.heatmap is not None and e.heatmap.shape == img.shape[1:] and np.isfinite(e.heatmap).all()
    for c in e.counterfactuals:
        real = float(b.score_numpy(c.image[None])[0])
        assert c.score_after == pytest.approx(real, rel=1e-3, abs=1e-3)
        assert c.valid == (real <= e.threshold)


def test_patchcore_map_and_gradcam_are_hot_on_the_defect(load, detected):
    """The PatchCore map and its Grad-CAM put more heat inside the mask than outside on the
    flagged brick defects."""
    b = load("brick", "patchcore")
    images, masks, _ = detected("brick")
    for method in ("recon", "gradcam"):
        inside = 0
        for img, m in zip(images[:8], masks[:8]):
            h = REGISTRY[method](b).attribute(img, "score").heatmap
            inside += h[m].mean() > 2 * h[~m].mean()
        assert inside >= 6, (method, inside)
