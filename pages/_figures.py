"""The dashboard's figures and downloads: images and maps drawn with Plotly at the part's own
resolution (at least :data:`DISPLAY_MIN` px wide; zoom with the mouse wheel or a drag), the mask's
outline, the shared colour scale (:mod:`cfx.reports.colours`), and report downloads made when
clicked. Pages import these names from :mod:`pages._common`."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cfx import reports as X
from cfx.reports.encode import pil_png, png_data_uri


# ====================================================================== figures
#: Images and maps are drawn at least this many pixels wide (the models work at 128 px; a defect
#: can cover 0.4% of a part), at the file's own resolution when the shown image is the selected
#: dataset image (up to :data:`DISPLAY_MAX`). Zoom with the mouse wheel or a drag; double-click resets.
DISPLAY_MIN = 512
DISPLAY_MAX = 1024


def _axes(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 13}, "x": 0.0, "xanchor": "left"} if title else None,
        margin={"l": 0, "r": 0, "t": 28 if title else 0, "b": 0}, height=height,
        showlegend=False, dragmode="zoom", hovermode="closest",
    )
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
    return fig


def rgb_uint8(image: np.ndarray) -> np.ndarray:
    a = X.image_hwc(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return (a * 255 + 0.5).astype(np.uint8)


@st.cache_data(show_spinner=False, max_entries=256)
def _contours(mask_bytes: bytes, shape: tuple[int, int]) -> tuple[list[float | None], list[float | None]]:
    from skimage.measure import find_contours

    mask = np.frombuffer(mask_bytes, dtype=bool).reshape(shape)
    xs: list[float | None] = []
    ys: list[float | None] = []
    for c in find_contours(np.pad(mask.astype(float), 1), 0.5):
        ys.extend((c[:, 0] - 1).tolist() + [None])
        xs.extend((c[:, 1] - 1).tolist() + [None])
    return xs, ys


def outline_shown() -> bool:
    """The sidebar's "Outline the defect mask" (on unless turned off)."""
    return bool(st.session_state.get("show_outline", True))


def map_opacity() -> float:
    """The sidebar's "Map opacity over the image" (0..1; 1 unless changed)."""
    return float(np.clip(st.session_state.get("map_opacity", 1.0), 0.0, 1.0))


def add_contour(fig: go.Figure, mask: np.ndarray | None, factor: float = 1.0) -> None:
    """The ground-truth mask's outline (skimage.measure.find_contours) over a figure, its
    coordinates scaled by ``factor`` (display pixels per mask pixel)."""
    if mask is None or not np.any(mask) or not outline_shown():
        return
    _outline(fig, mask, factor, "#00e000", "mask")


def _outline(fig: go.Figure, mask: np.ndarray, factor: float, colour: str, name: str) -> None:
    m = np.ascontiguousarray(np.asarray(mask, bool))
    xs, ys = _contours(m.tobytes(), m.shape)
    f = float(factor)
    sx = [None if v is None else (v + 0.5) * f - 0.5 for v in xs]
    sy = [None if v is None else (v + 0.5) * f - 0.5 for v in ys]
    fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line={"color": colour, "width": 1.6},
                             hoverinfo="skip", name=name))


def display_size(shape: tuple[int, ...], native: int | None = None) -> int:
    """The side an image is drawn at: its file's resolution (``native``) or the array's, at
    least :data:`DISPLAY_MIN`, at most :data:`DISPLAY_MAX`."""
    return int(min(DISPLAY_MAX, max(DISPLAY_MIN, native or 0, shape[-1])))


def _resize_rgb(rgb: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[0] == side and rgb.shape[1] == side:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC))


def _resize_map(a: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    a = np.asarray(a, np.float32)
    if a.shape == (side, side):
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((side, side), Image.Resampling.BILINEAR))


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    return png_data_uri(pil_png(Image.fromarray(rgb), compress_level=1))


def _hover_layer(values: np.ndarray, factor: float, template: str, customdata: np.ndarray | None = None) -> go.Heatmap:
    """An invisible heatmap at the array's resolution, stretched over the display, for hover values."""
    return go.Heatmap(z=values, customdata=customdata, x0=(factor - 1) / 2, dx=factor, y0=(factor - 1) / 2,
                      dy=factor, opacity=0, showscale=False, hovertemplate=template)


