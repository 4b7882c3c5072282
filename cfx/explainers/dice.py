"""DiCE (dice-ml) on PCA features.

A PCA with 64 components, fitted on the category's train/good images (scikit-learn; cached per
bundle in ``bundle.loaded``), turns images into a 64-column table; dice-ml's genetic method
generates ``total_cfs`` diverse counterfactuals of the query's row for the model wrapped to return
probabilities on PCA features: P(anomalous) of the image ``inverse_pca(row)`` as a local edit of
the original (:class:`~cfx.explainers.edit_model.EditModel`: the row's change from the query's
projection sets the region, real normal content fills it), calibrated so that 0.5 is exactly the
target's threshold (the detector's z-scores through a sigmoid around the threshold; the
classifier's probability shifted on the logit scale). Each found row then becomes the smallest
valid edit of the original (:mod:`cfx.explainers.counterfactual`), sorted closest valid first.

Method choice (measured, see BENCHMARKS.md): ``genetic`` meets the time budget, dice-ml's default
``random`` takes many times longer for 4 counterfactuals on 64 features. dice-ml 0.12 with
numpy 2 / pandas 3 needs float64 frames and an explicit int ``desired_class``. Its post-hoc
sparsity search (hundreds of extra model calls for 64 features) is off by default.

"No counterfactual found" is a result: the Explanation then has no counterfactuals and
``info["message"]`` says so.
"""
from __future__ import annotations

import contextlib
import io
import random
from typing import Any, ClassVar

import numpy as np
import torch

from cfx.explainers._util import to_probability, train_images
from cfx.explainers.base import Explanation, register
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, SearchContext
from cfx.explainers.edit import STRENGTH_CELLS

N_COMPONENTS = 64
OUTCOME = "anomalous"


def get_pca(bundle, n_components: int = N_COMPONENTS):
    """The PCA of the category's train/good images (fitted once per bundle)."""
    with bundle.lock:
        if n_components not in bundle.loaded.pca:
            from sklearn.decomposition import PCA

            x = train_images(bundle).reshape(len(train_images(bundle)), -1)
            k = min(n_components, len(x) - 1, x.shape[1])
            bundle.loaded.pca[n_components] = PCA(k, svd_solver="randomized", random_state=0).fit(x)
        return bundle.loaded.pca[n_components]


#: each found row after the first is realised with the good part, of this many nearest to it, that
#: differs most from those already chosen (:meth:`Dice._own`)
OWN_CANDIDATES = 8
#: the train rows nearest to the query in dice-ml's reference table, and the rows between them
NEAR_ROWS, TABLE_TRAIN_ROWS = 20, 100
BETWEEN = (0.5, 0.75)


def decimal_precisions(table: np.ndarray, cols: list[str]) -> dict[str, int]:
    """The precision dice-ml gives each continuous column of ``table`` when none is passed to it,
    computed without its per-column pandas loop (a fifth of a query's time on the CPU): dice-ml
    casts the columns to float32, takes each column's modes (all its values, when they are
    distinct) and counts the digits after the point of the longest ``str`` among them. It rounds
    the counterfactuals it returns to these. A column whose modes do not all print with a point
    is left out, for dice-ml to handle as it does."""
    out: dict[str, int] = {}
    for j, c in enumerate(cols):
        vals, counts = np.unique(table[:, j].astype(np.float32), return_counts=True)
        parts = [str(v).split(".") for v in vals[counts == counts.max()]]
        if all(len(p) == 2 for p in parts):
            out[c] = max(len(p[1]) for p in parts)
    return out


class BudgetExhausted(RuntimeError):
    """The model was asked more often than allowed (dice-ml's random initialisation can loop)."""


