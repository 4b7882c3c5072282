"""Inspect: choose or upload an image and see what the detector says about it."""
from __future__ import annotations

import math

import numpy as np
import streamlit as st

from cfx import reports as X
from cfx.data.mvtec import GOOD
from cfx.errors import DataError
from cfx.inert import markdown_text
from pages._decide import decision_form, show_verdict
from pages._common import (reviewer, show, UPLOAD_TYPES, Selection, analyse_one, analyse_split, choose_image,
                           current, file_stem, heat_figure, image_figure, plot, read_upload, report_downloads,
                           require_models, upload_limit_bytes)

PER_PAGE = 24
COLS = 8


def verdict(sel: Selection) -> None:
    """The detector's verdict on the selected image, its maps and the report downloads."""
    b = sel.bundle
    a = analyse_one(b, sel.image)
    score, thr = float(a["score"]), b.threshold
    if sel.defect == GOOD:
        truth = "good (no defect)"
    elif sel.defect:
        truth = f"defect **{sel.defect}**" + ("" if sel.mask is not None else " (mask unknown)")
    else:
        truth = "unknown (uploaded image)"
    st.subheader(sel.name)
    show_verdict(score, thr, bool(a["anomalous"]), help=f"{b.detector.label}; z-score on held-out good parts")
    parts = []
    if "classifier" in a:
        p, pthr = float(a["classifier"]), b.classifier_threshold
        parts.append(f"classifier P(anomalous) {p:.3f} (threshold {pthr:.3f})")
    parts += [f"{label} {float(a[key]):.2f}" for key, (_, label) in b.detector.parts.items()]
    st.caption(f"Detector: {b.detector.label}" + (" · " + " · ".join(parts) if parts else "") + ".")
    st.markdown(f"Ground truth: {truth}." + (" Green outline: the defect mask." if sel.mask is not None else ""))
    c = st.columns(3 if "recon" in a else 2)
    with c[0]:
        plot(image_figure(sel.image, sel.mask, "image", display=sel.display), "insp_image")
    if "recon" in a:
        with c[1]:
            plot(image_figure(a["recon"], sel.mask, "reconstruction (VAE)"), "insp_recon")
    with c[-1]:
        what = "the detector's map: reconstruction error" if b.detector_name == "vae" else "the detector's map"
        plot(heat_figure(sel.image, a["heatmap"], None, sel.mask, f"{what} (yellow: beyond a good part)",
                         label="heat", display=sel.display), "insp_heat")
        st.caption(X.calibrated_caption(a["heatmap"]).capitalize() + ".")
    show("inspect", verdict={"name": sel.name, "score": score, "anomalous": bool(a["anomalous"])})

    def _report() -> X.Report:
        return X.Report.from_bundle(b, sel.image, sel.name, {}, mask=sel.mask, with_detector_maps=True,
                                    params={"split": sel.split, "source": sel.source}, reviewer=reviewer())

    show("inspect", report=_report)
    report_downloads(_report, file_stem(sel, "inspect"), "inspect")


def upload_tab(sel: Selection) -> None:
    st.caption("PNG, JPEG, TIFF or BMP, any mode (16-bit, palette, transparency), up to 8192 px a side; it is "
               "converted to the input of this category's models.")
    up = st.file_uploader("Image file", type=UPLOAD_TYPES, key="uploader")
    if up is None:
        st.session_state["upload_done_id"] = None
        st.session_state["upload_error"] = None
    elif st.session_state.get("upload_done_id") != up.file_id:
        st.session_state["upload_done_id"] = up.file_id
        st.session_state["upload_error"] = None
        if sel.bundle is None:
            st.session_state["upload_error"] = "no model for this category, so an upload cannot be scored"
        else:
            try:
                arr, notes = read_upload(up.name, up.getvalue(), sel.bundle.channels, sel.bundle.image_size,
                                         upload_limit_bytes())
            except DataError as exc:
                st.session_state["upload_error"] = str(exc)
            else:
                st.session_state["upload"] = {"name": up.name, "array": arr, "notes": notes,
                                              "channels": sel.bundle.channels, "size": sel.bundle.image_size}
                st.session_state["source"] = "upload"
                st.rerun()  # the sidebar and the verdict show the new image
    if st.session_state.get("upload_error"):
        st.error(f"Cannot use this upload: {st.session_state['upload_error']}. The previous image stays selected.")


