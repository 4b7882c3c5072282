"""python -m cfx: bad input exits 2 with one readable line; evaluate --json has the promised keys."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    code, out, _ = run(capsys, "evaluate", "--category", "tablet", "--json")
    assert code == 0
    r = json.loads(out)
    for k in ("image_auroc", "image_auroc_recon", "image_auroc_mahalanobis", "classifier_auroc", "pixel_auroc",
              "f1", "threshold", "n_test"):
        assert k in r
    assert r["n_test"] == 120 and r["image_auroc"] > 0.9


def test_module_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cfx", "evaluate", "--data-root", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("cfx: ")


def test_data_demo_to_folder(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "demo", "--out", str(tmp_path / "d"))
    assert code == 0 and (tmp_path / "d" / "tablet" / "ground_truth").is_dir()
