"""PatchCore (Roth et al., 2022) on ImageNet EfficientNet-Lite0 features that ship offline.

1. Features: :class:`cfx.models.backbone.Lite0Features` at ``input_size`` (blocks 4 and 10,
   3x3 local aggregation; 152 features on a stride-8 grid, 28x28 at 224 px).
2. Memory bank: every patch feature of the normal training images, reduced by greedy coreset
   selection (anomalib's recipe: k-centre greedy on a random projection to 128 dimensions) to
   ``coreset_fraction`` of the patches, at most ``max_bank`` of them. Stored in float16.
3. Scoring: each patch's distance to its nearest memory-bank feature is the patch map; the map is
   upsampled bilinearly to the input's resolution and smoothed by a Gaussian (``sigma`` px at
   ``input_size``). The image score is the map's maximum times the paper's reweighting
   ``1 - softmax(d)[0]``, where d are the distances of the most anomalous patch to its nearest
   bank feature m* and to m*'s ``num_neighbors`` - 1 nearest bank neighbours (a patch near a
   sparse part of the bank counts more).
4. Normalisation: the raw score is z-normalised on the out-of-fold scores of every training
   image (each fold scored against a bank searched without it; :meth:`PatchCore.fit`).
   The map is calibrated on their map values: 0 at the median, 1.0 at the 99.9th percentile
   ("as hot as the hottest 0.1% of normal pixels"), clipped at 0. (Unlike a reconstruction
   error, a nearest-neighbour distance is far from 0 on normal pixels: on the demo tablet the
   normal median is 0.82 of the 99.9th percentile, so without the offset every pixel of every
   part looks warm.)

Everything is a torch function of the image, so gradients reach the pixels (through the nearest
neighbour, a sub-gradient) and the explainers that need them work.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from cfx.detectors.base import Detector, blur_axis, gaussian_kernel
from cfx.models.backbone import FEATURE_DIM, shared_backbone
from cfx.precision import network

#: projection size of the greedy coreset search (anomalib's sparse random projection plays this role)
PROJECTION_DIM = 128
#: folds of the out-of-fold scores that calibrate a fit (:meth:`PatchCore.fit`)
FOLDS = 5
#: patches compared with the bank at a time (bounds the distance matrix's memory)
QUERY_CHUNK = 8192


def greedy_coreset(features: torch.Tensor, n: int, seed: int = 0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Indices of ``n`` rows of ``features`` chosen by k-centre greedy selection.

    Each step adds the row farthest from those chosen so far (distances on a random Gaussian
    projection to :data:`PROJECTION_DIM` dimensions), so the bank covers the normal features with
    the smallest worst-case gap. Deterministic given ``seed`` on one device. Each step streams
    the whole projection through memory (437 MB for the real screw's 853 k patches at 448 px, where
    8,530 steps took most of a 214 s fit on the CPU), so it runs on ``device`` (default: the
    features'; :meth:`PatchCore.fit` passes its own, the GPU where there is one).
    """
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device) if device is not None else features.device
    feats = features.float().to(dev)
    n = int(min(max(1, n), len(feats)))
    proj = (torch.randn(feats.shape[1], PROJECTION_DIM, generator=g) / math.sqrt(PROJECTION_DIM)).to(dev)
    z = feats @ proj if feats.shape[1] > PROJECTION_DIM else feats
    sq = (z * z).sum(1)
    first = int(torch.randint(len(z), (1,), generator=g))
    chosen = [first]
    d = (sq - 2 * (z @ z[first]) + sq[first]).clamp_min_(0)
    buf = torch.empty_like(d)
    for _ in range(n - 1):
        i = int(torch.argmax(d))
        chosen.append(i)
        torch.mv(z, z[i], out=buf)
        buf.mul_(-2).add_(sq).add_(sq[i])
        torch.minimum(d, buf, out=d)
    return torch.tensor(chosen, dtype=torch.long, device=dev)


