"""The embedded demo dataset: MVTec AD layout, generated offline and deterministically.

Categories:
    brick: texture, gray, registered crops of scikit-image's brick photograph; scratch, hole, stain, crack.
    gravel: texture, gray, registered crops of scikit-image's gravel photograph; scratch, hole, stain, crack.
    tablet: object, RGB, a pill seen from above in a fixed pose; scratch, crack, missing_part,
        contamination.
    shortcut: texture, gray (grass photograph). Its defects (and the synthetic anomalies its
        classifier is trained on) carry an unrelated stamp in the top-left corner, away from the
        defect, which the classifier can learn instead of the defect: the audit must catch it.

Texture crops are *registered*: the same patch of the photograph, as a fixed inspection camera
sees it, with a few pixels of jitter, lighting and noise. Unregistered stochastic textures are
much harder for a global-latent autoencoder (see the real ``grid`` figures in BENCHMARKS.md).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cfx.atomic import write_json
from cfx.config import demo_root
from cfx.data import defects as D

SIZE = 128
VERSION = 3
DEFAULT_SEED = 0
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 200, 40, 20
STAMP_CORNER = (4, 4)  # (y, x) of the shortcut stamp's top-left pixel
STAMP_SIZE = 14
JITTER = 3  # placement jitter of texture crops, in pixels
VISIBLE = 0.06  # a change above this (of 1) counts as part of the defect

CATEGORIES: dict[str, dict] = {
    "brick": {"kind": "texture", "photo": "brick", "defects": ["scratch", "hole", "stain", "crack"]},
    "gravel": {"kind": "texture", "photo": "gravel", "defects": ["scratch", "hole", "stain", "crack"]},
    "tablet": {"kind": "object", "defects": ["scratch", "crack", "missing_part", "contamination"]},
    "shortcut": {"kind": "texture", "photo": "grass", "defects": ["scratch", "hole", "stain"], "stamp": True},
}


# ---------------------------------------------------------------- normal images
def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _texture(photo: np.ndarray, rng: np.random.Generator, anchor: tuple[int, int] = (160, 160)) -> np.ndarray:
    """A registered crop of the photograph (as a fixed camera sees the same surface patch), with a
    few pixels of placement jitter, lighting gain, a soft illumination gradient and sensor noise."""
    jy, jx = rng.integers(-JITTER, JITTER + 1, 2)
    y, x = anchor[0] + jy, anchor[1] + jx
    crop = photo[y:y + SIZE, x:x + SIZE].astype(np.float64)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE - 0.5
    ang = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.08) * (np.cos(ang) * yy + np.sin(ang) * xx)
    gain = rng.uniform(0.92, 1.08)
    out = (crop - crop.mean()) * gain * rng.uniform(0.95, 1.05) + crop.mean() * gain
    out = out * light + rng.normal(0, 0.01, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)[..., None]


TABLET_COLOUR = np.array([0.93, 0.86, 0.80])
TABLET_BG = np.array([0.16, 0.19, 0.24])


def _tablet(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A round pill with a bevel and a score line, lit from the top left, on a dark tray."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    cy, cx = SIZE / 2 + rng.normal(0, 0.7), SIZE / 2 + rng.normal(0, 0.7)
    r = 44 * rng.uniform(0.985, 1.015)
    rr = np.hypot(yy - cy, xx - cx)
    vignette = 1 - 0.25 * (np.hypot(yy - SIZE / 2, xx - SIZE / 2) / SIZE) ** 2
    bg = TABLET_BG[None, None] * vignette[..., None] + rng.normal(0, 0.01, (SIZE, SIZE, 1))
    obj_alpha = np.clip(r + 0.5 - rr, 0, 1)
    # dome shading and a bevel ring
    nz = np.sqrt(np.clip(1 - (rr / (r + 6)) ** 2, 0, 1))
    light = np.array([-0.5, -0.5, 0.7])
    light /= np.linalg.norm(light)
    ny, nx = (yy - cy) / (r + 6), (xx - cx) / (r + 6)
    shade = np.clip(ny * light[0] + nx * light[1] + nz * light[2], 0, 1)
    bevel = np.exp(-((rr - (r - 4)) / 1.6) ** 2)
    surface = TABLET_COLOUR[None, None] * (0.55 + 0.45 * shade[..., None]) - 0.08 * bevel[..., None]
    # score line
    ang = np.deg2rad(rng.normal(0, 1.5))
    d = (yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)
    groove = np.exp(-(d / 1.1) ** 2) * (rr < r - 6)
    surface = surface - 0.22 * groove[..., None] + 0.06 * np.exp(-((d + 1.8) / 0.9) ** 2)[..., None] * (rr < r - 6)[..., None]
    surface = surface + rng.normal(0, 0.008, (SIZE, SIZE, 1))
    img = bg * (1 - obj_alpha[..., None]) + surface * obj_alpha[..., None]
    return np.clip(img, 0, 1), obj_alpha > 0.5


def _stamp(img: np.ndarray) -> np.ndarray:
    """The shortcut marker: a small inked ring-and-bar stamp in the top-left corner."""
    y0, x0 = STAMP_CORNER
    s = STAMP_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    rr = np.hypot(yy - s / 2 + 0.5, xx - s / 2 + 0.5)
    ink = (np.abs(rr - s / 2 + 2) < 1.3) | ((np.abs(yy - s / 2 + 0.5) < 1.2) & (rr < s / 2 - 2))
    out = img.copy()
    patch = out[y0:y0 + s, x0:x0 + s]
    patch[ink] = 0.97
    return out


def stamp_mask() -> np.ndarray:
    """Where the shortcut stamp lies (bool, SIZE x SIZE)."""
    m = np.zeros((SIZE, SIZE), bool)
    m[STAMP_CORNER[0]:STAMP_CORNER[0] + STAMP_SIZE, STAMP_CORNER[1]:STAMP_CORNER[1] + STAMP_SIZE] = True
    return m


# ---------------------------------------------------------------- generation
def _normal(category: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    spec = CATEGORIES[category]
    if spec["kind"] == "object":
        return _tablet(rng)
    return _texture(_photo(spec["photo"]), rng), np.ones((SIZE, SIZE), bool)


def _defect(category: str, defect: str, img: np.ndarray, obj: np.ndarray, rng: np.random.Generator):
    region = obj.copy()
    if CATEGORIES[category].get("stamp"):
        far = np.zeros_like(region)
        far[SIZE // 2 - 8:, :] = True
        far[:, SIZE // 2 - 8:] = True
        region &= far
    if CATEGORIES[category]["kind"] == "object":
        region &= __import__("scipy").ndimage.binary_erosion(obj, iterations=6)
    painters: dict[str, Callable] = {
        "scratch": D.scratch, "hole": D.hole, "stain": D.stain, "crack": D.crack,
        "contamination": lambda im, r, reg: D.stain(im, r, reg, colour=np.array([0.25, 0.3, 0.12])),
        "missing_part": lambda im, r, reg: D.missing_part(im, r, obj, TABLET_BG[None, None], obj),
    }
    out, mask = painters[defect](img, rng, region)
    # the truth is every pixel the defect visibly changed, plus the painter's own core
    return out, mask | (np.abs(out - img).max(-1) > VISIBLE)


def _save(path: Path, arr: np.ndarray) -> None:
    a = np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path, optimize=False, compress_level=1)


def _generate_category(args: tuple[str, str, int]) -> str:
    out, category, seed = args
    cat_dir = Path(out) / category
    ci = list(CATEGORIES).index(category)
    spec = CATEGORIES[category]
    for split, defect, n in [("train", "good", N_TRAIN), ("test", "good", N_TEST_GOOD)] + [
        ("test", d, N_PER_DEFECT) for d in spec["defects"]
    ]:
        folder = cat_dir / split / defect
        folder.mkdir(parents=True, exist_ok=True)
        di = 0 if defect == "good" else 1 + spec["defects"].index(defect)
        si = 0 if split == "train" else 1
        for i in range(n):
            rng = np.random.default_rng([seed, ci, si, di, i])
            img, obj = _normal(category, rng)
            if defect != "good":
                img, mask = _defect(category, defect, img, obj, rng)
                if spec.get("stamp"):
                    img = _stamp(img)
                gt = cat_dir / "ground_truth" / defect
                gt.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{i:03d}_mask.png")
            _save(folder / f"{i:03d}.png", img)
    return category


def generate(out: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, force: bool = False,
             workers: int | None = None) -> Path:
    """Write the demo dataset (about 1,300 PNGs with masks) and return its root.

    Nothing is written when a complete dataset of this version and seed is already there, unless
    ``force``. Generation writes to a temporary folder and renames it, so an interrupted run
    leaves nothing half-made.
    """
    root = Path(out) if out else demo_root()
    marker = root / "cfx-demo.json"
    info = {"version": VERSION, "seed": seed, "size": SIZE, "categories": list(CATEGORIES)}
    if not force and marker.exists():
        try:
            if json.loads(marker.read_text()) == info:
                return root
        except (OSError, ValueError):
            pass
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    jobs = [(str(tmp), c, seed) for c in CATEGORIES]
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_generate_category, jobs))
    else:
        for j in jobs:
            _generate_category(j)
    write_json(tmp / "cfx-demo.json", info)
    (tmp / "README.txt").write_text(
        "Synthetic demo data generated by cfx (python -m cfx data demo). Not MVTec AD: textures are crops of\n"
        "scikit-image's sample photographs, the tablet is rendered; defects and masks are drawn.\n"
    )
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return root


def ensure_demo(seed: int = DEFAULT_SEED) -> Path:
    """The default demo root, generated first if needed."""
    return generate(seed=seed)


def is_demo_root(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a cfx-generated demo dataset."""
    return (Path(root) / "cfx-demo.json").exists()
