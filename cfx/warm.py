"""Paying the explanation libraries' one-off costs before the user asks for a method.

In a fresh process the first SHAP run costs about 11 s more than the next ones on the 2-core CPU:
3-4 s to import shap and 7-8 s for numba to compile the five functions its Partition explainer
uses (shap does not cache them on disk, and numba's on-disk cache of them crashed the process that
read it back). LIME and DiCE pay their imports (scikit-learn, scikit-image, pandas, dice-ml) the
same way. :func:`start` runs all of that once per process in a background thread at the lowest
scheduling priority, so that a SHAP run started some seconds later shows SHAP's real cost. The app
starts it at the end of its first script run, after the page is drawn: its first second or two
(loading llvmlite, the imports) holds the interpreter and can delay an answer asked for meanwhile
by up to 2.5 s on the 2-core CPU (BENCHMARKS.md). Importing this module imports nothing heavy.
"""
from __future__ import annotations

import os
import sys
import threading
import time

_lock = threading.Lock()
_thread: threading.Thread | None = None
#: seconds the warm-up took, or the error that stopped it (for logs and tests)
report: dict[str, object] = {}


def warm_libraries() -> float:
    """Import LIME's, SHAP's and DiCE's libraries and compile shap's Partition explainer on a toy
    model (100 regions, 200 evaluations of a sum); returns the seconds it took."""
    t0 = time.perf_counter()
    import numpy as np
    from scipy.cluster.hierarchy import linkage

    import dice_ml  # noqa: F401
    import lime.lime_image  # noqa: F401
    import shap
    import sklearn.linear_model  # noqa: F401
    import skimage.segmentation  # noqa: F401

    k = 100
    rng = np.random.default_rng(0)
    masker = shap.maskers.Partition(np.zeros((1, k)), clustering=linkage(rng.random((k, 2)), "ward"))
    shap.PartitionExplainer(lambda x: np.asarray(x, np.float64).sum(1), masker)(
        np.ones((1, k)), max_evals=200, silent=True)
    return time.perf_counter() - t0


def _run() -> None:
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:  # Linux: a thread's id is a process id for setpriority; this thread only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass
    try:
        report["seconds"] = warm_libraries()
    except Exception as exc:  # noqa: BLE001 - a failed warm-up only means the first run pays the cost
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"cfx: warming the explanation libraries failed ({report['error']})", file=sys.stderr, flush=True)


def start() -> threading.Thread:
    """Start the warm-up once per process (later calls return the same thread)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_run, name="cfx-warm-libraries", daemon=True)
            _thread.start()
        return _thread
