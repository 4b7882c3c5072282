"""The lot report an inspector files: the lot's summary and decisions and, for every part called
NG or decided NG (up to :data:`LOT_REPORT_PARTS`, the decided ones first), its image, the
detector's map and its counterfactual repair with the decision; every part in the CSV and JSON.
PDF on A4 pages (:mod:`cfx.reports.sheet`'s layout) and one self-contained HTML page."""
from __future__ import annotations

import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from cfx.atomic import clean_json, json_default
from cfx.reports.colours import calibrated_caption, calibrated_display
from cfx.reports.encode import png_data_uri
from cfx.reports.figures import Panel, panel_png
from cfx.reports.sheet import (A4, PDF_MARGIN, PDF_COLS, Block, Line, LINE_PT, TITLE_PT, CAPTION_PT, _when, paginate,
                               panel_rows, pdf_from_pages, text_block)

#: parts drawn in a lot report (each costs a repair: about 25 detector evaluations); the rest are
#: in its CSV and JSON
LOT_REPORT_PARTS = 24
#: the columns of the lot's CSV
CSV_COLUMNS = ("path", "verdict", "score", "threshold", "decision", "reason", "reviewer")


@dataclass
class LotPart:
    path: str
    verdict: str
    score: float
    threshold: float
    decision: str = ""
    reason: str = ""
    reviewer: str = ""
    image: np.ndarray | None = field(default=None, repr=False)
    heat: np.ndarray | None = field(default=None, repr=False)
    repaired: np.ndarray | None = field(default=None, repr=False)
    repair_valid: bool = False
    repair_score: float = float("nan")

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CSV_COLUMNS}


@dataclass
class LotReport:
    lot: str
    folder: str
    dataset: str
    category: str
    model_key: str
    detector_label: str
    summary: dict[str, int]
    decisions: dict[str, int]
    parts: list[LotPart]
    drawn: list[LotPart]
    reviewer: str = ""
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def not_drawn(self) -> int:
        return sum(1 for p in self.parts if _drawable(p)) - len(self.drawn)


def _drawable(p: LotPart) -> bool:
    return p.verdict == "NG" or p.decision == "NG"


def lot_report(bundle, result: dict[str, Any], decided: dict[str, dict[str, Any]], reviewer: str = "",
               max_parts: int = LOT_REPORT_PARTS) -> LotReport:
    """The report of an inspected lot (``result``: :func:`cfx.lots.inspect_lot`; ``decided``: the
    review store's latest decision per part name ``<lot>/<path>``). Reads and repairs the drawn parts."""
    from cfx.data.imageio import load_image
    from cfx.lots import decision_summary, repair

    lot = result["lot"]
    parts = []
    for r in result["images"]:
        d = decided.get(f"{lot}/{r['path']}", {})
        parts.append(LotPart(r["path"], r["verdict"], float(r["score"]), float(r["threshold"]), d.get("verdict", ""),
                             d.get("reason", ""), d.get("reviewer") or ""))
    chosen = sorted((p for p in parts if _drawable(p)), key=lambda p: (not p.decision, -p.score))[:max_parts]
    for p in chosen:
        p.image = load_image(Path(result["folder"]) / p.path, bundle.image_size, bundle.channels)
        p.heat = np.asarray(bundle.analyse(p.image[None])["heatmap"][0])
        p.repaired, p.repair_valid, p.repair_score = repair(bundle, p.image)
    return LotReport(lot, result["folder"], bundle.dataset, bundle.category, bundle.key(), bundle.detector.label,
                     dict(result["summary"]), decision_summary(result["images"], decided, lot), parts, chosen, reviewer)


# ------------------------------------------------------------------ words
def header_lines(r: LotReport) -> list[Line]:
    s, d = r.summary, r.decisions
    out = [Line(f"Lot {Path(r.folder).name} · {r.dataset}/{r.category}", TITLE_PT, "bold"),
           Line(f"{s['images']} parts: {s['NG']} NG, {s['doubtful']} doubtful, {s['OK']} OK"
                + (f", {s['unreadable']} not readable" if s.get("unreadable") else ""), LINE_PT + 2, "bold"),
           Line(f"Decided {d['decided']} of {d['parts']}: {d['confirmed_ng']} NG confirmed, {d['overruled']} false "
                f"alarms overruled, {d['escapes']} escapes found (called OK, decided NG), {d['confirmed_ok']} OK "
                "confirmed"),
           Line(f"Model: {r.detector_label} · weights {r.model_key.rsplit('@', 1)[-1][:12]}"),
           Line(f"Date: {_when(r.created)} · Reviewer: {r.reviewer or '______________'}"),
           Line(f"Folder: {r.folder}", CAPTION_PT + 0.5)]
    if r.not_drawn:
        out.append(Line(f"{r.not_drawn} further NG parts are in the CSV and JSON, not drawn here.", CAPTION_PT + 0.5))
    return out


