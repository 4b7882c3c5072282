"""Every number cfx reports about an explanation or a detector, in one place.

* :mod:`~cfx.metrics.jaccard`: how well a map matches the ground-truth mask (optimal Jaccard J*,
  pixel AUROC) and the map of any explanation (:func:`explanation_map`);
* :mod:`~cfx.metrics.edits`: a counterfactual as an edit of the real image (locality, edit area,
  realism, L1/L2, diversity);
* :mod:`~cfx.metrics.detection`: how well a detector separates good from defective parts
  (``python -m cfx evaluate``, the Detector page).
"""
from cfx.metrics.jaccard import (NEGLIGIBLE, JaccardCurve, auroc, best_mask, explanation_map,  # noqa: F401
                                 jaccard, optimal_jaccard, pixel_auroc)
from cfx.metrics.edits import (CHANGE_EPS, LOCALITY_DILATION, diversity, edit_area, edit_metrics,  # noqa: F401
                               independent_realism, locality)

__all__ = ["NEGLIGIBLE", "JaccardCurve", "optimal_jaccard", "jaccard", "explanation_map", "auroc", "pixel_auroc",
           "best_mask", "CHANGE_EPS", "LOCALITY_DILATION", "diversity", "edit_area", "edit_metrics",
           "independent_realism", "locality"]
