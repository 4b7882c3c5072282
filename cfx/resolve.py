"""Shared resolution of the data root, category and image for the CLI, the app and benchmarks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfx import config
from cfx.data.imageio import load_image
from cfx.data.mvtec import GOOD, MVTecDataset, Sample, list_categories, validate_root
from cfx.errors import DataError


def resolve_root(data_root: str | os.PathLike | None = None) -> Path:
    """``data_root``, else ``$CFX_DATA_ROOT``, else the embedded demo (generated if needed); validated."""
    if data_root is None:
        data_root = config.env_data_root()
    if data_root is None:
        from cfx.data.demo import ensure_demo

        return ensure_demo()
    return validate_root(data_root)


def record_root(root: str | os.PathLike) -> str:
    """How a model card records its data root, valid on another machine: ``demo`` for the
    embedded demo (by name), a path relative to the project when the data lies below the project's
    parent folder (``../shared/mvtec-sample``), else the absolute path."""
    from cfx.data.demo import is_demo_root

    if is_demo_root(root):
        return config.DEMO_NAME
    path = Path(os.path.abspath(Path(root).expanduser()))  # symlinks kept: ../shared may be a link
    base = config.PROJECT_ROOT
    if path.is_relative_to(base.parent):
        return os.path.relpath(path, base)
    return str(path)


def recorded_root(value: str | None) -> Path | None:
    """The folder a card's ``data_root`` names (:func:`record_root`; None when it is not there)."""
    if not value:
        return None
    if value == config.DEMO_NAME:
        from cfx.data.demo import ensure_demo

        return ensure_demo()
    path = Path(value)
    path = path if path.is_absolute() else config.PROJECT_ROOT / path
    return path if path.is_dir() else None


def resolve_category(root: Path, category: str | None) -> str:
    """``category`` (checked), or the root's first category."""
    cats = list_categories(root)
    if category is None:
        return cats[0]
    if category not in cats:
        raise DataError(f"unknown category {category!r} in {root} (categories: {', '.join(cats)})")
    return category


def categories_for(root: Path, category: str | None) -> list[str]:
    """``all`` -> every category; else one."""
    if category == "all":
        return list_categories(root)
    return [resolve_category(root, category)]


def fitted_categories(root: Path, category: str | None, dataset: str, train_hint: str = "") -> list[str]:
    """:func:`categories_for`, where ``all`` keeps only the categories with models.

    Raises:
        DataError: ``all`` and no category has models (with the command that trains them).
    """
    cats = categories_for(root, category)
    if category != "all":
        return cats
    from cfx.models.bundle import available_models

    fitted = set(available_models(dataset))
    cats = [c for c in cats if c in fitted]
    if not cats:
        raise DataError(f"no category of {root} has models yet: run python -m cfx train --data-root {root} "
                        f"--category all{train_hint}")
    return cats


@dataclass
class Selected:
    """One image to explain: its array, where it came from and its mask (None when unknown)."""

    image: np.ndarray
    name: str
    sample: Sample | None
    mask: np.ndarray | None
    index: int | None


def select_image(root: Path, category: str, image: str | int | None, channels: int, size: int) -> Selected:
    """An image of the category's test split by index or ``<defect>/<file>`` name, or any file path.

    Without ``image``: the first defective test image.
    """
    ds = MVTecDataset(root, category, "test", image_size=size, channels=channels)
    arr = ds.arrays()
    if image is None:
        idx = next((i for i, s in enumerate(arr.samples) if s.defect != GOOD), 0)
    elif isinstance(image, int) or (isinstance(image, str) and image.lstrip("-").isdigit()):
        idx = int(image)
        if not -len(arr) <= idx < len(arr):
            raise DataError(f"image index {idx} out of range: {category} has {len(arr)} test images")
        idx %= len(arr)
    else:
        names = [s.name for s in arr.samples]
        if image in names:
            idx = names.index(image)
        else:
            p = Path(image).expanduser()
            if not p.exists():
                raise DataError(f"image {image} is neither a file nor a test image of {category} (e.g. {names[-1]})")
            return Selected(load_image(p, size, channels), p.name, None, None, None)
    s = arr.samples[idx]
    return Selected(arr.images[idx], s.name, s, arr.masks[idx] if arr.has_mask[idx] else None, idx)