class ProbaModel:
    """An sklearn-style classifier on PCA rows for dice-ml: ``predict_proba`` -> (N, 2) with
    column 1 = P(anomalous) of the row's inverse-PCA image as a local edit of the query
    (:class:`~cfx.explainers.edit_model.EditModel`; 0.5 at the target's threshold). Predictions are
    memoised by row (dice-ml asks again for rows it has seen); one model per query, since the
    edits are edits of that query. The scores come from the edit model's table of the score by
    edit strength (``strength_cells``)."""

    def __init__(self, bundle, pca, target: str, shape: tuple[int, ...], edit, batch: int | None = None) -> None:
        self.bundle, self.pca, self.target, self.shape, self.edit, self.batch = bundle, pca, target, shape, edit, batch
        self.memo: dict[bytes, float] = {}
        self._pca_t: tuple[torch.Tensor, torch.Tensor] | None = None
        self.evaluations = 0
        self.budget: int | None = None

    def images(self, rows: np.ndarray) -> np.ndarray:
        """The rows' inverse-PCA images (the generator's images, before the edit): scikit-learn's
        ``inverse_transform`` (``rows @ components + mean``, float64) as one torch product, which
        uses torch's threads where numpy's BLAS is held to one (:mod:`cfx.blas`); equal to 1e-15."""
        rows = np.asarray(rows, np.float64)
        if getattr(self.pca, "whiten", False):
            return np.clip(self.pca.inverse_transform(rows), 0, 1).astype(np.float32).reshape(len(rows), *self.shape)
        if self._pca_t is None:
            self._pca_t = (torch.from_numpy(np.asarray(self.pca.mean_, np.float64)),
                           torch.from_numpy(np.asarray(self.pca.components_, np.float64)))
        mean, comp = self._pca_t
        x = torch.addmm(mean, torch.from_numpy(np.ascontiguousarray(rows)), comp).clamp_(0, 1).float()
        return x.numpy().reshape(len(rows), *self.shape)

    def predict_proba(self, X) -> np.ndarray:
        rows = np.ascontiguousarray(np.asarray(getattr(X, "values", X), np.float64))
        if rows.ndim == 1:
            rows = rows[None]
        keys = [r.tobytes() for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        if todo:
            uniq = list(dict.fromkeys(keys[i] for i in todo))
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            idx = [first[k] for k in uniq]
            if self.budget is not None and self.evaluations + len(idx) > self.budget:
                raise BudgetExhausted(f"more than {self.budget} model evaluations")
            before = self.edit.evaluations
            s = self.edit.scores(self.bundle, self.images(rows[idx]), self.target, batch=self.batch)
            self.evaluations += self.edit.evaluations - before
            for k, p in zip(uniq, to_probability(self.bundle, s, self.target)):
                self.memo[k] = float(p)
        p = np.array([self.memo[k] for k in keys])
        return np.stack([1 - p, p], 1)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


@register
class Dice(CounterfactualExplainer):
    """dice-ml (genetic) counterfactuals on 64 PCA features, each shown as a local edit."""

    name: ClassVar[str] = "dice"
    order: ClassVar[int] = 5
    #: measured on demo defects, setup included: 192-225 (VAE), 120-152 (PatchCore)
    typical_evaluations: ClassVar[int | None] = 180
    label: ClassVar[str] = "DiCE (PCA features)"
    defaults: ClassVar[dict[str, Any]] = {"total_cfs": 4, "method": "genetic", "proximity_weight": 0.5,
                                          "diversity_weight": 1.0, "posthoc_sparsity": False, "max_iterations": 30,
                                          "max_evaluations": 3000, "strength_cells": STRENGTH_CELLS}

    def _propose(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        # dice-ml draws from the global random generators: one DiCE search per bundle at a time
        with self.bundle.lock:
            return self._search(ctx, seed, params, exp)

    def _search(self, ctx: SearchContext, seed: int, params: dict[str, Any], exp: Explanation) -> list[Proposal]:
        import dice_ml
        import pandas as pd

        b, image = self.bundle, ctx.image
        desired = 0
        pca = get_pca(b)
        cols = [f"pc{i}" for i in range(pca.n_components_)]
        p0 = pca.transform(image.reshape(1, -1).astype(np.float64))
        probe = ProbaModel(b, pca, ctx.target, image.shape, None)
        g0, gc = probe.images(pca.transform(np.stack([image, ctx.content]).reshape(2, -1).astype(np.float64)))
        model = ProbaModel(b, pca, ctx.target, image.shape, ctx.edit_model(g0, gc))
        table = self._table(pca, p0)
        labels = model.predict(table)
        population = 10 * int(params["total_cfs"])
        exp.info.update({"components": int(pca.n_components_),
                         "explained_variance": float(pca.explained_variance_ratio_.sum()),
                         "normal_reference_rows": int((labels == desired).sum())})
        if (labels == desired).sum() < population:
            # dice-ml's genetic search would then draw random rows one model call at a time until
            # enough are valid, which need never end. The reference rows the model finds most
            # normal are proposals still: their edits are checked like any other
            p = model.predict_proba(table)[:, 1]
            order = [i for i in np.argsort(p, kind="stable") if i < len(table) - 1][: int(params["total_cfs"])]
            exp.info["search"] = (f"dice-ml's genetic search needs {population} normal reference rows and found "
                                  f"{int((labels == desired).sum())}; the proposals are the {len(order)} reference "
                                  f"rows the model finds most normal")
            exp.info["model_evaluations"] = model.evaluations
            rows = table[order]
            return self._own(ctx, pca, rows, model.images(rows), g0, p0)
        df = pd.DataFrame(table, columns=cols).astype(np.float64)
        df[OUTCOME] = labels
        data = dice_ml.Data(dataframe=df, continuous_features=cols, outcome_name=OUTCOME,
                            continuous_features_precision=decimal_precisions(table, cols))
        m = dice_ml.Model(model=model, backend="sklearn", model_type="classifier")
        method = str(params["method"])
        dice = dice_ml.Dice(data, m, method=method)
        query = pd.DataFrame(p0, columns=cols).astype(np.float64)
        kwargs: dict[str, Any] = {"total_CFs": int(params["total_cfs"]), "desired_class": int(desired),
                                  "proximity_weight": float(params["proximity_weight"]),
                                  "diversity_weight": float(params["diversity_weight"]), "verbose": False}
        if not params["posthoc_sparsity"]:
            kwargs["posthoc_sparsity_param"] = None
        if method == "genetic":
            kwargs["maxiterations"] = int(params["max_iterations"])
        elif method == "random":
            kwargs["random_seed"] = seed
            kwargs.pop("proximity_weight"), kwargs.pop("diversity_weight")
        random.seed(seed)
        np.random.seed(seed % 2**32)
        model.budget = model.evaluations + int(params["max_evaluations"])
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # dice-ml's tqdm bar
                res = dice.generate_counterfactuals(query, **kwargs)
            found = res.cf_examples_list[0].final_cfs_df
            why = ""
        except BudgetExhausted:
            found, why = None, f" within {int(params['max_evaluations'])} model evaluations"
        except Exception as exc:  # dice-ml raises when nothing valid turns up (random method)
            if "No counterfactuals found" not in str(exc):
                raise
            found, why = None, ""
        finally:
            model.budget = None
        exp.info["model_evaluations"] = model.evaluations
        if found is None or len(found) == 0:
            exp.info["message"] = "no counterfactual found" + why
            return []
        rows = found[cols].to_numpy(np.float64)
        return self._own(ctx, pca, rows, model.images(rows), g0, p0)

    def _own(self, ctx: SearchContext, pca, rows: np.ndarray, images: np.ndarray, g0: np.ndarray,
             p0: np.ndarray) -> list[Proposal]:
        """The found rows as proposals, each realised with its *own* real good part, aligned with
        the original: the first row with the train image nearest to it in the PCA, each next one
        with the one of its :data:`OWN_CANDIDATES` nearest (not yet used) that differs most, where
        the detector looks (the top 10% of its map), from the parts already chosen. So DiCE's
        promise, K counterfactuals that differ, holds for the edits the user sees: filling every
        edit with the one good part nearest to the original made them one edit (relative
        diversity 0.015 on the demo tablet's scratch/003). A row whose own part makes no valid
        edit falls back to the usual contents (:attr:`Proposal.fallback`)."""
        from cfx.explainers.edit import aligned, scaled
        from cfx.metrics.edits import top_region

        train = self._train_rows(pca)
        normals = train_images(self.bundle)
        w = (1.0 - scaled(ctx.heat)).astype(np.float32)
        hot = top_region(ctx.heat)
        taken: list[int] = []
        chosen: list[np.ndarray] = []
        out = []
        for g, r in zip(images, rows):
            near = [int(j) for j in np.argsort(((train - r) ** 2).sum(1)) if int(j) not in taken] or [int(taken[0])]
            near = near[:OWN_CANDIDATES if chosen else 1]
            cands = [aligned(normals[j], ctx.image, w)[0] for j in near]
            spread = [min((float(np.abs(c - o)[:, hot].mean()) for o in chosen), default=0.0) for c in cands]
            k = int(np.argmax(spread))
            taken.append(near[k])
            chosen.append(cands[k])
            out.append(Proposal(g, g0, r.astype(np.float32), p0[0].astype(np.float32),
                                contents={"nearest normal": cands[k]}, info={"content_index": near[k]}))
        return out

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        exp = super()._explain(image, target, seed, params)
        if exp.counterfactuals:
            exp.info["n_valid"] = int(sum(c.valid for c in exp.counterfactuals))
        return exp

    def _train_rows(self, pca) -> np.ndarray:
        """The train images in the PCA (cached per bundle)."""
        b = self.bundle
        with b.lock:
            k = int(pca.n_components_)
            if k not in b.loaded.pca_rows:
                x = train_images(b)
                b.loaded.pca_rows[k] = pca.transform(x.reshape(len(x), -1).astype(np.float64))
            return b.loaded.pca_rows[k]

    def _table(self, pca, p0: np.ndarray) -> np.ndarray:
        """dice-ml's reference rows: the PCA features of the train images nearest to the query,
        rows between the query and its nearest ones (so that the genetic search starts near the
        query), and the query itself (so the feature ranges contain it)."""
        train = self._train_rows(pca)
        order = np.argsort(((train - p0) ** 2).sum(1))
        near = train[order[:NEAR_ROWS]]
        parts = [train[order[:TABLE_TRAIN_ROWS]]] + [p0 + a * (near - p0) for a in BETWEEN] + [p0]
        return np.concatenate(parts)
