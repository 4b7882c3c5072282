"""cfx.jobs: a background ``cfx train`` finishes with its models written, or is cancelled with its
process gone; its status says which."""
from __future__ import annotations

import os
import time

from cfx.jobs import TrainJob, estimate_seconds
from cfx.models.identity import dataset_name


def _wait(job, seconds):
    end = time.time() + seconds
    while job.running and time.time() < end:
        time.sleep(0.5)


def test_background_fit_finishes(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    job = TrainJob.start(tiny_root, "widget", "mvtec", detector="patchcore", expected_seconds=30)
    assert job.status()["state"] == "running" and job.status()["eta"] is not None
    _wait(job, 240)
    s = job.status()
    assert s["state"] == "done", (s, job.log.read_text()[-2000:])
    assert (tmp_path / "models" / dataset_name(tmp_path / "mvtec") / "widget" / "patchcore.pt").exists()
    assert "PatchCore fitted" in job.log.read_text()


def test_background_training_can_be_cancelled(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CFX_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CFX_CACHE_DIR", str(tmp_path / "cache"))
    job = TrainJob.start(tiny_root, "widget", "mvtec", detector="vae", epochs=200)
    time.sleep(3)
    assert job.running
    job.cancel()
    s = job.status()
    assert s["state"] == "cancelled" and not job.running
    try:
        os.killpg(job.proc.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive  # the whole process group is gone
    assert not (tmp_path / "models" / dataset_name(tmp_path / "mvtec") / "widget" / "vae.pt").exists()


def test_estimate_grows_with_the_data():
    assert estimate_seconds(200) > estimate_seconds(20) > 0
