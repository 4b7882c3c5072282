"""One sentence an inspector understands for any explanation: what the method says about this
image, and, for a degenerate result (an empty map, no counterfactual, a failure), what it is and
why. The numbers stay available beside it (the pages put them behind an expander)."""
from __future__ import annotations

import numpy as np

from cfx.explainers.base import Explanation

#: a map whose largest absolute value is below this counts as empty
EMPTY = 1e-12
#: a counterfactual whose locality (share of its change on the dilated defect) reaches this is "on the defect"
ON_DEFECT = 0.5
#: a map "points at the defect" with J* of at least this, or a pixel AUROC on the image of at least
#: :data:`ON_DEFECT_AUROC` (the numbers the Mask Jaccard page shows)
ON_DEFECT_JACCARD = 0.3
ON_DEFECT_AUROC = 0.9


def _where(heat: np.ndarray) -> str:
    """Where the strongest values of a map lie (its top 5 %, at least half its peak), in words
    (``the upper left``, ``the centre``...)."""
    h = np.asarray(heat, np.float64)
    top = (h >= max(float(np.quantile(h, 0.95)), 0.5 * float(h.max()))) & (h > 0)
    ys, xs = np.nonzero(top)
    if not len(ys):
        return "the image"
    cy, cx = ys.mean() / h.shape[0], xs.mean() / h.shape[1]
    row = "upper " if cy < 1 / 3 else "lower " if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return f"the {(row + col).strip() or 'centre'}" + (" part" if (row or col) and not (row and col) else "")


def _first_clause(text: str) -> str:
    text = str(text).split("\n")[0]
    return text.split(": ", 1)[1] if text.startswith(("ModelMissingError: ", "DataError: ")) else text


def sentence(exp: Explanation, mask: np.ndarray | None = None) -> str:
    """The lead sentence of an explanation (see the module docstring)."""
    if not exp.ok:
        return f"This method could not run: {_first_clause(exp.error)}."
    thr = exp.threshold
    if exp.counterfactuals or exp.heatmap is None:
        msg = str((exp.info or {}).get("message", ""))
        best = exp.best
        if msg.startswith("already normal"):
            return "The detector already calls this image normal, so nothing has to change."
        if best is None or not best.valid:
            why = msg.split(":", 1)[1].strip() if ":" in msg else ""
            return ("No edit this method tried makes the detector call the image normal"
                    + (f" ({why})." if why else "."))
        m = best.metrics or {}
        where = ""
        loc = m.get("locality")
        if loc is not None and np.isfinite(loc):
            where = " mostly on the marked defect" if loc >= ON_DEFECT else " mostly away from the marked defect"
        return (f"Changing {m.get('edit_area', float('nan')):.1%} of the image{where} makes the detector call it "
                f"normal (score {exp.score_before:.2f} → {best.score_after:.2f}; threshold {thr:.2f}).")
    h = np.asarray(exp.heatmap, np.float64)
    pos = np.clip(h, 0, None)
    if not np.isfinite(h).all() or np.abs(h).max(initial=0) < EMPTY or pos.max(initial=0) < EMPTY:
        note = (exp.info or {}).get("note") or "no pixel pushes the score up"
        return f"The map is empty: {str(note).rstrip('.')}. It says nothing about where the anomaly is."
    if mask is not None and np.any(mask):
        return map_sentence(h, mask)
    return f"Its strongest evidence for an anomaly is in {_where(pos)} of the image."


