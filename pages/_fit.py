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


def _n_train(sel) -> int:
    try:
        return len(MVTecDataset(sel.root, sel.category, "train").samples)
    except CfxError:
        return 0


def fit_panel(sel) -> None:
    """What can be fitted for the selected category, with buttons (call where models are missing)."""
    n = _n_train(sel)
    st.markdown(f"**Fit {sel.dataset}/{sel.category} here** ({n} train/good images)")
    if n < MIN_TRAIN_IMAGES:
        st.warning(f"Only {n} train/good images (fewer than {MIN_TRAIN_IMAGES}): a detector fitted on so few normal "
                   "parts has a noisy threshold and may call good parts defective. Add good images if you can.")
    has_detector = sel.bundle is not None
    if not has_detector and _detector_job(sel, n):
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


def _detector_job(sel, n: int) -> bool:
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
        if st.button(f"Train the VAE detector, classifier and explainers' models in the background "
                     f"(about {eta / 60:.0f} min)", key="fit_vae",
                     help="CLEAR, the gradient method and Grad-CAM need them; DiCE, concepts and the other "
                          "PatchCore explanations work without"):
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
        st.success(f"{key[0]}/{key[1]}: trained in {s['elapsed'] / 60:.1f} min.")
        if st.button("Use the new models", key="fit_use", type="primary"):
            st.rerun(scope="app")
    else:
        st.error(f"Training {s['state']}: {s['last_line'][:200]}")
