"""The mask-Jaccard audit of a category: which anomalies were detected for the wrong reason.

For every test anomaly whose ground-truth mask is known, every chosen method explains the chosen
target (the detector's anomaly score, or the classifier's P(anomalous)) through
:func:`cfx.explainers.explain`; the explanation's map (its heatmap, or the absolute difference of
its closest counterfactual) is compared with the mask by the optimal Jaccard J*
(:func:`cfx.metrics.optimal_jaccard`). An image is *flagged* for a method when the target's model
calls it anomalous and J* < the cutoff (default 0.1): it was detected, but the explanation points
elsewhere than the defect.

Each method's map is cached on disk per (model key, image content, method, target, parameters,
seed) under ``cache_dir()/audit``, so a long run that was stopped resumes where it stopped and a
finished one reloads in a moment. The cutoff is applied after the cache, so changing it never
recomputes anything.

Use :func:`audit_category` (blocking, with a progress callback and a stop flag) or
:class:`AuditJob` (the same in a background thread, for the app). Modules: :mod:`~cfx.audit.results`
(what it finds), :mod:`~cfx.audit.store` (the disk cache), :mod:`~cfx.audit.run` (running it); its
figure is :func:`cfx.reports.figures.detail_png`.
"""
from cfx.audit.results import (  # noqa: F401
                               DEFAULT_CUTOFF,
                               AuditResult,
                               ImageAudit,
                               MethodResult,
                               ProgressFn,
                               with_cutoff,
)
from cfx.audit.run import AuditJob, ImageDetail, audit_category, image_detail  # noqa: F401
from cfx.audit.store import CACHE_VERSION, cache_root, results_db, unit_key  # noqa: F401
