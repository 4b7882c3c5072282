"""An :class:`~cfx.explainers.base.Explanation` as bytes and back, for the results database: its
arrays in a compressed ``.npz`` (no pickle), everything else as JSON. The original image is not
stored (the reader has it); :func:`from_bytes` takes it back."""
from __future__ import annotations

import io
import json
from dataclasses import fields
from typing import Any

import numpy as np

from cfx.atomic import json_default
from cfx.explainers.base import Counterfactual, Explanation

#: the array fields of a counterfactual
_CF_ARRAYS = ("image", "latent", "path_images", "path_scores", "region")
_CF_FIELDS = [f.name for f in fields(Counterfactual)]
FORMAT = 1


def to_bytes(exp: Explanation) -> bytes:
    """The explanation (without its original image) as ``.npz`` bytes."""
    arrays: dict[str, np.ndarray] = {}
    if exp.heatmap is not None:
        arrays["heatmap"] = np.asarray(exp.heatmap, np.float32)
    cfs = []
    for k, c in enumerate(exp.counterfactuals):
        d = {n: getattr(c, n) for n in _CF_FIELDS if n not in _CF_ARRAYS}
        for n in _CF_ARRAYS:
            v = getattr(c, n)
            if v is not None:
                arrays[f"cf{k}_{n}"] = np.asarray(v)
        cfs.append(d)
    meta = {"format": FORMAT, "method": exp.method, "target": exp.target, "score_before": exp.score_before,
            "threshold": exp.threshold, "signed": exp.signed, "seconds": exp.seconds, "params": exp.params,
            "seed": exp.seed, "error": exp.error, "info": {k: v for k, v in exp.info.items() if k != "traceback"},
            "counterfactuals": cfs}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta, default=json_default)), **arrays)
    return buf.getvalue()


def from_bytes(data: bytes, image: np.ndarray) -> Explanation:
    """The explanation stored by :func:`to_bytes`, with ``image`` as its original.

    Raises:
        ValueError: when ``data`` is not a stored explanation of this format.
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta: dict[str, Any] = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"stored explanation of format {meta.get('format')!r}, expected {FORMAT}")
        arrays = {k: z[k] for k in z.files if k != "meta"}
    cfs = []
    for k, d in enumerate(meta["counterfactuals"]):
        extra = {n: arrays.get(f"cf{k}_{n}") for n in _CF_ARRAYS}
        cfs.append(Counterfactual(**{**d, **extra}))
    return Explanation(method=meta["method"], target=meta["target"], image=image, score_before=meta["score_before"],
                       threshold=meta["threshold"], heatmap=arrays.get("heatmap"), signed=meta["signed"],
                       counterfactuals=cfs, seconds=meta["seconds"], params=meta["params"], seed=meta["seed"],
                       error=meta["error"], info=meta["info"])
