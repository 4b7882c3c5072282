"""Counterfactuals: the closest images the detector calls normal, and the path to them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cfx import reports as X
from cfx.explainers.base import method_label
from cfx.metrics.edits import REPAIR_KEYS
from cfx.reports.words import label, value
from cfx.inert import markdown_text
from pages._fit import fit_panel, needs_fit
from pages._common import (reviewer, outline_shown, show, shown, wipe_image, target_labels, bound, current, explain_one, file_stem, heat_figure, image_figure,
                           is_cached, plot, registry, report_downloads, require_models)

st.title("Counterfactuals")
sel = current()
if not require_models(sel):
    st.stop()
b, image = sel.bundle, sel.image
cf_methods = {m: c for m, c in registry().items() if c.kind == "counterfactual"}
if not cf_methods:
    st.info("No counterfactual method is registered yet (CLEAR, DiCE and the latent gradient method come with "
            "the explainers).")
    st.stop()

c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    needs = {m: needs_fit(sel, m) for m in cf_methods}
    method = bound(st.selectbox, "Method", "cf_method", list(cf_methods),
                   format_func=lambda m: method_label(m) + (" (needs a fit)" if needs[m] else ""))
with c2:
    labels = target_labels(b)
    target = bound(st.radio, "Explain", "target", list(labels), format_func=labels.get)
with c3:
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="cf_seed"))

name = method_label(method)
if needs[method]:
    st.info(needs[method])
    fit_panel(sel)
    st.stop()
if not is_cached(b, image, method, target, None, seed, sel.mask):
    if not st.button(f"▶ Find counterfactuals with {name}", type="primary", key="cf_run"):
        st.info(f"{name} runs on demand (a few seconds). The detector's score of this image: "
                f"{float(b.score_numpy(image[None], target)[0]):.3f} (threshold {b.threshold_for(target):.3f}).")
        st.stop()
with st.spinner(f"Running {name}..."):
    exp = explain_one(b, image, method, target, None, seed, sel.mask)
show("counterfactuals", result=exp)
if not exp.ok:
    st.error(markdown_text(f"{name} failed: {exp.error}"))
    st.stop()
if not exp.counterfactuals:
    st.warning(f"{name} found no counterfactual for this image "
               f"({exp.info.get('message', 'none crossed the threshold within the search budget')}).")
    st.stop()

K = len(exp.counterfactuals)
nvalid = sum(c.valid for c in exp.counterfactuals)
st.caption(f"{name}: {K} counterfactual(s), {nvalid} valid, {exp.seconds:.2f} s; target {labels[target]} "
           f"{exp.score_before:.3f} → threshold {exp.threshold:.3f}."
           + (f" Relative diversity {exp.info['relative_diversity']:.2f} (mean pairwise L1 "
              f"{exp.info['diversity']:.4f} over the edits' mean L1 to the original {exp.info['mean_l1']:.4f}; "
              "0 = one edit shown several times)." if K > 1 and exp.info.get("relative_diversity") is not None else ""))


def _u8(image: np.ndarray) -> np.ndarray:
    return (X.image_hwc(image) * 255 + 0.5).astype(np.uint8)


def _outlined(image: np.ndarray) -> np.ndarray:
    """RGB uint8 of an image with the mask outline drawn in (for the light st.image views)."""
    a = _u8(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if sel.mask is not None and sel.mask.any() and outline_shown():
        a = a.copy()
        a[X.mask_outline(sel.mask)] = (0, 224, 0)
    return a


@st.fragment
def compare_view(cf) -> None:
    """The image-comparison slider (its own fragment: a move redraws one image)."""
    st.markdown("**Compare** the two images")
    mc = st.columns([1, 3])
    # plain keys (bound): the slider, the image and its caption keep one value across switches
    st.session_state.setdefault("cf_mode", "wipe")
    st.session_state.setdefault("cf_wipe", 50)
    with mc[0]:
        mode = bound(st.radio, "View", "cf_mode", ["wipe", "blend"], horizontal=True)
    with mc[1]:
        pos = int(bound(st.slider, "← original · counterfactual →", "cf_wipe", min_value=0, max_value=100))
    view = wipe_image(_outlined(image), _outlined(cf.image), pos, mode)
    c = st.columns([1, 2, 1])
    caption = f"{'left: counterfactual, right: original' if mode == 'wipe' else 'blend'} at {pos}%"
    c[1].image(np.kron(view, np.ones((3, 3, 1), np.uint8)), width="stretch", caption=caption)
    show("counterfactuals", mode=mode, position=pos, caption=caption)


@st.fragment
def path_view(cf, k: int) -> None:
    """The step slider along the path (its own fragment: a move redraws the step only)."""
    S = len(cf.path_images)
    scores = np.asarray(cf.path_scores) if cf.path_scores is not None else None
    st.markdown("**Path** from the original to the edit (only the edited region changes)")
    step = st.slider("Step", 0, S - 1, S - 1, key=f"cf_step_{k}")
    pc = st.columns([1, 1.4])
    title = f"step {step}/{S - 1}" + (f" · {exp.target} {scores[step]:.3f}" if scores is not None else "")
    pc[0].image(np.kron(_outlined(cf.path_images[step]), np.ones((2, 2, 1), np.uint8)), caption=title,
                width="stretch")
    if scores is not None:
        f = {"data": [
            {"type": "scatter", "x": list(range(S)), "y": scores.tolist(), "mode": "lines+markers",
             "hovertemplate": "step %{x}: %{y:.4f}<extra></extra>"},
            {"type": "scatter", "x": [step], "y": [float(scores[step])], "mode": "markers", "hoverinfo": "skip",
             "marker": {"size": 13, "color": "#ffcc00", "line": {"width": 1}}}],
            "layout": {"height": 300, "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "showlegend": False,
                       "title": {"text": f"{exp.target} along the path (step {step}/{S - 1})"},
                       "xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": exp.target}},
                       "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": exp.threshold,
                                   "y1": exp.threshold, "line": {"dash": "dash", "color": "#c0392b"}}],
                       "annotations": [{"xref": "paper", "x": 1, "y": exp.threshold, "text": "threshold",
                                        "showarrow": False, "xanchor": "right", "yanchor": "bottom"}]}}
        with pc[1]:
            st.plotly_chart(f, key="cf_path_plot", config={"displayModeBar": False})
    show("counterfactuals", step=(k, step, float(scores[step]) if scores is not None else None))


@st.fragment
def view() -> None:
    """The chosen counterfactual (a fragment: choosing another one reruns only this part)."""
    k = 0
    if K > 1:
        k = st.select_slider("Counterfactual (closest valid first)", options=list(range(K)), value=0,
                             format_func=lambda i: f"{i + 1} of {K}", key="cf_k")
    cf = exp.counterfactuals[k]
    show("counterfactuals", k=k)
    d = (cf.image - image).mean(0)
    cols = st.columns(3)
    with cols[0]:
        plot(image_figure(image, sel.mask, f"original · {exp.score_before:.3f}", height=300, display=sel.display),
             "cf_orig")
    with cols[1]:
        plot(image_figure(cf.image, sel.mask, f"counterfactual · {cf.score_after:.3f}", height=300), "cf_cf")
    with cols[2]:
        plot(heat_figure(None, d, X.max_abs(d), sel.mask, "difference (counterfactual − original)", height=300,
                         label="change"), "cf_diff")
    table = pd.DataFrame([
        {"": f"target ({exp.target})", "value": f"{cf.score_after:.4g}", "threshold": f"{exp.threshold:.4g}",
         "valid": "yes" if cf.valid else "no"},
        {"": "detector score", "value": f"{cf.detector_score:.4g}", "threshold": f"{b.threshold:.4g}",
         "valid": "yes" if cf.detector_valid else "no"},
        {"": "classifier P(anomalous)", "value": f"{cf.classifier_prob:.4g}",
         "threshold": f"{b.classifier_threshold:.4g}", "valid": "yes" if cf.classifier_valid else "no"},
    ])
    if cf.region is not None:
        st.caption(f"A local edit: {100 * cf.metrics.get('edit_area', 0):.1f}% of the pixels changed, filled with "
                   f"{'the ' + cf.content if cf.content else 'nothing'}; outside the edit the image is the original. "
                   f"Locality {cf.metrics.get('locality', float('nan')):.2f} (share of the change on the defect), "
                   f"realism {cf.metrics.get('realism', float('nan')):.2f} (about 1 = as normal as a good part).")
    elif exp.info.get("message"):
        st.caption(str(exp.info["message"]))
    tc = st.columns([3, 2])
    tc[0].dataframe(table, hide_index=True)
    tc[1].dataframe(pd.DataFrame([{"metric": label(k2), "value": value(v)} for k2, v in cf.metrics.items()]),
                    hide_index=True)
    rp = cf.repair_properties or {}
    if rp:
        regions = {"the detector's hot region (top 10% of its map)": rp}
        if isinstance(rp.get("mask"), dict):
            regions["the marked defect"] = rp["mask"]
        st.markdown("**As a repair** (AR-Pro's four properties; the detector's map in units of the most a good "
                    "part reaches)")
        st.dataframe(pd.DataFrame([{"region": name, **{label(k2): value(r[k2]) for k2 in REPAIR_KEYS}}
                                   for name, r in regions.items()]), hide_index=True)
        st.caption("score after: low; change outside the region: low; the map on the region: falls (negative); "
                   "the map elsewhere: does not rise (about 0 or below).")
    compare_view(cf)
    if cf.path_images is not None and len(cf.path_images) > 1:
        path_view(cf, k)


view()


shown = shown("counterfactuals")


def _report() -> X.Report:
    return X.Report.from_bundle(b, image, sel.name, {method: exp}, mask=sel.mask, target=target,
                                params={"seed": seed, "shown_counterfactual": shown.get("k", 0) + 1},
                                reviewer=reviewer())


show("counterfactuals", report=_report)
st.markdown("**Report**")
report_downloads(_report, file_stem(sel, f"cf_{method}"), "cf")
