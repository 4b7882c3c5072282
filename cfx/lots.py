"""A lot: any folder of new, unlabeled part images (any names, nested folders), inspected against a
fitted category. Each image's verdict, score and map go into the results database's ``images``
table under the split ``lot:<folder name>-<8 hex digits of its resolved path>`` and its path
within the lot, keyed by its content hash as a category's splits are (:mod:`cfx.inspection`): a
lot inspected again scores only what is new or changed, and a killed run resumes.

The queue an inspector works through puts the parts called NG first (highest score first), then
the doubtful ones (called OK within :data:`DOUBT_MARGIN` of the threshold, closest first), then
the rest.
"""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cfx.data.imageio import check_regular_file, image_to_array, open_image
from cfx.data.mvtec import IMAGE_EXTENSIONS
from cfx.errors import CfxError, DataError
from cfx.cluster import worker_spec
from cfx.inspection import image_sha, score_batch
from cfx.resultdb import ResultDB

#: a part called OK with a score within this of the threshold is doubtful. Both detectors' scores
#: are z-scores on held-out good parts, so this is one standard deviation of a good part's score.
DOUBT_MARGIN = 1.0
#: images read and scored per batch (one forward pass; bounded memory for lots of any size)
CHUNK = 64
#: the columns of a lot's row
COLUMNS = ("lot", "path", "image_sha", "score", "threshold", "anomalous", "verdict")

ProgressFn = Callable[[int, int, str], None]


def lot_split(folder: str | Path) -> str:
    """The split a lot's rows are stored under: its folder's name and a digest of its resolved path
    (two lots with one name never share rows)."""
    p = Path(folder).resolve()
    return f"lot:{p.name}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