def browse_tab(sel: Selection) -> None:
    if sel.bundle is None:  # the images without scores, until a detector is fitted
        from cfx import config
        from pages._results import _arrays, _channels

        arr = _arrays(str(sel.root), sel.category, sel.split, config.IMAGE_SIZE, _channels(str(sel.root), sel.category))
        scores = None
    else:
        arr, scores = analyse_split(sel.bundle, sel.root, sel.category, sel.split)
    defects = sorted({s.defect for s in arr.samples}, key=lambda d: (d != GOOD, d))
    c1, c2 = st.columns([4, 1])
    where = f"{sel.dataset}/{sel.category}/{sel.split}"  # a new category or split starts with all its defect types
    chosen = c1.multiselect("Defect types", defects, default=defects, key=f"insp_defects_{where}")
    idx = [i for i, s in enumerate(arr.samples) if s.defect in chosen]
    pages = max(1, math.ceil(len(idx) / PER_PAGE))
    page = int(c2.number_input(f"Page (of {pages})", 1, pages, 1, key=f"insp_page_{where}")) if pages > 1 else 1
    shown = idx[(page - 1) * PER_PAGE: page * PER_PAGE]
    for r in range(0, len(shown), COLS):
        cols = st.columns(COLS)
        for c, i in zip(cols, shown[r:r + COLS]):
            s = arr.samples[i]
            thumb = X.image_hwc(arr.images[i][:, ::2, ::2])
            if scores is None:
                caption = s.name
            else:
                caption = f"{s.name} · {scores['score'][i]:.2f} {'anomalous' if scores['anomalous'][i] else 'normal'}"
            c.image((thumb * 255 + .5).astype(np.uint8), width="stretch", caption=caption)
            current_one = sel.source == "dataset" and sel.index == i
            c.button("Selected" if current_one else "Open", key=f"thumb_{i}", disabled=current_one,
                     on_click=choose_image, args=(s.name, i), width="stretch",
                     type="primary" if current_one else "secondary")
    scored = (f"Scores of the detector (anomalous above {sel.bundle.threshold:.3f}); " if sel.bundle is not None
              else "No detector yet (fit it above); ")
    st.caption(f"{scored}{len(idx)} of {len(arr)} images of the {sel.split} split.")


