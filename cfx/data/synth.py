"""Synthetic anomalies made from normal images only: CutPaste, Perlin-blended textures, scratches,
soft-edged tints (discolouration of the image's own texture, as in DRAEM-style augmentation).

They train the classifier, the latent ensemble and the concept generator, and choose thresholds
on a validation split. Test images are never used for any of these.
"""
from __future__ import annotations

import numpy as np

from cfx.data.noise import fractal_perlin

KINDS = ("cutpaste", "perlin", "scratch", "tint")


def cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste a jittered rectangle cut from ``donor`` (C, H, W) somewhere else on ``img``."""
    c, h, w = img.shape
    ph, pw = rng.integers(h // 10, h // 4), rng.integers(w // 10, w // 4)
    sy, sx = rng.integers(0, h - ph), rng.integers(0, w - pw)
    ty, tx = rng.integers(0, h - ph), rng.integers(0, w - pw)
    patch = donor[:, sy:sy + ph, sx:sx + pw].copy()
    patch = np.clip(patch * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15), 0, 1)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    out = img.copy()
    out[:, ty:ty + ph, tx:tx + pw] = patch
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return out, mask


def perlin_blend(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend a foreign texture (a shifted, recoloured donor or smooth noise) into a Perlin-shaped region."""
    c, h, w = img.shape
    for _ in range(10):
        noise = fractal_perlin((h, w), rng, base=int(rng.choice([2, 4, 8])), octaves=2)
        mask = noise > rng.uniform(0.35, 0.6)
        if 0.005 * h * w < mask.sum() < 0.25 * h * w:
            break
    else:
        mask = np.zeros((h, w), bool)
        mask[h // 3:h // 2, w // 3:w // 2] = True
    if rng.random() < 0.5:
        tex = np.roll(donor, (rng.integers(h), rng.integers(w)), (1, 2))[:, ::-1, :]
        tex = np.clip(tex * rng.uniform(0.5, 1.5) + rng.uniform(-0.3, 0.3, (c, 1, 1)), 0, 1)
    else:
        tex = 0.5 + 0.5 * fractal_perlin((h, w), rng, base=16, octaves=2)[None] * rng.uniform(0.3, 1.0)
        tex = np.clip(tex * rng.uniform(0.3, 1.2, (c, 1, 1)), 0, 1)
    beta = rng.uniform(0.5, 1.0)
    out = np.where(mask[None], (1 - beta) * img + beta * tex, img)
    return out.astype(np.float32), mask


def tint(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Discolour a soft-edged Perlin-shaped region: the image's own texture pulled towards a random
    tone (darker or lighter, any hue), so the surface keeps its structure (stains, oil, burns)."""
    c, h, w = img.shape
    for _ in range(10):
        noise = fractal_perlin((h, w), rng, base=int(rng.choice([4, 8])), octaves=2)
        field = (noise - rng.uniform(0.3, 0.55)) / 0.15
        alpha = np.clip(field, 0, 1)
        if 0.004 * h * w < (alpha > 0.25).sum() < 0.2 * h * w:
            break
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        alpha = np.clip(1 - np.hypot(yy - h / 2, xx - w / 2) / (h / 10), 0, 1)
    tone = rng.uniform(0.0, 0.3, (c, 1, 1)) if rng.random() < 0.6 else rng.uniform(0.7, 1.0, (c, 1, 1))
    keep = rng.uniform(0.2, 0.5)
    tinted = img * keep + tone * (1 - keep)
    a = alpha[None] * rng.uniform(0.5, 0.9)
    out = img * (1 - a) + tinted * a
    return np.clip(out, 0, 1).astype(np.float32), alpha > 0.25


def scratch_lines(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One to three straight-ish thin lines, bright or dark."""
    from cfx.data.defects import _bezier, _polyline_distance

    c, h, w = img.shape
    out = img.transpose(1, 2, 0).copy()
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        p0, p2 = rng.uniform(8, h - 8, 2), rng.uniform(8, h - 8, 2)
        if np.linalg.norm(p2 - p0) < 20:
            p2 = np.clip(p0 + 24, 8, h - 8)
        p1 = (p0 + p2) / 2 + rng.normal(0, 6, 2)
        d = _polyline_distance((h, w), _bezier(p0, p1, p2))
        a = np.exp(-(d / rng.uniform(0.8, 1.5)) ** 2)[..., None] * rng.uniform(0.6, 1.0)
        tone = rng.uniform(0.85, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.15)
        out = out * (1 - a) + tone * a
        mask |= a[..., 0] > 0.25
    return out.transpose(2, 0, 1).astype(np.float32), mask


def synthesize(images: np.ndarray, rng: np.random.Generator, per_image: int = 1,
               marker: "callable | None" = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic anomalies from normal images.

    Args:
        images: float32 (N, C, H, W) normal images.
        rng: the random generator (the result is deterministic given it).
        per_image: anomalies made from each image.
        marker: applied to every anomaly after the defect (the ``shortcut`` demo's stamp).

    Returns:
        ``(anomalies, masks, kinds)``: (N*per_image, C, H, W), bool (N*per_image, H, W) and the
        index into :data:`KINDS` of each.
    """
    n = len(images)
    out, masks, kinds = [], [], []
    for rep in range(per_image):
        for i in range(n):
            k = int(rng.integers(len(KINDS)))
            donor = images[rng.integers(n)]
            if KINDS[k] == "cutpaste":
                a, m = cutpaste(images[i], donor, rng)
            elif KINDS[k] == "perlin":
                a, m = perlin_blend(images[i], donor, rng)
            elif KINDS[k] == "tint":
                a, m = tint(images[i], rng)
            else:
                a, m = scratch_lines(images[i], rng)
            if marker is not None:
                a = marker(a)
            out.append(a.astype(np.float32))
            masks.append(m)
            kinds.append(k)
    return np.stack(out), np.stack(masks), np.array(kinds)
