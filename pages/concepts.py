"""Concepts: several distinct kinds of change that would make the anomaly normal, each walked
with a slider (see :mod:`cfx.concepts`: colour only, structure only, both, one abnormal region at
a time).

One column per concept: what it changes, a slider from the original (alpha = 1) to the concept's
edit (alpha = 0); the image at the slider's position, its real score under the selected detector,
the verdict, the difference map and the edit's numbers (AR-Pro's repair properties included). A
concept no edit of its kind makes normal is said to be not sufficient on its own. Below, the
chosen concept against the original in a wipe view, and every concept's score along its slider.

Session state read: ``selection`` (the sidebar's :class:`pages._common.Selection`; ``current()``).
Keys of this page start with ``cc_``: ``cc_alpha_<concept>`` (each concept's slider, by the
concept's name, so a slider and its image stay in step through every switch of image or
detector), ``cc_compare`` (the concept in the comparison). The explanation is cached with the
other methods' (pages._results.explain_one); a slider step only looks its image up.
"""
from __future__ import annotations

import io

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cfx.concepts import describe
from cfx.data.imageio import array_to_pil
from pages import _common as C

CONCEPT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _alphas(cf) -> np.ndarray:
    """The slider positions of a concept's path: 1 (the original) down to 0 (its edit)."""
    return np.round(np.linspace(1.0, 0.0, len(cf.path_images)), 2)


def _score_figure(exp, chosen: dict[str, float]) -> go.Figure:
    fig = go.Figure()
    for k, cf in enumerate(exp.counterfactuals):
        col = CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)]
        a = _alphas(cf)
        fig.add_trace(go.Scatter(x=a, y=cf.path_scores, mode="lines+markers", marker=dict(size=4), line=dict(color=col),
                                 name=cf.concept,
                                 hovertemplate="alpha %{x:.2f}<br>score %{y:.3f}<extra>" + cf.concept + "</extra>"))
        i = int(np.argmin(np.abs(a - chosen.get(cf.concept, 0.0))))
        fig.add_trace(go.Scatter(x=[a[i]], y=[cf.path_scores[i]], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(size=12, color=col, line=dict(width=2, color="white"))))
    fig.add_hline(y=exp.threshold, line_dash="dash", line_color="#d62728", annotation_text="threshold")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="alpha (1 = original, 0 = the edit)",
                      yaxis_title="detector score", xaxis_autorange="reversed", legend=dict(orientation="h", y=-0.3),
                      title=dict(text="The detector's score along each concept's slider", font=dict(size=13)))
    return fig


def _column(exp, k: int, sel, diff_scale: float) -> float:
    cf = exp.counterfactuals[k]
    col = CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)]
    st.markdown(f"<span style='color:{col};font-weight:600'>{cf.concept.capitalize()}</span>", unsafe_allow_html=True)
    st.caption(describe(cf.concept))
    options = [float(a) for a in _alphas(cf)]
    key = f"cc_alpha_{cf.concept}"
    if st.session_state.get(key) not in options:  # a new path (another image or detector): start at the edit
        st.session_state[key] = 0.0
    alpha = st.select_slider("alpha", options=options, key=key, format_func=lambda a: f"{a:.2f}",
                             label_visibility="collapsed", help="1 = the original, 0 = this concept's edit")
    i = options.index(alpha)
    img, s = cf.path_images[i], float(cf.path_scores[i])
    C.plot(C.image_figure(img, sel.mask, title=f"alpha {alpha:.2f}", height=240), key=f"cc_img_{k}")
    verdict = "the original" if alpha >= 1.0 else ":green[**normal**]" if s <= exp.threshold else ":red[**anomalous**]"
    st.markdown(f"score **{s:.2f}** ({s - exp.score_before:+.2f}) · {verdict}",
                help=f"the selected detector's score of this image and its verdict; threshold {exp.threshold:.3f}")
    if not cf.valid:
        st.warning(f"{cf.concept.capitalize()} alone is not sufficient: no edit of this kind makes the detector "
                   "call the image normal (shown: the strongest one tried).")
    C.plot(C.heat_figure(None, (img - exp.image).mean(0), diff_scale, sel.mask, title="difference (concept − original)",
                         height=200, showscale=False, label="change"), key=f"cc_diff_{k}")
    m, rp = cf.metrics, cf.repair_properties or {}
    st.caption(f"edit area {m['edit_area']:.1%} · L1 {m['l1']:.4f} · locality {m['locality']:.2f} · realism "
               f"{m['realism']:.2f} (≈1: like a good part)"
               + (f" · map on the hot region {rp['localized']:+.3f}, elsewhere {rp['non_degradation']:+.3f}"
                  if rp else ""))
    return alpha