def map_sentence(heat: np.ndarray, mask: np.ndarray) -> str:
    """What a map says about a marked defect, from the audit's own numbers (the Mask Jaccard
    page's): J*, the best overlap of a cut of the map with the mask, and the map's pixel AUROC
    on this image (how well it ranks the defect's pixels above the rest). A map with J* of at
    least :data:`ON_DEFECT_JACCARD`, or pixel AUROC of at least :data:`ON_DEFECT_AUROC`, points
    at the defect; one below the audit's cutoff with AUROC under :data:`ON_DEFECT_AUROC` points
    elsewhere; the rest in part."""
    from cfx.audit.results import DEFAULT_CUTOFF
    from cfx.metrics.edits import defect_mask
    from cfx.metrics.jaccard import optimal_jaccard, pixel_auroc

    h = np.asarray(heat, np.float64)
    m = defect_mask(mask)
    if m is None:
        return f"Its strongest evidence for an anomaly is in {_where(np.clip(h, 0, None))} of the image."
    j = float(optimal_jaccard(h, m).jaccard)
    auc = pixel_auroc([h], [m])
    a = f"pixel AUROC {auc:.3f}" if auc is not None else "no pixel AUROC"
    area = f"{float(m.mean()):.1%} of the image"
    if j >= ON_DEFECT_JACCARD or (auc is not None and auc >= ON_DEFECT_AUROC):
        return (f"It points at the defect: its best cut overlaps the marked defect ({area}) with J* {j:.2f}, "
                f"and it ranks the defect's pixels above the rest with {a}.")
    where = _where(np.clip(h, 0, None))
    if j < DEFAULT_CUTOFF:
        return (f"It points elsewhere: no cut of it overlaps the marked defect ({area}) better than J* {j:.2f} "
                f"(the audit flags below {DEFAULT_CUTOFF:g}; {a}); its strongest evidence is in {where}.")
    return (f"It points partly at the defect: J* {j:.2f} with the marked defect ({area}), {a}; its strongest "
            f"evidence is in {where}.")


#: what the numbers an explanation records are called on a page or in a report (keys not listed
#: are shown with their underscores as spaces)
LABELS: dict[str, str] = {
    "classifier_prob": "classifier P(anomalous)", "classifier_threshold": "classifier threshold",
    "classifier_anomalous": "classifier says anomalous", "anomalous": "detector says anomalous",
    "fidelity": "regression fidelity", "fidelity_dims": "fidelity dimensions",
    "n_samples": "samples drawn", "n_anomalous_samples": "anomalous samples", "p_target": "share of anomalous samples",
    "walked": "steps walked", "step_clamped": "step clamped", "regression_accuracy": "regression accuracy",
    "regression_p_at_z0": "regression's P(anomalous) at the image",
    "regression_p_at_cf": "regression's P(anomalous) at the counterfactual",
    "components": "PCA components", "explained_variance": "variance explained by the PCA",
    "normal_reference_rows": "normal reference rows", "model_evaluations": "model evaluations",
    "edit_evaluations": "evaluations to place the edit", "search_region_share": "share of the image searched",
    "diversity": "diversity (mean pairwise L1)", "n_valid": "valid counterfactuals",
    "ensemble_p_start": "ensemble P(anomalous) at the start", "ensemble_p_cf": "ensemble P(anomalous) at the edit",
    "ensemble_crossed_at": "step where the ensemble crossed", "ensemble_members": "ensemble members",
    "checked": "steps checked", "steps": "steps to the edit", "s_normal": "score of the normal end",
    "segments": "superpixels", "r2": "surrogate fit (R²)", "intercept": "surrogate intercept",
    "base_value": "SHAP base value", "sum": "sum of the attributions", "max_heat": "largest map value",
    "alpha": "concept strength", "concepts": "concepts", "l1": "L1 distance", "edit_area": "edit area",
    "locality": "locality (share of the change on the defect)", "realism": "realism (1 = like a good part)",
    "edit_share": "share of the searched region edited",
    "samples": "samples used", "early_stop": "early stop", "evaluations": "detector evaluations",
    "realism_pixels": "realism without a network (1 = like a good part)",
    "seam": "seam (1 = no edge added at the edit's border)", "relative_diversity": "relative diversity",
    "mean_l1": "mean L1 to the original", "overall": "score after", "similarity": "change outside the region (RMS)",
    "localized": "map change on the region", "non_degradation": "map change elsewhere",
}
#: internal keys never shown as a number
HIDDEN = frozenset({"heat_scale", "traceback", "proposal_order"})


def label(key: str) -> str:
    """The name of a recorded number for a page or report (see :data:`LABELS`)."""
    return LABELS.get(key, key.replace("_", " "))


def value(v: object) -> str:
    """A recorded value in words: a dash for nothing, yes/no, four significant digits."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def numbers(info: dict) -> list[tuple[str, str]]:
    """The scalar numbers of an explanation's ``info`` as (label, value) pairs, internals left out."""
    return [(label(k), value(v)) for k, v in (info or {}).items()
            if k not in HIDDEN and (v is None or isinstance(v, (int, float, bool, np.number, np.bool_)))]
