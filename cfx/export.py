"""Reports of explanations: one code path for the app's downloads and ``python -m cfx explain --out``.

A :class:`Report` gathers one image, its mask, the detector's verdict and any number of
:class:`~cfx.explainers.base.Explanation` results. From it:

* :func:`figure` / :func:`png_bytes`: a report figure (the image, its mask, every heatmap and
  counterfactual with its difference map, scores, thresholds, parameters, model hash, date);
* :func:`pdf_bytes`: the same figure as a one-page PDF;
* :func:`html_text`: a self-contained HTML report (every image base64-embedded);
* :func:`report_dict` / :func:`json_bytes`: the numbers as JSON;
* :func:`write_report`: any of them written atomically;
* :func:`export_explanations`: what the CLI writes under ``--out`` (per-method PNGs, the report
  files) and the JSON object it prints.

Heatmaps share one colour scale (:data:`HEAT_CMAP` on [-1, 1]); each map is divided by its scale
(:func:`heat_scale`: ``info["heat_scale"]`` when the method calibrates its map, else the largest
absolute value), so unsigned maps use the upper half and signed maps both halves. The app builds
its Plotly colour scale from the same colormap (:func:`plotly_colorscale`).

Nothing here imports Streamlit; Matplotlib is used through its object API (no pyplot state), so
reports can be built from several threads at once.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cfx.atomic import _default, write_bytes
from cfx.data.imageio import array_to_pil
from cfx.explainers.base import Explanation, diversity

#: The one colormap of every heatmap and difference map (app and reports), on [-1, 1].
HEAT_CMAP = "RdBu_r"
#: Formats :func:`write_report` knows.
FORMATS = ("png", "json", "pdf", "html")
MIME = {"png": "image/png", "json": "application/json", "pdf": "application/pdf", "html": "text/html"}


# ------------------------------------------------------------------ the report
@dataclass
class Report:
    """Everything a report shows.

    Attributes:
        image: the original, float32 (C, H, W) in [0, 1].
        name: the image's name (``defect/file.png`` or the uploaded file's name).
        explanations: results by method name (failed methods are listed with their error).
        mask: bool (H, W) ground truth, or None when unknown.
        dataset, category: where the models come from.
        model_key: ``bundle.key()`` (dataset/category@hash).
        detector: the detector's verdict: ``score``, ``threshold``, ``anomalous``,
            ``recon_score``, ``mahalanobis_score``, ``classifier_prob``, ``classifier_threshold``,
            ``classifier_anomalous`` (any subset).
        target: the explained target.
        reconstruction: the detector's reconstruction (C, H, W), shown when given.
        detector_heatmap: the detector's calibrated error map (H, W), shown when given.
        params: page or command parameters worth recording (e.g. the chosen step).
        created: ISO date and time (UTC) of the report.
        title: a heading; default ``"<dataset>/<category>: <name>"``.
    """

    image: np.ndarray
    name: str
    explanations: dict[str, Explanation] = field(default_factory=dict)
    mask: np.ndarray | None = None
    dataset: str = ""
    category: str = ""
    model_key: str = ""
    detector: dict[str, Any] = field(default_factory=dict)
    target: str = "score"
    reconstruction: np.ndarray | None = None
    detector_heatmap: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    title: str = ""

    @property
    def model_hash(self) -> str:
        return self.model_key.rsplit("@", 1)[-1] if "@" in self.model_key else ""

    @property
    def heading(self) -> str:
        if self.title:
            return self.title
        where = "/".join(p for p in (self.dataset, self.category) if p)
        return f"{where}: {self.name}" if where else self.name

    @classmethod
    def from_bundle(cls, bundle, image: np.ndarray, name: str, explanations: Mapping[str, Explanation] | None = None,
                    mask: np.ndarray | None = None, target: str = "score", params: dict[str, Any] | None = None,
                    analysis: Mapping[str, np.ndarray] | None = None, with_detector_maps: bool = False,
                    title: str = "") -> "Report":
        """A report with the detector's verdict filled in from the models.

        Args:
            bundle: the :class:`~cfx.models.bundle.ModelBundle` that explained the image.
            image: (C, H, W) float32 in [0, 1].
            name: the image's name.
            explanations: the results to show.
            mask: the ground-truth mask, if known.
            target: the explained target.
            params: extra parameters to record.
            analysis: ``bundle.analyse(image[None])`` if already computed (saves a forward pass).
            with_detector_maps: also show the reconstruction and the detector's heatmap.
            title: optional heading.
        """
        a = analysis if analysis is not None else bundle.analyse(np.asarray(image, np.float32)[None])
        det = detector_summary(bundle, a)
        return cls(image=np.asarray(image, np.float32), name=name, explanations=dict(explanations or {}),
                   mask=None if mask is None else np.asarray(mask, bool), dataset=bundle.dataset,
                   category=bundle.category, model_key=bundle.key(), detector=det, target=target,
                   reconstruction=np.asarray(a["recon"][0]) if with_detector_maps and "recon" in a else None,
                   detector_heatmap=np.asarray(a["heatmap"][0]) if with_detector_maps else None,
                   params=dict(params or {}), title=title)


def detector_summary(bundle, analysis: Mapping[str, np.ndarray], i: int = 0) -> dict[str, Any]:
    """The detector's and classifier's numbers for image ``i`` of ``bundle.analyse(...)``."""
    a = analysis
    out: dict[str, Any] = {"detector": bundle.detector_name, "score": float(a["score"][i]),
                           "threshold": bundle.threshold, "anomalous": bool(a["anomalous"][i])}
    for key in bundle.detector.parts:
        out[key] = float(a[key][i])
    if "classifier" in a:
        out.update(classifier_prob=float(a["classifier"][i]), classifier_threshold=float(bundle.classifier_threshold),
                   classifier_anomalous=bool(a["classifier_anomalous"][i]))
    return out


# ------------------------------------------------------------------ colour scale
def heat_scale(exp: Explanation) -> float:
    """The value that maps to the end of the colour scale for ``exp.heatmap``.

    ``exp.info["heat_scale"]`` when the method calibrates its map (e.g. the reconstruction map,
    where 1.0 is the 99.9th percentile of normal images), else the largest absolute value.
    """
    s = exp.info.get("heat_scale") if exp.info else None
    if s:
        return float(s)
    return max_abs(exp.heatmap)


def max_abs(a: np.ndarray | None) -> float:
    if a is None:
        return 1.0
    m = float(np.nanmax(np.abs(a))) if np.size(a) else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def normalise(a: np.ndarray, scale: float) -> np.ndarray:
    """``a / scale`` clipped to [-1, 1] (NaN -> 0)."""
    return np.clip(np.nan_to_num(np.asarray(a, np.float32) / float(scale or 1.0)), -1.0, 1.0)


def _cmap():
    import matplotlib

    return matplotlib.colormaps[HEAT_CMAP]


def heat_rgb(normalised: np.ndarray) -> np.ndarray:
    """A map on [-1, 1] as uint8 RGB (H, W, 3) in the shared colour scale."""
    rgba = _cmap()((np.asarray(normalised, np.float64) + 1.0) / 2.0)
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def heat_alpha(normalised: np.ndarray) -> np.ndarray:
    """Opacity of a map drawn over its image: faint near 0, opaque at the ends of the scale."""
    return np.clip(ALPHA_FLOOR + (1 - ALPHA_FLOOR) * np.abs(np.asarray(normalised, np.float64)) * 1.6, 0, 1)


#: Opacity of a zero value of a map drawn over an image.
ALPHA_FLOOR = 0.12


def heat_rgba(normalised: np.ndarray) -> np.ndarray:
    """A map on [-1, 1] as float RGBA (H, W, 4) for drawing over an image (see :func:`heat_alpha`)."""
    rgba = _cmap()((np.asarray(normalised, np.float64) + 1.0) / 2.0)
    rgba[..., 3] = heat_alpha(normalised)
    return rgba


def plotly_colorscale(n: int = 21, alpha: bool = False) -> list[list[Any]]:
    """The shared colour scale as a Plotly colorscale (use with zmin=-1, zmax=1); with ``alpha``,
    the opacity of :func:`heat_alpha` (for drawing over an image)."""
    cm = _cmap()
    out = []
    for t in np.linspace(0, 1, n):
        r, g, b, _ = cm(float(t))
        a = float(heat_alpha(np.array(2 * t - 1))) if alpha else 1.0
        out.append([float(t), f"rgba({int(r * 255 + .5)},{int(g * 255 + .5)},{int(b * 255 + .5)},{a:.3f})"])
    return out


def image_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float -> (H, W) or (H, W, 3) float for display."""
    a = np.clip(np.asarray(image, np.float32), 0, 1)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a


