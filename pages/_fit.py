"""Fitting a category's models from the app: the detector in the foreground (PatchCore needs no
training; at :data:`~cfx.config.LARGE_IMAGE_SIZE` px as a background job), the VAE detector, the
classifier and the explainers' models as a background job (:class:`cfx.jobs.TrainJob`: the same
pipeline as ``python -m cfx train``) that survives page switches and reloads, shows its progress
and ETA, and can be cancelled."""
from __future__ import annotations

import streamlit as st

from cfx.config import LARGE_IMAGE_SIZE
from cfx.data.mvtec import MVTecDataset
from cfx.errors import CfxError
from cfx.jobs import TrainJob, estimate_patchcore_seconds, estimate_seconds
from cfx.training.common import MIN_TRAIN_IMAGES


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[tuple[str, str], TrainJob]:
    """The background jobs of this server process, by (dataset, category) (shared by sessions)."""
    return {}


def n_train(sel) -> int:
    try:
        return len(MVTecDataset(sel.root, sel.category, "train").samples)
    except CfxError:
        return 0


def method_labels(names) -> str:
    from cfx.explainers import method_label

    return ", ".join(method_label(m) for m in names)


def detector_fit_enables() -> list[str]:
    """The methods a fitted PatchCore alone makes usable (none of their :attr:`needs` under it)."""
    from cfx.explainers import methods

    return [m for m, c in methods().items() if not (c.needs.get("*") or c.needs.get("patchcore"))]


def models_fit_enables(bundle) -> list[str]:
    """The methods the background fit of the VAE detector, classifier and explainers' models
    makes usable on ``bundle`` (those that lack one of its parts now)."""
    from cfx.explainers import ready

    return [m for m, lacking in ready(bundle).items() if lacking]


def models_fit_minutes(sel) -> float:
    """About how long the background fit of the explainers' models takes on this category."""
    return max(1.0, estimate_seconds(n_train(sel)) / 60)


def needs_fit(sel, method: str) -> str | None:
    """None when ``method`` can run on the selection's models; otherwise what it needs, in words
    (shown in its place instead of running it into an error)."""
    from cfx.explainers import methods
    from cfx.explainers.base import PART_NAMES

    lacking = methods()[method].missing(sel.bundle)
    if not lacking:
        return None
    parts = " and ".join(PART_NAMES.get(p, p) for p in lacking)
    return (f"Needs the explainers' models ({parts}; about {models_fit_minutes(sel):.0f} min to fit on this "
            "computer): fit them with the button below.")


def fit_panel(sel) -> None:
    """What can be fitted for the selected category, with buttons (call where models are missing)."""
    n = n_train(sel)
    st.markdown(f"**Fit {sel.dataset}/{sel.category} here** ({n} train/good images)")
    if n < MIN_TRAIN_IMAGES:
        st.warning(f"Only {n} train/good images (fewer than {MIN_TRAIN_IMAGES}): a detector fitted on so few normal "
                   "parts has a noisy threshold and may call good parts defective. Add good images if you can.")
    has_detector = sel.bundle is not None
    if not has_detector:
        st.caption(f"The detector alone makes these usable: {method_labels(detector_fit_enables())}.")
    if not has_detector and hires_fit(sel, n):
        return
    if not has_detector and st.button("Fit the detector (PatchCore) now", key="fit_patchcore", type="primary",
                                      help="no training: a memory bank of patch features of the good parts and a "
                                           "threshold at 1% false alarms on good parts it was not fitted on; "
                                           "about 2 min for 200 images on a 2-core CPU"):
        from cfx.training import fit_patchcore

        with st.spinner("Fitting PatchCore on the good parts..."):
            try:
                info = fit_patchcore(sel.root, sel.category, sel.dataset, log=lambda s: None)
            except CfxError as exc:
                st.error(str(exc))
                return
            except OSError as exc:  # a full disk or a folder that vanished: one line, the page goes on
                st.error(f"the fit could not be written: {exc.strerror or exc}")
                return
        st.session_state["fit_warnings"] = list(info.get("detectors", {}).get("patchcore", {}).get("warnings", []))
        st.rerun()
    for w in st.session_state.pop("fit_warnings", []):
        st.warning(w)
    if has_detector and "vae" not in sel.bundle.detectors:
        _vae_job(sel, n)


def hires_fit(sel, n: int) -> bool:
    """PatchCore at :data:`~cfx.config.LARGE_IMAGE_SIZE` px as a background job (minutes on a
    CPU): its button, or its progress while it runs and once it is done (True: the progress is
    shown)."""
    key = (sel.dataset, sel.category)
    job = _jobs().get(key)
    if job is not None and job.detector == "patchcore" and job.status()["state"] in ("running", "done"):
        _progress(key)
        return True
    size = LARGE_IMAGE_SIZE
    eta = estimate_patchcore_seconds(n, size)
    if st.button(f"Fit it at {size} px in the background (about {max(1.0, eta / 60):.0f} min on a CPU)",
                 key="fit_patchcore_hires",
                 help=f"every model of the category then works on {size} px images: thin or small defects "
                      "(screws, grids) are found far more often, and each explanation costs about 10 times as "
                      "much on a CPU (BENCHMARKS.md, working resolution)"):
        _jobs()[key] = TrainJob.start(sel.root, sel.category, sel.dataset, detector="patchcore", image_size=size,
                                      expected_seconds=eta)
        st.rerun()
    return False


def _vae_job(sel, n: int) -> None:
    key = (sel.dataset, sel.category)
    job = _jobs().get(key)
    if job is not None and job.detector != "vae":  # the detector's job, done: its models are in use
        job = None
    state = None if job is None else job.status()["state"]
    if state in (None, "cancelled", "failed"):
        if job is not None:
            st.error(f"The last training run {state}: {job.last_line()}")
        eta = estimate_seconds(n)
        enables = models_fit_enables(sel.bundle)
        st.caption(f"This fit adds the VAE detector and makes these usable: {method_labels(enables) or 'nothing new'}.")
        if st.button(f"Fit the explainers' models in the background (about {max(1.0, eta / 60):.0f} min)",
                     key="fit_vae",
                     help="the autoencoder, the VAE detector, its classifier and the latent ensemble; the other "
                          "methods work without them"):
            _jobs()[key] = TrainJob.start(sel.root, sel.category, sel.dataset, detector="vae", expected_seconds=eta)
            st.rerun()
        return
    _progress(key)


@st.fragment(run_every=2.0)
def _progress(key: tuple[str, str]) -> None:
    job = _jobs().get(key)
    if job is None:
        return
    s = job.status()
    if s["state"] == "running":
        eta = "" if s["eta"] is None else f", about {s['eta'] / 60:.1f} min left"
        st.info(f"Training {key[0]}/{key[1]} in the background: {s['elapsed'] / 60:.1f} min so far{eta}. "
                f"{s['last_line'][:160]}")
        if st.button("Cancel the training", key="fit_cancel"):
            job.cancel()
            st.rerun()
    elif s["state"] == "done":
        seen = f"fit_done_{key[0]}/{key[1]}@{job.started}"
        if not st.session_state.get(seen):  # once: the whole app reruns, so every label and page uses the new models
            st.session_state[seen] = True
            st.rerun(scope="app")
        st.success(f"{key[0]}/{key[1]}: trained in {s['elapsed'] / 60:.1f} min; the new models are in use.")
    else:
        st.error(f"Training {s['state']}: {s['last_line'][:200]}")
