"""Explanation methods behind one interface (see :mod:`cfx.explainers.base`).

Importing the package registers the seven methods in :data:`REGISTRY`: ``recon`` (the
reconstruction heatmap), ``gradcam``, ``lime``, ``shap`` (heatmaps) and ``clear``, ``dice``,
``gradient`` (counterfactuals).
"""
from cfx.explainers.base import (REGISTRY, Counterfactual, Explainer, Explanation, counterfactual_metrics,
                                 diversity, explain, methods, register, resolve_methods)
from cfx.explainers import recon, gradcam, lime, shap, clear, dice, gradient  # noqa: E402,F401  (registration)
from cfx.explainers._util import set_data_root  # noqa: E402

__all__ = ["REGISTRY", "Counterfactual", "Explainer", "Explanation", "counterfactual_metrics", "diversity",
           "explain", "methods", "register", "resolve_methods", "set_data_root"]
