"""Explanation methods behind one interface (see :mod:`cfx.explainers.base`)."""
from cfx.explainers.base import (REGISTRY, Counterfactual, Explainer, Explanation, counterfactual_metrics,
                                 diversity, explain, register)

__all__ = ["REGISTRY", "Counterfactual", "Explainer", "Explanation", "counterfactual_metrics", "diversity",
           "explain", "register"]
