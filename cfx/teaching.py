"""The detector learns from the inspector's decisions on a lot (:mod:`cfx.lots`).

A lesson takes the lot's overruled false alarms (parts the detector in use calls NG that the
inspector decided OK) and makes a new version of the category's PatchCore
(:mod:`cfx.models.versions`; the version in use is archived first and can be restored):

1. **Memory bank.** Their patches are added to the bank by :meth:`PatchCore.learn`: the fewest
   that bring each of their patches as close to the bank as the training patches are, so what
   made them look unusual becomes normal and every earlier bank row stays.
2. **Threshold.** It is placed again at the card's false-alarm target
   (:func:`~cfx.detectors.calibration.threshold_at_fpr`) on the scores of normal parts the new
   version was not fitted on: train/good scored out of fold against the extended fold banks,
   each taught part scored against the extended bank without its own patches (the decisions' OK
   scores as more normals), and the lot's other parts decided OK (scored by the new version,
   not taught), but never above the previous version's threshold: the taught parts are the most
   unusual good parts of a lot, chosen for it, and at a strict target the largest of them alone
   would set the threshold (on the real bottle at 1 %: 5.37 -> 6.33, one more defect let through;
   BENCHMARKS.md). A lesson only adds normal patches, so every score can only fall: the false
   alarms go down at the old threshold without any defect crossing back. The parts decided NG
   are the known defects: how many the new threshold lets through is reported, and recorded,
   beside the expected rates.
3. **Record.** The card's entry gets the version, the parts (path in the lot, image hash, score
   before, decision, reviewer and when), who taught it and when, and the rates before and after:
   expected false-alarm rate (conformal, on the normals above), expected detection rate on
   synthetic defects (made from train/good, scored out of fold), and the false alarms and
   escapes among the lot's decided parts.

The VAE detector cannot grow a bank: a lesson under it marks the VAE for retraining with the
parts (``detectors.vae.retrain`` in the card), for the next ``cfx train --detector vae`` on a
train/good that holds them.
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cfx.atomic import write_json
from cfx.data.imageio import load_image
from cfx.detectors import PatchCore
from cfx.detectors.calibration import DEFAULT_TARGET_FPR, expected_tpr, fpr_at, threshold_at_fpr
from cfx.errors import DataError
from cfx.models.bundle import category_dir, load_checkpoint
from cfx.models.card import read_card
from cfx.models.versions import archive, next_version
from cfx.inspection import image_sha

Log = Callable[[str], None]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def overruled(lot: dict[str, Any], decided: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The lot's rows that the model in use calls NG and the inspector decided OK (``decided``: the
    review store's latest decision per part name ``<lot>/<path>``)."""
    return [r for r in lot["images"]
            if r["verdict"] == "NG" and decided.get(f"{lot['lot']}/{r['path']}", {}).get("verdict") == "OK"]


def _decided(lot: dict[str, Any], decided: dict[str, dict[str, Any]], verdict: str) -> list[dict[str, Any]]:
    return [r for r in lot["images"] if decided.get(f"{lot['lot']}/{r['path']}", {}).get("verdict") == verdict]


def _read(folder: Path, rows: list[dict[str, Any]], size: int, channels: int) -> tuple[list[dict], np.ndarray]:
    """The rows whose image is still the one scored (same content hash) and their images."""
    kept, images = [], []
    for r in rows:
        try:
            im = load_image(folder / r["path"], size, channels, r["path"])
        except DataError:
            continue
        if image_sha(im) == r["image_sha"]:
            kept.append(r)
            images.append(im)
    return kept, (np.stack(images) if images else np.zeros((0, channels, size, size), np.float32))


def _rates(scores_ok: np.ndarray, scores_ng: np.ndarray, threshold: float, fpr: dict, tpr: dict) -> dict[str, Any]:
    return {"threshold": float(threshold), "expected_fpr": fpr, "expected_tpr": tpr,
            "decided_ok": int(len(scores_ok)), "false_alarms": int((scores_ok > threshold).sum()),
            "decided_ng": int(len(scores_ng)), "escapes": int((scores_ng <= threshold).sum())}