def image_figure(image: np.ndarray, mask: np.ndarray | None = None, title: str = "", height: int = 300,
                 display: np.ndarray | None = None) -> go.Figure:
    """An image (C,H,W in [0,1]) drawn at :func:`display_size` (``display``: the same image at its
    file's resolution), pixel values of the model's input on hover, the mask outline."""
    base = display if display is not None else image
    side = display_size(np.shape(image), np.shape(base)[-1])
    rgb = _resize_rgb(rgb_uint8(base), side)
    factor = side / np.shape(image)[-1]
    fig = go.Figure(go.Image(source=_png_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    fig.add_trace(_hover_layer(rgb_uint8(image)[..., 0].astype(np.float32), factor,
                               "x %{x:.0f}, y %{y:.0f}<br>value %{z:.0f}<extra></extra>"))
    add_contour(fig, mask, factor)
    return _axes(fig, title, height)


def heat_figure(image: np.ndarray | None, heat: np.ndarray, scale: float | None, mask: np.ndarray | None = None,
                title: str = "", height: int = 300, showscale: bool = True, label: str = "value",
                display: np.ndarray | None = None) -> go.Figure:
    """A map over a faint copy of the image, in the shared colour scale (map / scale on [-1, 1]),
    drawn at :func:`display_size` with the map upsampled bilinearly (``display``: the image at its
    file's resolution); raw values on hover, the mask outline. ``scale`` None: a calibrated map
    (1.0 = what a good part reaches), drawn with :func:`cfx.reports.colours.calibrated_display`
    and a yellow contour where it leaves the normal range."""
    heat = np.asarray(heat, np.float32)
    base = display if display is not None else image
    side = display_size(heat.shape, None if base is None else np.shape(base)[-1])
    factor = side / heat.shape[-1]
    cal = scale is None
    big = _resize_map(heat, side)
    norm = X.calibrated_display(big) if cal else X.normalise(big, scale)
    colour = X.heat_rgb(norm).astype(np.float32)
    if base is not None:
        under = _resize_rgb(rgb_uint8(base), side).astype(np.float32)
        a = (map_opacity() * X.heat_alpha(norm))[..., None].astype(np.float32)
        colour = (1 - a) * under + a * colour
    rgb = np.clip(colour + 0.5, 0, 255).astype(np.uint8)
    fig = go.Figure(go.Image(source=_png_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    if cal:
        fig.add_trace(_hover_layer(heat, factor, f"x %{{x:.0f}}, y %{{y:.0f}}<br>{label} %{{z:.3g}} x the normal "
                                                 "maximum<extra></extra>"))
    else:
        fig.add_trace(_hover_layer(X.normalise(heat, scale), factor,
                                   f"x %{{x:.0f}}, y %{{y:.0f}}<br>{label} %{{customdata:.4g}}<br>scaled %{{z:.2f}}<extra></extra>",
                                   customdata=heat))
    if showscale:  # the colour bar of the shared scale
        peak = float(np.nanmax(heat)) if heat.size else 0.0
        bar = ({"tickvals": [0, X.NORMAL_SHARE, 1], "ticktext": ["0", "normal max", f"peak {peak:.3g}"]} if cal
               else {"tickvals": [-1, 0, 1], "ticktext": ["pushes the score down", "no effect", "pushes it up"]})
        fig.add_trace(go.Heatmap(z=[[-1, 1]], x=[-10, -10], y=[-10, -10], colorscale=X.plotly_colorscale(),
                                 zmin=-1, zmax=1, showscale=True, hoverinfo="skip", opacity=0,
                                 colorbar={"thickness": 8, "len": 0.8, **bar}))
    if cal and float(np.nanmax(heat, initial=0.0)) > 1.0:
        _outline(fig, big > 1.0, 1.0, X.NORMAL_CONTOUR, "beyond a good part")
    add_contour(fig, mask, factor)
    return _axes(fig, title, height)


def plot(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displayModeBar": "hover", "scrollZoom": False, "displaylogo": False})


def wipe_image(before: np.ndarray, after: np.ndarray, position: int, mode: str = "wipe") -> np.ndarray:
    """Two RGB uint8 images (H, W, 3) compared at ``position`` (0..100): ``wipe`` shows ``after``
    left of the cut (a yellow line) and ``before`` right of it; ``blend`` mixes them."""
    t = position / 100.0
    if mode == "blend":
        return np.clip((1 - t) * before.astype(np.float32) + t * after.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
    cut = int(round(t * before.shape[1]))
    shown = before.copy()
    shown[:, :cut] = after[:, :cut]
    if 0 < cut < before.shape[1]:
        shown[:, cut - 1] = (255, 204, 0)
    return shown


# ====================================================================== exports
def report_downloads(report: X.Report | Callable[[], X.Report], stem: str, key: str,
                     formats: Sequence[str] = ("png", "json")) -> None:
    """Download buttons for a report; the files are made only when clicked (deferred)."""
    labels = {"png": "PNG report", "json": "JSON numbers", "pdf": "PDF (one page)", "html": "HTML report"}
    cols = st.columns(len(formats))

    def make(fmt: str) -> Callable[[], bytes]:
        def _go() -> bytes:
            r = report() if callable(report) else report
            return X.render(r, fmt)
        return _go

    for c, fmt in zip(cols, formats):
        c.download_button(labels[fmt], data=make(fmt), file_name=f"{stem}.{fmt}", mime=X.MIME[fmt],
                          key=f"dl_{key}_{fmt}", on_click="ignore", icon=":material/download:")
