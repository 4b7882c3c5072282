"""The report figure (Matplotlib object API, no pyplot state), its PNG/PDF bytes, single panels and the detector's evaluation figure.
"""
from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from cfx.reports.colours import (
    heat_alpha,
    heat_rgb,
    heat_rgba,
    NORMAL_CONTOUR,
    calibrated,
    calibrated_caption,
    calibrated_display,
    heat_scale,
    image_hwc,
    max_abs,
    normalise,
)
from cfx.explainers.base import method_label
from cfx.metrics.detection import DETECTOR_SCORE
from cfx.reports.encode import pil_png
from cfx.reports.report import Report

if TYPE_CHECKING:
    from cfx.audit.run import ImageDetail


# ------------------------------------------------------------------ the figure
@dataclass
class Panel:
    """One image of the report figure: an image (C,H,W) and/or a map on [-1, 1]."""

    title: str
    image: np.ndarray | None = None
    heat: np.ndarray | None = None
    caption: str = ""
    #: a calibrated map: its contour at 1.0 (where it leaves the normal range) is drawn
    normal_level: np.ndarray | None = None


def panels(report: Report) -> list[Panel]:
    """The panels of the report figure, in order: image, mask, detector maps, then per method its
    heatmap or its counterfactuals with their difference maps."""
    out = [Panel("image", report.image, caption=_verdict_line(report))]
    if report.mask is not None:
        out.append(Panel("ground-truth mask", np.asarray(report.mask, np.float32)[None], caption=f"{report.mask.mean():.1%} of pixels"))
    if report.reconstruction is not None:
        out.append(Panel("reconstruction (VAE)", report.reconstruction))
    if report.detector_heatmap is not None:
        out.append(Panel("the detector's map", report.image, calibrated_display(report.detector_heatmap),
                         caption=_wrap(calibrated_caption(report.detector_heatmap), 38),
                         normal_level=np.asarray(report.detector_heatmap)))
    for key, exp in report.explanations.items():
        name = method_label(key)
        if not exp.ok:
            out.append(Panel(f"{name}: failed", None, caption=_wrap(exp.error or "", 38)))
            continue
        if exp.heatmap is not None and calibrated(exp):
            out.append(Panel(name, report.image, calibrated_display(exp.heatmap),
                             caption=_wrap(calibrated_caption(exp.heatmap), 38), normal_level=np.asarray(exp.heatmap)))
        elif exp.heatmap is not None:
            s = heat_scale(exp)
            out.append(Panel(name, report.image, normalise(exp.heatmap, s), caption=f"{exp.seconds:.2f} s"))
        for k, cf in enumerate(exp.counterfactuals):
            tag = f"{name}: " + (cf.concept or "counterfactual" + (f" {k + 1}" if len(exp.counterfactuals) > 1 else ""))
            out.append(Panel(tag, cf.image, caption=f"{exp.target} {cf.score_after:.3g} "
                             f"({'valid' if cf.valid else 'not valid'})"))
            d = (cf.image - report.image).mean(0)
            out.append(Panel("its change" + (f" ({k + 1})" if len(exp.counterfactuals) > 1 else ""), report.image, normalise(d, max_abs(d)),
                             caption=f"L1 {cf.metrics.get('l1', float('nan')):.3f}, "
                                     f"edit area {cf.metrics.get('edit_area', float('nan')):.3f}, "
                                     f"locality {cf.metrics.get('locality', float('nan')):.2f}"))
        if exp.heatmap is None and not exp.counterfactuals:
            out.append(Panel(f"{name}: no result", None, caption=str(exp.info.get("message", "no counterfactual found"))))
    return out


def _verdict_line(report: Report) -> str:
    d = report.detector
    if "score" not in d:
        return ""
    return (f"score {d['score']:.3f} / thr {d['threshold']:.3f}: "
            f"{'ANOMALOUS' if d.get('anomalous') else 'normal'}")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:6])


def _fig_bytes(fig, fmt: str, dpi: int) -> bytes:
    buf = io.BytesIO()
    meta = {"pdf": {"Creator": "cfx"}, "png": {"Software": "cfx"}}.get(fmt)
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()


def _short(v: Any) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


