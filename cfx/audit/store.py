"""Where the audit's units live: each (model key, image content, method and its implementation,
target, parameters, seed; the mask for methods that use it) unit is one row of the results
database (:mod:`cfx.resultdb`), written once; a damaged row is recomputed."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cfx import config
from cfx.resultdb import ResultDB, open_db

log = logging.getLogger(__name__)
#: 2: keyed by the image's content (not its name) and, for counterfactuals, the mask; the whole
#: explanation is stored (version-1 keys are still found: see ``legacy_key``); 3: counterfactuals carry
#: AR-Pro's repair properties
CACHE_VERSION = 3


def _effective_params(method: str, params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(implementation, parameters with the method's defaults filled in). The implementation is
    identified by a hash of the source of the method's module, so that a changed method is
    recomputed instead of read from the cache."""
    from cfx.explainers import REGISTRY

    if method in REGISTRY:
        return f"registry:{_source_hash(REGISTRY[method])}", {**REGISTRY[method].defaults, **(params or {})}
    return "fallback", dict(params or {})


_SOURCE_HASHES: dict[type, str] = {}


def _source_hash(cls: type) -> str:
    if cls not in _SOURCE_HASHES:
        import inspect
        import sys as _sys

        try:
            src = inspect.getsource(_sys.modules[cls.__module__])
        except (OSError, TypeError, KeyError):
            src = f"{cls.__module__}.{cls.__qualname__}"
        _SOURCE_HASHES[cls] = hashlib.sha1(src.encode()).hexdigest()[:12]
    return _SOURCE_HASHES[cls]


# -------------------------------------------------------------------- keys and the database
def cache_root() -> Path:
    """``cache_dir()/audit``: the folder of the version-1 cache files (migrated into the database)."""
    return config.cache_dir() / "audit"


def results_db(cache: str | Path | bool | ResultDB = True) -> ResultDB | None:
    """The database of an audit's ``cache`` argument: True the default one, a folder or file its
    own, False none."""
    if isinstance(cache, ResultDB):
        return cache
    if cache is True:
        return open_db()
    return open_db(Path(cache)) if cache else None


def array_sha(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()[:16]


def uses_mask(method: str) -> bool:
    """Whether a method's result depends on the ground-truth mask (counterfactuals: their locality)."""
    from cfx.explainers import REGISTRY

    return method in REGISTRY and REGISTRY[method].kind == "counterfactual"


def unit_key(model_key: str, image: np.ndarray, method: str, target: str, params: dict[str, Any] | None,
             seed: int, mask: np.ndarray | None = None) -> tuple[str, dict[str, Any]]:
    """(key, what it hashes) of one unit; the same for the audit, Compare and every worker."""
    impl, p = _effective_params(method, params)
    ident = {"v": CACHE_VERSION, "model": model_key, "image_sha": array_sha(image), "method": method, "impl": impl,
             "target": target, "params": p, "seed": int(seed),
             "mask": array_sha(mask) if mask is not None and uses_mask(method) else None}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest(), ident


def legacy_key(model_key: str, name: str, image: np.ndarray, method: str, target: str,
               params: dict[str, Any] | None, seed: int) -> str:
    """The version-1 key (by image name; see :meth:`cfx.resultdb.ResultDB.migrate`)."""
    impl, p = _effective_params(method, params)
    ident = {"v": 1, "model": model_key, "image": name, "image_sha": array_sha(image)[:16], "method": method,
             "impl": impl, "target": target, "params": p, "seed": int(seed)}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()


# -------------------------------------------------------------------- whole explanations
def stored_explanation(db: ResultDB, bundle, image: np.ndarray, method: str, target: str,
                       params: dict[str, Any] | None, seed: int, mask: np.ndarray | None = None):
    """The stored :class:`~cfx.explainers.base.Explanation` of this unit (computed by the audit,
    Compare, another session or a worker), or None when absent (or stored as a map only)."""
    from cfx.explainers.serial import from_bytes

    key, _ = unit_key(bundle.key(), image, method, target, params, seed, mask)
    hit = db.get(key)
    if hit is None or hit.explanation is None:
        return None
    try:
        return from_bytes(hit.explanation, np.asarray(image, np.float32))
    except Exception as exc:  # noqa: BLE001 - a damaged row is recomputed
        log.warning("ignoring a damaged stored explanation %s: %s", key, exc)
        return None


def store_explanation(db: ResultDB, bundle, image: np.ndarray, exp, params: dict[str, Any] | None,
                      mask: np.ndarray | None = None, name: str | None = None) -> bool:
    """Store an explanation that ran (a failure is not stored: the next run retries it); True when written."""
    from cfx.explainers.serial import to_bytes
    from cfx.metrics import explanation_map

    if exp.error:
        return False
    key, ident = unit_key(bundle.key(), image, exp.method, exp.target, params, int(exp.seed or 0), mask)
    heat = explanation_map(exp)
    return db.put(key, model=bundle.key(), method=exp.method, map=heat, explanation=to_bytes(exp),
                  error=None if heat is not None else "no map: the method found neither a heatmap nor a counterfactual",
                  seconds=exp.seconds, image_sha=ident["image_sha"], image=name, target=exp.target,
                  params=ident["params"], seed=int(exp.seed or 0), impl=ident["impl"])
