"""python -m cfx: bad input exits 2 with one readable line; evaluate --json has the promised keys."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cfx.models.identity import dataset_name

from cfx.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_root(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "--data-root", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_not_mvtec(capsys, tmp_path):
    (tmp_path / "x").mkdir()
    code, _, err = run(capsys, "train", "--data-root", str(tmp_path))
    assert code == 2 and "not an MVTec AD folder" in err


def test_unknown_category(capsys, tiny_root):
    code, _, err = run(capsys, "evaluate", "--data-root", str(tiny_root), "--category", "nope")
    assert code == 2 and "unknown category 'nope'" in err


def test_missing_model(capsys, tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path))
    code, _, err = run(capsys, "evaluate", "--data-root", str(tiny_root), "--category", "widget")
    assert code == 2 and "python -m cfx train" in err and "widget" in err


def test_evaluate_json(capsys, demo_root):
    code, out, _ = run(capsys, "evaluate", "--category", "tablet", "--json", "--detector", "vae")
    assert code == 0
    r = json.loads(out)
    for k in ("image_auroc", "image_auroc_recon", "image_auroc_mahalanobis", "classifier_auroc", "pixel_auroc",
              "f1", "threshold", "n_test", "fpr_good", "tpr_defect"):
        assert k in r
    assert r["detector"] == "vae" and r["n_test"] == 120 and r["image_auroc"] > 0.9


def test_evaluate_defaults_to_patchcore_and_reports_rates(capsys, demo_root):
    code, out, _ = run(capsys, "evaluate", "--category", "tablet", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["detector"] == "patchcore" and "image_auroc_recon" not in r
    assert r["image_auroc"] >= 0.99 and r["fpr_good"] <= 0.10 and r["tpr_defect"] >= 0.9
    assert "held-out real normal" in r["threshold_rule"]


@pytest.fixture
def fresh_models(tmp_path, monkeypatch):
    """Empty models and cache folders under ``tmp_path`` for this test."""
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "models"


def test_train_patchcore_only_then_explain_and_evaluate(capsys, tiny_root, tmp_path, fresh_models):
    """A category fitted with PatchCore alone (no training) is evaluated and explained; methods that
    need the VAE's models say which command trains them."""
    code, _, err = run(capsys, "train", "--data-root", str(tiny_root), "--category", "widget", "--epochs", "0")
    assert code == 2 and "--epochs" in err and err.count("\n") == 1
    code, out, err = run(capsys, "train", "--data-root", str(tiny_root), "--category", "widget",
                         "--detector", "patchcore", "--input-size", "160")
    assert code == 0, err
    d = tmp_path / "models" / dataset_name(tmp_path / "mvtec") / "widget"
    assert (d / "patchcore.pt").exists() and not (d / "vae.pt").exists()
    card = json.loads((d / "card.json").read_text())
    assert card["detectors"]["patchcore"]["config"]["input_size"] == 160
    info = card["detectors"]["patchcore"]
    # 12 training images cannot place a threshold at 1% false alarms: the card and the fit say so
    assert info["target_fpr"] == 0.01 and not info["calibration"]["reached"] and "cannot place" in info["threshold_rule"]
    assert info["expected_fpr"]["upper_95"] > 0.1 and info["expected_tpr"]["defects"] == 12
    assert "warning" in out and "cannot place a threshold" in out
    code, out, err = run(capsys, "evaluate", "--data-root", str(tiny_root), "--category", "widget", "--json")
    assert code == 0, err
    assert json.loads(out)["detector"] == "patchcore"
    code, _, err = run(capsys, "evaluate", "--data-root", str(tiny_root), "--category", "widget", "--detector", "vae")
    assert code == 2 and "--detector vae" in err and err.count("\n") == 1
    code, out, err = run(capsys, "explain", "--data-root", str(tiny_root), "--category", "widget", "--image", "1",
                         "--method", "recon,clear", "--json", "--out", str(tmp_path / "out"))
    assert code == 0, err
    res = json.loads(out)
    methods = res["methods"]
    assert methods["recon"]["error"] is None
    assert "python -m cfx train" in methods["clear"]["error"]


def test_train_at_another_image_size(capsys, tiny_root, tmp_path, fresh_models):
    """``--image-size`` sets the side every model of the category works on (the card's
    ``image_size``); PatchCore's backbone input follows it (1.75 x) unless given."""
    from cfx.models.bundle import load_bundle

    code, _, err = run(capsys, "train", "--data-root", str(tiny_root), "--category", "widget", "--image-size", "100")
    assert code == 2 and "--image-size" in err and err.count("\n") == 1
    code, _, err = run(capsys, "train", "--data-root", str(tiny_root), "--category", "widget",
                       "--detector", "patchcore", "--image-size", "64")
    assert code == 0, err
    card = json.loads((tmp_path / "models" / dataset_name(tmp_path / "mvtec") / "widget" / "card.json").read_text())
    assert card["image_size"] == 64 and card["detectors"]["patchcore"]["config"]["input_size"] == 112
    b = load_bundle(dataset_name(tmp_path / "mvtec"), "widget", detector="patchcore")
    assert b.image_size == 64
    code, out, err = run(capsys, "evaluate", "--data-root", str(tiny_root), "--category", "widget", "--json")
    assert code == 0, err
    assert json.loads(out)["n_test"] == 3
    # the other detector, fitted later without --image-size, keeps the category's size and PatchCore
    code, _, err = run(capsys, "train", "--data-root", str(tiny_root), "--category", "widget", "--detector", "vae",
                       "--epochs", "1", "--base-only", "--quiet")
    assert code == 0, err
    card = json.loads((tmp_path / "models" / dataset_name(tmp_path / "mvtec") / "widget" / "card.json").read_text())
    assert card["image_size"] == 64 and set(card["detectors"]) == {"patchcore", "vae"}


def test_module_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cfx", "evaluate", "--data-root", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("cfx: ")


def test_data_demo_to_folder(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "demo", "--out", str(tmp_path / "d"))
    assert code == 0 and (tmp_path / "d" / "tablet" / "ground_truth").is_dir()


def test_console_command_works_from_any_directory(tmp_path, demo_root):
    """``pip install -r requirements.txt`` installs the ``cfx`` command (pyproject.toml); it runs
    from a folder that is not the repository, on the package's own models."""
    import shutil

    exe = shutil.which("cfx")
    assert exe, "no cfx command: install the package (pip install -r requirements.txt)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([exe, "evaluate", "--category", "brick", "--detector", "patchcore", "--json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["image_auroc"] > 0.9
    bad = subprocess.run([exe, "train", "--epochs", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("cfx: ") and bad.stderr.count("\n") == 1