def panel_png(report: Report, p: Panel, upscale: int = 2) -> bytes:
    """One panel as a PNG: the image, blended with its heat map, with the mask outline."""
    from PIL import Image

    base = image_hwc(p.image) if p.image is not None else None
    if base is None and p.heat is None:
        raise ValueError("empty panel")
    if base is not None and base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    rgb = base if base is not None else np.zeros(p.heat.shape + (3,), np.float32)
    if p.heat is not None:
        heat = heat_rgb(p.heat).astype(np.float32) / 255
        if base is None:
            rgb = heat
        else:
            a = heat_alpha(p.heat)[..., None].astype(np.float32)
            rgb = (1 - a) * rgb + a * heat
    rgb = np.clip(rgb, 0, 1)
    if p.normal_level is not None and np.nanmax(p.normal_level) > 1.0:
        rgb = rgb.copy()
        rgb[mask_outline(np.asarray(p.normal_level) > 1.0)] = tuple(int(NORMAL_CONTOUR[i:i + 2], 16) / 255 for i in (1, 3, 5))
    if report.mask is not None and report.mask.any():
        rgb = rgb.copy()
        rgb[mask_outline(report.mask)] = (0.0, 0.88, 0.0)
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
    upscale = max(int(upscale), -(-PANEL_MIN_PX // max(1, img.width)))  # a defect can cover 0.4% of a part
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    return pil_png(img)


#: Panel PNGs (HTML report, ``explain --out``) are at least this wide.
PANEL_MIN_PX = 512


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel inner boundary of a bool mask."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def detector_figure(ev: Mapping[str, Any]):
    """ROC curves, the combined score's histogram with its threshold and the confusion matrix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.3, 0.8]})
    for name, e in ev["scores"].items():
        if e["fpr"]:
            ax1.plot(e["fpr"], e["tpr"], label=f"{name} ({e['auroc']:.3f})")
    ax1.plot([0, 1], [0, 1], ":", color="gray")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUROC)")
    ax1.legend(fontsize=7, loc="lower right")
    c = ev["scores"][DETECTOR_SCORE]
    ax2.hist(c["normal"], bins=30, alpha=0.6, label="good", color="#1f77b4")
    ax2.hist(c["defective"], bins=30, alpha=0.6, label="defective", color="#d62728")
    ax2.axvline(c["threshold"], color="k", ls="--", label=f"threshold {c['threshold']:.3f}")
    ax2.set(xlabel=f"{ev.get('detector_label') or 'detector'} score", ylabel="images", title="scores")
    ax2.legend(fontsize=7)
    cm = np.asarray(c["confusion"])
    ax3.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax3.text(j, i, str(v), ha="center", va="center", fontsize=12,
                 color="white" if v > cm.max() / 2 else "black")
    ax3.set_xticks([0, 1], ["normal", "anomalous"])
    ax3.set_yticks([0, 1], ["good", "defective"])
    ax3.set(xlabel="detector says", ylabel="truth", title="confusion at the threshold")
    fig.suptitle(f"{ev.get('dataset', '')}/{ev.get('category', '')} · {ev.get('model', '')} · "
                 f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}", fontsize=9)
    fig.tight_layout()
    return fig


def detector_png(ev: Mapping[str, Any]) -> bytes:
    """:func:`detector_figure` as PNG bytes."""
    return _fig_bytes(detector_figure(ev), "png", 100)


# ------------------------------------------------------------------ the audit's detail
def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float] = (1.0, 0.15, 0.1),
            alpha: float = 0.45) -> np.ndarray:
    """An image (C, H, W) in [0, 1] as RGB (H, W, 3) with ``mask`` tinted in ``colour``."""
    img = np.asarray(image, np.float32)
    rgb = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[:3]
    rgb = rgb.transpose(1, 2, 0).copy()
    m = np.asarray(mask, bool)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 1)


def detail_png(detail: ImageDetail, method: str, title: str = "", dpi: int = 110) -> bytes:
    """A report figure of one audited image and method (:func:`cfx.audit.image_detail`): the
    image with the best-threshold selection, with the truth, the map in the shared colour scale, and the J* curve (PNG bytes; Matplotlib's object API,
    safe from several threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.9))
    axes = fig.subplots(1, 4)
    img = overlay(detail.image, np.zeros(detail.mask.shape, bool))
    axes[0].imshow(overlay(detail.image, detail.best_mask, (1.0, 0.6, 0.0)))
    j = detail.curve.jaccard if detail.curve is not None else float("nan")
    axes[0].set_title(f"{method}: best selection (J* {j:.3f})", fontsize=8)
    axes[1].imshow(overlay(detail.image, detail.mask, (0.1, 0.9, 0.2)))
    axes[1].set_title("ground truth", fontsize=8)
    if detail.map is not None:
        axes[2].imshow(img)
        axes[2].imshow(heat_rgba(normalise(detail.map, max_abs(detail.map))), interpolation="nearest")
        axes[2].set_title(f"{method} map", fontsize=8)
    else:
        axes[2].text(0.5, 0.5, detail.error or "no map", ha="center", va="center", wrap=True, fontsize=7)
    for ax in axes[:3]:
        ax.set_axis_off()
    if detail.curve is not None and len(detail.curve.curve):
        _, c, s = detail.curve.downsampled(600)
        axes[3].plot(s, c, lw=1.2)
        axes[3].plot([detail.curve.best_selected], [j], "o", color="C3")
        axes[3].set_xscale("log")
        axes[3].set_xlabel("share of pixels selected", fontsize=8)
        axes[3].set_ylabel("Jaccard", fontsize=8)
        axes[3].tick_params(labelsize=7)
    else:
        axes[3].set_axis_off()
    fig.suptitle(title or detail.name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
