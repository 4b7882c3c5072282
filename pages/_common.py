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

Caches and results live in :mod:`pages._results`, figures and downloads in :mod:`pages._figures`;
this module re-exports them, so that a page imports everything from here.
"""
from __future__ import annotations

import re
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
import plotly.graph_objects as go  # noqa: F401
import sklearn.metrics  # noqa: F401
import streamlit as st
import torch  # noqa: F401

from cfx import config
from cfx.inert import markdown_text
from cfx.reports.encode import file_stem as name_stem
from cfx.data.imageio import image_to_array, open_image
from cfx.data.mvtec import GOOD, Arrays, list_categories, validate_root
from cfx.errors import CfxError, DataError, ModelMissingError
from cfx.models.bundle import ModelBundle, available_models, dataset_name
from pages._url import read_url, write_url
from pages._figures import (DISPLAY_MAX, DISPLAY_MIN, add_contour, display_size,  # noqa: F401
                            heat_figure, image_figure, map_opacity, outline_shown, plot, report_downloads, rgb_uint8, wipe_image)
from pages._results import (_arrays, _channels, _display_image, _root, analyse_one, analyse_split,  # noqa: F401
                            bundle_for, effective_params, explain_key, explain_one, image_hash, is_cached, is_heavy,
                            load_bundle, param_inputs, registry, start_stream, stream_for, target_labels, verdict)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp"]
UPLOAD_OPTION = "(uploaded image)"
DEFAULTS: dict[str, Any] = {"data_root": None, "category": None, "split": "test", "image_name": None,
                            "image_index": None, "source": "dataset", "upload": None, "target": "score",
                            "detector": None}


# ====================================================================== state
def init_state() -> None:
    """Fill the session's plain selection keys with their defaults, after those the URL names
    (once per session, :func:`pages._url.read_url`)."""
    read_url(_set_root)
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


#: a command-line hint at the end of a core message (the CLI shows it; the app offers its fit panel)
_CLI_HINT = re.compile(r"\s*[:;,]?\s*(?:run|refit them with|retrain it with|try)\s+`?(?:python -m )?cfx train\b[^`]*`?"
                       r"(?:\s*\([^)]*\))?\s*$")


def for_app(message: str, where: str = "with the panel below") -> str:
    """A core message in the app's words: a trailing ``cfx train`` command becomes a pointer to
    the fit panel (no command-line text in the app), as inert Markdown."""
    text, n = _CLI_HINT.subn("", message)
    return markdown_text(text + (f"; fit them here {where}" if n else ""))


def show_model_missing(message: str, where: str = "with the panel below") -> None:
    """A missing model: the message and where to fit it in the app, no traceback and no command."""
    st.warning(for_app(message, where))


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
            st.error(markdown_text(st.session_state["root_error"]))
        if st.session_state.get("user"):
            st.caption(f"Signed in as {markdown_text(st.session_state['user'])}")
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
            for note in bundle.notes:
                st.warning(for_app(note))
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
        st.caption(markdown_text(f"{dataset}/{category} · {sel.name}"))
        write_url(sel)
        with st.expander("Display"):
            st.session_state.setdefault("show_outline", True)
            st.session_state.setdefault("map_opacity", 1.0)
            bound(st.toggle, "Outline the defect mask", "show_outline",
                  help="the ground-truth mask's outline (green) over every image and map")
            bound(st.slider, "Map opacity over the image", "map_opacity", min_value=0.0, max_value=1.0, step=0.05,
                  help="0: the image alone, 1: the map's full colour where it is strong")
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
    from cfx.station import REFUSAL, is_allowed

    if not is_allowed(value):  # one answer, whatever the folder is: the field probes nothing
        st.session_state["root_error"] = f"{REFUSAL} (still using the previous data)"
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
        from pages._fit import fit_panel

        fit_panel(sel)
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


def reviewer() -> str:
    """Who the reports name as reviewer: the signed-in user, else the name typed in the review queue."""
    return str(st.session_state.get("user") or st.session_state.get("rv_reviewer") or "").strip()


def file_stem(sel: Selection, what: str) -> str:
    return f"cfx_{what}_{name_stem(f'{sel.dataset}_{sel.category}_{sel.name}')}"


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
