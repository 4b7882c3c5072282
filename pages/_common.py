"""Shared Streamlit helpers of the cfx dashboard: selection state, cached models and results,
Plotly figures and report downloads. Not a page (st.navigation in app.py lists the pages).

Session state (plain keys, readable and writable by every page; widgets bind to ``w_*`` copies):
    ``data_root``: str or None (None: $CFX_DATA_ROOT, else the demo).
    ``category``, ``split`` ("test" or "train"), ``image_name`` ("<defect>/<file>"),
    ``image_index``: the chosen dataset image.
    ``source``: "dataset" or "upload"; ``upload``: the uploaded image (dict) or None.
    ``target``: the explained target (score, recon, mahalanobis, classifier).
    ``detector``: the explained detector (``patchcore`` or ``vae``; default the first fitted).
    ``selection``: the sidebar's :class:`Selection` of this run (:func:`current`).
    ``shown``: what each page displays, by page (:func:`show`).

Caches: models with ``st.cache_resource`` keyed by (dataset, category, models dir); arrays of a
split with ``st.cache_resource`` (read-only, shared); detector outputs and explanations with
``st.cache_data`` keyed by (model key, image hash, method, target, parameters, seed). Every model
computation holds ``bundle.lock``, so sessions never see each other's hooks or state.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# Every heavy dependency is imported here, in this order, and this module is the first heavy
# import of every script run (app.py or Home imports it before anything else heavy): threads of
# concurrent runs then queue on this module's import lock instead of deadlocking on two others
# (which Python resolves by handing out a partially initialised module).
import matplotlib.backends.backend_agg  # noqa: F401  (reports: no pyplot)
import matplotlib.figure  # noqa: F401
import numpy as np
import pandas  # noqa: F401
import plotly.graph_objects as go
import sklearn.metrics  # noqa: F401
import streamlit as st
import torch  # noqa: F401

from cfx import config
from cfx import reports as X
from cfx.reports.encode import file_stem as name_stem, pil_png, png_data_uri
from cfx.data.imageio import image_to_array, open_image
from cfx.data.mvtec import GOOD, Arrays, MVTecDataset, detect_channels, list_categories, validate_root
from cfx.errors import CfxError, DataError, ModelMissingError
from cfx.models.bundle import ModelBundle, available_models, dataset_name, load_bundle

PROJECT = Path(__file__).resolve().parent.parent
def target_labels(bundle: ModelBundle) -> dict[str, str]:
    """The targets the selected detector and models offer, with their labels (``bundle.targets()``)."""
    return {name: t.label for name, t in bundle.targets().items()}


#: The detector heatmap is calibrated (1.0 = 99.9th percentile of normal pixels): shown on 0..2.
DETECTOR_HEAT_SCALE = 2.0
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"]
UPLOAD_OPTION = "(uploaded image)"
DEFAULTS: dict[str, Any] = {"data_root": None, "category": None, "split": "test", "image_name": None,
                            "image_index": None, "source": "dataset", "upload": None, "target": "score",
                            "detector": None}


# ====================================================================== state
def init_state() -> None:
    """Fill the session's plain selection keys with their defaults (once)."""
    for k, v in DEFAULTS.items():
        st.session_state.setdefault(k, v)


def _bind(key: str, wkey: str, options: Sequence[Any] | None = None) -> None:
    """Make widget ``wkey`` show the plain key's value (call before the widget is created)."""
    v = st.session_state.get(key)
    if options is not None and v not in options:
        v = options[0] if options else None
        st.session_state[key] = v
    if wkey not in st.session_state or st.session_state[wkey] != v:
        st.session_state[wkey] = v


def _sync(key: str, wkey: str) -> None:
    if wkey in st.session_state:
        st.session_state[key] = st.session_state[wkey]


def bound(widget: Callable, label: str, key: str, options: Sequence[Any] | None = None, **kw) -> Any:
    """A widget whose value lives in the plain session key ``key`` (survives page switches and can
    be set by any page). ``options`` for select-like widgets."""
    wkey = f"w_{key}"
    _bind(key, wkey, options)
    if options is not None:
        kw["options"] = list(options)
    widget(label, key=wkey, on_change=_sync, args=(key, wkey), **kw)
    return st.session_state[key]


