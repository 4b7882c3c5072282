"""Batch inspection: score every image of a split with the selected detector and store its verdict,
score and anomaly map in the results database (``images`` table, keyed by model, split, the
image's path relative to the data root and its content hash, and read back by the same key).
The batches run as Dask tasks (:mod:`cfx.cluster`) or in this process; an image already stored
for that key is not scored again, so a killed run resumes where it stopped, and a file renamed,
copied or changed is scored under its own path."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cfx.audit.results import ProgressFn
from cfx.cluster import WorkerSpec, worker_arrays, worker_bundle, worker_spec
from cfx.resultdb import ResultDB

#: images per task (one batched forward pass each)
BATCH = 16
#: the columns of an inspected image (the ``images`` table without the map)
COLUMNS = ("dataset", "category", "split", "path", "image", "image_sha", "defect", "score", "threshold", "anomalous")


def image_sha(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16]


def rel_path(root: str | Path, path: str | Path) -> str:
    """``path`` relative to the data root, with forward slashes (the row's key)."""
    return Path(os.path.relpath(Path(path), Path(root))).as_posix()


def score_batch(bundle, names: Sequence[str], paths: Sequence[str], images: np.ndarray, defects: Sequence[str],
                db: ResultDB, category: str, split: str, run: str | None = None) -> list[dict[str, Any]]:
    """Score ``images`` in one batch and store each row (with its map) under its split and path,
    the batch in one transaction; the rows."""
    a = bundle.analyse(images)
    rows = []
    for i, name in enumerate(names):
        row = {"dataset": bundle.dataset, "category": category, "split": split, "path": paths[i], "image": name,
               "defect": defects[i], "score": float(a["score"][i]), "threshold": float(bundle.threshold),
               "anomalous": int(bool(a["anomalous"][i]))}
        row["image_sha"] = image_sha(images[i])
        rows.append(row)
    db.put_images([{**row, "model": bundle.key(), "map": a["heatmap"][i], "run": run} for i, row in enumerate(rows)])
    return rows


def inspect_task(spec: WorkerSpec, split: str, names: Sequence[str], run: str | None) -> list[dict[str, Any]]:
    """One batch on a worker: the named images of the split, scored and stored."""
    from cfx.resultdb import open_db

    b = worker_bundle(spec)
    arr, index = worker_arrays(spec, b, split)
    idx = [index[n] for n in names]
    return score_batch(b, names, [rel_path(spec.data_root, arr.samples[i].path) for i in idx], arr.images[idx],
                       [arr.samples[i].defect for i in idx], open_db(spec.db_path), spec.category, split, run)


def inspect_category(bundle, root: str | Path, category: str, db: ResultDB, split: str = "test", client: Any = None,
                     progress: ProgressFn | None = None) -> dict[str, Any]:
    """Score every image of a category's split (stored ones are read back, not scored again).

    Args:
        bundle: the category's models. root: the data root. db: the results database.
        split: ``test`` or ``train``.
        client: a :class:`distributed.Client` (None: in this process).
        progress: called as ``progress(done, total, message)`` after each batch.

    Returns:
        ``{"category", "model", "run", "images": [rows in split order], "summary": {...}, "seconds"}``.
    """
    from cfx.data.mvtec import MVTecDataset

    t0 = time.perf_counter()
    ds = MVTecDataset(root, category, split, image_size=bundle.image_size, channels=bundle.channels)
    arr = ds.arrays()
    names = [s.name for s in arr.samples]
    paths = [rel_path(root, s.path) for s in arr.samples]
    keys = [(p, image_sha(arr.images[i])) for i, p in enumerate(paths)]
    stored = db.image_keys(bundle.key(), split)
    todo = [i for i in range(len(names)) if keys[i] not in stored]
    run = db.start_run("inspect", dataset=bundle.dataset, category=category, model=bundle.key(), total=len(names),
                       engine="dask" if client is not None else "local", params={"split": split})
    done = len(names) - len(todo)
    batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    if client is None:
        for batch in batches:
            score_batch(bundle, [names[i] for i in batch], [paths[i] for i in batch], arr.images[batch],
                        [arr.samples[i].defect for i in batch], db, category, split, run)
            done += len(batch)
            if progress is not None:
                progress(done, len(names), names[batch[-1]])
    elif batches:
        from distributed import as_completed

        spec = worker_spec(bundle, db.path, Path(root).resolve())
        futures = [client.submit(inspect_task, spec, split, [names[i] for i in b], run, pure=False, retries=2)
                   for b in batches]
        for fut in as_completed(futures):
            done += len(fut.result())
            if progress is not None:
                progress(done, len(names), f"{done} scored")
    by_key = {(r["path"], r["image_sha"]): r for r in db.images(bundle.key(), split=split, category=category)}
    rows = [{k: by_key[key][k] for k in COLUMNS} for key in keys if key in by_key]
    summary = _summary(rows, np.array([arr.labels[i] for i, key in enumerate(keys) if key in by_key], int))
    summary["unreadable"] = len(arr.skipped)
    db.finish_run(run, "done" if len(rows) == len(names) else "stopped", seconds=time.perf_counter() - t0,
                  summary=summary)
    return {"category": category, "model": bundle.key(), "run": run, "images": rows, "summary": summary,
            "skipped": list(arr.skipped), "seconds": time.perf_counter() - t0}


def _summary(rows: list[dict[str, Any]], labels: np.ndarray) -> dict[str, Any]:
    anomalous = np.array([bool(r["anomalous"]) for r in rows], bool)
    lab = np.asarray(labels, int)
    good, bad = lab == 0, lab == 1
    return {"images": len(rows), "anomalous": int(anomalous.sum()),
            "fpr_good": float(anomalous[good].mean()) if good.any() else None,
            "tpr_defect": float(anomalous[bad].mean()) if bad.any() else None}
