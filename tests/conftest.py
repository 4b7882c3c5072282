"""Shared fixtures: the demo dataset, the shipped demo models, the real MVTec sample."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A run without standard input (fd 0 closed, as some CI runners start it) leaves sys.__stdin__
# None; pytest's stdin stand-in then fails an assertion when a library asks its encoding at import
# (captum -> IPython), which would fail every Grad-CAM test for a reason that is not cfx's.
if sys.__stdin__ is None:
    sys.__stdin__ = open(os.devnull)  # noqa: SIM115 - lives as long as the process

ROOT = Path(__file__).resolve().parent.parent

# The results and review databases of a test run are its own (a run never reads what an earlier
# run or the app stored under .cfx-cache); tests that need a particular one set these themselves.
_DBS = Path(tempfile.mkdtemp(prefix="cfx-test-dbs-"))
# the app opens data roots on its allow-list only (cfx.station): the tests type folders under the
# temporary folder and the shared real sample
os.environ.setdefault("CFX_ALLOWED_ROOTS", os.pathsep.join([tempfile.gettempdir(), str(ROOT.parent / "shared")]))
os.environ.setdefault("CFX_RESULTS_DB", str(_DBS / "results.sqlite"))
os.environ.setdefault("CFX_REVIEW_DB", str(_DBS / "review.sqlite"))
SHARED_SAMPLE = ROOT.parent / "shared" / "mvtec-sample"


@pytest.fixture(scope="session")
def demo_root() -> Path:
    from cfx.data.demo import ensure_demo

    return ensure_demo()


@pytest.fixture(scope="session")
def mvtec_sample() -> Path:
    if not (SHARED_SAMPLE / "bottle").is_dir():
        pytest.skip("../shared/mvtec-sample is absent")
    return SHARED_SAMPLE


_BUNDLES: dict[tuple[str, str], object] = {}


@pytest.fixture(scope="session")
def demo_bundle(demo_root):
    """(category, detector="vae") -> the shipped demo bundle with its data root set, loaded once
    per session (skips with the command that trains it when its models are missing)."""
    from cfx.errors import ModelMissingError
    from cfx.explainers import set_data_root
    from cfx.models.bundle import load_bundle

    def get(category: str, detector: str = "vae"):
        if (category, detector) not in _BUNDLES:
            try:
                b = load_bundle("demo", category, detector=detector)
            except ModelMissingError as exc:
                pytest.skip(str(exc))
            set_data_root(b, demo_root)
            _BUNDLES[category, detector] = b
        return _BUNDLES[category, detector]
    return get


@pytest.fixture(scope="session")
def brick(demo_root):
    from cfx.models.bundle import load_bundle

    return load_bundle("demo", "brick", detector="vae")


@pytest.fixture(scope="session")
def tablet(demo_root):
    from cfx.models.bundle import load_bundle

    return load_bundle("demo", "tablet", detector="vae")


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A small MVTec-layout folder with odd sizes and modes, a missing mask and a mask by stem."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mvtec"
    cat = root / "widget"
    for i in range(12):
        write_png(cat / "train" / "good" / f"{i:03d}.png", (rng.random((40, 52)) * 255).astype(np.uint8))
    write_png(cat / "test" / "good" / "000.png", (rng.random((40, 52)) * 255).astype(np.uint8))
    write_png(cat / "test" / "scratch" / "000.png", (rng.random((60, 60, 4)) * 255).astype(np.uint8))  # RGBA
    write_png(cat / "test" / "scratch" / "001.png", (rng.random((33, 47)) * 65535).astype(np.uint16))  # 16-bit
    m = np.zeros((60, 60), np.uint8)
    m[10:20, 30:50] = 255
    write_png(cat / "ground_truth" / "scratch" / "000_mask.png", m)
    # 001 has no mask: unknown, not empty
    os.environ.pop("CFX_DATA_ROOT", None)
    return root


@pytest.fixture
def slow_method(monkeypatch):
    """A registered toy method (``zz_slow``) that scores one image at a time for about 10 s unless
    cancelled: the streamed and cancelled runs' subject."""
    import time

    from cfx.explainers.base import REGISTRY, Explainer

    class Slow(Explainer):
        name, kind, label, defaults = "zz_slow", "heatmap", "Slow", {"n": 1000}

        def _explain(self, image, target, seed, params):
            e = self.base(image, target)
            for _ in range(params["n"]):
                self.bundle.score_numpy(image[None], target)
                time.sleep(0.01)
            e.heatmap = np.zeros(image.shape[1:], np.float32)
            return e

    monkeypatch.setitem(REGISTRY, Slow.name, Slow)
    return Slow
