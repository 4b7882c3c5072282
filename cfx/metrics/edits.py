"""How a counterfactual measures as an edit of the real image.

``locality`` (share of ``|x' - x|`` inside the defect mask dilated by :data:`LOCALITY_DILATION`
px), ``edit_area`` (share of pixels changed by more than :data:`CHANGE_EPS`), ``realism``
(:func:`independent_realism`: PatchCore's nearest-normal-patch distance over the edited region
relative to that of real normal images; about 1 = as normal as a good part; independent of every
generator), ``l1``, ``l2``, and the ``diversity`` of several counterfactuals.

AR-Pro's four properties of a repair (:func:`repair_properties`, after Ji et al., "AR-Pro:
Counterfactual Explanations for Anomaly Repair with Formal Properties", NeurIPS 2024), with the
detector's map ``a(.)`` and a region ``w``: ``overall`` = s(x') (low), ``similarity`` =
RMS of ``(1 - w)(x' - x)`` (low: the image outside the region is kept), ``localized`` =
mean(w (a(x') - a(x))) (negative: the map falls where the anomaly was), ``non_degradation`` =
mean((1 - w)(a(x') - a(x))) (at most about 0: nothing new looks abnormal elsewhere). ``w`` is
the top :data:`REPAIR_TOP` of the detector's map of the original and, where one is known, the
ground-truth mask.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from scipy.ndimage import binary_dilation

from cfx import gpu

#: a pixel counts as changed when it moves by more than this (images in [0, 1])
CHANGE_EPS = 0.05
#: the defect mask is dilated by this many pixels for locality
LOCALITY_DILATION = 4
#: AR-Pro's region: this share of the pixels, the hottest of the detector's map of the original
REPAIR_TOP = 0.10
#: :func:`pixel_realism`: good parts held out as its reference, in its bank, its patches' shift
#: (px) and the most edited pixels it samples
PIXEL_HELDOUT = 4
PIXEL_BANK = 48
PIXEL_SHIFT = 1
PIXEL_SAMPLE = 400
#: the keys of :func:`repair_properties`
REPAIR_KEYS = ("overall", "similarity", "localized", "non_degradation")


def top_region(heat: np.ndarray, share: float = REPAIR_TOP) -> np.ndarray:
    """The ``share`` of the pixels where ``heat`` is highest (bool (H, W); ties included)."""
    h = np.asarray(heat, np.float64)
    k = max(1, int(round(share * h.size)))
    return h >= np.sort(h.ravel())[::-1][k - 1]


def repair_properties(x: np.ndarray, cf: np.ndarray, heat_x: np.ndarray, heat_cf: np.ndarray, score_cf: float,
                      region: np.ndarray) -> dict[str, float]:
    """AR-Pro's four properties of the repair ``cf`` of ``x`` in the region ``region`` (H, W; see
    the module docstring); maps in the detector's calibrated units (1.0 = what a normal part's
    pixels reach at most, the 99.9th percentile)."""
    w = np.asarray(region, np.float64)
    if w.ndim == 3:
        w = w.max(0)
    da = np.asarray(heat_cf, np.float64) - np.asarray(heat_x, np.float64)
    d = (np.asarray(cf, np.float64) - x) * (1.0 - w)[None]
    return {"overall": float(score_cf), "similarity": float(np.sqrt((d ** 2).mean())),
            "localized": float((w * da).mean()), "non_degradation": float(((1.0 - w) * da).mean())}


def defect_mask(mask: np.ndarray | None) -> np.ndarray | None:
    """A ground-truth mask as bool (H, W) (a (1, H, W) or (C, H, W) one: any channel), or None
    when there is none or it marks nothing."""
    if mask is None:
        return None
    m = np.asarray(mask) > 0.5
    m = m.any(0) if m.ndim == 3 else m
    return m if m.any() else None


def changed_pixels(x: np.ndarray, img: np.ndarray) -> np.ndarray:
    """The pixels an edit changed: largest channel change over :data:`CHANGE_EPS` (H, W bool)."""
    return np.abs(np.asarray(img, np.float32) - x).max(0) > CHANGE_EPS


def locality(x: np.ndarray, cf: np.ndarray, mask: np.ndarray | None) -> float:
    """Share of ``|cf - x|`` inside the defect mask dilated by :data:`LOCALITY_DILATION` px (NaN
    without a mask or without any change; 1.0 = the edit stays on the defect)."""
    m = defect_mask(mask)
    if m is None:
        return float("nan")
    d = np.abs(np.asarray(cf, np.float64) - x).mean(0)
    tot = float(d.sum())
    if tot <= 1e-12:
        return float("nan")
    return float(d[binary_dilation(m, iterations=LOCALITY_DILATION)].sum() / tot)


def edit_area(x: np.ndarray, cf: np.ndarray) -> float:
    """Share of pixels whose largest channel change exceeds :data:`CHANGE_EPS`."""
    return float(changed_pixels(x, cf).mean())


@torch.inference_mode()
def independent_realism(bundle, x: np.ndarray, images: np.ndarray) -> np.ndarray:
    """PatchCore's nearest-normal-patch distance averaged over each image's edited pixels (all
    pixels when nothing changed), over the mean distance of held-out real normal pixels.

    About 1 = as normal as a real good part; it uses no generator, so a decoding is not realistic
    by construction. NaN when the category has no fitted PatchCore.
    """
    pc = bundle.detectors.get("patchcore")
    images = np.asarray(images, np.float32)
    if pc is None:
        return np.full(len(images), np.nan)
    ref = float(pc.normal_distance) or float(pc.heat_floor) or 1.0
    out = []
    for i in range(0, len(images), 16):
        m = gpu.padded(lambda t: pc.raw(t)[0], bundle.to_tensor(images[i:i + 16]), 16).float().cpu().numpy()
        out.append(m)
    maps = np.concatenate(out)
    res = []
    for img, m in zip(images, maps):
        w = edited_pixels(x, img)
        w = w if w.any() else np.ones_like(w)
        res.append(float(m[w].mean()) / ref)
    return np.array(res)


def edited_pixels(x: np.ndarray, img: np.ndarray) -> np.ndarray:
    """The pixels an edit changed (by more than :data:`CHANGE_EPS`), grown by 2 px (H, W bool)."""
    w = changed_pixels(x, img)
    return binary_dilation(w, iterations=2) if w.any() else w


def _patches(padded: np.ndarray, pad: int, ys: np.ndarray, xs: np.ndarray, r: int) -> np.ndarray:
    """The (2r+1)² patches centred on the pixels (ys, xs) of images edge-padded by ``pad`` px
    (N, C, H + 2 pad, W + 2 pad): (N, P, C (2r+1)²)."""
    offs = [(dy, dx) for dy in range(pad - r, pad + r + 1) for dx in range(pad - r, pad + r + 1)]
    return np.concatenate([padded[:, :, ys + dy, xs + dx] for dy, dx in offs], axis=1).transpose(0, 2, 1)


def _edge_pad(images: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")


def pixel_realism(normals: np.ndarray, x: np.ndarray, images: np.ndarray, max_pixels: int = PIXEL_SAMPLE,
                  seed: int = 0) -> np.ndarray:
    """Realism measured without any network: each edited pixel's 5x5 patch against the patches of
    real good parts at the same place (shifted by up to :data:`PIXEL_SHIFT` px), the mean
    nearest-patch distance over the edited pixels, over the same measure of held-out good parts
    on the same pixels (about 1 = as normal as a good part; NaN where nothing changed).

    ``normals`` (N, C, H, W): the category's train/good images; the :data:`PIXEL_HELDOUT` nearest
    to ``x`` are held out as the reference, the :data:`PIXEL_BANK` next nearest are the bank."""
    normals = np.asarray(normals, np.float32)
    order = np.argsort(((normals - x[None]) ** 2).reshape(len(normals), -1).mean(1))
    held = normals[order[:PIXEL_HELDOUT]]
    bank = normals[order[PIXEL_HELDOUT:PIXEL_HELDOUT + PIXEL_BANK]]
    if not len(bank):
        return np.full(len(images), np.nan)
    r, rng, out = 2, np.random.default_rng(seed), []
    pad = r + PIXEL_SHIFT
    bank_p, held_p = _edge_pad(bank, pad), _edge_pad(held, pad)
    for img in np.asarray(images, np.float32):
        ys, xs = np.nonzero(edited_pixels(x, img))
        if not len(ys):
            out.append(float("nan"))
            continue
        if len(ys) > max_pixels:
            keep = rng.choice(len(ys), max_pixels, replace=False)
            ys, xs = ys[keep], xs[keep]
        q = _patches(np.concatenate([_edge_pad(img[None], pad), held_p]), pad, ys, xs, r)  # (1 + H, P, D)
        qq = (q ** 2).sum(-1)[:, None]
        best = None
        for dy in range(-PIXEL_SHIFT, PIXEL_SHIFT + 1):
            for dx in range(-PIXEL_SHIFT, PIXEL_SHIFT + 1):
                b = _patches(bank_p, pad, ys + dy, xs + dx, r)  # (B, P, D): the bank shifted by (dy, dx)
                # |q - b|² = |q|² + |b|² - 2 q.b, one matrix product per pixel (no (H, B, P, D) temporary)
                cross = np.einsum("hpd,bpd->hbp", q, b, optimize=True)
                d = ((qq + (b ** 2).sum(-1)[None] - 2 * cross).min(1) / q.shape[-1]).clip(0)
                best = d if best is None else np.minimum(best, d)
        dist = np.sqrt(best).mean(1)
        ref = float(np.median(dist[1:])) if len(dist) > 1 else float("nan")
        out.append(float(dist[0] / ref) if ref > 1e-12 else float("nan"))
    return np.array(out)


def seam_visibility(x: np.ndarray, img: np.ndarray) -> float:
    """How visible an edit's border is: the mean gradient magnitude of the edited image on the
    ring just outside the changed pixels over that of the original on the same ring (1 = no
    seam added; NaN where nothing changed)."""
    w = changed_pixels(x, img)
    if not w.any():
        return float("nan")
    ring = binary_dilation(w, iterations=2) ^ w
    if not ring.any():
        return float("nan")

    def grad(a: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(np.asarray(a, np.float64).mean(0))
        return np.hypot(gy, gx)

    base = float(grad(x)[ring].mean())
    return float(grad(img)[ring].mean() / base) if base > 1e-9 else float("nan")


def edit_metrics(bundle, x: np.ndarray, images: np.ndarray, mask: np.ndarray | None = None) -> list[dict[str, float]]:
    """``l1``, ``l2``, ``edit_area``, ``locality``, ``realism`` (PatchCore's), ``realism_pixels``
    (no network: :func:`pixel_realism`, so a counterfactual valid under PatchCore is not realistic
    by construction) and ``seam`` (:func:`seam_visibility`) of each image (N, C, H, W) as an edit of ``x``."""
    images = np.asarray(images, np.float32)
    real = independent_realism(bundle, x, images)
    from cfx.errors import CfxError
    from cfx.explainers._util import train_images

    try:
        pix = pixel_realism(train_images(bundle), x, images)
    except (CfxError, OSError):  # no train images to compare with: not measured
        pix = np.full(len(images), np.nan)
    out = []
    for img, r, p in zip(images, real, pix):
        d = img - x
        out.append({"l1": float(np.abs(d).mean()), "l2": float(np.sqrt((d ** 2).mean())),
                    "edit_area": edit_area(x, img), "locality": locality(x, img, mask), "realism": float(r),
                    "realism_pixels": float(p), "seam": seam_visibility(x, img)})
    return out


def diversity(images: Iterable[np.ndarray]) -> float:
    """Mean pairwise L1 distance between counterfactual images (0 for fewer than two)."""
    ims = [np.asarray(i, np.float32) for i in images]
    if len(ims) < 2:
        return 0.0
    d = [np.abs(a - b).mean() for i, a in enumerate(ims) for b in ims[i + 1:]]
    return float(np.mean(d))


def edit_diversity(x: np.ndarray, images: Iterable[np.ndarray]) -> dict[str, float]:
    """How different several counterfactuals of ``x`` are, relative to how far they move:
    ``diversity`` (mean pairwise L1), ``mean_l1`` (their mean L1 to ``x``) and
    ``relative_diversity`` = diversity / mean_l1 (0 = one edit shown several times; about 1 = as
    different from each other as from the original; NaN when none changes anything)."""
    ims = [np.asarray(i, np.float32) for i in images]
    div = diversity(ims)
    l1 = float(np.mean([np.abs(i - x).mean() for i in ims])) if ims else 0.0
    return {"diversity": div, "mean_l1": l1, "relative_diversity": div / l1 if l1 > 1e-12 else float("nan")}


#: two edits coincide when they differ by at most this share of their change from the original
COINCIDE = 0.05


def coincide(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two edits of ``x`` are the same edit: their mean absolute difference is at most
    :data:`COINCIDE` of their mean L1 to ``x`` (and both change something)."""
    la, lb = float(np.abs(a - x).mean()), float(np.abs(b - x).mean())
    scale = max(la, lb)
    return scale > 1e-12 and float(np.abs(np.asarray(a, np.float32) - b).mean()) <= COINCIDE * scale


def coinciding(x: np.ndarray, edits: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """The pairs of named edits of ``x`` that are one edit (:func:`coincide`), in the given order."""
    names = list(edits)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if coincide(x, edits[a], edits[b])]
