"""Physically plausible defects drawn on float images (H, W, C) in [0, 1], each with its exact mask.

Each painter takes the image, a random generator and a region (a bool array of allowed centre
positions) and returns ``(image, mask)``. The mask is the set of pixels whose value the defect
changed visibly (alpha above 0.25), so the truth matches what is drawn.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from cfx.data.noise import fractal_perlin


def _pick_centre(region: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    h, w = region.shape
    inner = np.zeros_like(region)
    inner[margin:h - margin, margin:w - margin] = region[margin:h - margin, margin:w - margin]
    ys, xs = np.nonzero(inner if inner.any() else region)
    k = rng.integers(len(ys))
    return int(ys[k]), int(xs[k])


def _bezier(p0, p1, p2, n: int = 200) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _polyline_distance(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Distance of every pixel to a dense polyline."""
    line = np.zeros(shape, bool)
    ij = np.round(pts).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < shape[0]) & (ij[:, 1] >= 0) & (ij[:, 1] < shape[1])
    line[ij[ok, 0], ij[ok, 1]] = True
    if not line.any():
        return np.full(shape, np.inf)
    return ndimage.distance_transform_edt(~line)


def _blend(img: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.clip(alpha, 0, 1)[..., None]
    out = img * (1 - a) + target * a
    return np.clip(out, 0, 1), alpha > 0.25


def scratch(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved scratch, lighter or darker than the surface, with soft edges and a varying depth."""
    h, w, _ = img.shape
    cy, cx = _pick_centre(region, rng, 16)
    length = rng.uniform(22, 48)
    ang = rng.uniform(0, np.pi)
    d = np.array([np.sin(ang), np.cos(ang)]) * length / 2
    c = np.array([cy, cx], float)
    bend = rng.normal(0, length * 0.2, 2)
    pts = _bezier(c - d, c + bend, c + d)
    dist = _polyline_distance((h, w), pts)
    width = rng.uniform(0.9, 1.6)
    alpha = np.exp(-(dist / width) ** 2) * rng.uniform(0.8, 1.0)
    # depth varies along the scratch: a noisy modulation
    alpha *= 0.75 + 0.25 * fractal_perlin((h, w), rng, base=4, octaves=1)
    bright = rng.random() < 0.6
    target = np.full_like(img, 0.95 if bright else 0.08)
    return _blend(img, alpha, target)


def hole(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hole or dent: an irregular dark pit with a lit rim on one side."""
    h, w, _ = img.shape
    cy, cx = _pick_centre(region, rng, 14)
    r = rng.uniform(4.0, 8.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.18 * np.sin(3 * theta + rng.uniform(0, 6.28)) + 0.1 * np.sin(5 * theta + rng.uniform(0, 6.28))
    rr = np.hypot(yy - cy, xx - cx) / (r * wobble)
    inside = np.clip((1.15 - rr) / 0.3, 0, 1)
    depth = np.clip(1 - rr, 0, 1) ** 0.5
    out = img * (1 - inside[..., None]) + (0.06 + 0.1 * (1 - depth))[..., None] * inside[..., None] * np.ones_like(img)
    light = rng.uniform(0, 2 * np.pi)
    rim = np.exp(-((rr - 1.12) / 0.12) ** 2) * np.clip(np.cos(theta - light), 0, 1)
    out = out + 0.45 * rim[..., None]
    mask = (inside > 0.25) | (rim > 0.25)
    return np.clip(out, 0, 1), mask


def stain(img: np.ndarray, rng: np.random.Generator, region: np.ndarray, colour: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A stain or contamination: an irregular blot that tints the surface but keeps its texture."""
    h, w, c = img.shape
    cy, cx = _pick_centre(region, rng, 16)
    r = rng.uniform(7, 13)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    noise = fractal_perlin((h, w), rng, base=8, octaves=2)
    field = 1 - np.hypot(yy - cy, xx - cx) / r + 0.45 * noise
    alpha = np.clip(field / 0.25, 0, 1) * rng.uniform(0.65, 0.85)
    if colour is None:
        colour = np.array([0.35, 0.22, 0.1])[:c] if c == 3 else np.array([0.12])
    tinted = img * 0.35 + colour * 0.65
    out = img * (1 - alpha[..., None]) + tinted * alpha[..., None]
    return np.clip(out, 0, 1), alpha > 0.25


def crack(img: np.ndarray, rng: np.random.Generator, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A jagged dark crack with one or two branches."""
    h, w, _ = img.shape
    cy, cx = _pick_centre(region, rng, 18)
    pts = []
    for branch in range(rng.integers(2, 4)):
        y, x = float(cy), float(cx)
        ang = rng.uniform(0, 2 * np.pi)
        steps = rng.integers(12, 22)
        for _ in range(steps):
            ang += rng.normal(0, 0.45)
            y += 1.3 * np.sin(ang)
            x += 1.3 * np.cos(ang)
            pts.append((y, x))
            # densify
            pts.append((y - 0.65 * np.sin(ang), x - 0.65 * np.cos(ang)))
    dist = _polyline_distance((h, w), np.array(pts))
    alpha = np.exp(-(dist / rng.uniform(0.8, 1.2)) ** 2)
    target = np.full_like(img, 0.03)
    return _blend(img, alpha * 0.95, target)


def missing_part(img: np.ndarray, rng: np.random.Generator, region: np.ndarray, background: np.ndarray,
                 obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A chip broken off an object's edge: the object's pixels in a bite become background."""
    h, w, _ = img.shape
    edge = obj & ~ndimage.binary_erosion(obj, iterations=2)
    ys, xs = np.nonzero(edge & region) if (edge & region).any() else np.nonzero(edge)
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    r = rng.uniform(6, 11)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    theta = np.arctan2(yy - cy, xx - cx)
    rr = np.hypot(yy - cy, xx - cx) / (r * (1 + 0.2 * np.sin(4 * theta + rng.uniform(0, 6.28))))
    bite = np.clip((1.0 - rr) / 0.15, 0, 1) * obj
    out = img * (1 - bite[..., None]) + background * bite[..., None]
    # a darker fracture edge where the bite meets the object
    rim = (np.abs(rr - 1.0) < 0.12) & obj & (bite < 0.5)
    out[rim] *= 0.7
    return np.clip(out, 0, 1), (bite > 0.25) | rim
