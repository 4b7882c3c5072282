"""Models: save/load round trip (weights_only), detector behaviour on the demo data."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cfx.data.mvtec import MVTecDataset
from cfx.detectors import choose_threshold
from cfx.errors import ModelMissingError
from cfx.models.bundle import load_bundle, load_checkpoint
from cfx.training import train_category


def test_train_save_load_round_trip(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    card = train_category(tiny_root, "widget", "tiny", epochs=2, progress=False, log=lambda s: None)
    d = tmp_path / "models" / "tiny" / "widget"
    assert {p.name for p in d.iterdir()} >= {"ae.pt", "vae.pt", "classifier.pt", "card.json"}
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary files left
    on_disk = json.loads((d / "card.json").read_text())
    assert on_disk["content_hash"] == card["content_hash"]
    for name, digest in card["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest
    for key in ("seed", "epochs", "data_root", "split", "metrics", "versions", "threshold"):
        assert key in card
    ck = torch.load(d / "vae.pt", weights_only=True)  # plain tensors and numbers only
    assert ck["state_dict"]["vae.enc.0.weight"].dtype == torch.float16
    a = load_bundle("tiny", "widget", device="cpu")
    b = load_bundle("tiny", "widget", device="cpu")
    x = MVTecDataset(tiny_root, "widget", "test", channels=a.channels).arrays().images
    np.testing.assert_array_equal(a.score_numpy(x), b.score_numpy(x))
    assert a.threshold == pytest.approx(card["threshold"])


def test_missing_model_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelMissingError, match="python -m cfx train --category brick"):
        load_bundle("demo", "brick")


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(ModelMissingError):
        load_checkpoint(tmp_path / "nope.pt")


def test_threshold_rules_separate_classes():
    rng = np.random.default_rng(0)
    n, a = rng.normal(0, 1, 200), rng.normal(4, 1, 200)
    for rule in ("f1", "gmean"):
        t = choose_threshold(n, a, rule)
        assert 1.0 < t < 3.0
        assert (a > t).mean() > 0.9 and (n > t).mean() < 0.1


@pytest.mark.parametrize("category", ["brick", "gravel", "tablet", "shortcut"])
def test_shipped_detector_scores_defects_above_normals(demo_root, category):
    b = load_bundle("demo", category, device="cpu", detector="vae")
    arr = MVTecDataset(demo_root, category, "test", channels=b.channels).arrays()
    out = b.analyse(arr.images)
    good, bad = out["score"][arr.labels == 0], out["score"][arr.labels == 1]
    assert np.median(bad) > np.percentile(good, 90)
    assert out["anomalous"][arr.labels == 1].mean() > 0.85
    # the targets on the demo: combined image AUROC >= 0.97, classifier AUROC >= 0.95
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(arr.labels, out["score"]) >= 0.97
    assert roc_auc_score(arr.labels, out["classifier"]) >= 0.95
    # thresholds are chosen on synthetic anomalies, which makes them lenient: up to ~30% false
    # positives on the demo test split (recorded in BENCHMARKS.md)
    assert out["anomalous"][arr.labels == 0].mean() < 0.35
    # the calibrated heatmap keeps normal images cool and is hot inside the defect masks
    heat = out["heatmap"]
    assert np.percentile(heat[arr.labels == 0], 99) < 1.5
    m = arr.masks & arr.has_mask[:, None, None]
    assert heat[m].mean() > 3 * heat[arr.labels == 0].mean()


def test_classifier_pools_the_top_location_logits():
    from cfx.models.nets import Classifier

    torch.manual_seed(0)
    clf = Classifier(1, top_fraction=0.02).eval()
    f = torch.randn(2, 64, 16, 16)
    m = clf.logit_map(f).flatten(1)
    k = round(0.02 * 256)
    expected = m.sort(1, descending=True).values[:, :k].mean(1)
    torch.testing.assert_close(clf.logit_from_features(f), expected)
    clf.top_fraction = 1.0  # average pooling: the linear head on the mean feature
    torch.testing.assert_close(clf.logit_from_features(f), clf.head(f.mean((2, 3))).squeeze(1))


@pytest.mark.parametrize("channels", [1, 3])
def test_cropped_decoding_is_the_crop_of_the_whole_decoding(channels):
    """decode_crop runs each layer on only the cells its output crop needs: the same pixels as
    cropping decode's image, at the image's borders and corners too."""
    from cfx.models.nets import ConvAutoencoder

    torch.manual_seed(0)
    ae = ConvAutoencoder(channels, 16, 64).eval()
    z = torch.randn(3, 16)
    with torch.inference_mode():
        whole = ae.decode(z)
        for rows, cols in [((0, 64), (0, 64)), ((20, 37), (5, 19)), ((0, 1), (63, 64)), ((63, 64), (0, 3)),
                           ((30, 31), (30, 31)), ((0, 64), (40, 41)), ((2, 60), (1, 63))]:  # the last: whole, cut
            crop = ae.decode_crop(z, rows, cols)
            torch.testing.assert_close(crop, whole[:, :, rows[0]:rows[1], cols[0]:cols[1]], rtol=0, atol=1e-6)
        assert ae.decode_crop(z, (5, 5), (0, 64)).shape == (3, channels, 0, 64)  # an empty box: no pixels


def test_auroc_standard_error_matches_hanley_mcneil():
    from cfx.metrics.detection import auroc_standard_error

    # A = 0.9, 50 and 50 cases: Q1 = 0.818, Q2 = 0.853, var = (0.09 + 49 * 0.0082 + 49 * 0.0426) / 2500
    assert auroc_standard_error(0.9, 50, 50) == pytest.approx(0.0321, abs=0.0005)
    assert auroc_standard_error(0.9, 200, 200) < auroc_standard_error(0.9, 50, 50)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_detector_scores_skip_work_but_match_analyse(alpha):
    b = load_bundle("demo", "tablet", device="cpu", detector="vae")
    det = b.detector
    old = det.alpha
    try:
        det.alpha = alpha
        x = b.to_tensor(np.random.default_rng(0).random((6, b.channels, 128, 128), dtype=np.float32))
        with torch.inference_mode():
            full = det.analyse(x)
            for which in ("score", "recon_score", "mahalanobis_score"):
                torch.testing.assert_close(det.scores(x, which), full[which])
    finally:
        det.alpha = old


def test_smoothing_is_the_gaussian_blur_with_its_gradient():
    """The detector's shifted-slice blur equals a replicate-padded separable conv2d, values and gradients."""
    from torch.nn import functional as F

    from cfx.detectors import MultiScoreDetector
    from cfx.models.nets import VAE

    det = MultiScoreDetector(VAE(1, 8, 32), sigma=2.0)
    k = det.kernel
    r = k.numel() // 2

    def reference(e):
        e = F.conv2d(F.pad(e[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(e, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[:, 0]

    e = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out, ref = det.smooth(e), reference(e)
    torch.testing.assert_close(out, ref)
    # the blur keeps mass away from the borders and spreads a spike over the kernel's support
    spike = torch.zeros(1, 32, 40)
    spike[0, 16, 20] = 1.0
    s = det.smooth(spike)[0]
    assert s.sum().item() == pytest.approx(1.0, abs=1e-5) and s[16, 20] == s.max()
    assert (s > 0).sum().item() == k.numel() ** 2
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad((out * g).sum(), e)[0], torch.autograd.grad((ref * g).sum(), e)[0])


@pytest.mark.parametrize("broken", ["patchcore.pt", "vae.pt", "card.json"])
def test_truncated_model_file_is_one_readable_line(broken, tmp_path, monkeypatch, capsys, demo_root):
    """A truncated checkpoint or card: load_bundle raises ModelMissingError naming the file, the CLI
    exits 2 with one line."""
    import shutil

    from cfx import config
    from cfx.cli import main

    src = config.models_dir() / "demo" / "brick"
    dst = tmp_path / "demo" / "brick"
    shutil.copytree(src, dst)
    data = (dst / broken).read_bytes()
    (dst / broken).write_bytes(data[: len(data) // 3])
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelMissingError, match=broken.replace(".", r"\.")):
        load_bundle("demo", "brick", device="cpu")
    assert main(["evaluate", "--category", "brick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfx: ") and err.count("\n") == 1 and broken in err


def test_cards_record_data_roots_that_travel(tmp_path, demo_root):
    """A card names its data by dataset (the demo) or relative to the project, never by this
    machine's absolute path when it can avoid it; the recorded value finds the folder again."""
    from cfx import config
    from cfx.resolve import record_root, recorded_root

    assert record_root(demo_root) == "demo" and recorded_root("demo") == demo_root
    beside = config.PROJECT_ROOT.parent / "shared"
    if beside.is_dir():
        assert record_root(beside) == "../shared" and recorded_root("../shared").resolve() == beside.resolve()
    assert record_root(tmp_path) == str(tmp_path.resolve()) or not tmp_path.resolve().is_relative_to(
        config.PROJECT_ROOT.parent)
    assert recorded_root(str(tmp_path / "gone")) is None
    for card in sorted((config.PROJECT_ROOT / "models" / "demo").glob("*/card.json")):
        assert json.loads(card.read_text())["data_root"] == "demo", card