def lot_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (nested folders included, hidden ones skipped), sorted by path.

    Raises:
        DataError: not a folder, or no image in it (one line).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder of part images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def folder_signature(folder: str | Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when an image arrives, goes or is rewritten: (path, size, mtime in ns) of every
    image file (a cheap check for watching a lot; no image is read)."""
    root = Path(folder)
    try:
        files = lot_files(root)
    except DataError:
        return ()
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def watch_lot(bundle, folder: str | Path, db: ResultDB, on_new: Callable[[list[dict[str, Any]]], None],
              stop: threading.Event, interval: float = 2.0, rounds: int | None = None) -> dict[str, Any] | None:
    """Inspect a lot as its images arrive: whenever the folder changes (:func:`folder_signature`),
    inspect it again (only the new or changed files are scored) and call ``on_new`` with the rows
    not seen before, in queue order. Ends when ``stop`` is set (or after ``rounds`` checks); the
    last result (None if the folder never held an image)."""
    seen: set[tuple[str, str]] = set()
    last_sig = None
    result = None
    n = 0
    while not stop.is_set() and (rounds is None or n < rounds):
        n += 1
        sig = folder_signature(folder)
        if sig and sig != last_sig:
            last_sig = sig
            result = inspect_lot(bundle, folder, db)
            new = [r for r in result["images"] if (r["path"], r["image_sha"]) not in seen]
            seen |= {(r["path"], r["image_sha"]) for r in result["images"]}
            if new:
                on_new(new)
        stop.wait(interval)
    return result


def _chunks(files: list[Path], root: Path, size: int, channels: int
            ) -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
    """(relative paths, images, messages of unreadable files) per :data:`CHUNK` files."""
    for i in range(0, len(files), CHUNK):
        names, arrays, skipped = [], [], []
        for f in files[i:i + CHUNK]:
            rel = f.relative_to(root).as_posix()
            try:
                check_regular_file(f, rel)
                arrays.append(image_to_array(open_image(f, rel), size, channels))
                names.append(rel)
            except DataError as exc:
                skipped.append(str(exc))
        yield names, (np.stack(arrays) if arrays else np.zeros((0, channels, size, size), np.float32)), skipped


def verdict(score: float, threshold: float) -> str:
    """``NG`` above the threshold, ``doubtful`` within :data:`DOUBT_MARGIN` below it, else ``OK``."""
    if score > threshold:
        return "NG"
    return "doubtful" if score >= threshold - DOUBT_MARGIN else "OK"


def queue_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NG first (highest score first), then doubtful (closest to the threshold first), then OK."""
    rank = {"NG": 0, "doubtful": 1, "OK": 2}
    return sorted(rows, key=lambda r: (rank[r["verdict"]], -r["score"] if r["verdict"] == "NG"
                                       else abs(r["threshold"] - r["score"]), r["path"]))


def repair(bundle, image: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """A part's counterfactual repair: the smallest local edit towards its nearest good part (of
    the category's train/good) that the detector calls normal, as the concepts' "whole" edit.
    About 25 detector evaluations. Returns (the repaired image, whether the detector calls it
    normal, its score)."""
    from cfx.explainers.edit import detector_heat, minimal_edit, normal_content

    heat = detector_heat(bundle, image)
    content, _ = normal_content(bundle, image, "score", heat)
    e = minimal_edit(bundle, image, "score", heat, {"nearest normal": content}, None)
    return e.image, bool(e.valid), float(e.score)


def decision_summary(rows: list[dict[str, Any]], decided: dict[str, dict[str, Any]], lot: str) -> dict[str, int]:
    """What the inspector's decisions say about the detector on a lot (``decided``: the review
    store's latest decision per part name ``<lot>/<path>``).

    Returns:
        ``{"parts", "called_ng", "decided", "confirmed_ng" (called NG, decided NG), "overruled"
        (called NG, decided OK: false alarms), "escapes" (called OK or doubtful, decided NG),
        "confirmed_ok"}``.
    """
    out = dict.fromkeys(("parts", "called_ng", "decided", "confirmed_ng", "overruled", "escapes", "confirmed_ok"), 0)
    for r in rows:
        out["parts"] += 1
        called = r["verdict"] == "NG"
        out["called_ng"] += called
        d = decided.get(f"{lot}/{r['path']}", {}).get("verdict")
        if d is None:
            continue
        out["decided"] += 1
        key = {(True, "NG"): "confirmed_ng", (True, "OK"): "overruled", (False, "NG"): "escapes",
               (False, "OK"): "confirmed_ok"}[(called, d)]
        out[key] += 1
    return out


def lot_task(spec, folder: str, names: list[str], split: str, run: str | None) -> int:
    """One batch of a lot on a Dask worker: the named files of ``folder`` read, scored with the run's
    models (:func:`cfx.cluster.worker_bundle`) and stored; how many."""
    from cfx.cluster import worker_bundle
    from cfx.resultdb import open_db

    b = worker_bundle(spec)
    root = Path(folder)
    images = np.stack([image_to_array(open_image(root / n, n), b.image_size, b.channels) for n in names])
    score_batch(b, names, names, images, [""] * len(names), open_db(spec.db_path), b.category, split, run)
    return len(names)


def inspect_lot(bundle, folder: str | Path, db: ResultDB, progress: ProgressFn | None = None,
                client: Any = None) -> dict[str, Any]:
    """Score every image of a lot with the bundle's detector (stored ones are read back, not scored
    again) and store each verdict, score and map.

    With a Dask ``client`` (a big lot: ``cfx inspect --lot DIR --workers N`` or ``--scheduler``),
    this process still reads and hashes every file (to find what is stored) and each batch of new
    files is a task: a worker reads them again, scores them with the run's models and stores the
    rows in the same database.

    Returns:
        ``{"lot", "folder", "category", "model", "run", "images": [rows in queue order], "summary":
        {"images", "NG", "doubtful", "OK", "unreadable"}, "skipped": [messages], "seconds"}``.

    Raises:
        DataError: not a folder, or no image in it.
    """
    t0 = time.perf_counter()
    root = Path(folder)
    files = lot_files(root)
    split = lot_split(root)
    model = bundle.key()
    stored = db.image_keys(model, split)
    run = db.start_run("lot", dataset=bundle.dataset, category=bundle.category, model=model, total=len(files),
                       engine="local" if client is None else "dask", params={"lot": split, "folder": str(root.resolve())})
    keys: list[tuple[str, str]] = []
    skipped: list[str] = []
    done = 0
    futures: list[tuple[Any, int]] = []
    spec = None if client is None else worker_spec(bundle, db.path, bundle.loaded.data_root)
    try:
        for names, images, bad in _chunks(files, root, bundle.image_size, bundle.channels):
            skipped += bad
            shas = [image_sha(im) for im in images]
            keys += list(zip(names, shas))
            todo = [i for i, k in enumerate(zip(names, shas)) if k not in stored]
            if todo and client is not None:
                futures.append((client.submit(lot_task, spec, str(root.resolve()), [names[i] for i in todo], split,
                                              run, pure=False, retries=2), len(todo)))
            elif todo:  # scored and stored as a category's split is (no defect type: unlabeled)
                score_batch(bundle, [names[i] for i in todo], [names[i] for i in todo], images[todo], [""] * len(todo),
                            db, bundle.category, split, run)
            done += len(names) + len(bad) - (len(todo) if client is not None else 0)
            if progress is not None:
                progress(done, len(files), names[-1] if names else "")
        if futures:
            from distributed import as_completed

            sizes = {f.key: n for f, n in futures}
            for fut in as_completed([f for f, _ in futures]):
                fut.result()
                done += sizes[fut.key]
                if progress is not None:
                    progress(done, len(files), f"{done} inspected")
    except (CfxError, OSError) as exc:
        db.finish_run(run, "failed", seconds=time.perf_counter() - t0, summary={"error": str(exc)})
        raise
    by_key = {(r["path"], r["image_sha"]): r for r in db.images(model, split=split)}
    rows = []
    for key in keys:
        r = by_key.get(key)
        if r is not None:
            rows.append({"lot": split, "path": r["path"], "image_sha": r["image_sha"], "score": float(r["score"]),
                         "threshold": float(r["threshold"]), "anomalous": bool(r["anomalous"]),
                         "verdict": verdict(float(r["score"]), float(r["threshold"]))})
    rows = queue_order(rows)
    summary = {"images": len(rows), **{v: sum(r["verdict"] == v for r in rows) for v in ("NG", "doubtful", "OK")},
               "unreadable": len(skipped)}
    seconds = time.perf_counter() - t0
    db.finish_run(run, "done", seconds=seconds, summary=summary)
    return {"lot": split, "folder": str(root.resolve()), "category": bundle.category, "model": model, "run": run,
            "images": rows, "summary": summary, "skipped": skipped, "seconds": seconds}


class LotJob:
    """:func:`inspect_lot` in a daemon thread, with its progress to poll (the app's Lots page).

    Attributes:
        done, total: files handled so far and in all. result: the lot's result once finished.
        error: one line if it failed.
    """

    def __init__(self, bundle, folder: str | Path, db: ResultDB) -> None:
        self.done, self.total = 0, 0
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, args=(bundle, folder, db), name="cfx-lot", daemon=True)

    def start(self) -> "LotJob":
        self._thread.start()
        return self

    def _progress(self, done: int, total: int, message: str) -> None:
        self.done, self.total = done, total

    def _run(self, bundle, folder, db) -> None:
        try:
            self.result = inspect_lot(bundle, folder, db, self._progress)
        except CfxError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown by the page in one line
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first batch)."""
        if not self.done or not self.total:
            return None
        return (time.time() - self.started) / self.done * (self.total - self.done)
