"""Concept counterfactuals (cfx.concepts, the ``concepts`` method, python -m cfx concepts): named
kinds of change that differ, each valid under the explained detector or reported as not
sufficient on its own."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cfx.cli import main
from cfx.concepts import KINDS, abnormal_regions, band_sigma, lowpass, named_concepts
from cfx.data.mvtec import GOOD, MVTecDataset
from cfx.explainers import REGISTRY, set_data_root
from cfx.models.bundle import load_bundle, model_exists

#: defects per demo category in the behaviour test (spread over the defect types)
PER_CATEGORY = 3


# ---------------------------------------------------------------- pure functions
def test_colour_keeps_the_detail_and_structure_keeps_the_shade():
    rng = np.random.default_rng(0)
    x, n = rng.random((2, 3, 64, 64)).astype(np.float32) * 0.5 + 0.25
    heat = np.zeros((64, 64))
    colour, structure, whole = named_concepts(x, n, heat)
    assert [colour.name, structure.name, whole.name] == list(KINDS)
    s = band_sigma(64)
    d = n - x
    # colour: the change is the smooth part of the way to normal (shade and colour); structure:
    # the rest of it (fine detail); together they are the whole way
    assert np.abs((colour.content - x) - lowpass(d, s)).max() < 1e-5
    assert np.abs((structure.content - x) - (d - lowpass(d, s))).max() < 1e-5
    assert np.abs((colour.content - x) + (structure.content - x) - d).max() < 1e-5
    assert np.array_equal(whole.content, n) and all(c.allowed is None for c in (colour, structure, whole))


def test_abnormal_regions_are_the_map_s_separate_hot_blobs_largest_first():
    heat = np.zeros((128, 128))
    heat[10:20, 10:20] = 3.0      # summed 300
    heat[80:100, 80:100] = 2.0    # summed 800: first
    heat[60, 5] = 50.0            # one pixel: under 0.1% of the image, left out
    regions = abnormal_regions(heat)
    assert len(regions) == 2
    assert regions[0][90, 90] and not regions[0][15, 15] and regions[1][15, 15]
    assert not any(r[60, 5] for r in regions)
    assert regions[1][8, 12] and not regions[1][4, 12]  # grown by the margin (3 px at 128)
    assert abnormal_regions(np.zeros((32, 32))) == []
    rng = np.random.default_rng(1)
    assert len(named_concepts(rng.random((1, 128, 128)), rng.random((1, 128, 128)), heat)) == 5


# ---------------------------------------------------------------- on the demo, both detectors
def _defects(root, category, bundle):
    arr = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels).arrays()
    idx = [i for i, s in enumerate(arr.samples) if s.defect != GOOD]
    pick = np.unique(np.linspace(0, len(idx) - 1, PER_CATEGORY).round().astype(int))
    return [(arr.images[idx[i]], None if arr.masks is None else arr.masks[idx[i]]) for i in pick]


@pytest.mark.parametrize("detector", ["patchcore", "vae"])
@pytest.mark.parametrize("category", ["tablet", "brick"])
def test_concepts_differ_and_each_is_valid_or_reported(category, detector, demo_root):
    """At least three concepts per detected defect; each either makes the explained detector call
    the image normal (re-scored here on the image the user sees) or is listed as not sufficient;
    relative diversity (mean pairwise L1 / mean L1 to the original) at least 0.5; AR-Pro's
    properties of every valid one: the map falls in its hot region, not elsewhere."""
    if not model_exists("demo", category):
        pytest.skip(f"no demo models for {category}")
    bundle = load_bundle("demo", category, detector=detector)
    set_data_root(bundle, demo_root)
    checked = 0
    for image, mask in _defects(demo_root, category, bundle):
        exp = REGISTRY["concepts"](bundle).attribute(image, mask=mask)
        assert exp.ok, exp.error
        if exp.score_before <= exp.threshold:
            continue
        checked += 1
        cfs = exp.counterfactuals
        assert len(cfs) >= 3 and {c.concept for c in cfs} >= set(KINDS)
        assert any(c.valid for c in cfs)
        scores = bundle.score_numpy(np.stack([c.image for c in cfs]))
        for c, s in zip(cfs, scores):
            assert c.valid == bool(s <= exp.threshold), (c.concept, s, exp.threshold)
            assert c.valid or c.concept in exp.info.get("not_sufficient", [])
            if c.valid:
                rp = c.repair_properties
                assert rp["localized"] < 0 and rp["non_degradation"] <= 0.01, (c.concept, rp)
        assert exp.info["relative_diversity"] >= 0.5, exp.info
        # every slider starts at the original and ends at its edit, scored
        for c in cfs:
            assert np.array_equal(c.path_images[0], image) and np.allclose(c.path_images[-1], c.image, atol=1e-6)
            assert len(c.path_scores) == len(c.path_images)
    assert checked, "no detected defect to explain"


def test_a_region_concept_edits_only_its_region(demo_root):
    bundle = load_bundle("demo", "tablet", detector="patchcore")
    set_data_root(bundle, demo_root)
    for image, mask in _defects(demo_root, "tablet", bundle):
        exp = REGISTRY["concepts"](bundle).attribute(image, mask=mask)
        heat = bundle.analyse(image[None])["heatmap"][0]
        regions = abnormal_regions(heat)
        for c in exp.counterfactuals:
            if c.concept.startswith("region"):
                r = regions[int(c.concept.split()[1]) - 1]
                assert np.abs(c.image - image).max(0)[~r].max() == 0.0


# ---------------------------------------------------------------- the command
def test_cli_json_has_the_promised_keys(capsys, demo_root, tmp_path):
    code = main(["concepts", "--category", "tablet", "--image", "crack/003.png", "--alphas", "1,0.5,0",
                 "--json", "--out", str(tmp_path / "png")])
    out, _ = capsys.readouterr()
    assert code == 0
    res = json.loads(out)
    assert set(res) == {"image", "concepts", "metrics"}
    assert {"relative_diversity", "not_sufficient", "valid_fraction", "k"} <= set(res["metrics"])
    assert res["metrics"]["k"] >= 3 and res["metrics"]["relative_diversity"] >= 0.5
    for c in res["concepts"]:
        assert [s["alpha"] for s in c["steps"]] == [1.0, 0.5, 0.0]
        assert c["steps"][0]["valid"] is False and c["steps"][0]["l1"] == 0.0
        assert c["steps"][-1]["valid"] == c["valid"]
        assert set(c["repair_properties"]) >= {"overall", "similarity", "localized", "non_degradation"}
        assert all((tmp_path / "png" / s["path"].split("/")[-1]).exists() for s in c["steps"])
    assert res["metrics"]["not_sufficient"] == [c["name"] for c in res["concepts"] if not c["valid"]]


def test_cli_table_says_which_kind_alone_is_not_enough(capsys, demo_root):
    assert main(["concepts", "--category", "tablet", "--image", "scratch/003.png", "--alphas", "0"]) == 0
    out, _ = capsys.readouterr()
    assert "relative diversity" in out and "whole" in out and "colour" in out


@pytest.mark.parametrize("alphas", ["2", "a,b", ""])
def test_cli_bad_alphas_exit_2(capsys, demo_root, alphas):
    code = main(["concepts", "--category", "brick", f"--alphas={alphas}"])
    _, err = capsys.readouterr()
    assert code == 2 and "--alphas" in err and "Traceback" not in err
