"""DiCE (dice-ml) on PCA features.

A PCA with 64 components, fitted on the category's train/good images (scikit-learn; cached per
bundle in ``bundle.extras``), turns images into a 64-column table; dice-ml's genetic method
generates ``total_cfs`` diverse counterfactuals of the query's row for the model wrapped to return
probabilities on PCA features: P(anomalous) of the image ``inverse_pca(row)``, calibrated so that
0.5 is exactly the target's threshold (the detector's z-scores through a sigmoid around the
threshold; the classifier's probability shifted on the logit scale). Images come back through
the inverse PCA, are re-checked with the real models and sorted closest valid first.

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

from cfx.explainers._util import order_counterfactuals, score_images, to_probability, train_images
from cfx.explainers.base import Explainer, Explanation, counterfactual_metrics, register

N_COMPONENTS = 64
OUTCOME = "anomalous"


def get_pca(bundle, n_components: int = N_COMPONENTS):
    """The PCA of the category's train/good images (fitted once per bundle, cached in extras)."""
    key = f"pca{n_components}"
    with bundle.lock:
        if key not in bundle.extras:
            from sklearn.decomposition import PCA

            x = train_images(bundle).reshape(len(train_images(bundle)), -1)
            k = min(n_components, len(x) - 1, x.shape[1])
            bundle.extras[key] = PCA(k, svd_solver="randomized", random_state=0).fit(x)
        return bundle.extras[key]


#: rows between the query and its nearest train rows in dice-ml's reference table
NEAR_ROWS = 20
BETWEEN = (0.5, 0.75)


class BudgetExhausted(RuntimeError):
    """The model was asked more often than allowed (dice-ml's random initialisation can loop)."""


class ProbaModel:
    """An sklearn-style classifier on PCA rows for dice-ml: ``predict_proba`` -> (N, 2) with
    column 1 = P(anomalous) of the decoded image (0.5 at the target's threshold). Predictions are
    memoised by row, since dice-ml asks again for rows it has seen (its training table, the
    surviving population); the reference table's predictions are kept across queries."""

    def __init__(self, bundle, pca, target: str, shape: tuple[int, ...], batch: int | None = None) -> None:
        self.bundle, self.pca, self.target, self.shape, self.batch = bundle, pca, target, shape, batch
        self.memo: dict[bytes, float] = {}
        self.keep: set[bytes] = set()  # rows whose predictions are kept across queries (the reference table)
        self.evaluations = 0
        self.budget: int | None = None

    def images(self, rows: np.ndarray) -> np.ndarray:
        x = self.pca.inverse_transform(np.asarray(rows, np.float64))
        return np.clip(x, 0, 1).astype(np.float32).reshape(len(rows), *self.shape)

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
            s = score_images(self.bundle, self.images(rows[idx]), self.target, batch=self.batch)
            self.evaluations += len(idx)
            for k, p in zip(uniq, to_probability(self.bundle, s, self.target)):
                self.memo[k] = float(p)
        p = np.array([self.memo[k] for k in keys])
        return np.stack([1 - p, p], 1)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