def cover(candidates: torch.Tensor, bank: torch.Tensor, radius: float) -> torch.Tensor:
    """Indices of the fewest rows of ``candidates`` (greedily) that, added to ``bank``, bring every
    candidate within ``radius`` of the bank: k-centre greedy started from the bank, stopped at the
    radius (exact distances; a few thousand candidates, a lesson of a few parts)."""
    d = torch.cdist(candidates.float(), bank.float()).min(1).values if len(bank) else \
        torch.full((len(candidates),), float("inf"))
    chosen: list[int] = []
    while len(chosen) < len(candidates):
        i = int(torch.argmax(d))
        if float(d[i]) <= radius:
            break
        chosen.append(i)
        d = torch.minimum(d, torch.linalg.vector_norm(candidates - candidates[i], dim=1))
    return torch.tensor(chosen, dtype=torch.long)


class PatchCore(Detector):
    """PatchCore on EfficientNet-Lite0 (see the module docstring).

    Args:
        input_size: the side images are resized to for the backbone (224 by default: on the demo
            and the bottle sample, 128-px working images upsampled to 224 gave image AUROC 1.00).
        coreset_fraction: share of the training patches kept in the memory bank.
        max_bank: upper bound of the memory bank's size.
        num_neighbors: b of the paper's reweighting (1 disables it).
        sigma: Gaussian smoothing of the map, in pixels at ``input_size``.
        bank_size: the memory bank's size (set by :meth:`fit`; needed to load a checkpoint).
    """

    name: ClassVar[str] = "patchcore"
    label: ClassVar[str] = "PatchCore (EfficientNet-Lite0)"
    differentiable: ClassVar[bool] = True
    parts: ClassVar[dict[str, tuple[str, str]]] = {}
    filename: ClassVar[str] = "patchcore.pt"
    #: on the CPU the trunk's activations at 224 px fit the caches only for a few images: 14.6 ms
    #: per image in batches of 4 against 42 ms in batches of 32 (bench/bench_scoring.py)
    forward_batches: ClassVar[dict[str, int]] = {"cpu": 4}
    #: the trunk's depthwise convolutions keep two threads on one batch waiting for each other:
    #: two one-thread workers scored LIME's and SHAP's batches 1.4x faster (bench/bench_scoring.py)
    parallel_batches: ClassVar[frozenset[str]] = frozenset({"cpu"})

    def __init__(self, input_size: int = 224, coreset_fraction: float = 0.01, max_bank: int = 16384,
                 num_neighbors: int = 9, sigma: float = 4.0, bank_size: int = 1) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.coreset_fraction = float(coreset_fraction)
        self.max_bank = int(max_bank)
        self.num_neighbors = int(num_neighbors)
        self.sigma = float(sigma)
        self.register_buffer("memory_bank", torch.zeros(int(bank_size), FEATURE_DIM))
        self.register_buffer("norm", torch.tensor([0.0, 1.0]))  # raw score mean, sd on held-out normals
        self.register_buffer("heat_scale", torch.tensor(1.0))
        self.register_buffer("heat_floor", torch.tensor(0.0))
        #: the mean map value of held-out normal pixels (the reference of a counterfactual's realism)
        self.register_buffer("normal_distance", torch.tensor(0.0))
        object.__setattr__(self, "_backbone", shared_backbone("cpu"))

    # the frozen trunk is shared by every category and not part of the checkpoint
    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        out = super()._apply(fn, recurse)
        object.__setattr__(self, "_backbone", shared_backbone(self.memory_bank.device))
        return out

    def config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "coreset_fraction": self.coreset_fraction, "max_bank": self.max_bank,
                "num_neighbors": self.num_neighbors, "sigma": self.sigma, "bank_size": int(len(self.memory_bank))}

    def state_to_save(self) -> dict[str, torch.Tensor]:
        sd = super().state_to_save()
        sd["memory_bank"] = sd["memory_bank"].half()  # the bank was rounded to float16 before fitting the rest
        return sd

    # ------------------------------------------------------------------ pieces
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (N, 152, h, w) of images (N, C, H, W) in [0, 1]."""
        with network(self, x):
            f = self._backbone(x.float(), self.input_size)
        return f.float()  # the search and the map in float32

    def _nearest(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance of each row of ``q`` (P, D) to its nearest bank row, and that row's index."""
        ds, ix = [], []
        bank = self.memory_bank
        for i in range(0, len(q), QUERY_CHUNK):
            d = torch.cdist(q[i:i + QUERY_CHUNK], bank)
            v, j = d.min(1)
            ds.append(v)
            ix.append(j)
        return torch.cat(ds), torch.cat(ix)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uncalibrated map (N, H, W) at the input's resolution and the raw image score (N,)."""
        return self.raw_from_features(self.features(x), tuple(x.shape[-2:]))

    def raw_from_features(self, f: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`raw` from backbone features (N, 152, h, w), the map at ``size`` (Grad-CAM's entry)."""
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(n * h * w, d)
        dist, idx = self._nearest(q)
        patch = dist.view(n, h, w)
        out = F.interpolate(patch[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        s = self.sigma * size[-1] / self.input_size
        if s > 0:
            k = gaussian_kernel(s).to(out.device)
            out = blur_axis(blur_axis(out, k, -1), k, -2)
        score = out.flatten(1).amax(1)
        if self.num_neighbors > 1 and len(self.memory_bank) > 1:
            score = score * self._reweight(q.view(n, h * w, d), dist.view(n, h * w), idx.view(n, h * w))
        return out, score

    def _reweight(self, q: torch.Tensor, dist: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The paper's weight 1 - softmax(d)[0] of each image's most anomalous patch (N,)."""
        top = dist.argmax(1)
        rows = torch.arange(len(q), device=q.device)
        m_test = q[rows, top]  # (N, D)
        m_star = self.memory_bank[idx[rows, top]]  # (N, D)
        b = min(self.num_neighbors, len(self.memory_bank))
        with torch.no_grad():
            support = torch.cdist(m_star, self.memory_bank).topk(b, largest=False).indices  # (N, b), m* first
        d = torch.linalg.vector_norm(m_test[:, None, :] - self.memory_bank[support], dim=-1)  # (N, b)
        return 1 - torch.softmax(d, 1)[:, 0]

    # ------------------------------------------------------------------ API
    def analyse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``score`` (N, z-normalised), ``heatmap`` (N, H, W; 0 = the median, 1.0 = the 99.9th
        percentile of held-out normal pixels)."""
        m, s = self.raw(x)
        heat = ((m - self.heat_floor) / (self.heat_scale - self.heat_floor).clamp_min(1e-8)).clamp_min(0)
        return {"score": (s - self.norm[0]) / self.norm[1], "heatmap": heat}

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x)[1] - self.norm[0]) / self.norm[1]

    @torch.no_grad()
    def fit(self, train: torch.Tensor, val_normal: torch.Tensor | None = None, batch: int = 16,
            seed: int = 0, folds: int = FOLDS) -> torch.Tensor:
        """Memory bank from every image of ``train``; score normalisation and heat scale from
        their out-of-fold maps and scores. Returns the out-of-fold raw scores (N,). (``val_normal``,
        the other detectors' held-out normals, is not needed and not used.)

        Out of fold: the images are split into ``folds`` folds; each fold is scored against a bank
        searched anew from the other folds' patches (the same coreset rule), as new good parts
        would be, so every normal image calibrates the detector while the final bank keeps all of
        them. The fold banks stay in this object for :meth:`score_out_of_fold` (not saved).
        Cheaper stand-ins were measured on the real bottle and not kept: one bank without an
        image's own patches scored it too high where it alone covered a region, and the same with
        each removed patch replaced by its nearest patch of another image too low.
        """
        allf, owner = self._patch_features(train, batch)
        self.memory_bank = self._coreset(allf, seed).to(self.memory_bank.device)
        raw, allm = self._calibrate(train, allf, owner, seed, folds, batch)
        sd = float(raw.std()) if len(raw) > 1 else 0.0
        self.norm.copy_(torch.tensor([float(raw.mean()), max(sd, 1e-3 * max(float(raw.mean()), 1e-6))]))
        sample = allm[torch.randperm(len(allm), generator=torch.Generator().manual_seed(0))[:200000]]
        self.heat_scale.copy_(torch.quantile(sample, 0.999).clamp_min(1e-8))
        self.heat_floor.copy_(torch.quantile(sample, 0.5).clamp_max(float(self.heat_scale) * 0.999))
        self.normal_distance.copy_(allm.double().mean().float())
        return raw

    def _patch_features(self, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every patch feature of ``images`` (P, 152) on the CPU and the index of its image (P,)."""
        feats, owner = [], []
        for i in range(0, len(images), batch):
            f = self.features(images[i:i + batch].to(self.memory_bank.device))
            feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
            owner.append(torch.arange(i, i + len(f)).repeat_interleave(f.shape[2] * f.shape[3]))
        return torch.cat(feats), torch.cat(owner)

    def _calibrate(self, train: torch.Tensor, allf: torch.Tensor, owner: torch.Tensor, seed: int, folds: int,
                   batch: int, extra: torch.Tensor | None = None,
                   base_folds: tuple[torch.Tensor, list[torch.Tensor]] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Out-of-fold raw scores (N,) and map values (flattened) of ``train``: each fold scored
        against a bank searched from the other folds' patches (plus ``extra``, bank rows every fold
        shares: the patches :meth:`learn` added). ``base_folds``: the fold of each image and the
        rows of ``allf`` each fold bank holds, as an earlier call chose them (:attr:`base_folds`;
        the searches are most of a fit's time)."""
        if base_folds is None:
            k = max(2, min(int(folds), len(train)))
            fold_of = torch.empty(len(train), dtype=torch.long)
            fold_of[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))] = \
                torch.arange(len(train)) % k
            rows = []
            for f in range(k):
                others = torch.nonzero(fold_of[owner] != f)[:, 0]
                rows.append(others[self._coreset_index(allf[others], seed + 1 + f)])
        else:
            fold_of, rows = base_folds
            k = len(rows)
        object.__setattr__(self, "_base_folds", (fold_of, rows))
        banks = [allf[r].half().float() for r in rows]
        if extra is not None and len(extra):
            banks = [torch.cat([b, extra.cpu()]) for b in banks]
        object.__setattr__(self, "_folds", (fold_of, banks))
        raw = torch.empty(len(train), dtype=torch.float64)
        maps = []
        for f in range(k):
            m, sc = self.score_out_of_fold(train[fold_of == f], f, batch)
            raw[fold_of == f] = sc.double().cpu()
            maps.append(m.flatten().cpu())
        return raw, torch.cat(maps)

    @property
    def base_folds(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The fold of each training image and, per fold bank of the last :meth:`fit` (or
        :meth:`learn`), the indices of its rows among the training patches, before any taught rows
        (not saved with the model; :meth:`learn` takes them back)."""
        return self._base_folds

    @torch.no_grad()
    def learn(self, train: torch.Tensor, taught: torch.Tensor, seed: int = 0, folds: int = FOLDS,
              batch: int = 16, base_size: int | None = None,
              base_folds: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> dict[str, Any]:
        """Add the patches of ``taught`` (good parts the detector called anomalous; an inspector
        decided they are OK) to the memory bank, and score ``train`` out of fold again.

        The bank keeps every row it had and gains the fewest patches of ``taught`` that bring
        each of their patches as close to the bank as the bank brings the training patches (the
        coverage radius: the largest distance of a training patch to its nearest bank row), chosen
        by the coreset's own greedy rule (:func:`cover`). So what made those parts look unusual
        becomes normal, and nothing else moves. Each fold bank (as :meth:`fit` builds them from
        ``train`` and ``seed``) gains the same rows, so the returned out-of-fold scores calibrate
        the extended bank as the fit's calibrated the old one. The score normalisation and the
        map's calibration stay those of the fit: scores of every version are on one scale.

        Args:
            base_size: the bank's size after the fit (rows beyond it were taught earlier and
                join every fold bank too; default: the bank's size now).
            base_folds: the fit's fold banks (:attr:`base_folds` of ``train``), to skip searching them again.

        Returns:
            ``{"added": patches added, "added_per_part", "radius": the coverage radius, "raw":
            out-of-fold raw scores of train (N,), "taught_raw": each taught part's raw score
            against the extended bank without its own patches (as a new part like it would score)}``.
        """
        allf, owner = self._patch_features(train, batch)
        radius = float(self._nearest(allf.to(self.memory_bank.device))[0].max())
        new, new_owner = self._patch_features(taught, batch)
        pick = cover(new, self.memory_bank.cpu(), radius)
        added, added_owner = new[pick].half().float(), new_owner[pick]
        old = self.memory_bank
        loo = torch.empty(len(taught), dtype=torch.float64)
        for j in range(len(taught)):  # each taught part against the bank without its own patches
            self.memory_bank = torch.cat([old, added[added_owner != j].to(old.device)])
            loo[j] = self.raw(taught[j:j + 1].to(old.device))[1].double().cpu()
        self.memory_bank = torch.cat([old, added.to(old.device)])
        extra = self.memory_bank[len(old) if base_size is None else int(base_size):]
        raw, _ = self._calibrate(train, allf, owner, seed, folds, batch, extra=extra, base_folds=base_folds)
        return {"added": int(len(added)), "radius": radius, "raw": raw, "taught_raw": loo,
                "added_per_part": torch.bincount(added_owner, minlength=len(taught)).tolist()}

    def _coreset_index(self, feats: torch.Tensor, seed: int) -> torch.Tensor:
        """The rows of ``feats`` (N, D) a bank keeps: :data:`coreset_fraction` of them (at most
        :data:`max_bank`) by greedy coreset search."""
        n = min(self.max_bank, max(1, int(round(self.coreset_fraction * len(feats)))))
        return greedy_coreset(feats, n, seed, device=self.memory_bank.device).cpu()

    def _coreset(self, feats: torch.Tensor, seed: int) -> torch.Tensor:
        """The bank of ``feats``: its :meth:`_coreset_index` rows, rounded to float16 precision."""
        return feats[self._coreset_index(feats, seed)].half().float()

    @property
    def fold_of(self) -> torch.Tensor:
        """The fold of each training image of the last :meth:`fit` (not saved)."""
        return self._folds[0]

    @torch.no_grad()
    def score_out_of_fold(self, images: torch.Tensor, fold: int, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps and scores of ``images`` against fold ``fold``'s bank, searched without that
        fold's images (after :meth:`fit`, in the same process): how new parts would score."""
        full = self.memory_bank
        self.memory_bank = self._folds[1][fold].to(full.device)
        try:
            maps, scores = [], []
            for i in range(0, len(images), batch):
                m, sc = self.raw(images[i:i + batch].to(full.device))
                maps.append(m)
                scores.append(sc)
        finally:
            self.memory_bank = full
        if not maps:
            return images.new_zeros((0, *images.shape[-2:])), images.new_zeros(0)
        return torch.cat(maps), torch.cat(scores)

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> "PatchCore":
        """As :meth:`Detector.from_checkpoint`; a checkpoint written before ``normal_distance``
        existed takes the normal median (``heat_floor``) for it."""
        sd = ck["state_dict"]
        if "normal_distance" not in sd:
            sd["normal_distance"] = sd["heat_floor"].clone()
        return super().from_checkpoint(ck)