def _decision(p: LotPart) -> str:
    if not p.decision:
        return "not decided"
    return f"decided {p.decision}" + (f" by {p.reviewer}" if p.reviewer else "") + (f": {p.reason}" if p.reason else "")


def panels(r: LotReport) -> list[Panel]:
    """Three panels per drawn part: the part, the detector's map, the repair."""
    out = []
    for p in r.drawn:
        out.append(Panel(p.path, p.image, caption=f"called {p.verdict} (score {p.score:.3f} / {p.threshold:.3f}); "
                                                  f"{_decision(p)}"))
        out.append(Panel("the detector's map", p.image, calibrated_display(p.heat), caption=calibrated_caption(p.heat),
                         normal_level=p.heat))
        out.append(Panel("its repair", p.repaired, caption=f"the detector calls it "
                         f"{'normal' if p.repair_valid else 'still anomalous'} ({p.repair_score:.3f})"))
    return out


# ------------------------------------------------------------------ files
def lot_csv(r: LotReport) -> str:
    """Every part (cells a spreadsheet would run as a formula made inert: :func:`cfx.audit.export.csv_text`)."""
    from cfx.audit.export import csv_text

    return csv_text([p.row() for p in r.parts], CSV_COLUMNS)


def lot_json(r: LotReport) -> bytes:
    return json.dumps(clean_json({
        "lot": r.lot, "folder": r.folder, "dataset": r.dataset, "category": r.category,
        "model": {"key": r.model_key, "detector": r.detector_label}, "created": r.created, "reviewer": r.reviewer,
        "summary": r.summary, "decisions": r.decisions, "parts": [p.row() for p in r.parts],
        "repairs": {p.path: {"valid": p.repair_valid, "score": p.repair_score} for p in r.drawn}}),
        indent=1, default=json_default).encode()


def lot_pdf(r: LotReport) -> bytes:
    width = A4[0] - 2 * PDF_MARGIN
    bs = [text_block(header_lines(r), width), *panel_rows(panels(r), width, PDF_COLS)]
    if r.drawn:
        bs.append(Block("bar", 0.75))
    return pdf_from_pages(paginate(bs), f"lot {Path(r.folder).name}")


def lot_html(r: LotReport) -> str:
    """One self-contained page (every image embedded; every text the user typed escaped)."""
    e = html.escape
    head = header_lines(r)
    top = f"<h1>{e(head[0].text)}</h1>" + "".join(f"<p>{e(ln.text)}</p>" for ln in head[1:])
    holder = SimpleNamespace(mask=None)
    figs = []
    for i in range(0, len(r.drawn) * 3, 3):
        cells = "".join(f"<figure><img alt='{e(p.title)}' src='{png_data_uri(panel_png(holder, p))}'>"
                        f"<figcaption><b>{e(p.title)}</b><br>{e(p.caption)}</figcaption></figure>"
                        for p in panels(r)[i:i + 3])
        figs.append(f"<div class='part'>{cells}</div>")
    rows = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in p.row().values()) + "</tr>" for p in r.parts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(head[0].text)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}} .part{{display:flex;gap:10px;margin:.6em 0}}
figure{{margin:0;width:260px}} figure img{{width:256px;image-rendering:pixelated}} figcaption{{font-size:12px}}</style>
</head><body>{top}
<h2>NG and decided parts</h2>{''.join(figs) or '<p>None.</p>'}
<h2>Every part</h2><table><tr>{''.join(f'<th>{c}</th>' for c in CSV_COLUMNS)}</tr>{rows}</table>
</body></html>
"""


LOT_FORMATS = {"pdf": lot_pdf, "html": lambda r: lot_html(r).encode(), "csv": lambda r: lot_csv(r).encode(),
               "json": lot_json}