# ------------------------------------------------------------------ numbers
def report_dict(report: Report) -> dict[str, Any]:
    """The numbers of a report (no arrays), JSON-serialisable."""
    methods: dict[str, Any] = {}
    for name, exp in report.explanations.items():
        d = exp.to_dict()
        d["info"] = {k: v for k, v in (d.get("info") or {}).items() if k != "traceback"}
        if exp.heatmap is not None:
            h = np.asarray(exp.heatmap, np.float64)
            d["heatmap_stats"] = {"min": float(np.nanmin(h)), "max": float(np.nanmax(h)),
                                  "mean": float(np.nanmean(h)), "scale": heat_scale(exp)}
            if report.mask is not None and report.mask.any() and (~report.mask).any():
                d["heatmap_stats"]["mean_inside_mask"] = float(np.nanmean(h[report.mask]))
                d["heatmap_stats"]["mean_outside_mask"] = float(np.nanmean(h[~report.mask]))
        if len(exp.counterfactuals) > 1:
            d["diversity"] = diversity(c.image for c in exp.counterfactuals)
        methods[name] = d
    mask = None
    if report.mask is not None:
        mask = {"known": True, "area_fraction": float(np.asarray(report.mask).mean())}
    return clean_json({
        "image": report.name, "dataset": report.dataset, "category": report.category,
        "model": {"key": report.model_key, "hash": report.model_hash}, "created": report.created,
        "target": report.target, "detector": dict(report.detector), "mask": mask or {"known": False},
        "params": report.params, "methods": methods,
    })


