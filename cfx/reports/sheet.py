"""The report figure an inspector files: a header (category, part, verdict, score against the
threshold, model, date, reviewer), the panels in rows, one colour bar with words, and the
parameters in an appendix; one tall sheet as PNG, A4 portrait pages as PDF.

The layout is a list of blocks with heights in inches (:func:`blocks`), stacked top to bottom
and, for the PDF, cut into pages (:func:`pdf_pages`): every page is A4, its panels fill the
printable width, and no text is set below :data:`MIN_PT` points. Matplotlib's object API only (no
pyplot state), so reports can be drawn from several threads at once.
"""
from __future__ import annotations

import datetime as _dt
import io
import textwrap
from dataclasses import dataclass, field

import numpy as np

from cfx.reports.colours import NORMAL_CONTOUR, _cmap, heat_rgba, image_hwc
from cfx.explainers.base import method_label
from cfx.reports.figures import Panel, _fig_bytes, _short, panels
from cfx.reports.report import Report

#: A4 portrait (inches), the PDF's margin and its panels per row
A4, PDF_MARGIN, PDF_COLS = (8.27, 11.69), 0.5, 3
#: the PNG sheet: its width (inches), panels per row and resolution
PNG_WIDTH, PNG_COLS, REPORT_DPI = 9.6, 4, 224
#: type sizes (points); nothing smaller than MIN_PT is set
TITLE_PT, VERDICT_PT, LINE_PT, PANEL_PT, CAPTION_PT, MIN_PT = 14.0, 11.5, 9.0, 9.0, 7.5, 7.0
APPENDIX_PT = MIN_PT
GAP = 0.12  # between panels and blocks (inches)
#: what the explained target is called in the header
TARGET_WORDS = {"score": "the anomaly score", "classifier": "the classifier's P(anomalous)",
                "recon": "the reconstruction error", "mahalanobis": "the Mahalanobis distance"}
#: what a colour bar's ends mean, in words (no "map / scale")
BAR_WORDS = ("pushes the score down", "no effect", "pushes the score up")


@dataclass
class Line:
    text: str
    size: float = LINE_PT
    weight: str = "normal"
    colour: str = "#222222"
    family: str = "sans-serif"


@dataclass
class Block:
    """A strip of the sheet: ``text`` lines, a ``row`` of panels or the colour ``bar``."""

    kind: str
    height: float
    lines: list[Line] = field(default_factory=list)
    panels: list[Panel] = field(default_factory=list)
    caption_lines: int = 0
    title_lines: int = 1


# ------------------------------------------------------------------ words
def _when(created: str) -> str:
    try:
        t = _dt.datetime.fromisoformat(created)
    except ValueError:
        return created
    return t.strftime("%Y-%m-%d %H:%M UTC") if t.utcoffset() == _dt.timedelta(0) else t.isoformat(timespec="minutes")


def header_lines(report: Report) -> list[Line]:
    """The header: what was inspected, the verdict with its score against the threshold, the model,
    the date and the reviewer, then one short line per method (no parameters: see the appendix)."""
    d = report.detector
    where = "/".join(p for p in (report.dataset, report.category) if p)
    out = [Line(f"{where} · {report.name}" if where else report.name, TITLE_PT, "bold")]
    if report.title:
        out.append(Line(report.title, LINE_PT, "bold"))
    if "score" in d:
        bad = bool(d.get("anomalous"))
        out.append(Line(f"{'ANOMALOUS' if bad else 'NORMAL'} · anomaly score {d['score']:.3f} against the threshold "
                        f"{d['threshold']:.3f} ({d['score'] - d['threshold']:+.3f})", VERDICT_PT, "bold",
                        "#b2182b" if bad else "#1a7f37"))
    model = report.detector_label or d.get("detector", "")
    out.append(Line(f"Model: {model}" + (f" · weights {report.model_hash[:12]}" if report.model_hash else "")
                    + f" · explained: {TARGET_WORDS.get(report.target, report.target)}"))
    out.append(Line(f"Date: {_when(report.created)} · Reviewer: {report.reviewer or '______________'}"))
    if "classifier_prob" in d:
        out.append(Line(f"Classifier P(anomalous) {d['classifier_prob']:.3f} (threshold "
                        f"{d['classifier_threshold']:.3f})"))
    for name, exp in report.explanations.items():
        label = method_label(name)
        if not exp.ok:
            out.append(Line(f"{label}: failed ({exp.error})", CAPTION_PT + 0.5))
            continue
        s = f"{label}: {exp.seconds:.2f} s"
        if exp.counterfactuals:
            best = exp.counterfactuals[0]
            s += (f"; score {exp.score_before:.3f} -> {best.score_after:.3f}, "
                  f"{sum(c.valid for c in exp.counterfactuals)}/{len(exp.counterfactuals)} valid, "
                  f"L1 {best.metrics.get('l1', float('nan')):.3f}")
        out.append(Line(s, CAPTION_PT + 0.5))
    return out