def show(page: str, **values: Any) -> None:
    """Record what ``page`` displays in this session (``st.session_state["shown"][page]``): its
    verdict, results, slider positions and the builder of its report. The page's report reads it
    back (:func:`shown`); tests reach the app's state through it and ``selection`` only."""
    st.session_state.setdefault("shown", {}).setdefault(page, {}).update(values)


def shown(page: str) -> dict[str, Any]:
    """What :func:`show` recorded for ``page`` ({} before it drew anything)."""
    return st.session_state.get("shown", {}).get(page, {})


# ====================================================================== cached resources
@st.cache_resource(show_spinner=False)
def _root(data_root: str | None) -> Path:
    from cfx.resolve import resolve_root

    return resolve_root(data_root)


@st.cache_resource(show_spinner="Loading the models...", max_entries=16)
def _bundle(dataset: str, category: str, models_dir: str, stamp: float) -> ModelBundle:
    b = load_bundle(dataset, category)
    print(f"cfx: loaded models {b.key()} from {models_dir}", file=sys.stderr, flush=True)
    return b


def bundle_for(dataset: str, category: str, root: Path | None = None) -> ModelBundle:
    """The category's models, loaded once per process (raises ModelMissingError with the train
    command). ``root``: the data root, which methods that read the train images need."""
    from cfx.models.bundle import category_dir

    card = category_dir(dataset, category) / "card.json"
    stamp = card.stat().st_mtime if card.exists() else 0.0
    b = _bundle(dataset, category, str(config.models_dir()), stamp)
    if root is not None:
        with b.lock:
            b.loaded.set_data_root(root)
    return b


@st.cache_resource(show_spinner="Reading images...", max_entries=24)
def _arrays(root: str, category: str, split: str, size: int, channels: int) -> Arrays:
    return MVTecDataset(root, category, split, image_size=size, channels=channels).arrays()


@st.cache_resource(show_spinner=False, max_entries=8)
def _display_image(path: str, channels: int) -> np.ndarray | None:
    """The selected image at its file's resolution (clamped to DISPLAY_MIN..DISPLAY_MAX), for drawing."""
    from cfx.data.imageio import load_image

    try:
        with open_image(path) as img:
            side = display_size((max(img.size),))
        return load_image(path, side, channels)
    except (OSError, CfxError, ValueError):
        return None


@st.cache_resource(show_spinner=False, max_entries=64)
def _channels(root: str, category: str) -> int:
    return detect_channels(root, category)


@st.cache_resource(show_spinner=False)
def _done_keys() -> set[str]:
    """Keys of explanations computed in this process (to tell cached from pending methods)."""
    return set()


_DONE_LOCK = threading.Lock()


def image_hash(image: np.ndarray) -> str:
    a = np.ascontiguousarray(np.asarray(image, np.float32))
    return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


@st.cache_data(show_spinner=False, max_entries=256)
def _analyse_one(model_key: str, img_hash: str, _bundle: ModelBundle, _image: np.ndarray) -> dict[str, np.ndarray]:
    with _bundle.lock:
        a = _bundle.analyse(_image[None])
    return {k: v[0] for k, v in a.items() if k != "z"}


def analyse_one(bundle: ModelBundle, image: np.ndarray) -> dict[str, np.ndarray]:
    """The detector's and classifier's outputs for one image (cached)."""
    return _analyse_one(bundle.key(), image_hash(image), bundle, image)


@st.cache_data(show_spinner="Scoring the split...", max_entries=32)
def _analyse_split(model_key: str, root: str, category: str, split: str, _bundle: ModelBundle,
                   _images: np.ndarray) -> dict[str, np.ndarray]:
    with _bundle.lock:
        a = _bundle.analyse(_images)
    keep = ("score", "recon_score", "mahalanobis_score", "classifier", "anomalous", "classifier_anomalous")
    return {k: a[k] for k in keep if k in a}