def review_tab(sel: Selection) -> None:
    """The split's images, closest to the threshold first, with the inspector's OK / NG verdicts
    (stored in the review database, :mod:`cfx.review`) and a trial threshold with its live rates."""
    from cfx.errors import CfxError
    from cfx.detectors import rates_at
    from cfx.review import ReviewStore

    if sel.bundle is None:
        st.caption("The review queue needs the category's detector (for the scores).")
        return
    b = sel.bundle
    arr, scores = analyse_split(b, sel.root, sel.category, sel.split)
    try:
        store = ReviewStore()
        decided = store.latest(sel.dataset, sel.category)
    except CfxError as exc:
        st.error(markdown_text(str(exc)))
        return
    if store.notice:
        st.warning(markdown_text(store.notice))
    held = store.pending()
    if held:
        st.warning(f"{len(held)} decision(s) are held because the review database is locked by another writer; "
                   "they are written as soon as it is free.")
    key = f"rv_threshold_{b.key()}"
    s = np.asarray(scores["score"], np.float64)
    lo, hi = float(min(s.min(), b.threshold)), float(max(s.max(), b.threshold))
    st.session_state.setdefault(key, float(b.threshold))
    c1, c2 = st.columns([3, 1.3], vertical_alignment="bottom")
    thr = c1.slider("Trial threshold (the stored one decides everywhere else)", lo, hi, key=key,
                    step=(hi - lo) / 200 or 0.01, format="%.3f")
    c2.button("Restore the stored threshold", key="rv_restore", on_click=st.session_state.__setitem__,
              args=(key, float(b.threshold)), disabled=abs(thr - b.threshold) < 1e-12)
    good = np.asarray(arr.labels) == 0
    r = rates_at(thr, s[good], s[~good])
    fmt = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    st.caption(f"At {thr:.3f}: {fmt(r['fpr'])} of good parts called anomalous (FPR), {fmt(r['tpr'])} of defective "
               f"parts caught (TPR), on the {sel.split} split's labels; stored threshold {b.threshold:.3f}.")
    order = np.argsort(np.abs(s - thr), kind="stable")
    rows = [{"image": arr.samples[i].name, "score": round(float(s[i]), 3),
             "detector": "anomalous" if s[i] > thr else "normal",
             "inspector": decided.get(arr.samples[i].name, {}).get("verdict", ""),
             "reason": decided.get(arr.samples[i].name, {}).get("reason", ""),
             "reviewer": decided.get(arr.samples[i].name, {}).get("reviewer") or ""} for i in order]
    n_ng = sum(1 for d in decided.values() if d["verdict"] == "NG")
    last = max(decided.values(), key=lambda d: d["at"], default=None)
    st.caption(markdown_text(
        f"{len(rows)} images, closest to the threshold first; {len(decided)} decided ({n_ng} NG)"
        + (f"; last: {last['image']} {last['verdict']}" + (f" ({last['reason']})" if last["reason"] else "")
           + (f" by {last['reviewer']}" if last.get("reviewer") else "") if last else "") + "."))
    st.dataframe(rows, hide_index=True, height=min(360, 38 + 35 * len(rows)), key="rv_table")
    names = [x["image"] for x in rows]
    index = {smp.name: i for i, smp in enumerate(arr.samples)}
    key = f"rv_pick_{sel.dataset}/{sel.category}/{sel.split}"
    on_screen = sel.name if sel.source == "dataset" and sel.name in index else None
    if on_screen is not None:
        st.session_state[key] = on_screen  # the queue's choice is always the image on screen
    st.selectbox("Image to decide (choosing one shows it)", names, key=key,
                 on_change=lambda: choose_image(st.session_state[key], index.get(st.session_state[key])))
    if on_screen is None:
        st.caption("Choose a dataset image to decide on it (the image on screen is an upload).")
    def _next() -> None:
        if on_screen in names:
            nxt = names[(names.index(on_screen) + 1) % len(names)]
            choose_image(nxt, index.get(nxt))

    decision_form(store, "rv", "image", on_screen, (key, on_screen), decided.get(on_screen or "", {}), "OK",
                  {"dataset": sel.dataset, "category": sel.category, "model": b.key(), "threshold": b.threshold,
                   "score": s[index[on_screen]] if on_screen is not None else float("nan")}, on_next=_next)
    show("inspect", review={"decided": {k: v["verdict"] for k, v in decided.items()}, "threshold": thr, **r})
    st.download_button("Decisions (CSV)", data=lambda: store.csv_text(sel.dataset, sel.category).encode(),
                       file_name=f"cfx_review_{sel.dataset}_{sel.category}.csv", mime="text/csv", key="rv_csv",
                       on_click="ignore", icon=":material/download:")


st.title("Inspect")
sel = current()
if sel is None:
    st.info("Choose a valid data root in the sidebar.")
    st.stop()
if sel.source == "upload" and sel.notes:
    st.warning(f"{sel.name}: " + "; ".join(sel.notes) + ".")
if require_models(sel):
    verdict(sel)
    from pages._fit import method_labels, fit_panel, models_fit_enables

    if "vae" not in sel.bundle.detectors or models_fit_enables(sel.bundle):
        enables = models_fit_enables(sel.bundle)
        with st.expander(f"More models for this category ({method_labels(enables) or 'the VAE detector'})"):
            fit_panel(sel)
st.divider()
queue, browse, upload = st.tabs(["Review queue", "Browse the dataset", "Upload an image"])
with queue:
    review_tab(sel)
with browse:
    browse_tab(sel)
with upload:
    upload_tab(sel)
