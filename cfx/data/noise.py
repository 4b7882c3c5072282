"""Perlin noise and smooth random shapes (numpy, deterministic from a Generator)."""
from __future__ import annotations

import numpy as np


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise in about [-1, 1].

    Args:
        shape: output (H, W); each must be a multiple of the matching ``res``.
        res: number of lattice periods along each axis.
        rng: the random generator.
    """
    h, w = shape
    ry, rx = res
    gy, gx = -(-h // ry) * ry, -(-w // rx) * rx  # round up to multiples
    delta = (ry / gy, rx / gx)
    d = (gy // ry, gx // rx)
    grid = np.mgrid[0:ry:delta[0], 0:rx:delta[1]].transpose(1, 2, 0) % 1
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.dstack((np.cos(angles), np.sin(angles)))
    tile = lambda s0, e0, s1, e1: np.repeat(np.repeat(grads[s0:e0, s1:e1], d[0], 0), d[1], 1)  # noqa: E731
    g00, g10, g01, g11 = tile(0, -1, 0, -1), tile(1, None, 0, -1), tile(0, -1, 1, None), tile(1, None, 1, None)
    dot = lambda g, oy, ox: (np.dstack((grid[..., 0] + oy, grid[..., 1] + ox)) * g).sum(2)  # noqa: E731
    n00, n10, n01, n11 = dot(g00, 0, 0), dot(g10, -1, 0), dot(g01, 0, -1), dot(g11, -1, -1)
    t = 6 * grid**5 - 15 * grid**4 + 10 * grid**3
    n0 = n00 * (1 - t[..., 0]) + t[..., 0] * n10
    n1 = n01 * (1 - t[..., 0]) + t[..., 0] * n11
    out = np.sqrt(2) * ((1 - t[..., 1]) * n0 + t[..., 1] * n1)
    return out[:h, :w]


def fractal_perlin(shape: tuple[int, int], rng: np.random.Generator, base: int = 2, octaves: int = 3) -> np.ndarray:
    """Sum of Perlin octaves, normalised to [-1, 1]."""
    out = np.zeros(shape)
    amp = 1.0
    for o in range(octaves):
        r = base * 2**o
        out += amp * perlin(shape, (r, r), rng)
        amp *= 0.5
    m = np.abs(out).max()
    return out / m if m > 0 else out