def appendix_lines(report: Report) -> list[Line]:
    """Every parameter, the seed and the full model key: what reproduces the report."""
    out = [Line("Appendix: parameters", LINE_PT, "bold")]
    mono = dict(size=APPENDIX_PT, family="monospace")
    for name, exp in report.explanations.items():
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(exp.params.items()))
        out.append(Line(f"{method_label(name)} ({name}): seed {exp.seed}" + (f"; {params}" if params else ""), **mono))
    if report.params:
        out.append(Line("page: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(report.params.items())), **mono))
    out.append(Line(f"model key: {report.model_key or '?'} · created {report.created} · made by cfx", **mono))
    return out


def _wrap(lines: list[Line], width: float) -> list[Line]:
    out = []
    for ln in lines:
        per = max(20, int(width * 72 / (ln.size * (0.62 if ln.family == "monospace" else 0.57))))
        for part in textwrap.wrap(ln.text, per) or [""]:
            out.append(Line(part, ln.size, ln.weight, ln.colour, ln.family))
    return out


def _text_height(lines: list[Line]) -> float:
    return sum(ln.size * 1.4 / 72 for ln in lines)


def _caption_chars(side: float) -> int:
    return max(16, int(side * 72 / (CAPTION_PT * 0.58)))


def _title(p: Panel, side: float) -> list[str]:
    """A panel's title in at most two lines that fit its width."""
    return textwrap.wrap(p.title, max(12, int(side * 72 / (PANEL_PT * 0.55))))[:2] or [""]


def _title_height(n: int) -> float:
    return n * PANEL_PT * 1.3 / 72 + 0.06


# ------------------------------------------------------------------ layout
def text_block(lines: list[Line], width: float) -> Block:
    """Lines wrapped to ``width`` inches, as one block."""
    wrapped = _wrap(lines, width)
    return Block("text", _text_height(wrapped) + GAP, wrapped)


def panel_rows(ps: list[Panel], width: float, ncols: int) -> list[Block]:
    """Panels in rows of ``ncols`` across ``width`` inches, each row as tall as its captions need."""
    side = (width - (ncols - 1) * GAP) / ncols
    out = []
    for r in range(0, len(ps), ncols):
        row = ps[r:r + ncols]
        n_cap = max(len(textwrap.wrap(" ".join(p.caption.split()), _caption_chars(side))[:6]) for p in row)
        n_title = max(len(_title(p, side)) for p in row)
        out.append(Block("row", _title_height(n_title) + side + n_cap * CAPTION_PT * 1.35 / 72 + GAP + 0.05,
                         panels=row, caption_lines=n_cap, title_lines=n_title))
    return out


def blocks(report: Report, width: float, ncols: int) -> list[Block]:
    """The sheet's blocks for a printable ``width`` (inches) and ``ncols`` panels per row."""
    ps = panels(report)
    out = [text_block(header_lines(report), width), *panel_rows(ps, width, ncols)]
    if any(p.heat is not None for p in ps):
        out.append(Block("bar", 0.75))
    return [*out, text_block(appendix_lines(report), width)]


def paginate(bs: list[Block]) -> list[list[Block]]:
    """Blocks cut into A4 pages (a block is never split; one taller than a page gets its own)."""
    room = A4[1] - 2 * PDF_MARGIN
    pages: list[list[Block]] = [[]]
    used = 0.0
    for b in bs:
        if pages[-1] and used + b.height > room:
            pages.append([])
            used = 0.0
        pages[-1].append(b)
        used += b.height
    return pages


def pdf_pages(report: Report) -> list[list[Block]]:
    """The report's blocks on A4 pages."""
    return paginate(blocks(report, A4[0] - 2 * PDF_MARGIN, PDF_COLS))


# ------------------------------------------------------------------ drawing
def _draw(fig, mask: np.ndarray | None, bs: list[Block], left: float, top: float, width: float, ncols: int) -> None:
    """Draw blocks on ``fig`` from ``top`` (inches from the figure's top) down (``mask``: the
    defect mask outlined on every panel, or None)."""
    W, H = fig.get_size_inches()
    y = top
    side = (width - (ncols - 1) * GAP) / ncols
    cm = _cmap()
    for b in bs:
        if b.kind == "text":
            for ln in b.lines:
                y += ln.size * 1.4 / 72
                fig.text(left / W, 1 - y / H, ln.text, fontsize=ln.size, fontweight=ln.weight, color=ln.colour,
                         family=ln.family, va="baseline", ha="left")
            y += GAP
        elif b.kind == "row":
            title_h = _title_height(b.title_lines)
            for i, p in enumerate(b.panels):
                x = left + i * (side + GAP)
                ax = fig.add_axes([x / W, 1 - (y + title_h + side) / H, side / W, side / H])
                _panel(ax, mask, p, cm, side)
            y += b.height
        elif b.kind == "bar":
            _bar(fig, left, y, width, cm)
            y += b.height


def _panel(ax, mask: np.ndarray | None, p: Panel, cm, side: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("\n".join(_title(p, side)), fontsize=PANEL_PT, pad=3)
    caption = "\n".join(textwrap.wrap(" ".join(p.caption.split()), _caption_chars(side))[:6])
    if p.image is None and p.heat is None:
        ax.text(0.5, 0.5, caption, ha="center", va="center", fontsize=CAPTION_PT, transform=ax.transAxes)
        ax.set_facecolor("#f6e9e9")
        return
    if p.image is not None:
        im = image_hwc(p.image)
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    if p.heat is not None:
        if p.image is not None:
            ax.imshow(heat_rgba(p.heat), interpolation="nearest")
        else:
            ax.imshow(p.heat, cmap=cm, vmin=-1, vmax=1, interpolation="nearest")
    if p.normal_level is not None and np.nanmax(p.normal_level) > 1.0:
        ax.contour(np.asarray(p.normal_level, float), levels=[1.0], colors=[NORMAL_CONTOUR], linewidths=0.9)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=["#00e000"], linewidths=0.9)
    if caption:
        ax.set_xlabel(caption, fontsize=CAPTION_PT, labelpad=2)


def _bar(fig, left: float, top: float, width: float, cm) -> None:
    """One colour bar for every map, its ends in words, and how to read the detector's own map."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    W, H = fig.get_size_inches()
    bw = min(3.4, width * 0.45)
    cax = fig.add_axes([left / W, 1 - (top + 0.32) / H, bw / W, 0.13 / H])
    cb = fig.colorbar(ScalarMappable(norm=Normalize(-1, 1), cmap=cm), cax=cax, orientation="horizontal")
    cb.set_ticks([-1, 0, 1])
    cb.set_ticklabels(list(BAR_WORDS))
    cb.ax.tick_params(labelsize=MIN_PT)
    for tick, ha in zip(cb.ax.get_xticklabels(), ("left", "center", "right")):  # the end words stay under the bar
        tick.set_horizontalalignment(ha)
    cb.ax.set_title("each map divided by its largest value", fontsize=MIN_PT, pad=2)
    fig.text((left + bw + 0.4) / W, 1 - (top + 0.2) / H,
             "The detector's map: pale within a good part's range,\nred above it up to the image's peak; yellow line: "
             "where it leaves\nthe normal range. Green line: the defect mask.", fontsize=MIN_PT, va="top", ha="left")


def figure(report: Report, width: float = PNG_WIDTH, ncols: int = PNG_COLS):
    """The report as one tall sheet (a Matplotlib Figure, Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    margin = 0.3
    bs = blocks(report, width - 2 * margin, ncols)
    fig = Figure(figsize=(width, sum(b.height for b in bs) + 2 * margin), dpi=100)
    FigureCanvasAgg(fig)
    _draw(fig, report.mask, bs, margin, margin, width - 2 * margin, ncols)
    return fig


def png_bytes(report: Report, dpi: int = REPORT_DPI) -> bytes:
    """The report sheet as PNG bytes."""
    return _fig_bytes(figure(report), "png", dpi)


def pdf_bytes(report: Report) -> bytes:
    """The report on A4 portrait pages (:func:`pdf_pages`), drawn as vectors at full size."""
    return pdf_from_pages(pdf_pages(report), f"{report.category} {report.name}", report.mask)


def pdf_from_pages(pages: list[list[Block]], title: str, mask: np.ndarray | None = None, ncols: int = PDF_COLS) -> bytes:
    """A4 pages of blocks (:func:`paginate`) as one PDF."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    buf = io.BytesIO()
    width = A4[0] - 2 * PDF_MARGIN
    with PdfPages(buf, metadata={"Creator": "cfx", "Title": title}) as pdf:
        for bs in pages:
            page = Figure(figsize=A4)
            FigureCanvasAgg(page)
            _draw(page, mask, bs, PDF_MARGIN, PDF_MARGIN, width, ncols)
            pdf.savefig(page)
    return buf.getvalue()


__all__ = ["A4", "BAR_WORDS", "Block", "Line", "MIN_PT", "appendix_lines", "blocks", "figure", "header_lines",
           "paginate", "panel_rows", "pdf_bytes", "pdf_from_pages", "pdf_pages", "png_bytes", "REPORT_DPI",
           "text_block"]
