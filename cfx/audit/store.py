"""The audit's on-disk store: each (model key, image content, method, target, parameters, seed, method
source) unit's map, error and time under ``cache_dir()/audit``, written atomically; a damaged entry
is recomputed."""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cfx import config
from cfx.atomic import atomic_path

log = logging.getLogger(__name__)
CACHE_VERSION = 1


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


# -------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``cache_dir()/audit``."""
    return config.cache_dir() / "audit"


def _unit_key(model_key: str, name: str, image: np.ndarray, method: str, target: str,
              params: dict[str, Any] | None, seed: int) -> tuple[str, str]:
    impl, p = _effective_params(method, params)
    ident = {"v": CACHE_VERSION, "model": model_key, "image": name,
             "image_sha": hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16],
             "method": method, "impl": impl, "target": target, "params": p, "seed": int(seed)}
    text = json.dumps(ident, sort_keys=True, default=repr)
    folder = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_key)
    return folder, hashlib.sha1(text.encode()).hexdigest()


def _cache_file(root: Path, model_key: str, name: str, image: np.ndarray, method: str, target: str,
                params: dict[str, Any] | None, seed: int) -> Path:
    folder, h = _unit_key(model_key, name, image, method, target, params, seed)
    return root / folder / f"{h}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray | None, str | None, float] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            heat = z["map"] if meta.get("has_map") else None
            heat = None if heat is None else np.asarray(heat, np.float32)
            return heat, meta.get("error"), float(meta.get("seconds", 0))
    except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
        log.warning("ignoring damaged audit cache entry %s: %s", path, exc)
        return None


def _write_cache(path: Path, heat: np.ndarray | None, error: str | None, seconds: float, info: dict) -> None:
    meta = json.dumps({"has_map": heat is not None, "error": error, "seconds": seconds, **info}, default=repr)
    buf = io.BytesIO()
    np.savez_compressed(buf, map=np.zeros(0, np.float32) if heat is None else np.asarray(heat, np.float32),
                        meta=np.array(meta))
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(buf.getvalue())
