"""Batch inspection: score every image of a split with the selected detector and store its verdict,
score and anomaly map in the results database (``images`` table, once per model and image
content). The batches run as Dask tasks (:mod:`cfx.cluster`) or in this process; an image already
stored for the model is not scored again, so a killed run resumes where it stopped."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cfx import config
from cfx.audit.results import ProgressFn
from cfx.cluster import WorkerSpec, worker_arrays, worker_bundle
from cfx.resultdb import ResultDB

#: images per task (one batched forward pass each)
BATCH = 16
#: the columns of an inspected image (the ``images`` table without the map)
COLUMNS = ("dataset", "category", "image", "defect", "score", "threshold", "anomalous")


def image_sha(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()[:16]


def score_batch(bundle, names: Sequence[str], images: np.ndarray, defects: Sequence[str], db: ResultDB,
                category: str, run: str | None = None) -> list[dict[str, Any]]:
    """Score ``images`` in one batch and store each row (with its map); the rows."""
    a = bundle.analyse(images)
    rows = []
    for i, name in enumerate(names):
        row = {"dataset": bundle.dataset, "category": category, "image": name, "defect": defects[i],
               "score": float(a["score"][i]), "threshold": float(bundle.threshold),
               "anomalous": int(bool(a["anomalous"][i]))}
        db.put_image(model=bundle.key(), image_sha=image_sha(images[i]), map=a["heatmap"][i], run=run, **row)
        rows.append(row)
    return rows


def inspect_task(spec: WorkerSpec, split: str, names: Sequence[str], run: str | None) -> list[dict[str, Any]]:
    """One batch on a worker: the named images of the split, scored and stored."""
    from cfx.resultdb import open_db

    b = worker_bundle(spec)
    arr, index = worker_arrays(spec, b, split)
    idx = [index[n] for n in names]
    return score_batch(b, names, arr.images[idx], [arr.samples[i].defect for i in idx], open_db(spec.db_path),
                       spec.category, run)


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
    arr = MVTecDataset(root, category, split, image_size=bundle.image_size, channels=bundle.channels).arrays()
    names = [s.name for s in arr.samples]
    stored = db.image_shas(bundle.key())
    todo = [i for i in range(len(names)) if image_sha(arr.images[i]) not in stored]
    run = db.start_run("inspect", dataset=bundle.dataset, category=category, model=bundle.key(), total=len(names),
                       engine="dask" if client is not None else "local")
    done = len(names) - len(todo)
    batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    if client is None:
        for batch in batches:
            score_batch(bundle, [names[i] for i in batch], arr.images[batch], [arr.samples[i].defect for i in batch],
                        db, category, run)
            done += len(batch)
            if progress is not None:
                progress(done, len(names), names[batch[-1]])
    elif batches:
        from distributed import as_completed

        spec = WorkerSpec(models_dir=str(config.models_dir()), dataset=bundle.dataset, category=category,
                          detector=bundle.detector_name, model_key=bundle.key(), data_root=str(Path(root).resolve()),
                          db_path=str(db.path))
        futures = [client.submit(inspect_task, spec, split, [names[i] for i in b], run, pure=False, retries=2)
                   for b in batches]
        for fut in as_completed(futures):
            done += len(fut.result())
            if progress is not None:
                progress(done, len(names), f"{done} scored")
    by_name = {r["image"]: r for r in db.images(bundle.key()) if r["category"] == category}
    rows = [{k: by_name[n][k] for k in COLUMNS} for n in names if n in by_name]
    label = {n: int(arr.labels[i]) for i, n in enumerate(names)}
    summary = _summary(rows, np.array([label[r["image"]] for r in rows], int))
    db.finish_run(run, "done" if len(rows) == len(names) else "stopped", seconds=time.perf_counter() - t0,
                  summary=summary)
    return {"category": category, "model": bundle.key(), "run": run, "images": rows, "summary": summary,
            "seconds": time.perf_counter() - t0}


def _summary(rows: list[dict[str, Any]], labels: np.ndarray) -> dict[str, Any]:
    anomalous = np.array([bool(r["anomalous"]) for r in rows], bool)
    lab = np.asarray(labels, int)
    good, bad = lab == 0, lab == 1
    return {"images": len(rows), "anomalous": int(anomalous.sum()),
            "fpr_good": float(anomalous[good].mean()) if good.any() else None,
            "tpr_defect": float(anomalous[bad].mean()) if bad.any() else None}
