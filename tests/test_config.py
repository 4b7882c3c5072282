"""cfx.config: where models go. The demo's ship in the checkout; a fit on the user's own data goes
to the user's data folder, so the checkout stays clean."""
from __future__ import annotations

import subprocess

from cfx import config
from cfx.cli import main


def test_models_of_user_data_live_outside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("CFX_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config.models_dir("demo") == config.PROJECT_ROOT / "models"
    assert config.models_dir() == config.PROJECT_ROOT / "models"
    assert config.models_dir("mvtec-sample-3fa2c1d0") == tmp_path / "data" / "cfx" / "models"
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path / "moved"))
    assert config.models_dir("demo") == config.models_dir("mvtec-1") == tmp_path / "moved"


def test_a_fit_on_a_real_folder_leaves_the_checkout_clean(monkeypatch, tmp_path, tiny_root, capsys):
    monkeypatch.delenv("CFX_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    status = ["git", "-C", str(config.PROJECT_ROOT), "status", "--porcelain", "--untracked-files=all", "models"]
    before = subprocess.run(status, capture_output=True, text=True).stdout
    assert main(["train", "--data-root", str(tiny_root), "--category", "widget", "--detector", "patchcore"]) == 0
    capsys.readouterr()
    fitted = list((tmp_path / "data" / "cfx" / "models").glob("*/widget/card.json"))
    assert len(fitted) == 1 and (fitted[0].parent / "patchcore.pt").exists()
    assert subprocess.run(status, capture_output=True, text=True).stdout == before
    assert main(["evaluate", "--data-root", str(tiny_root), "--category", "widget", "--json"]) == 0
