"""Concept counterfactuals (cfx.concepts, python -m cfx concepts).

Generators used: the shipped ``concepts.pt`` of each demo category where it exists and was
trained for the loaded detector weights; otherwise one is trained here with the default settings
(about 1-2 minutes per category on a CPU) into a temporary models folder, once per session. The
distinctness test trains one restart (seed 1, same settings) of the first generator.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cfx.cli import main
from cfx.concepts import ConceptGenerator, concepts_path, edit, fade_mask, load_concepts, prepare_for, target_score
from cfx.training.concepts import train_concepts
from cfx.data.mvtec import GOOD, MVTecDataset
from cfx.errors import ModelMissingError
from cfx.models.bundle import load_bundle, model_exists, save_module

CATEGORIES = ["brick", "tablet", "shortcut", "gravel"]
_GENERATORS: dict[str, tuple] = {}


def _bundle(category: str):
    if not model_exists("demo", category):
        pytest.skip(f"no trained demo model for {category}")
    return load_bundle("demo", category, detector="vae")


def generator_for(category: str, demo_root: Path, tmp_root: Path):
    """(bundle, generator, source): the shipped generator, else one trained now."""
    if category not in _GENERATORS:
        bundle = _bundle(category)
        try:
            gen, source = load_concepts(bundle), "shipped"
        except ModelMissingError:
            gen, _ = train_concepts(bundle, demo_root, category, seed=0, out_dir=tmp_root)
            gen, source = load_concepts(bundle, tmp_root / "demo" / category / "concepts.pt"), "trained in the test"
        _GENERATORS[category] = (bundle, gen, source)
    return _GENERATORS[category]


@pytest.fixture(scope="session")
def tmp_models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("concept-models")


def defects(bundle, root: Path, category: str) -> np.ndarray:
    arr = MVTecDataset(root, category, "test", image_size=bundle.image_size, channels=bundle.channels).arrays()
    return arr.images[np.array([s.defect != GOOD for s in arr.samples])]


@torch.no_grad()
def at_alpha0(gen, bundle, prep, k: int) -> np.ndarray:
    kk = torch.full((len(prep),), k, dtype=torch.long)
    img, _, _, _ = edit(gen, bundle, prep, kk, torch.zeros(len(prep)))
    return img.float().cpu().numpy()


# ---------------------------------------------------------------- pure functions
@pytest.mark.parametrize("alpha, score, expected", [
    (1.0, 5.0, 5.0), (0.0, 5.0, -1.0), (0.5, 5.0, 2.0), (0.25, 1.0, -0.5),
    (1.0, -2.0, -1.0), (0.0, -2.0, -1.0),  # an image already below s_normal: its path is flat at s_normal
])
def test_target_score_maps_alpha_onto_the_score_scale(alpha, score, expected):
    assert target_score(alpha, score, -1.0) == pytest.approx(expected)
    t = target_score(torch.tensor([alpha]), torch.tensor([score]), -1.0)
    assert float(t[0]) == pytest.approx(expected)


@pytest.mark.parametrize("gamma, expected", [
    (0.5, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]),   # the default ramp 0.2..0.4
    (0.0, [0.0, 0.0, 0.0, 0.0, 0.0, 0.5]),   # four times higher: 0.8..1.6
    (1.0, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),   # four times lower: 0.05..0.1
])
def test_fade_mask_scales_its_thresholds_with_gamma(gamma, expected):
    heat = torch.tensor([0.0, 0.1, 0.3, 0.4, 0.8, 1.2]).view(1, 1, 1, 6)
    m = fade_mask(heat, torch.tensor([gamma]), 0.2, 0.4)
    assert m.shape == (1, 1, 1, 6)
    assert m.flatten().tolist() == pytest.approx(expected)


def test_checkpoint_loads_weights_only_and_checks_the_detector(tmp_path, demo_root):
    bundle = _bundle("brick")
    gen = ConceptGenerator(bundle.vae.latent_dim, 3, bundle.channels)
    torch.nn.init.normal_(gen.net[-1].weight, std=0.01)
    p = tmp_path / "concepts.pt"
    save_module(p, gen, {"net": {"latent_dim": 64, "k": 3, "channels": bundle.channels, "hidden": gen.hidden},
                         "model_hash": bundle.content_hash})
    raw = torch.load(p, weights_only=True)
    assert set(raw) == {"config", "state_dict"}
    back = load_concepts(bundle, p)
    assert torch.equal(back.net[-1].weight, gen.net[-1].weight)
    save_module(p, gen, {"net": {"latent_dim": 64, "k": 3, "channels": bundle.channels, "hidden": gen.hidden},
                         "model_hash": "0123456789ab"})
    with pytest.raises(ModelMissingError, match="other detector weights"):
        load_concepts(bundle, p)
    with pytest.raises(ModelMissingError, match="python -m cfx concepts --train"):
        load_concepts(bundle, tmp_path / "absent.pt")


# ---------------------------------------------------------------- CLI errors
def test_cli_missing_generator_exits_2_with_the_command(capsys, demo_root, tmp_path, monkeypatch):
    bundle = _bundle("brick")
    if concepts_path(bundle).exists():
        # point the models dir at a copy without concepts.pt
        import shutil

        src = concepts_path(bundle).parent
        dst = tmp_path / "demo" / "brick"
        dst.mkdir(parents=True)
        for f in ("ae.pt", "vae.pt", "classifier.pt", "card.json"):
            shutil.copy(src / f, dst / f)
        monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path))
    code = main(["concepts", "--category", "brick"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "python -m cfx concepts --train --category brick" in err


@pytest.mark.parametrize("alphas", ["1,x", "1.5", "-0.1,0", ""])
def test_cli_bad_alphas_exit_2(capsys, demo_root, alphas):
    code = main(["concepts", "--category", "brick", f"--alphas={alphas}"])
    _, err = capsys.readouterr()
    assert code == 2 and "--alphas" in err and err.count("\n") == 1


# ---------------------------------------------------------------- trained generators
@pytest.mark.parametrize("category", CATEGORIES)
def test_alpha0_makes_detected_defects_normal_in_every_concept(category, demo_root, tmp_models):
    """At alpha = 0, at least 90% of the demo defects the detector flags become normal for the
    real detector, in every concept."""
    bundle, gen, source = generator_for(category, demo_root, tmp_models)
    prep = prepare_for(gen, bundle, defects(bundle, demo_root, category))
    flagged = (prep.score > bundle.threshold).cpu().numpy()
    assert flagged.sum() >= 10, "too few detected defects to measure"
    rates = []
    for k in range(gen.k):
        s = bundle.score_numpy(at_alpha0(gen, bundle, prep, k))
        rates.append(float((s[flagged] <= bundle.threshold).mean()))
    assert min(rates) >= 0.9, f"{category} ({source}): share made normal per concept {np.round(rates, 3)}"


@pytest.mark.parametrize("category", ["tablet"])
def test_alpha1_is_the_original_and_the_path_descends(category, demo_root, tmp_models):
    """alpha = 1 reproduces the image (and its score); lower alphas score lower."""
    from cfx.concepts import concept_path

    bundle, gen, _ = generator_for(category, demo_root, tmp_models)
    imgs = defects(bundle, demo_root, category)
    s = bundle.score_numpy(imgs)
    image = imgs[int(np.argmax(s))]
    path = concept_path(bundle, image, [1.0, 0.5, 0.0], generator=gen)
    assert path.images.shape == (gen.k, 3, *image.shape)
    assert np.abs(path.images[:, 0] - image).mean() < 0.01
    assert np.allclose(path.scores[:, 0], path.score, rtol=0.1, atol=0.3)
    assert not path.valid[:, 0].any() and path.valid[:, 2].all()
    assert np.all(path.scores[:, 2] < path.scores[:, 1]) and np.all(path.scores[:, 1] < path.scores[:, 0])


def test_concepts_differ_more_than_restarts(demo_root, tmp_models, tmp_path):
    """The K concepts differ measurably: the mean pairwise L1 between concepts (alpha = 0, test
    defects) is above the L1 between two restarts (seeds s and s + 1, same settings) of one
    concept. Concept k starts on the same principal mode of normal variation in every restart, so
    concept k of one restart is compared with concept k of the other."""
    category = "tablet"
    bundle, gen_a, source = generator_for(category, demo_root, tmp_models)
    info = getattr(gen_a, "info", {})
    gen_b, _ = train_concepts(bundle, demo_root, category, seed=int(info.get("seed", 0)) + 1, k=gen_a.k,
                              steps=int(info.get("steps") or 240), batch=int(info.get("batch") or 6),
                              out_dir=tmp_path, save=False)
    prep_a = prepare_for(gen_a, bundle, defects(bundle, demo_root, category))
    prep_b = prepare_for(gen_b, bundle, defects(bundle, demo_root, category))
    a = [at_alpha0(gen_a, bundle, prep_a, k) for k in range(gen_a.k)]
    b = [at_alpha0(gen_b, bundle, prep_b, k) for k in range(gen_b.k)]
    K = gen_a.k

    def l1(u, v):
        return float(np.abs(u - v).mean())

    between = np.mean([l1(g[i], g[j]) for g in (a, b) for i in range(K) for j in range(i + 1, K)])
    restart = np.mean([l1(a[i], b[i]) for i in range(K)])
    assert between > restart, f"between concepts {between:.4f} <= between restarts {restart:.4f} ({source})"


# ---------------------------------------------------------------- CLI output
def test_cli_json_has_the_promised_keys(capsys, demo_root, tmp_models, tmp_path, monkeypatch):
    bundle, gen, source = generator_for("tablet", demo_root, tmp_models)
    if source != "shipped":
        monkeypatch.setenv("CFX_MODELS_DIR", str(_models_with(bundle, gen, tmp_path)))
    out = tmp_path / "out"
    arr = MVTecDataset(demo_root, "tablet", "test", image_size=bundle.image_size, channels=bundle.channels).arrays()
    detected = np.flatnonzero(np.array([s.defect != GOOD for s in arr.samples])
                              & (bundle.score_numpy(arr.images) > bundle.threshold))
    code = main(["concepts", "--category", "tablet", "--image", str(int(detected[0])), "--alphas", "1,0.5,0",
                 "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(res) == {"image", "concepts", "metrics"}
    assert [c["k"] for c in res["concepts"]] == list(range(gen.k))
    for c in res["concepts"]:
        assert [s["alpha"] for s in c["steps"]] == [1.0, 0.5, 0.0]
        for s in c["steps"]:
            assert set(s) == {"alpha", "score_after", "valid", "l1", "edit_area", "locality", "realism", "path"}
            assert Path(s["path"]).is_file()
    assert res["metrics"]["score_before"] > res["metrics"]["threshold"]
    assert res["concepts"][0]["steps"][0]["valid"] is False


def _models_with(bundle, gen, tmp_path: Path) -> Path:
    """A models dir holding the bundle's checkpoints and the given generator."""
    import shutil

    src = concepts_path(bundle).parent
    dst = tmp_path / "models" / "demo" / bundle.category
    dst.mkdir(parents=True)
    for f in ("ae.pt", "vae.pt", "classifier.pt", "card.json"):
        shutil.copy(src / f, dst / f)
    save_module(dst / "concepts.pt", gen, {"net": {"latent_dim": gen.latent_dim, "k": gen.k, "channels": gen.channels,
                                                   "hidden": gen.hidden}, "model_hash": bundle.content_hash,
                                           "info": getattr(gen, "info", {})})
    return tmp_path / "models"