def main() -> None:
    st.title("Concepts: what if the anomaly were normal?")
    st.caption("Each concept is a different kind of change (colour only, structure only, both, or one abnormal "
               "region at a time) made as a local edit of the real image; move a slider from the original "
               "(alpha = 1) to the concept's edit (alpha = 0): every image is scored by the selected detector.")
    sel = C.current()
    if not C.require_models(sel):
        return
    bundle = sel.bundle
    with st.spinner("Finding each concept's edit..."):
        exp = C.explain_one(bundle, sel.image, "concepts", "score", None, 0, sel.mask)
    C.show("concepts", result=exp)
    if not exp.ok:
        st.error(f"The concepts could not be computed: {exp.error}")
        return
    anomalous = exp.score_before > exp.threshold
    st.markdown(f"**{C.markdown_text(sel.name)}** · score **{exp.score_before:.3f}** "
                f"({'anomalous' if anomalous else 'normal'}; threshold {exp.threshold:.3f})")
    if not anomalous or not exp.counterfactuals or exp.counterfactuals[0].path_images is None:
        st.info("The detector already calls this image normal: nothing has to change. Choose a defective image "
                "in the sidebar to see how each concept would repair it.")
        return
    cfs = exp.counterfactuals
    diff_scale = max(1e-3, max(float(np.abs(cf.image - exp.image).mean(0).max()) for cf in cfs))
    chosen: dict[str, float] = {}
    for row in range(0, len(cfs), 4):
        cols = st.columns(min(4, len(cfs) - row))
        for j, c in enumerate(cols):
            with c:
                chosen[cfs[row + j].concept] = _column(exp, row + j, sel, diff_scale)

    st.divider()
    left, right = st.columns([1.15, 1])
    with left:
        st.subheader("Compare with the original")
        names = [cf.concept for cf in cfs]
        if st.session_state.get("cc_compare") not in names:
            st.session_state["cc_compare"] = names[0]
        name = st.radio("Concept", names, key="cc_compare", horizontal=True,
                        format_func=lambda n: f"{n} (alpha {chosen[n]:.2f})")
        cf = cfs[names.index(name)]
        i = [float(a) for a in _alphas(cf)].index(chosen[name])
        pos = st.slider(f"← original · {name} →", 0, 100, 50, key="cc_wipe",
                        help="wipe between the original and the chosen step")
        view = C.wipe_image(C.rgb_uint8(exp.image), C.rgb_uint8(cf.path_images[i]), pos)
        st.image(np.kron(view, np.ones((3, 3, 1), np.uint8)),
                 width=384, caption=f"left: {name} at alpha {chosen[name]:.2f}, right: original; wipe at {pos}%")
        C.show("concepts", wipe={"concept": name, "alpha": chosen[name], "position": pos})
        buf = io.BytesIO()
        array_to_pil(cf.path_images[i]).save(buf, format="PNG")
        st.download_button("⬇ this step (PNG)", data=buf.getvalue(), key="cc_dl",
                           file_name=f"{C.file_stem(sel, 'concept')}_{name.replace(' ', '')}_a{chosen[name]:.2f}.png",
                           mime="image/png")
    with right:
        C.plot(_score_figure(exp, chosen), key="cc_scores")
        valid = [cf.concept for cf in cfs if cf.valid]
        rel = exp.info.get("relative_diversity")
        st.caption(f"{len(valid)} of {len(cfs)} concepts make the detector call the image normal"
                   + (f" ({', '.join(valid)})" if valid else "")
                   + (f"; relative diversity {rel:.2f} (mean pairwise L1 {exp.info['diversity']:.4f} over the edits' "
                      f"mean L1 to the original {exp.info['mean_l1']:.4f}; 0 = one edit shown several times)"
                      if rel is not None else "") + f". Computed in {exp.seconds:.2f} s.")
        for a, b in exp.info.get("coincide", []):
            st.caption(f"{a} coincides with {b}: the whole edit lies in that one region, so it is shown once.")


main()
