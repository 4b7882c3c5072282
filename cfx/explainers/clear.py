"""CLEAR in the autoencoder's latent space (after White & Garcez, 2019).

1. Encode the image: z0 = AE.encode(x).
2. Sample ``n_samples`` latents from a Gaussian around z0, scaled per dimension by the spread of
   the training latents (``bundle.ae_latent_std``) times a radius drawn uniformly from
   [0, 2 * scale], so the neighbourhood reaches both sides of the boundary; decode them with the
   AE and score them with the real model, in batches. With ``early_stop`` (the default) the
   samples are scored 100 at a time and sampling stops once the regression of step 3, refitted
   after each 100, changes the same top cells of an 8 x 8 grid (:data:`CELLS`) with its step over
   the last quarter of the samples.
3. Fit a logistic regression (scikit-learn, inverse regularisation ``C``) of "anomalous" (the
   target above its threshold) on the latents, each sample weighted by a Gaussian kernel of its
   distance to z0 (classes balanced).
4. The counterfactual is the smallest step along the regression's normal w that brings the
   regression's probability to p* (just past the boundary, on the other side from the original):

       z' = z0 + (logit(p*) - (w.z0 + b)) / ||w||^2 * w     so that  w.z' + b = logit(p*)  exactly.

   (The seed's code stepped the other way.) If the regression already puts z0 past p*, the step
   is zero. The decoded z' is checked with the real model; if it did not cross, the search walks
   further along the same line, ``walk_logit`` logits at a time, at most ``max_walk`` steps.
5. Fidelity as White & Garcez define it: for each latent dimension (the ``fidelity_dims`` with the
   largest |w_j| * sd_j; 0 = all), the boundary value the regression predicts for that dimension
   alone against the one found by sweeping that dimension through the decoder and the real model
   (+-``fidelity_range`` SD, linear interpolation between grid points); fidelity is the share of
   dimensions where the two lie within 0.25 SD (or where neither lies within the sweep).

What the user sees is a local edit of the real image (:mod:`cfx.explainers.counterfactual`): the
real model scores every decoding as an edit of the original (the decoding's change from dec(z0)
sets the region, real normal content fills it), so the search sees a boundary under any detector,
and the decoded counterfactual then becomes the smallest valid edit of the original. Such an edit
is a function of one number, its strength, so the samples' scores are read from the edit model's
table of exact scores by strength (``strength_cells``; the fidelity sweep's points either side of
a sign change are scored exactly); measured on demo and real defects, every sample kept its side
of the threshold, for a quarter of the evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from cfx.explainers._util import EarlyStop
from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext
from cfx.explainers.edit import STRENGTH_CELLS

#: two boundary values agree when they lie within this many training SDs (White & Garcez)
FIDELITY_TOLERANCE = 0.25
#: the early stop compares the top cells of a CELLS x CELLS grid of the change a step makes
CELLS = 8


def logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def clear_step(z0: np.ndarray, w: np.ndarray, b: float, p_target: float) -> np.ndarray:
    """The point on the line z0 + t * w where the logistic model sigmoid(w.z + b) equals ``p_target``.

    Args:
        z0: the start (D,); w, b: the regression's weights (D,) and intercept.
        p_target: the wanted probability in (0, 1).

    Returns:
        z' with ``w.z' + b == logit(p_target)`` (up to rounding).
    """
    w = np.asarray(w, np.float64)
    z0 = np.asarray(z0, np.float64)
    t = (logit(p_target) - (w @ z0 + b)) / (w @ w)
    return z0 + t * w


@dataclass
class LocalRegression:
    """A logistic regression in latent coordinates: p(anomalous | z) = sigmoid(w.z + b)."""

    w: np.ndarray
    b: float
    accuracy: float  # kernel-weighted accuracy on the neighbourhood

    def logit(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, np.float64) @ self.w + self.b

    def proba(self, z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(z)))


def fit_local_regression(Z: np.ndarray, y: np.ndarray, z0: np.ndarray, std: np.ndarray, kernel_width: float,
                         C: float = 10.0) -> LocalRegression:
    """Kernel-weighted, class-balanced logistic regression of ``y`` on latents ``Z`` (fitted in
    standardised coordinates around z0, returned in latent coordinates)."""
    from sklearn.linear_model import LogisticRegression

    U = (np.asarray(Z, np.float64) - z0) / std
    d2 = (U**2).mean(1)
    sw = np.exp(-d2 / max(kernel_width, 1e-6) ** 2)
    y = np.asarray(y, int)
    # balance the two classes under the kernel weights
    for c in (0, 1):
        tot = sw[y == c].sum()
        if tot > 0:
            sw[y == c] *= 0.5 * sw.sum() / tot
    sw *= len(sw) / sw.sum()  # mean weight 1: C means what it means for an unweighted fit
    lr = LogisticRegression(C=C, max_iter=2000)
    lr.fit(U, y, sample_weight=sw)
    wu, bu = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
    w = wu / std
    b = bu - float(w @ z0)
    acc = float((sw * (lr.predict(U) == y)).sum() / sw.sum())
    return LocalRegression(w, b, acc)


@dataclass
class ClearResult:
    """What the CLEAR search found (latents in the AE's space)."""

    z0: np.ndarray
    regression: LocalRegression | None
    p_target: float
    z_cf: np.ndarray | None  # the first candidate that crossed (None: none did)
    score_cf: float | None
    walked: int  # extra steps beyond z' (0: z' itself crossed)
    step_clamped: bool
    candidates: np.ndarray  # (K, D) the line's candidates, z' first
    candidate_scores: np.ndarray
    n_anomalous: int
    n_samples: int
    fidelity: float | None = None
    fidelity_detail: list[dict[str, Any]] = field(default_factory=list)


def clear_search(score_latents: Callable[[np.ndarray], np.ndarray], threshold: float, z0: np.ndarray,
                 std: np.ndarray, want_anomalous: bool, n_samples: int = 2000, scale: float = 1.0,
                 margin: float = 0.05, max_walk: int = 12, walk_logit: float = 1.0, seed: int = 0,
                 fidelity_dims: int = 8, fidelity_range: float = 3.0, fidelity_step: float = 0.5,
                 C: float = 10.0, early_stop: EarlyStop | None = None,
                 regions: Callable[[np.ndarray], frozenset[int]] | None = None,
                 exact_scores: Callable[[np.ndarray], np.ndarray] | None = None) -> ClearResult:
    """CLEAR on any latent model (see the module docstring).

    Args:
        score_latents: latents (N, D) -> the real model's scores (N,) of their decodings.
        threshold: a score above it is "anomalous".
        z0, std: the instance's latent and the per-dimension scale (D,).
        want_anomalous: the side the counterfactual must reach (False: normal).
        n_samples, scale, margin, max_walk, walk_logit, seed, C: see :class:`Clear`.
        fidelity_dims, fidelity_range, fidelity_step: the fidelity sweep (``fidelity_dims=-1``: skip).
        early_stop: score the samples ``early_stop.check_every`` at a time and stop sampling once
            the top regions of the regression's step have not changed over the last quarter of the
            samples.
        regions: the top regions of a step's end z' (default: the latent dimensions with the
            largest |z'_j - z0_j| / std_j, ``early_stop.top_k`` of them).
        exact_scores: the real model's exact scores, where ``score_latents`` may read some from a
            table (:class:`~cfx.explainers.edit_model.EditModel`): the fidelity sweep's points next
            to a sign change are scored with it.

    Returns:
        A :class:`ClearResult`.
    """
    rng = np.random.default_rng(seed)
    z0 = np.asarray(z0, np.float64)
    std = np.maximum(np.asarray(std, np.float64), 1e-8)
    d = len(z0)
    radii = 2.0 * scale * rng.uniform(size=(n_samples, 1))
    Z = z0 + radii * std * rng.standard_normal((n_samples, d))
    if early_stop is None:
        s = score_latents(Z)
    else:
        parts: list[np.ndarray] = []
        for i in range(0, n_samples, early_stop.check_every):
            parts.append(score_latents(Z[i:i + early_stop.check_every]))
            n = i + len(parts[-1])
            yy = np.concatenate(parts) > threshold
            if n < n_samples and min(yy.sum(), (~yy).sum()) >= 5:
                reg = fit_local_regression(Z[:n], yy, z0, std, kernel_width=scale, C=C)
                step = clear_step(z0, reg.w, reg.b, 0.5 + margin if want_anomalous else 0.5 - margin)
                top = regions(step) if regions else \
                    frozenset(np.argsort(-np.abs(step - z0) / std)[:early_stop.top_k(d)].tolist())
                if early_stop.stable(n, top):
                    break
        s = np.concatenate(parts)
        Z = Z[:len(s)]
    y = s > threshold
    tries = 0
    while (y.sum() < 5 or (~y).sum() < 5) and tries < 2:  # widen the neighbourhood until both classes appear
        tries += 1
        extra = max(50, n_samples // 4)
        r = 2.0 * scale * 2 ** tries * rng.uniform(0.5, 1.0, size=(extra, 1))
        Ze = z0 + r * std * rng.standard_normal((extra, d))
        Z, s = np.concatenate([Z, Ze]), np.concatenate([s, score_latents(Ze)])
        y = s > threshold
    p_target = 0.5 + margin if want_anomalous else 0.5 - margin
    sign = 1.0 if want_anomalous else -1.0
    if y.all() or not y.any():
        reg = None
        ts = np.zeros(1)
        clamped = True
        direction = np.zeros(d)
    else:
        reg = fit_local_regression(Z, y, z0, std, kernel_width=scale, C=C)
        ww = float(reg.w @ reg.w)
        t0 = (logit(p_target) - float(reg.logit(z0))) / ww  # clear_step's t
        clamped = sign * t0 < 0  # the regression already puts z0 past p*
        t0 = 0.0 if clamped else t0
        ts = t0 + sign * walk_logit / ww * np.arange(max_walk + 1)
        direction = reg.w
    cands = z0 + ts[:, None] * direction
    cs = score_latents(cands)
    ok = (cs > threshold) == want_anomalous
    k = int(np.argmax(ok)) if ok.any() else -1
    res = ClearResult(z0, reg, p_target, cands[k] if k >= 0 else None, float(cs[k]) if k >= 0 else None,
                      max(k, 0), bool(clamped), cands, cs, int(y.sum()), len(y))
    if reg is not None and fidelity_dims >= 0:
        res.fidelity, res.fidelity_detail = clear_fidelity(score_latents, threshold, z0, std, reg, fidelity_dims,
                                                           fidelity_range, fidelity_step, exact_scores)
    return res


def clear_fidelity(score_latents: Callable[[np.ndarray], np.ndarray], threshold: float, z0: np.ndarray,
                   std: np.ndarray, reg: LocalRegression, dims: int = 8, span: float = 3.0, step: float = 0.5,
                   exact_scores: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> tuple[float, list[dict[str, Any]]]:
    """White & Garcez's fidelity: the share of dimensions whose regression-predicted boundary lies
    within 0.25 SD of the boundary found by sweeping that dimension through the real model
    (the points on either side of each sign change scored by ``exact_scores`` when given, so the
    boundary is interpolated between exact scores).

    Returns:
        (fidelity, per-dimension details in SD units from z0: dim, predicted, found, agree).
    """
    order = np.argsort(-np.abs(reg.w * std))
    chosen = order[: dims] if dims > 0 else order
    grid = np.arange(-span, span + 1e-9, step)
    Z = np.repeat(z0[None], len(chosen) * len(grid), 0)
    for i, j in enumerate(chosen):
        Z[i * len(grid):(i + 1) * len(grid), j] = z0[j] + grid * std[j]
    s = score_latents(Z).reshape(len(chosen), len(grid)) - threshold
    if exact_scores is not None:
        change = (s[:, :-1] > 0) != (s[:, 1:] > 0)
        ends = np.zeros_like(s, bool)
        ends[:, :-1] |= change
        ends[:, 1:] |= change
        if ends.any():
            s[ends] = exact_scores(Z[ends.ravel()]) - threshold
    center = int(np.argmin(np.abs(grid)))
    details = []
    agree = 0
    for i, j in enumerate(chosen):
        # regression: w_j * (z0_j + u * sd_j) + rest = 0
        u_pred = -float(reg.logit(z0)) / (reg.w[j] * std[j]) if reg.w[j] != 0 else np.inf
        found = None
        row = s[i]
        for off in range(len(grid)):  # nearest sign change to z0 on either side
            for a in (center + off, center - off - 1):
                if 0 <= a < len(grid) - 1 and (row[a] > 0) != (row[a + 1] > 0):
                    frac = row[a] / (row[a] - row[a + 1])
                    cand = grid[a] + frac * (grid[a + 1] - grid[a])
                    if found is None or abs(cand) < abs(found):
                        found = float(cand)
            if found is not None:
                break
        in_range = abs(u_pred) <= span
        ok = (found is not None and in_range and abs(u_pred - found) <= FIDELITY_TOLERANCE) or \
             (found is None and not in_range)
        agree += ok
        details.append({"dim": int(j), "predicted_sd": round(float(u_pred), 4) if np.isfinite(u_pred) else None,
                        "found_sd": None if found is None else round(found, 4), "agree": bool(ok)})
    return agree / max(1, len(chosen)), details


@torch.inference_mode()
def decode_numpy(bundle, Z: np.ndarray, box: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
    """The AE's decodings of latents ``Z`` (N, d): whole images, or only their crop to ``box``
    (``((r0, r1), (c0, c1))``, :meth:`~cfx.models.nets.ConvAutoencoder.decode_crop`)."""
    z = torch.as_tensor(np.asarray(Z), dtype=torch.float32, device=bundle.device)
    g = bundle.ae.decode(z) if box is None else bundle.ae.decode_crop(z, box[0], box[1])
    return g.float().cpu().numpy()


@register
class Clear(CounterfactualExplainer):
    """CLEAR: a local logistic regression in the AE latent, its minimal step, fidelity.

    The real model scores each latent's decoding as a local edit of the original
    (:class:`~cfx.explainers.edit_model.EditModel`: the decoding's change from ``dec(z0)`` sets the
    region, real normal content fills it), so the regression sees a boundary even under a
    detector that rejects every decoding. ``batch_size`` is the number of latents decoded and
    scored per forward pass; 0 takes the device's (:attr:`ModelBundle.forward_batch`)."""

    name: ClassVar[str] = "clear"
    order: ClassVar[int] = 4
    #: the setup, the strength table of the samples, the walk and the fidelity sweep, and the edit
    #: search (demo defects, setup included: 109-136 with the VAE, 74-96 with PatchCore)
    typical_evaluations: ClassVar[int | None] = 110
    label: ClassVar[str] = "CLEAR (latent regression)"
    needs: ClassVar[dict[str, tuple[str, ...]]] = {"*": ("ae",)}
    #: ``n_samples``: the convergence study (BENCHMARKS.md) found the counterfactual's optimal
    #: Jaccard with the mask within 0.012 of the 5000-sample reference from 50 samples (median
    #: over the demo defects measured); 300 leaves the regression room on harder parts
    defaults: ClassVar[dict[str, Any]] = {"n_samples": 300, "scale": 1.0, "margin": 0.05, "max_walk": 12,
                                          "walk_logit": 1.0, "path_steps": 8, "fidelity_dims": 8,
                                          "fidelity_range": 3.0, "fidelity_step": 0.5, "C": 10.0, "batch_size": 0,
                                          "early_stop": True, "min_samples": 200, "strength_cells": STRENGTH_CELLS}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        b = self.bundle
        with torch.inference_mode():
            z0 = b.ae.encode(b.to_tensor(ctx.image[None]))[0].double().cpu().numpy()
        std = b.ae_latent_std.double().cpu().numpy()
        with torch.inference_mode():
            zc = b.ae.encode(b.to_tensor(ctx.content[None])).double().cpu().numpy()
        g0, gc = decode_numpy(b, np.concatenate([z0[None], zc]))
        em = ctx.edit_model(g0, gc)
        batch = int(params["batch_size"]) or b.forward_batch
        # the AE's decodings (besides the target's evaluations): dec(z0), dec(content); of them cropped
        decodes, cropped = [2], [0]

        def score_latents(Z: np.ndarray, exact: bool = False) -> np.ndarray:
            decodes[0] += len(Z)
            cropped[0] += len(Z)
            if not len(Z):
                return np.zeros(0)
            # the strength reads only R*'s bounding box: decode just that
            g = np.concatenate([decode_numpy(b, Z[i:i + batch], em.box) for i in range(0, len(Z), batch)])
            return em.scores(b, g, ctx.target, batch, exact=exact)

        n = int(params["n_samples"])
        stop = EarlyStop(int(params["min_samples"]), check_every=100) if params["early_stop"] else None

        def regions(z: np.ndarray) -> frozenset[int]:
            """The top cells of the :data:`CELLS` grid by the change the step's decoding makes to dec(z0)."""
            decodes[0] += 1
            change = np.abs(decode_numpy(b, z[None])[0] - g0).mean(0)
            h, w, c = *change.shape, CELLS
            grid = change[: h - h % c, : w - w % c].reshape(c, h // c, c, w // c).mean((1, 3))
            return frozenset(np.argsort(-grid.ravel())[:stop.top_k(c * c)].tolist())

        res = clear_search(score_latents, ctx.threshold, z0, std, False, n_samples=n, scale=float(params["scale"]),
                           margin=float(params["margin"]), max_walk=int(params["max_walk"]),
                           walk_logit=float(params["walk_logit"]), seed=seed,
                           fidelity_dims=int(params["fidelity_dims"]), fidelity_range=float(params["fidelity_range"]),
                           fidelity_step=float(params["fidelity_step"]), C=float(params["C"]), early_stop=stop,
                           regions=regions, exact_scores=lambda Z: score_latents(Z, exact=True))
        exp.info.update({
            "fidelity": res.fidelity, "fidelity_dims": len(res.fidelity_detail), "fidelity_detail": res.fidelity_detail,
            "n_samples": res.n_samples, "n_anomalous_samples": res.n_anomalous, "p_target": res.p_target,
            "step_clamped": res.step_clamped, "walked": res.walked,
            "early_stop": (f"stopped sampling after {stop.stopped_at} of {n} samples: the top {stop.top_k(CELLS ** 2)} "
                           f"of {CELLS} x {CELLS} cells that the regression's step changes had not changed over the last quarter")
            if stop and stop.stopped_at else None,
            "regression_accuracy": None if res.regression is None else res.regression.accuracy,
            "strengths_read": em.read,
        })
        if res.regression is None:
            exp.info["search"] = ("every sampled latent fell on one side of the threshold, so no regression was "
                                  "fitted; the edit starts from the AE's projection")
        else:
            exp.info["regression_p_at_z0"] = float(res.regression.proba(z0))
            if res.z_cf is not None:
                exp.info["regression_p_at_cf"] = float(res.regression.proba(res.z_cf))
            else:
                exp.info["search"] = (f"the line along the regression's normal did not cross within "
                                      f"{len(res.candidates)} steps; the edit starts from its last step")
        z_cf = res.z_cf if res.z_cf is not None else res.candidates[-1]
        line = z0 + np.linspace(0, 1, max(2, int(params["path_steps"])))[:, None] * (z_cf - z0)
        path = decode_numpy(b, line)
        exp.info.update({"decodes": decodes[0] + len(line), "decodes_cropped": cropped[0],
                         "decode_box": [list(r) for r in em.box]})
        return [Proposal(path[-1], g0, z_cf.astype(np.float32), z0.astype(np.float32), path)]
