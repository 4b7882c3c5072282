"""An audit run's files: per category its JSON (:meth:`AuditResult.to_json`) and a CSV of every
(image, method) row, and one per-category summary table for the whole run; each written atomically."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfx.atomic import write_bytes, write_json
from cfx.audit.results import AuditResult
from cfx.inert import csv_cell
from cfx.reports.encode import safe_name

#: the columns of the per-category summary table
SUMMARY_COLUMNS = ("dataset", "category", "method", "images", "detected", "evaluated", "flagged", "flagged_fraction",
                   "mean_optimal_jaccard", "pixel_auroc", "errors", "compute_seconds")


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as CSV text (the columns of the first row unless given; None as an empty cell; text a
    spreadsheet would run as a formula made inert, :func:`cfx.inert.csv_cell`)."""
    buf = io.StringIO()
    cols = list(columns or (rows[0].keys() if rows else []))
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else csv_cell(r.get(k))) for k in cols})
    return buf.getvalue()


def unit_rows(result: AuditResult) -> list[dict[str, Any]]:
    """Every (image, method) row of a category's audit, with the category."""
    return [{"dataset": result.dataset, "category": result.category, **r} for r in result.flag_rows()]


def summary_rows(results: Sequence[AuditResult]) -> list[dict[str, Any]]:
    """One row per (category, method): the summary table of a run over several categories."""
    out = []
    for r in results:
        s = r.summary()
        for m in r.methods:
            out.append({"dataset": r.dataset, "category": r.category, "method": m, "images": s["n_images"],
                        "detected": s["n_detected"], "evaluated": s["n_evaluated"][m], "flagged": s["n_flagged"][m],
                        "flagged_fraction": s["flagged_fraction"][m], "mean_optimal_jaccard": s["mean_optimal_jaccard"][m],
                        "pixel_auroc": s["pixel_auroc"][m], "errors": s["n_errors"][m],
                        "compute_seconds": round(sum(x.methods[m].seconds for x in r.images if m in x.methods), 3)})
    return out


def write_run(results: Sequence[AuditResult], out: str | Path) -> list[Path]:
    """``audit-<dataset>-<category>.json`` and ``.csv`` per category and ``summary.csv`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        stem = safe_name(f"audit-{r.dataset}-{r.category}-{r.target}")
        paths.append(write_json(out / f"{stem}.json", r.to_json()))
        paths.append(write_bytes(out / f"{stem}.csv", csv_text(unit_rows(r)).encode()))
    paths.append(write_bytes(out / "summary.csv", csv_text(summary_rows(results), SUMMARY_COLUMNS).encode()))
    return paths
