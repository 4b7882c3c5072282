"""The background warm-up of the explanation libraries: once per process, and it compiles what
shap's Partition explainer runs."""
from __future__ import annotations

from cfx import warm


def test_started_once_and_compiles_shaps_partition():
    th = warm.start()
    assert warm.start() is th
    th.join(120)
    assert not th.is_alive()
    assert "error" not in warm.report and warm.report["seconds"] > 0
    from shap.explainers import _partition
    from shap.utils import _masked_model

    assert _partition.lower_credit.signatures and _masked_model._init_masks.signatures  # compiled, not to be again
