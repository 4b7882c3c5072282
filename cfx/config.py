"""Paths, environment variables and device selection for cfx.

Environment variables:
    CFX_DATA_ROOT: a real MVTec AD root used when no ``--data-root`` is given.
    CFX_MODELS_DIR: where checkpoints live, the demo's included (default: the shipped demo models in
        ``models/`` beside the package, every other dataset's in the user's data folder,
        :func:`user_models_dir`, so fitting on a real folder never writes into the checkout).
    CFX_CACHE_DIR: where the demo dataset and resized-array caches go (default: ``.cfx-cache/``
        beside the package, ignored by git).
    CFX_ALLOWED_ROOTS: folders (separated by ``os.pathsep``) the app's data-root field may open,
        with everything below them; the demo and ``$CFX_DATA_ROOT`` are always allowed
        (:mod:`cfx.station`).
    CFX_TRUSTED_USER_HEADER: the request header a reverse proxy sets to the signed-in user
        (e.g. ``X-Forwarded-User``); the app then admits only requests that carry it.
    CFX_BATCH_WORKERS: at most this many single-threaded workers score a call's batches on the
        CPU (default: torch's threads; 1 scores them one at a time on torch's threads;
        :mod:`cfx.batches`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 128
#: the working size offered for parts whose defects are lost at IMAGE_SIZE (``cfx train
#: --image-size``; the real screw: image AUROC 0.33 at 128 px, 0.93 at 256; BENCHMARKS.md)
LARGE_IMAGE_SIZE = 256
DEMO_NAME = "demo"


def models_dir(dataset: str | None = None) -> Path:
    """Root of the checkpoints of ``dataset``: ``$CFX_MODELS_DIR`` when set; else
    ``<project>/models`` for the demo (its models ship there; also for ``dataset`` None) and
    :func:`user_models_dir` for any other dataset."""
    env = os.environ.get("CFX_MODELS_DIR")
    if env:
        return Path(env)
    return PROJECT_ROOT / "models" if dataset in (None, DEMO_NAME) else user_models_dir()


def user_models_dir() -> Path:
    """Where models of the user's own data go by default: ``$XDG_DATA_HOME/cfx/models``, else
    ``~/.local/share/cfx/models`` (outside the checkout: a fit from the browser leaves
    ``git status`` clean)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cfx" / "models"


def cache_dir() -> Path:
    """Root of generated data and caches: ``$CFX_CACHE_DIR`` or ``<project>/.cfx-cache``."""
    return Path(os.environ.get("CFX_CACHE_DIR") or PROJECT_ROOT / ".cfx-cache")


def demo_root() -> Path:
    """Where the embedded demo dataset is generated."""
    return cache_dir() / "demo"


def env_data_root() -> Path | None:
    """``$CFX_DATA_ROOT`` if set."""
    value = os.environ.get("CFX_DATA_ROOT")
    return Path(value) if value else None


def allowed_roots_env() -> list[Path]:
    """``$CFX_ALLOWED_ROOTS`` as paths (empty entries ignored)."""
    value = os.environ.get("CFX_ALLOWED_ROOTS") or ""
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def trusted_user_header() -> str | None:
    """``$CFX_TRUSTED_USER_HEADER`` if set."""
    return (os.environ.get("CFX_TRUSTED_USER_HEADER") or "").strip() or None


def device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Images per forward pass when many are scored at once, by device type. On the 2-core CPU a
#: detector score is ~15 % cheaper in batches of 32 than of 128 (the activations of a batch of 32
#: fit the caches; bench/bench_scoring.py); a GPU wants large batches.
FORWARD_BATCH = {"cpu": 32, "cuda": 256}


def forward_batch(dev: torch.device | str) -> int:
    """Images per forward pass on ``dev`` (see :data:`FORWARD_BATCH`)."""
    return FORWARD_BATCH.get(torch.device(dev).type, 64)


def device_label() -> str:
    """A human-readable name of the device the models run on."""
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads)"
