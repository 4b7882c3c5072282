"""Reports rendered to bytes and written atomically; what ``python -m cfx explain --out`` writes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cfx.atomic import write_bytes
from cfx.data.imageio import array_to_pil
from cfx.reports.colours import calibrated, calibrated_display, heat_scale, max_abs, normalise
from cfx.reports.encode import pil_png, safe_name
from cfx.reports.figures import Panel, panel_png
from cfx.reports.sheet import pdf_bytes, png_bytes
from cfx.reports.html_page import html_text
from cfx.reports.report import FORMATS, Report, clean_json, json_bytes, report_dict


# ------------------------------------------------------------------ files
def render(report: Report, fmt: str) -> bytes:
    """The report in one of :data:`FORMATS` as bytes."""
    if fmt == "png":
        return png_bytes(report)
    if fmt == "json":
        return json_bytes(report)
    if fmt == "pdf":
        return pdf_bytes(report)
    if fmt == "html":
        return html_text(report).encode()
    raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")


def write_report(report: Report, out_dir: str | os.PathLike, formats: Iterable[str] = ("png", "json"),
                 stem: str = "report") -> dict[str, Path]:
    """Write the report files atomically as ``<out_dir>/<stem>.<fmt>``.

    Returns:
        The written paths by format.
    """
    out = Path(out_dir)
    written = {}
    for fmt in formats:
        written[fmt] = write_bytes(out / f"{stem}.{fmt}", render(report, fmt))
    return written


def export_explanations(report: Report, out_dir: str | os.PathLike,
                        formats: Sequence[str] = ("png", "json")) -> dict[str, Any]:
    """What ``python -m cfx explain --out DIR`` writes, and the JSON object it prints.

    Writes (atomically) ``<method>_heatmap.png`` (the map in the shared colour scale over the
    image), ``<method>_cf<k>.png`` (each counterfactual) and ``<method>_cf<k>_diff.png`` (its
    difference map) for every method, ``original.png``, and the report files of ``formats``.

    Returns:
        ``{"image", "dataset", "category", "model", "target", "detector": {"score", "threshold",
        "anomalous", ...}, "methods": {name: {"seconds", "heatmap": path or None,
        "counterfactuals": [{"path", "diff_path", "score_after", "valid", "l1", "edit_area",
        "locality", "realism", "content", ...}], "error", "score_before", "threshold", "params", "info"}}, "report":
        {fmt: path}}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "original.png", pil_png(array_to_pil(report.image)))
    methods: dict[str, Any] = {}
    nums = report_dict(report)["methods"]
    for name, exp in report.explanations.items():
        stem = safe_name(name)
        entry: dict[str, Any] = {"seconds": round(exp.seconds, 4), "heatmap": None, "counterfactuals": [],
                                 "error": exp.error, "score_before": exp.score_before, "threshold": exp.threshold,
                                 "target": exp.target, "params": exp.params, "info": nums[name]["info"]}
        if exp.ok and exp.heatmap is not None:
            p = (Panel(name, report.image, calibrated_display(exp.heatmap), normal_level=np.asarray(exp.heatmap))
                 if calibrated(exp) else Panel(name, report.image, normalise(exp.heatmap, heat_scale(exp))))
            entry["heatmap"] = str(write_bytes(out / f"{stem}_heatmap.png", panel_png(report, p, upscale=1)))
            entry["heatmap_scale"] = heat_scale(exp)
        for k, cf in enumerate(exp.counterfactuals if exp.ok else []):
            path = write_bytes(out / f"{stem}_cf{k}.png", pil_png(array_to_pil(cf.image)))
            d = (cf.image - report.image).mean(0)
            dpath = write_bytes(out / f"{stem}_cf{k}_diff.png",
                                panel_png(report, Panel("", None, normalise(d, max_abs(d))), upscale=1))
            entry["counterfactuals"].append({"path": str(path), "diff_path": str(dpath), **cf.to_dict()})
        if len(exp.counterfactuals) > 1:
            entry["diversity"] = nums[name].get("diversity")
        methods[name] = entry
    files = write_report(report, out, formats) if formats else {}
    return clean_json({
        "image": report.name, "dataset": report.dataset, "category": report.category,
        "model": {"key": report.model_key, "hash": report.model_hash}, "target": report.target,
        "detector": dict(report.detector), "methods": methods, "report": {k: str(v) for k, v in files.items()},
    })