def analyse_split(bundle: ModelBundle, root: Path, category: str, split: str = "test") -> tuple[Arrays, dict]:
    """(arrays, scores) of a split: every image scored by the detector and the classifier (cached)."""
    arr = _arrays(str(root), category, split, bundle.image_size, bundle.channels)
    return arr, _analyse_split(bundle.key(), str(root), category, split, bundle, arr.images)


@st.cache_data(show_spinner=False, max_entries=160)
def _explain(model_key: str, img_hash: str, method: str, target: str, params_json: str, seed: int,
             mask_hash: str, _bundle: ModelBundle, _image: np.ndarray, _mask: np.ndarray | None):
    from cfx.explainers import explain

    params = json.loads(params_json)
    with _bundle.lock:  # one computation per model at a time: hooks and RNG state stay private
        return explain(_bundle, _image, [method], target, seed, {method: params}, mask=_mask)[method]


def registry() -> dict[str, type]:
    """The registered explanation methods, in display order (:func:`cfx.explainers.methods`)."""
    from cfx.explainers import methods

    return methods()


def param_inputs(methods: Sequence[str], key_prefix: str) -> dict[str, dict[str, Any]]:
    """Number inputs for the numeric defaults of each method; returns only the changed values."""
    reg = registry()
    params: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m not in reg:
            continue
        numeric = {k: v for k, v in reg[m].defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not numeric:
            continue
        cols = st.columns(min(4, len(numeric)))
        for i, (k, v) in enumerate(numeric.items()):
            val = cols[i % len(cols)].number_input(f"{m}: {k}", value=v, key=f"{key_prefix}_{m}_{k}")
            if val != v:
                params.setdefault(m, {})[k] = type(v)(val)
    return params


def effective_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    cls = registry().get(method)
    return {**(cls.defaults if cls else {}), **(params or {})}


def explain_key(bundle: ModelBundle, image: np.ndarray, method: str, target: str, params: dict | None,
                seed: int) -> str:
    pj = json.dumps(effective_params(method, params), sort_keys=True, default=str)
    return json.dumps([bundle.key(), image_hash(image), method, target, pj, seed])


def is_cached(bundle: ModelBundle, image: np.ndarray, method: str, target: str, params: dict | None,
              seed: int = 0) -> bool:
    with _DONE_LOCK:
        return explain_key(bundle, image, method, target, params, seed) in _done_keys()


def explain_one(bundle: ModelBundle, image: np.ndarray, method: str, target: str = "score",
                params: dict | None = None, seed: int = 0, mask: np.ndarray | None = None):
    """One method's :class:`~cfx.explainers.base.Explanation` (cached per model, image, method,
    target, parameters, seed and mask; a failing method returns its error in the result). The
    mask, when known, gives the counterfactuals' locality."""
    pj = json.dumps(effective_params(method, params), sort_keys=True, default=str)
    mh = "" if mask is None else image_hash(np.asarray(mask, np.float32))
    exp = _explain(bundle.key(), image_hash(image), method, target, pj, int(seed), mh, bundle, image, mask)
    with _DONE_LOCK:
        _done_keys().add(explain_key(bundle, image, method, target, params, seed))
    return exp


def is_heavy(cls: type) -> bool:
    """Whether a method runs only on demand (its ``heavy`` class attribute)."""
    return bool(getattr(cls, "heavy", True))


# ====================================================================== selection
@dataclass
class Selection:
    """What the sidebar chose: data, models and image (``bundle`` None when no model exists)."""

    root: Path
    dataset: str
    category: str
    split: str
    bundle: ModelBundle | None
    image: np.ndarray | None = None
    name: str = ""
    mask: np.ndarray | None = None
    index: int | None = None
    defect: str | None = None
    source: str = "dataset"
    display: np.ndarray | None = None  # the image at its file's resolution (for drawing only)
    model_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def image_hash(self) -> str:
        return image_hash(self.image) if self.image is not None else ""

    @property
    def ready(self) -> bool:
        return self.bundle is not None and self.image is not None


def show_model_missing(message: str) -> None:
    """A missing model: the message and the command that trains it, no traceback."""
    st.error(message)
    m = re.search(r"run (python -m cfx train .+)$", message)
    if m:
        st.code(m.group(1), language="bash")


def _draw_sidebar() -> Selection | None:
    """The data and image selection in the sidebar; returns the resolved selection."""
    init_state()
    sb = st.sidebar
    with sb:
        st.markdown("**Data**")
        # the box keeps what was typed (a bad path stays there, with its error, to be corrected)
        if "w_data_root" not in st.session_state:
            st.session_state["w_data_root"] = st.session_state.get("data_root") or ""
        st.text_input("MVTec AD root (empty: the demo)", key="w_data_root", on_change=_set_root,
                      placeholder="/path/to/mvtec_anomaly_detection",
                      help="a folder holding <category>/train/good and <category>/test/<defect>")
        if st.session_state.get("root_error"):
            st.error(st.session_state["root_error"])
        try:
            root = _root(st.session_state.get("data_root") or None)
        except CfxError as exc:
            st.error(str(exc))
            return None
        dataset = dataset_name(root)
        cats = list_categories(root)
        if not cats:
            st.error(f"no categories in {root}")
            return None
        with_model = set(available_models(dataset))
        category = bound(st.selectbox, "Category", "category", cats,
                         format_func=lambda c: c if c in with_model else f"{c} (no model)")
        split = bound(st.radio, "Split", "split", ["test", "train"], horizontal=True)
        bundle, model_error = None, None
        try:
            bundle = bundle_for(dataset, category, root)
        except ModelMissingError as exc:
            model_error = str(exc)
        except CfxError as exc:
            model_error = str(exc)
        if bundle is not None:
            from cfx.detectors import DETECTORS

            fitted = [n for n in DETECTORS if n in bundle.detectors]
            name = bound(st.selectbox, "Detector", "detector", fitted,
                         format_func=lambda n: DETECTORS[n].label,
                         help="the anomaly detector whose decisions are explained (PatchCore by default where fitted)")
            bundle = bundle.using(name)
        size = bundle.image_size if bundle else config.IMAGE_SIZE
        try:
            channels = bundle.channels if bundle else _channels(str(root), category)
            arr = _arrays(str(root), category, split, size, channels)
        except DataError as exc:
            st.error(str(exc))
            return Selection(root, dataset, category, split, bundle, model_error=model_error)
        names = [s.name for s in arr.samples]
        upload = st.session_state.get("upload")
        if upload is not None and (upload.get("channels") != channels or upload.get("size") != size):
            upload = None  # made for another category's models
        options = ([UPLOAD_OPTION] if upload is not None else []) + names
        # the plain keys (image_name/image_index/source) -> the widget
        cur = UPLOAD_OPTION if st.session_state.get("source") == "upload" and upload is not None else _current_name(
            names, arr)
        st.session_state["w_image"] = cur
        st.selectbox("Image", options, key="w_image", on_change=_set_image, args=(names,),
                     help="test images are sorted good first, then by defect type")
        sel = Selection(root, dataset, category, split, bundle, model_error=model_error)
        if cur == UPLOAD_OPTION:
            sel.image, sel.name, sel.source = upload["array"], upload["name"], "upload"
            sel.notes = list(upload.get("notes", []))
        else:
            i = names.index(cur)
            st.session_state["image_name"], st.session_state["image_index"] = cur, i
            sel.image, sel.name, sel.index = arr.images[i], cur, i
            sel.defect = arr.samples[i].defect
            sel.display = _display_image(str(arr.samples[i].path), channels)
            sel.mask = arr.masks[i] if arr.has_mask[i] and sel.defect != GOOD else None
        st.caption(f"{dataset}/{category} · {sel.name}")
    return sel


def _current_name(names: list[str], arr: Arrays) -> str:
    name, idx = st.session_state.get("image_name"), st.session_state.get("image_index")
    if name in names:
        return name
    if isinstance(idx, int) and 0 <= idx < len(names) and name is None:
        return names[idx]
    # default: the first defective image (the interesting one), else the first
    first_bad = next((s.name for s in arr.samples if s.defect != GOOD), names[0])
    return first_bad


def _set_image(names: list[str]) -> None:
    v = st.session_state.get("w_image")
    if v is None:
        return
    if v == UPLOAD_OPTION:
        st.session_state["source"] = "upload"
    else:
        st.session_state["source"] = "dataset"
        st.session_state["image_name"] = v
        st.session_state["image_index"] = names.index(v) if v in names else None


def choose_image(name: str, index: int | None = None) -> None:
    """Select a dataset image (e.g. from a thumbnail's button)."""
    st.session_state["source"] = "dataset"
    st.session_state["image_name"] = name
    st.session_state["image_index"] = index


def _set_root() -> None:
    value = (st.session_state.get("w_data_root") or "").strip()
    if not value:
        st.session_state["data_root"] = None
        st.session_state["root_error"] = None
        return
    try:
        validate_root(value)
    except DataError as exc:
        st.session_state["root_error"] = f"{exc} (still using the previous data)"
        return
    st.session_state["root_error"] = None
    st.session_state["data_root"] = value
    st.session_state["category"] = None
    st.session_state["image_name"] = st.session_state["image_index"] = None
    st.session_state["source"] = "dataset"


def require_models(sel: Selection | None) -> bool:
    """Show why nothing can be computed (no data, no model); True when the selection is ready."""
    if sel is None:
        st.info("Choose a valid data root in the sidebar.")
        return False
    if sel.bundle is None:
        show_model_missing(sel.model_error or f"no trained model for {sel.dataset}/{sel.category}")
        return False
    if sel.image is None:
        st.info("Choose an image in the sidebar.")
        return False
    return True


# ====================================================================== uploads
def read_upload(name: str, data: bytes, channels: int, size: int, max_bytes: int | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """An uploaded file as a model-ready array, with notes on what was converted.

    Raises:
        DataError: empty, too large, unreadable or too big in pixels.
    """
    if not data:
        raise DataError(f"{name} is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(f"{name} is {len(data) / 2**20:.1f} MB; the upload limit is {max_bytes / 2**20:.0f} MB")
    img = open_image(data, name)
    notes = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        notes.append(f"{mode} ({'16' if mode.startswith('I;16') else '32'}-bit) image scaled to 8 bits by its bit depth")
    elif mode == "F":
        notes.append("floating-point image taken as values in [0, 1]")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("transparency composited on black")
    colour = mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    if channels == 1 and colour:
        notes.append("converted to gray for this category's models")
    elif channels == 3 and not colour:
        notes.append("gray image repeated over three channels for this category's models")
    if img.size != (size, size):
        notes.append(f"resized from {img.size[0]}x{img.size[1]} to {size}x{size}")
    return image_to_array(img, size, channels), notes


def upload_limit_bytes() -> int:
    try:
        mb = int(st.get_option("server.maxUploadSize"))
    except Exception:  # noqa: BLE001
        mb = 50
    return mb * 2**20


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


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
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


def add_contour(fig: go.Figure, mask: np.ndarray | None, factor: float = 1.0) -> None:
    """The ground-truth mask's outline (skimage.measure.find_contours) over a figure, its
    coordinates scaled by ``factor`` (display pixels per mask pixel)."""
    if mask is None or not np.any(mask):
        return
    m = np.ascontiguousarray(np.asarray(mask, bool))
    xs, ys = _contours(m.tobytes(), m.shape)
    f = float(factor)
    sx = [None if v is None else (v + 0.5) * f - 0.5 for v in xs]
    sy = [None if v is None else (v + 0.5) * f - 0.5 for v in ys]
    fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line={"color": "#00e000", "width": 1.6},
                             hoverinfo="skip", name="mask"))


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
    rgb = _resize_rgb(_rgb_uint8(base), side)
    factor = side / np.shape(image)[-1]
    fig = go.Figure(go.Image(source=_png_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    fig.add_trace(_hover_layer(_rgb_uint8(image)[..., 0].astype(np.float32), factor,
                               "x %{x:.0f}, y %{y:.0f}<br>value %{z:.0f}<extra></extra>"))
    add_contour(fig, mask, factor)
    return _axes(fig, title, height)


def heat_figure(image: np.ndarray | None, heat: np.ndarray, scale: float, mask: np.ndarray | None = None,
                title: str = "", height: int = 300, showscale: bool = True, label: str = "value",
                display: np.ndarray | None = None) -> go.Figure:
    """A map over a faint copy of the image, in the shared colour scale (map / scale on [-1, 1]),
    drawn at :func:`display_size` with the map upsampled bilinearly (``display``: the image at its
    file's resolution); raw values on hover, the mask outline."""
    heat = np.asarray(heat, np.float32)
    base = display if display is not None else image
    side = display_size(heat.shape, None if base is None else np.shape(base)[-1])
    factor = side / heat.shape[-1]
    norm = X.normalise(_resize_map(heat, side), scale)
    colour = X.heat_rgb(norm).astype(np.float32)
    if base is not None:
        under = _resize_rgb(_rgb_uint8(base), side).astype(np.float32)
        a = X.heat_alpha(norm)[..., None].astype(np.float32)
        colour = (1 - a) * under + a * colour
    rgb = np.clip(colour + 0.5, 0, 255).astype(np.uint8)
    fig = go.Figure(go.Image(source=_png_uri(rgb), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    fig.add_trace(_hover_layer(X.normalise(heat, scale), factor,
                               f"x %{{x:.0f}}, y %{{y:.0f}}<br>{label} %{{customdata:.4g}}<br>scaled %{{z:.2f}}<extra></extra>",
                               customdata=heat))
    if showscale:  # the colour bar of the shared scale
        fig.add_trace(go.Heatmap(z=[[-1, 1]], x=[-10, -10], y=[-10, -10], colorscale=X.plotly_colorscale(),
                                 zmin=-1, zmax=1, showscale=True, hoverinfo="skip", opacity=0,
                                 colorbar={"thickness": 8, "len": 0.8, "tickvals": [-1, 0, 1],
                                           "title": {"text": "÷ scale", "side": "right"}}))
    add_contour(fig, mask, factor)
    return _axes(fig, title, height)


def plot(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displayModeBar": "hover", "scrollZoom": True, "displaylogo": False})


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


def file_stem(sel: Selection, what: str) -> str:
    return f"cfx_{what}_{name_stem(f'{sel.dataset}_{sel.category}_{sel.name}')}"


def verdict(sel: Selection) -> dict[str, Any]:
    """The detector's numbers for the selected image."""
    a = analyse_one(sel.bundle, sel.image)
    return X.detector_summary(sel.bundle, {k: np.asarray([v]) for k, v in a.items()})


#: Session-state keys of the run bookkeeping: app.py numbers every run it starts (``RUN_KEY``);
#: the sidebar's selection is stored with the number of the run that drew it (``DRAWN_KEY``).
RUN_KEY, DRAWN_KEY = "_cfx_run", "_cfx_selection_run"


def entry_guard() -> None:
    """Rerun through app.py when a page was run on its own (the one Streamlit workaround).

    Until some session has called ``st.navigation``, a Streamlit server whose app has a
    ``pages/`` folder runs the legacy multipage mode: a first request for ``/inspect`` runs
    pages/inspect.py alone, without app.py. Switch the legacy mode off (as ``st.navigation``
    does) and rerun, so that app.py runs.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory or RUN_KEY not in st.session_state:
        PagesManager.uses_pages_directory = False
        st.rerun()


def current() -> Selection | None:
    """The selection of this run (``st.session_state["selection"]``): draws the sidebar on the
    first call of a run (app.py calls it before every page but Home, which calls it after its
    static text)."""
    entry_guard()
    if st.session_state.get(DRAWN_KEY) != st.session_state[RUN_KEY]:
        st.session_state["selection"] = _draw_sidebar()
        st.session_state[DRAWN_KEY] = st.session_state[RUN_KEY]
    return st.session_state["selection"]
