"""The MVTec AD layout: ``root/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``.

One dataset class lists the samples of a category and split, matches masks to images by file stem,
and loads them as fixed-size arrays (cached on disk so that a second load is fast).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cfx.config import IMAGE_SIZE, cache_dir
from cfx.data.imageio import image_to_array, is_gray, load_mask, open_image
from cfx.errors import DataError

log = logging.getLogger(__name__)

OFFICIAL_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    Attributes:
        path: the image file.
        split: ``"train"`` or ``"test"``.
        defect: ``"good"`` or the defect type (the test sub-folder).
        mask_path: the ground-truth mask file, or None. For a defective image, None means the
            mask is unknown (not empty); a good image's mask is empty by definition.
    """

    path: Path
    split: str
    defect: str
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """1 for a defective image, 0 for a good one."""
        return int(self.defect != GOOD)

    @property
    def has_mask(self) -> bool:
        """Whether the pixel truth is known: good images (empty mask) or defects with a mask file."""
        return self.defect == GOOD or self.mask_path is not None

    @property
    def name(self) -> str:
        """``<defect>/<file name>``, unique within a split."""
        return f"{self.defect}/{self.path.name}"


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def is_category_dir(path: Path) -> bool:
    """A folder with ``train/`` or ``test/`` sub-folders."""
    return path.is_dir() and ((path / "train").is_dir() or (path / "test").is_dir())


def validate_root(root: str | os.PathLike) -> Path:
    """Check that ``root`` exists and holds at least one MVTec-style category.

    Raises:
        DataError: with one readable line otherwise.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    if is_category_dir(root):
        raise DataError(
            f"{root} looks like one category, not an MVTec AD root: name its parent folder ({root.parent})"
        )
    if not list_categories(root):
        raise DataError(
            f"{root} is not an MVTec AD folder: expected <root>/<category>/train/good and "
            f"<root>/<category>/test/<defect> (e.g. {root}/bottle/train/good)"
        )
    return root


def list_categories(root: str | os.PathLike) -> list[str]:
    """Category folder names under ``root``, official MVTec order first, then the others sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if is_category_dir(p) and not p.name.startswith(".")]
    official = [c for c in OFFICIAL_CATEGORIES if c in names]
    return official + sorted(n for n in names if n not in OFFICIAL_CATEGORIES)