@register
class Dice(Explainer):
    """dice-ml (genetic) counterfactuals on 64 PCA features, closest valid first."""

    name: ClassVar[str] = "dice"
    order: ClassVar[int] = 5
    kind: ClassVar[str] = "counterfactual"
    label: ClassVar[str] = "DiCE (PCA features)"
    defaults: ClassVar[dict[str, Any]] = {"total_cfs": 4, "method": "genetic", "proximity_weight": 0.5,
                                          "diversity_weight": 1.0, "posthoc_sparsity": False, "max_iterations": 30,
                                          "max_evaluations": 3000}

    def _explain(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        # the memoised model is shared per bundle and dice-ml draws from the global random
        # generators: one DiCE search per bundle at a time
        with self.bundle.lock:
            return self._search(image, target, seed, params)

    def _search(self, image: np.ndarray, target: str, seed: int, params: dict[str, Any]) -> Explanation:
        import dice_ml
        import pandas as pd

        b = self.bundle
        exp = self.base(image, target)
        thr = b.threshold_for(target)
        desired = 0 if exp.score_before > thr else 1
        pca = get_pca(b)
        cols = [f"pc{i}" for i in range(pca.n_components_)]
        model = self._model(pca, target, image.shape)
        p0 = pca.transform(image.reshape(1, -1).astype(np.float64))
        table, n_ref = self._table(pca, p0, desired)
        labels = model.predict(table)
        model.keep.update(np.ascontiguousarray(r).tobytes() for r in table[:n_ref])
        population = 10 * int(params["total_cfs"])
        exp.info.update({"desired_class": desired, "components": int(pca.n_components_),
                         "explained_variance": float(pca.explained_variance_ratio_.sum()),
                         "projection_score": float(score_images(b, model.images(p0), target)[0]),
                         "table_rows_of_desired_class": int((labels == desired).sum())})
        if (labels == desired).sum() < population:
            # dice-ml's genetic search would then draw random rows one model call at a time until
            # enough are valid, which need never end: no counterfactual is a result
            exp.info["message"] = (f"no counterfactual found: only {(labels == desired).sum()} of {len(labels)} "
                                   f"reference rows are {'anomalous' if desired else 'normal'} for the model")
            exp.info["model_evaluations"] = model.evaluations
            return exp
        df = pd.DataFrame(table, columns=cols).astype(np.float64)
        df[OUTCOME] = labels
        data = dice_ml.Data(dataframe=df, continuous_features=cols, outcome_name=OUTCOME)
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
            return exp
        rows = found[cols].to_numpy(np.float64)
        cfs = counterfactual_metrics(b, image, model.images(rows), target, p0[0].astype(np.float32),
                                     rows.astype(np.float32))
        exp.counterfactuals = order_counterfactuals(cfs)
        from cfx.explainers.base import diversity

        exp.info["diversity"] = diversity(c.image for c in exp.counterfactuals)
        exp.info["n_valid"] = int(sum(c.valid for c in exp.counterfactuals))
        return exp

    def _table(self, pca, p0: np.ndarray, desired: int) -> tuple[np.ndarray, int]:
        """dice-ml's reference rows: the train images' PCA features, synthetic anomalies' (when
        the counterfactual must be anomalous), rows between the query and its nearest train rows
        (so that the genetic search starts near the query), and the query itself (so the feature
        ranges contain it). Returns (rows, how many leading rows are the same for every query)."""
        b = self.bundle
        with b.lock:
            key = "dice_train_rows"
            if key not in b.extras:
                x = train_images(b)
                b.extras[key] = pca.transform(x.reshape(len(x), -1).astype(np.float64))
            train = b.extras[key]
            parts = [train]
            if desired == 1:
                key = "dice_anomaly_rows"
                if key not in b.extras:
                    from cfx.data.synth import synthesize

                    x = train_images(b)[:60]
                    a, _, _ = synthesize(x, np.random.default_rng(0), per_image=1)
                    b.extras[key] = pca.transform(a.reshape(len(a), -1).astype(np.float64))
                parts.append(b.extras[key])
        n_ref = sum(len(p) for p in parts)
        near = train[np.argsort(((train - p0) ** 2).sum(1))[:NEAR_ROWS]]
        parts += [p0 + a * (near - p0) for a in BETWEEN]
        parts.append(p0)
        return np.concatenate(parts), n_ref

    def _model(self, pca, target: str, shape: tuple[int, ...]) -> ProbaModel:
        # one memo per bundle and target: the training table's predictions are reused across images
        key = f"dice_model:{self.bundle.detector_name}:{target}"
        with self.bundle.lock:
            m = self.bundle.extras.get(key)
            if m is None or m.pca is not pca:
                m = self.bundle.extras[key] = ProbaModel(self.bundle, pca, target, shape)
            m.evaluations = 0
            m.memo = {k: v for k, v in m.memo.items() if k in m.keep}  # per query, apart from the table
            return m
