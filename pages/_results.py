"""The dashboard's cached models and results: models with ``st.cache_resource`` keyed by
(dataset, category, models dir); arrays of a split with ``st.cache_resource`` (read-only, shared);
detector outputs and explanations with ``st.cache_data`` keyed by (model key, image hash, method,
target, parameters, seed, mask). Every heavy explanation holds ``bundle.lock``, so sessions never
see each other's random state; the detector's outputs and the light methods (plain forward and
backward passes, per-call hooks) do not wait for it. Heavy methods run in a background stream
(:func:`start_stream`) whose results fill the page as they finish. Pages import these names from
:mod:`pages._common`."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import streamlit as st

from cfx import config
from cfx import reports as X
from cfx.data.imageio import open_image
from cfx.data.mvtec import (
    Arrays,
    MVTecDataset,
    detect_channels,
)
from cfx.errors import CfxError
from cfx.models.bundle import ModelBundle, load_bundle
from pages._figures import display_size

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pages._common import Selection


def target_labels(bundle: ModelBundle) -> dict[str, str]:
    """The targets the selected detector and models offer, with their labels (``bundle.targets()``)."""
    return {name: t.label for name, t in bundle.targets().items()}


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
    b = _bundle(dataset, category, str(config.models_dir(dataset)), stamp)
    if root is not None:
        from cfx.explainers._util import set_data_root
        from cfx.models.identity import check_card_data

        b.notes[:] = check_card_data(b.card, root, category)  # models of another root: one line, not used
        set_data_root(b, root)
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
    # a plain forward pass: it does not wait for the bundle's lock, which a running explanation
    # holds for seconds (the first answer comes at once)
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
    from cfx.audit.store import stored_explanation
    from cfx.explainers import explain

    params = json.loads(params_json)
    db = results_db()
    if db is not None:  # computed before by the audit, another session or a reopened app
        hit = stored_explanation(db, _bundle, _image, method, target, params, seed, _mask)
        if hit is not None:
            return hit
    # one heavy computation per model at a time (their random state stays private); the light
    # methods (the detector's map, Grad-CAM: forward and backward passes on a per-call hook, no
    # random draws) do not wait for a running heavy one
    from cfx.explainers import REGISTRY

    heavy = method not in REGISTRY or is_heavy(REGISTRY[method])
    with _bundle.lock if heavy else contextlib.nullcontext():
        exp = explain(_bundle, _image, [method], target, seed, {method: params}, mask=_mask)[method]
    _store(db, _bundle, _image, exp, params, _mask)
    return exp


def _store(db, bundle: ModelBundle, image: np.ndarray, exp, params: dict | None, mask: np.ndarray | None) -> None:
    """Store a result in the results database (a failure to store is logged; the result is shown)."""
    from cfx.audit.store import store_explanation

    if db is None:
        return
    try:
        store_explanation(db, bundle, image, exp, params, mask)
    except CfxError as err:
        log.warning("not stored: %s", err)


# ------------------------------------------------------------------ streamed heavy methods
STREAM_KEY = "cmp_stream"


def _stream_key(bundle: ModelBundle, image: np.ndarray, target: str, seed: int) -> str:
    return json.dumps([bundle.key(), image_hash(image), target, int(seed)])


def stream_for(bundle: ModelBundle, image: np.ndarray, target: str, seed: int, params: dict[str, dict]):
    """This session's :class:`~cfx.explainers.stream.ExplainStream` when it belongs to this model,
    image, target and seed (its methods' parameters as now), else None; a running stream of other
    settings is stopped (what it finished is stored)."""
    entry = st.session_state.get(STREAM_KEY)
    if entry is None:
        return None
    key, stream = entry
    same = key == _stream_key(bundle, image, target, seed) and all(
        effective_params(m, params.get(m)) == effective_params(m, stream.params[m]) for m in stream.methods)
    if same:
        return stream
    stream.stop()
    st.session_state[STREAM_KEY] = None
    return None


def start_stream(bundle: ModelBundle, image: np.ndarray, methods: Sequence[str], target: str,
                 params: dict[str, dict], seed: int, mask: np.ndarray | None):
    """Start the heavy ``methods`` in the background for this session (stopping its previous
    stream); each result is stored in the results database as it finishes."""
    from cfx.explainers.stream import ExplainStream

    old = st.session_state.get(STREAM_KEY)
    if old is not None:
        old[1].stop()
    p = {m: dict(params.get(m, {})) for m in methods}

    def on_result(exp) -> None:
        _store(results_db(), bundle, image, exp, p.get(exp.method), mask)
        with _DONE_LOCK:
            _done_keys().add(explain_key(bundle, image, exp.method, target, p.get(exp.method), seed))

    stream = ExplainStream(bundle, image, methods, target, p, seed, mask, on_result=on_result).start()
    st.session_state[STREAM_KEY] = (_stream_key(bundle, image, target, seed), stream)
    return stream


def results_db():
    """The shared results database, or None (with a warning on the page) when it cannot be opened."""
    from cfx.resultdb import open_db

    try:
        return open_db()
    except CfxError as err:
        log.warning("results database unavailable: %s", err)
        return None


def _stored(bundle: ModelBundle, image: np.ndarray, method: str, target: str, params: dict | None, seed: int,
            mask: np.ndarray | None) -> bool:
    from cfx.audit.store import unit_key

    db = results_db()
    if db is None:
        return False
    key, _ = unit_key(bundle.key(), image, method, target, effective_params(method, params), seed, mask)
    try:
        return bool(db.present([key]))
    except CfxError:
        return False


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
              seed: int = 0, mask: np.ndarray | None = None) -> bool:
    """Whether the result is at hand: computed in this process, or stored in the results database."""
    with _DONE_LOCK:
        if explain_key(bundle, image, method, target, params, seed) in _done_keys():
            return True
    return _stored(bundle, image, method, target, params, seed, mask)


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


def verdict(sel: Selection) -> dict[str, Any]:
    """The detector's numbers for the selected image."""
    a = analyse_one(sel.bundle, sel.image)
    return X.detector_summary(sel.bundle, {k: np.asarray([v]) for k, v in a.items()})