def list_samples(root: str | os.PathLike, category: str, split: str) -> list[Sample]:
    """All samples of a category and split, sorted by defect type then file name.

    Masks are matched to test images by stem: ``ground_truth/<defect>/<stem>_mask.<ext>`` (or
    ``<stem>.<ext>``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    cat_dir = Path(root).expanduser() / category
    if not is_category_dir(cat_dir):
        known = ", ".join(list_categories(root)) or "none"
        raise DataError(f"unknown category {category!r} in {root} (categories: {known})")
    split_dir = cat_dir / split
    samples: list[Sample] = []
    if not split_dir.is_dir():
        return samples
    for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        masks: dict[str, Path] = {}
        gt_dir = cat_dir / "ground_truth" / defect
        for m in _images_in(gt_dir):
            stem = m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem
            masks[stem] = m
        for img in _images_in(defect_dir):
            mask = masks.get(img.stem) if defect != GOOD else None
            samples.append(Sample(path=img, split=split, defect=defect, mask_path=mask))
    # good first, then defects in alphabetical order
    samples.sort(key=lambda s: (s.defect != GOOD, s.defect, s.path.name))
    return samples


def detect_channels(root: str | os.PathLike, category: str) -> int:
    """1 when the category's images are gray, 3 when they carry colour (checked on a few images)."""
    samples = list_samples(root, category, "train") or list_samples(root, category, "test")
    if not samples:
        raise DataError(f"category {category!r} has no images")
    picks = samples[:: max(1, len(samples) // 4)][:4]
    for s in picks:
        try:
            if not is_gray(open_image(s.path)):
                return 3
        except DataError:
            continue
    return 1


@dataclass
class Arrays:
    """A split loaded as arrays.

    Attributes:
        images: float32 (N, C, H, W) in [0, 1].
        masks: bool (N, H, W); all False where the mask is unknown or the image is good.
        has_mask: bool (N,): whether ``masks[i]`` is the truth.
        labels: int64 (N,): 1 defective, 0 good.
        samples: the samples, in order (images that could not be read are left out).
        skipped: messages for images that could not be read.
        notes: what was done to images that were kept (a mask resized to fit, an unreadable
            mask: the image is kept with its mask unknown).
    """

    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    labels: np.ndarray
    samples: list[Sample]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def defects(self) -> list[str]:
        return [s.defect for s in self.samples]


class MVTecDataset(torch.utils.data.Dataset):
    """One category and split of an MVTec AD-style root.

    Args:
        root: the dataset root (holding category folders).
        category: the category folder name.
        split: ``"train"`` (train/good only) or ``"test"``.
        image_size: side of the square arrays (default 128).
        channels: 1 (gray) or 3 (RGB); None picks from the category's images.
        use_cache: keep resized arrays in an ``.npz`` under the cache dir, keyed by file list,
            modification times, size and channels.

    Raises:
        DataError: unknown category, or (for ``train``) no train/good images.
    """

    def __init__(self, root: str | os.PathLike, category: str, split: str = "train", image_size: int = IMAGE_SIZE,
                 channels: int | None = None, use_cache: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.category = category
        self.split = split
        self.image_size = int(image_size)
        self.samples = list_samples(self.root, category, split)
        if split == "train":
            self.samples = [s for s in self.samples if s.defect == GOOD]
            if not self.samples:
                raise DataError(
                    f"category {category!r} has no train/good images in {self.root / category / 'train' / 'good'}: "
                    "it cannot be trained on (its test images can still be explained with a model trained elsewhere)"
                )
        elif not self.samples:
            raise DataError(f"category {category!r} has no test images in {self.root / category / 'test'}")
        self.channels = int(channels) if channels else detect_channels(self.root, category)
        self.use_cache = use_cache
        self._arrays: Arrays | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        a = self.arrays()
        return {
            "image": torch.from_numpy(a.images[i]),
            "mask": torch.from_numpy(a.masks[i]),
            "has_mask": bool(a.has_mask[i]),
            "label": int(a.labels[i]),
            "defect": a.samples[i].defect,
            "path": str(a.samples[i].path),
        }

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def _cache_key(self) -> str:
        h = hashlib.sha1()
        h.update(f"v2|{self.root.resolve()}|{self.category}|{self.split}|{self.image_size}|{self.channels}".encode())
        for s in self.samples:
            for p in (s.path, s.mask_path):
                if p is None:
                    h.update(b"-")
                    continue
                try:
                    st = p.stat()
                except OSError:  # a broken or looping link: it is reported when the split loads
                    h.update(f"{p.name}|?".encode())
                    continue
                h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def arrays(self) -> Arrays:
        """All samples as arrays (loaded once; cached on disk when ``use_cache``)."""
        if self._arrays is not None:
            return self._arrays
        cache_file = cache_dir() / "arrays" / f"{self.category}-{self.split}-{self._cache_key()}.npz"
        if self.use_cache and cache_file.exists():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    keep = z["keep"]
                    samples = [self.samples[i] for i in keep]
                    skipped = [str(x) for x in z["skipped"]]
                    notes = [str(x) for x in z["notes"]]
                    self._arrays = Arrays(z["images"], z["masks"], z["has_mask"], z["labels"], samples, skipped,
                                          notes)
                    for msg in (*(f"skipping: {m}" for m in skipped), *notes):
                        log.warning("%s", msg)
                    return self._arrays
            except Exception as exc:  # a damaged cache is rebuilt
                log.warning("ignoring damaged cache %s: %s", cache_file, exc)
        self._arrays = self._load()
        if self.use_cache:
            from cfx.atomic import atomic_path

            keep = np.array([self.samples.index(s) for s in self._arrays.samples], dtype=np.int64)
            with atomic_path(cache_file, suffix=".npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, images=self._arrays.images, masks=self._arrays.masks,
                             has_mask=self._arrays.has_mask, labels=self._arrays.labels, keep=keep,
                             skipped=np.array(self._arrays.skipped, dtype=str),
                             notes=np.array(self._arrays.notes, dtype=str))
        return self._arrays

    def _load(self) -> Arrays:
        n, s, c = len(self.samples), self.image_size, self.channels
        images = np.zeros((n, c, s, s), np.float32)
        masks = np.zeros((n, s, s), bool)
        has_mask = np.zeros(n, bool)
        ok: list[int] = []
        skipped: list[str] = []
        notes: list[str] = []
        for i, sample in enumerate(self.samples):
            try:
                img = open_image(sample.path)
                images[i] = image_to_array(img, s, c)
            except DataError as exc:
                log.warning("skipping: %s", exc)
                skipped.append(str(exc))
                continue
            has_mask[i] = sample.has_mask
            if sample.mask_path is not None:
                try:
                    masks[i] = load_mask(sample.mask_path, s, img.size, notes)
                except DataError as exc:  # the image is kept; its pixel truth is unknown
                    notes.append(f"{exc}: {sample.name} is kept without its mask")
                    has_mask[i] = False
            ok.append(i)
        for note in notes:
            log.warning("%s", note)
        idx = np.array(ok, dtype=int)
        labels = np.array([self.samples[i].label for i in ok], dtype=np.int64)
        return Arrays(images[idx], masks[idx], has_mask[idx], labels, [self.samples[i] for i in ok], skipped, notes)
