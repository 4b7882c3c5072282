"""Explanation methods behind one interface (see :mod:`cfx.explainers.base`).

Importing the package registers the eight methods in :data:`REGISTRY`: ``recon`` (the
detector's map), ``gradcam``, ``lime``, ``shap`` (heatmaps) and ``clear``, ``dice``,
``gradient``, ``concepts`` (counterfactuals: local edits of the image,
:mod:`cfx.explainers.counterfactual`).
"""
from cfx.explainers.base import (PART_NAMES, REGISTRY, Counterfactual, Explainer, Explanation, explain, methods,
                                 method_label, ready, register, resolve_methods)
from cfx.explainers.counterfactual import CounterfactualExplainer, Proposal, counterfactual_metrics
from cfx.explainers import recon, gradcam, lime, shap, clear, dice, gradient, concepts  # noqa: E402,F401  (registration)
from cfx.explainers._util import set_data_root  # noqa: E402

__all__ = ["REGISTRY", "Counterfactual", "CounterfactualExplainer", "Proposal", "Explainer", "Explanation", "counterfactual_metrics",
           "explain", "method_label", "methods", "PART_NAMES", "ready", "register", "resolve_methods", "set_data_root"]