def teach(bundle, train_images: np.ndarray, lot: dict[str, Any], folder: str | Path,
          decided: dict[str, dict[str, Any]], reviewer: str = "", log: Log | None = None) -> dict[str, Any]:
    """Teach the category's detector the lot's overruled false alarms (see the module docstring).

    Args:
        bundle: the models in use (the selected detector is taught; not changed in place: the
            new version is written to the models folder, and a load after it sees it).
        train_images: the category's train/good (N, C, H, W) at the card's size, as the fit read them.
        lot: :func:`cfx.lots.inspect_lot`'s result for ``folder`` with this bundle.
        decided: the review store's latest decisions of the category.
        reviewer: who taught it (recorded).

    Returns:
        ``{"version", "previous", "parts": [...], "added_patches", "before": rates, "after":
        rates, "seconds"}`` (rates: ``threshold``, ``expected_fpr``, ``expected_tpr``,
        ``decided_ok``, ``false_alarms``, ``decided_ng``, ``escapes``); for the VAE
        ``{"marked": [...], "detector": "vae"}``.

    Raises:
        DataError: nothing to teach (no overruled part whose image is unchanged), or too few
            train/good images.
    """
    t0 = time.perf_counter()
    log = log or (lambda m: None)
    folder = Path(folder)
    if lot.get("model") != bundle.key():
        raise DataError("the lot was inspected with another model version: inspect it again before teaching")
    parts, images = _read(folder, overruled(lot, decided), bundle.image_size, bundle.channels)
    if not parts:
        raise DataError("nothing to teach: no part of this lot is called NG by the detector and decided OK")
    d = category_dir(bundle.dataset, bundle.category)
    card = read_card(bundle.dataset, bundle.category)
    name = bundle.detector_name
    when = _now()
    lesson = []
    for r in parts:
        how = decided[f"{lot['lot']}/{r['path']}"]
        lesson.append({"path": r["path"], "image_sha": r["image_sha"], "score_before": float(r["score"]),
                       "reason": how.get("reason", ""), "decided_by": how.get("reviewer", ""),
                       "decided_at": how.get("at", "")})
    if name != "patchcore":
        info = card.setdefault("detectors", {}).setdefault(name, {})
        marked = {p["image_sha"]: p for p in info.get("retrain", {}).get("parts", [])}
        marked.update({p["image_sha"]: {**p, "lot": str(folder.resolve())} for p in lesson})
        info["retrain"] = {"parts": list(marked.values()), "reviewer": reviewer, "at": when}
        write_json(d / "card.json", card)
        log(f"{bundle.category}: the {name} detector is marked for retraining with {len(marked)} part(s)")
        return {"detector": name, "marked": list(marked.values()), "seconds": time.perf_counter() - t0}
    if len(train_images) < 3:
        raise DataError(f"{bundle.category} has {len(train_images)} train/good image(s); a lesson needs at least 3")

    old = bundle.detector
    info_old = card["detectors"][name]
    target_fpr = float(info_old.get("target_fpr", DEFAULT_TARGET_FPR))
    decided_ok = _decided(lot, decided, "OK")
    ng_rows = _decided(lot, decided, "NG")
    _, ok_images = _read(folder, [r for r in decided_ok if r not in parts], bundle.image_size, bundle.channels)
    ng_kept, ng_images = _read(folder, ng_rows, bundle.image_size, bundle.channels)
    before = _rates(np.array([r["score"] for r in decided_ok], np.float64),
                    np.array([r["score"] for r in ng_rows], np.float64), bundle.threshold,
                    info_old.get("expected_fpr", {}), info_old.get("expected_tpr", {}))

    det = PatchCore.from_checkpoint(load_checkpoint(d / old.filename)).to(bundle.device).eval()
    log(f"{bundle.category}: teaching PatchCore {len(parts)} part(s) on {len(train_images)} train/good images")
    seed = int(card.get("seed", 0))
    from cfx.training.patchcore import folds_key, load_folds, save_folds

    train_images = np.asarray(train_images, np.float32)
    key = folds_key(det, train_images, seed)
    base_size = int(info_old.get("base_bank", len(det.memory_bank)))
    res = det.learn(torch.from_numpy(train_images), torch.from_numpy(images), seed=seed, base_size=base_size,
                    base_folds=load_folds(d, key))
    save_folds(d, det, key)  # the next lesson need not search them again
    z = lambda raw: ((np.asarray(raw, np.float64) - float(det.norm[0])) / float(det.norm[1]))  # noqa: E731
    with torch.no_grad():
        score = lambda x: np.concatenate([z(det.raw(torch.from_numpy(x[i:i + 16]).to(bundle.device))[1].cpu())  # noqa: E731
                                          for i in range(0, len(x), 16)]) if len(x) else np.zeros(0)
        ok_scores, ng_scores = score(ok_images), score(ng_images)
    normals = np.r_[z(res["raw"]), z(res["taught_raw"]), ok_scores]
    cal = threshold_at_fpr(normals, target_fpr)
    if cal["threshold"] > bundle.threshold:  # a lesson never makes the detector less sensitive than before
        cal = {**cal, "threshold": float(bundle.threshold), "expected_fpr": fpr_at(normals, bundle.threshold),
               "rule": cal["rule"] + "; above the previous version's threshold, so that one is kept"}
    det.threshold.fill_(cal["threshold"])
    from cfx.training.patchcore import _synthetic_out_of_fold

    tpr = expected_tpr(cal["threshold"], _synthetic_out_of_fold(det, train_images, seed))
    after = _rates(np.r_[z(res["taught_raw"]), ok_scores], ng_scores, cal["threshold"], cal["expected_fpr"], tpr)
    after["escaped_parts"] = [r["path"] for r, s in zip(ng_kept, ng_scores) if s <= cal["threshold"]]

    previous = archive(d, name, card) or 1
    version = next_version(d, name, card)
    sha = det.save(d / det.filename)
    info = {**info_old, "sha256": sha, "version": version, "threshold": cal["threshold"],
            "threshold_rule": cal["rule"] + f" ({len(res['raw'])} train/good out of fold, {len(parts)} taught part(s) "
                                            f"without their own patches, {len(ok_scores)} other part(s) decided OK)",
            "expected_fpr": cal["expected_fpr"], "expected_tpr": tpr,
            "calibration": {**info_old.get("calibration", {}), "normals": len(normals), "reached": cal["reached"]},
            "config": det.config(), "memory_bank": list(det.memory_bank.shape), "base_bank": base_size,
            "taught": {"parts": lesson, "lot": str(folder.resolve()), "reviewer": reviewer, "at": when,
                       "from_version": previous, "added_patches": res["added"],
                       "added_per_part": res["added_per_part"], "before": before, "after": after}}
    card["detectors"][name] = info
    card.setdefault("files", {})[det.filename] = sha
    write_json(d / "card.json", card)
    seconds = time.perf_counter() - t0
    log(f"{bundle.category}: PatchCore version {version} (from {previous}): {res['added']} patches added, threshold "
        f"{bundle.threshold:.3f} -> {cal['threshold']:.3f}, {seconds:.0f} s")
    return {"detector": name, "version": version, "previous": previous, "parts": lesson,
            "added_patches": res["added"], "before": before, "after": after, "seconds": seconds}


def last_lesson(card: dict[str, Any], detector: str = "patchcore") -> dict[str, Any] | None:
    """The lesson that made the version in use (None for a fitted version)."""
    info = card.get("detectors", {}).get(detector) or {}
    return info.get("taught") or None