def clean_json(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain, paths made strings and NaN/inf made None
    (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_bytes(report: Report) -> bytes:
    """:func:`report_dict` as indented UTF-8 JSON."""
    return (json.dumps(report_dict(report), indent=2, sort_keys=True, default=_default, allow_nan=False)
            + "\n").encode()


# ------------------------------------------------------------------ the figure
@dataclass
class Panel:
    """One image of the report figure: an image (C,H,W) and/or a map on [-1, 1]."""

    title: str
    image: np.ndarray | None = None
    heat: np.ndarray | None = None
    caption: str = ""


def panels(report: Report) -> list[Panel]:
    """The panels of the report figure, in order: image, mask, detector maps, then per method its
    heatmap or its counterfactuals with their difference maps."""
    out = [Panel("image", report.image, caption=_verdict_line(report))]
    if report.mask is not None:
        out.append(Panel("ground-truth mask", np.asarray(report.mask, np.float32)[None], caption=f"{report.mask.mean():.1%} of pixels"))
    if report.reconstruction is not None:
        out.append(Panel("reconstruction (VAE)", report.reconstruction))
    if report.detector_heatmap is not None:
        out.append(Panel("detector heat (1 = normal p99.9)", report.image,
                         normalise(report.detector_heatmap, 2.0), caption="scale 0..2"))
    for name, exp in report.explanations.items():
        if not exp.ok:
            out.append(Panel(f"{name}: failed", None, caption=_wrap(exp.error or "", 38)))
            continue
        if exp.heatmap is not None:
            s = heat_scale(exp)
            out.append(Panel(f"{name} ({exp.target})", report.image, normalise(exp.heatmap, s),
                             caption=f"{exp.seconds:.2f} s, scale {s:.3g}"))
        for k, cf in enumerate(exp.counterfactuals):
            tag = f"{name} CF{k + 1}" if len(exp.counterfactuals) > 1 else f"{name} CF"
            out.append(Panel(tag, cf.image, caption=f"{exp.target} {cf.score_after:.3g} "
                             f"({'valid' if cf.valid else 'not valid'})"))
            d = (cf.image - report.image).mean(0)
            out.append(Panel(f"{tag} - original", report.image, normalise(d, max_abs(d)),
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


def _summary_lines(report: Report) -> list[str]:
    d = report.detector
    lines = [report.heading]
    lines.append(f"model {report.model_key or '?'}   target {report.target}   created {report.created}")
    if d:
        lines.append(
            f"{d.get('detector', 'detector')} score {d.get('score', float('nan')):.3f} (threshold "
            f"{d.get('threshold', float('nan')):.3f}, {'anomalous' if d.get('anomalous') else 'normal'}"
            + (f"; recon {d['recon_score']:.2f}, Mahalanobis {d['mahalanobis_score']:.2f}" if "recon_score" in d else "")
            + ")" + (f";  classifier P(anomalous) {d['classifier_prob']:.3f} (threshold "
                     f"{d['classifier_threshold']:.3f})" if "classifier_prob" in d else ""))
    for name, exp in report.explanations.items():
        if not exp.ok:
            lines.append(f"{name}: ERROR {exp.error}")
            continue
        s = f"{name}: {exp.seconds:.2f} s, {exp.target} {exp.score_before:.3f}"
        if exp.counterfactuals:
            best = exp.counterfactuals[0]
            s += (f" -> {best.score_after:.3f} (threshold {exp.threshold:.3f}, "
                  f"{sum(c.valid for c in exp.counterfactuals)}/{len(exp.counterfactuals)} valid, "
                  f"L1 {best.metrics.get('l1', float('nan')):.3f}, realism {best.metrics.get('realism', float('nan')):.2f})")
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(exp.params.items()))
        s += f"; seed {exp.seed}; {params}" if params else f"; seed {exp.seed}"
        lines.append(s)
    if report.params:
        lines.append("parameters: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(report.params.items())))
    return lines


def _short(v: Any) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


def figure(report: Report, ncols: int = 4, panel_inches: float = 2.3):
    """The report figure as a Matplotlib :class:`~matplotlib.figure.Figure` (Agg, no pyplot).

    Args:
        report: what to show.
        ncols: panels per row.
        panel_inches: the side of one panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ps = panels(report)
    ncols = max(1, min(ncols, len(ps)))
    nrows = math.ceil(len(ps) / ncols)
    lines = _summary_lines(report)
    wrapped = [ln for line in lines for ln in (_wrap(line, int(ncols * panel_inches * 14.5)).splitlines() or [""])]
    text_h = 0.13 * len(wrapped) + 0.25
    width = ncols * panel_inches
    height = nrows * (panel_inches + 0.45) + text_h + 0.1
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    top = 1 - text_h / height
    fig.text(0.01, 1 - 0.1 / height, "\n".join(wrapped), va="top", ha="left", fontsize=7.5, family="monospace")
    gs = fig.add_gridspec(nrows, ncols, left=0.01, right=0.99, bottom=0.05 / height, top=top, hspace=0.3, wspace=0.06)
    cm = _cmap()
    mappable = None
    for i, p in enumerate(ps):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(p.title, fontsize=8)
        if p.image is None and p.heat is None:
            ax.text(0.5, 0.5, p.caption, ha="center", va="center", fontsize=6.5, wrap=True, transform=ax.transAxes)
            ax.set_facecolor("#f6e9e9")
            continue
        if p.image is not None:
            im = image_hwc(p.image)
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if p.heat is not None:
            if p.image is not None:
                ax.imshow(heat_rgba(p.heat), interpolation="nearest")
            else:
                ax.imshow(p.heat, cmap=cm, vmin=-1, vmax=1, interpolation="nearest")
            if mappable is None:
                from matplotlib.cm import ScalarMappable
                from matplotlib.colors import Normalize

                mappable = ScalarMappable(norm=Normalize(-1, 1), cmap=cm)
        if report.mask is not None and report.mask.any():
            ax.contour(report.mask.astype(float), levels=[0.5], colors=["#00e000"], linewidths=0.8)
        if p.caption:
            ax.set_xlabel(p.caption, fontsize=6.5)
    if mappable is not None:
        cax = fig.add_axes([0.80, 1 - 0.16 / height, 0.18, 0.05 / height])
        cb = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        cb.ax.set_title("map / its scale", fontsize=5.5, pad=1)
        cb.ax.tick_params(labelsize=5)
        cb.set_ticks([-1, 0, 1])
    return fig


def _fig_bytes(fig, fmt: str, dpi: int) -> bytes:
    buf = io.BytesIO()
    meta = {"pdf": {"Creator": "cfx"}, "png": {"Software": "cfx"}}.get(fmt)
    fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()


#: The PNG report's resolution: each 2.3-inch panel is drawn at least :data:`PANEL_MIN_PX` wide.
REPORT_DPI = 224


def png_bytes(report: Report, dpi: int = REPORT_DPI) -> bytes:
    """The report figure as PNG bytes."""
    return _fig_bytes(figure(report), "png", dpi)


def pdf_bytes(report: Report) -> bytes:
    """The report figure as a one-page PDF."""
    return _fig_bytes(figure(report), "pdf", 110)


# ------------------------------------------------------------------ HTML
def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _pil_png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


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
    if report.mask is not None and report.mask.any():
        rgb = rgb.copy()
        rgb[mask_outline(report.mask)] = (0.0, 0.88, 0.0)
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
    upscale = max(int(upscale), -(-PANEL_MIN_PX // max(1, img.width)))  # a defect can cover 0.4% of a part
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    return _pil_png(img)


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


def html_text(report: Report) -> str:
    """A self-contained HTML report: the figure, each panel and the numbers (no external links)."""
    e = html.escape
    d = report_dict(report)
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(_fmt(v))}</td></tr>" for k, v in d["detector"].items())
    cells = []
    for p in panels(report):
        if p.image is None and p.heat is None:
            cells.append(f"<figure class='err'><figcaption><b>{e(p.title)}</b><br>{e(p.caption)}</figcaption></figure>")
            continue
        cells.append(f"<figure><img alt='{e(p.title)}' src='{_png_data_uri(panel_png(report, p))}'>"
                     f"<figcaption><b>{e(p.title)}</b><br>{e(p.caption)}</figcaption></figure>")
    method_rows = []
    for name, m in d["methods"].items():
        cfs = m.get("counterfactuals") or []
        best = cfs[0] if cfs else {}
        method_rows.append(
            "<tr>" + "".join(f"<td>{e(_fmt(x))}</td>" for x in (
                name, m["target"], m["seconds"], m["score_before"], m["threshold"], m.get("score_after"),
                f"{sum(bool(c.get('valid')) for c in cfs)}/{len(cfs)}" if cfs else "",
                best.get("l1"), best.get("edit_area"), best.get("locality"), best.get("realism"), m.get("error") or "",
                ", ".join(f"{k}={_short(v)}" for k, v in sorted((m.get("params") or {}).items())))) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("method", "target", "seconds", "before", "threshold", "after",
                                               "valid", "L1", "edit area", "locality", "realism", "error",
                                               "parameters"))
    fig_uri = _png_data_uri(png_bytes(report, dpi=90))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report.heading)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0}}
th,td{{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}} figure{{margin:0;width:260px}} figure img{{width:256px;image-rendering:pixelated}}
figcaption{{font-size:12px}} .err{{background:#fbecec;padding:6px}} .meta{{color:#555;font-size:13px}}
</style></head><body>
<h1>{e(report.heading)}</h1>
<p class="meta">model <code>{e(report.model_key)}</code> &middot; target <b>{e(report.target)}</b> &middot;
created {e(report.created)} &middot; made by cfx</p>
<h2>Detector</h2><table>{rows}</table>
<h2>Methods</h2><table><tr>{head}</tr>{''.join(method_rows)}</table>
<h2>Maps and counterfactuals</h2>
<p class="meta">One colour scale for every map (blue negative, red positive, each map divided by its scale);
the green outline is the ground-truth mask.</p>
<div class="grid">{''.join(cells)}</div>
<h2>Report figure</h2><img alt="report figure" style="max-width:100%" src="{fig_uri}">
<h2>Numbers (JSON)</h2><pre>{e(json.dumps(d, indent=1, default=_default))}</pre>
</body></html>
"""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "image"


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
    write_bytes(out / "original.png", _pil_png(array_to_pil(report.image)))
    methods: dict[str, Any] = {}
    nums = report_dict(report)["methods"]
    for name, exp in report.explanations.items():
        stem = _safe(name)
        entry: dict[str, Any] = {"seconds": round(exp.seconds, 4), "heatmap": None, "counterfactuals": [],
                                 "error": exp.error, "score_before": exp.score_before, "threshold": exp.threshold,
                                 "target": exp.target, "params": exp.params, "info": nums[name]["info"]}
        if exp.ok and exp.heatmap is not None:
            p = Panel(name, report.image, normalise(exp.heatmap, heat_scale(exp)))
            entry["heatmap"] = str(write_bytes(out / f"{stem}_heatmap.png", panel_png(report, p, upscale=1)))
            entry["heatmap_scale"] = heat_scale(exp)
        for k, cf in enumerate(exp.counterfactuals if exp.ok else []):
            path = write_bytes(out / f"{stem}_cf{k}.png", _pil_png(array_to_pil(cf.image)))
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


# ------------------------------------------------------------------ detector evaluation
def detector_scores(bundle) -> list[tuple[str, str, str]]:
    """(name, key of ``bundle.analyse`` output, target) of every score the bundle offers: the
    selected detector's score first (named ``combined``), its parts, the classifier."""
    names = {"score": "combined", "recon": "reconstruction", "mahalanobis": "Mahalanobis", "classifier": "classifier"}
    return [(names.get(t.name, t.name), t.key, t.name) for t in bundle.targets().values()]


def detector_evaluation(bundle, labels: np.ndarray, analysis: Mapping[str, np.ndarray],
                        defects: Sequence[str] | None = None) -> dict[str, Any]:
    """ROC curves, AUROC and confusion matrices of every score of a category's test split.

    Args:
        bundle: the models (for thresholds, key and card).
        labels: 1 defective, 0 good, per image.
        analysis: ``bundle.analyse(images)`` (at least the four score arrays).
        defects: the defect type per image (for per-type AUROC).

    Returns:
        ``{"model", "n", "n_defective", "scores": {name: {"auroc", "threshold", "fpr", "tpr",
        "confusion": [[tn, fp], [fn, tp]], "normal": [...], "defective": [...]}}, "per_defect_auroc"}``.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    both = len(np.unique(y)) == 2
    out: dict[str, Any] = {"model": bundle.key(), "category": bundle.category, "dataset": bundle.dataset,
                           "detector": bundle.detector_name, "detector_label": bundle.detector.label,
                           "n": int(len(y)), "n_defective": int(y.sum()), "scores": {}}
    for name, key, target in detector_scores(bundle):
        if key not in analysis:
            continue
        s = np.asarray(analysis[key], np.float64)
        thr = bundle.threshold_for(target)
        pred = (s > thr).astype(int)
        entry: dict[str, Any] = {"threshold": thr, "normal": s[y == 0].tolist(), "defective": s[y == 1].tolist(),
                                 "confusion": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
                                 "fpr_good": float(pred[y == 0].mean()) if (y == 0).any() else None,
                                 "tpr_defect": float(pred[y == 1].mean()) if (y == 1).any() else None}
        if both:
            fpr, tpr, _ = roc_curve(y, s)
            entry.update(auroc=float(roc_auc_score(y, s)), fpr=fpr.tolist(), tpr=tpr.tolist())
        else:
            entry.update(auroc=None, fpr=[], tpr=[])
        out["scores"][name] = entry
    per = {}
    if defects is not None and both:
        d = np.asarray(defects)
        for t in sorted(set(d[y == 1])):
            m = (y == 0) | (d == t)
            per[t] = float(roc_auc_score(y[m], np.asarray(analysis["score"])[m]))
    out["per_defect_auroc"] = per
    return clean_json(out)


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
    c = ev["scores"]["combined"]
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
