"""Concepts: several distinct ways the anomaly could become normal, each walked with a slider.

After Liznerski et al., "Reimagining Anomalies: What If Anomalies Were Normal?". One column per
concept: a slider from the image's own score (alpha = 1) down to clearly normal (alpha = 0); the
image morphs, with its real detector score, the difference map and validity. Below, the chosen
step of one concept against the original in an image-comparison (wipe) view, and the score of
every concept along alpha. See :mod:`cfx.concepts` for the generator and the alpha mapping.

Session state read: ``selection`` (the sidebar's :class:`pages._common.Selection`, set by app.py
on every run; read with ``current()``). Keys of this page start with ``cc_``:
``cc_alpha_<k>`` (each concept's slider), ``cc_compare`` (the concept shown in the comparison).
Caches: the models with ``st.cache_resource`` (pages._common.bundle_for; the concept generator
lives in ``bundle.loaded``), the per-image concept path (every concept at 21 alphas, scored and
measured) with ``st.cache_data``; a slider step only looks the step up.
"""
from __future__ import annotations

import io
import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cfx.concepts import SLIDER_ALPHAS, ConceptPath, concept_path, load_concepts, local_steps, train_hint
from cfx.training.concepts import train_concepts
from cfx.data.imageio import array_to_pil
from cfx.errors import CfxError, ModelMissingError
from pages import _common as C

CONCEPT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


# ---------------------------------------------------------------- caches
@st.cache_data(show_spinner="Walking every concept from the anomaly to normal...", max_entries=128)
def _path(model_key: str, img_hash: str, gen_stamp: str, mask_hash: str, _bundle, _image: np.ndarray,
          _mask) -> ConceptPath:
    """The image's concept path at the slider's alphas as local edits (only each concept's edited
    region morphs), scored by the selected detector, with L1, edit area, locality and realism."""
    from cfx.explainers import REGISTRY

    vb = _bundle.using("vae")  # the detector the generator was trained against
    path = concept_path(vb, _image, SLIDER_ALPHAS)
    with _bundle.lock:
        exp = REGISTRY["concepts"](_bundle).attribute(_image, mask=_mask)
    return local_steps(_bundle, path, exp, _mask)


# ---------------------------------------------------------------- figures
def _score_figure(path: ConceptPath, chosen: dict[int, float]) -> go.Figure:
    fig = go.Figure()
    x = path.alphas
    fig.add_trace(go.Scatter(x=x, y=path.targets, mode="lines", line=dict(color="gray", dash="dot"),
                             name="target", hovertemplate="alpha %{x:.2f}<br>target %{y:.3f}<extra></extra>"))
    for k in range(path.k):
        col = CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)]
        fig.add_trace(go.Scatter(x=x, y=path.scores[k], mode="lines+markers", marker=dict(size=4), line=dict(color=col),
                                 name=f"concept {k + 1}",
                                 hovertemplate="alpha %{x:.2f}<br>score %{y:.3f}<extra>concept " + str(k + 1) + "</extra>"))
        i = path.index(chosen.get(k, 1.0))
        fig.add_trace(go.Scatter(x=[x[i]], y=[path.scores[k, i]], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(size=12, color=col, line=dict(width=2, color="white"))))
    fig.add_hline(y=path.threshold, line_dash="dash", line_color="#d62728", annotation_text="threshold")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="alpha (1 = own score, 0 = normal)",
                      yaxis_title="detector score", xaxis_autorange="reversed", legend=dict(orientation="h", y=-0.3),
                      title=dict(text="Detector score along each concept's path (target dotted)", font=dict(size=13)))
    return fig


def _fmt_alpha(path: ConceptPath):
    return lambda a: f"{a:.2f} (target {path.targets[path.index(a)]:.2f})"


# ---------------------------------------------------------------- the page
def _missing(sel, message: str) -> None:
    bundle = sel.bundle
    st.warning(message)
    st.code(train_hint(bundle), language="bash")
    st.caption("Training takes one to two minutes on a CPU: train/good images and synthetic anomalies made "
               "from them, never test images.")
    if st.button("Train the concept generator now", key="cc_train", type="primary"):
        with st.spinner("Training the concept generator..."):
            try:
                with bundle.lock:
                    bundle.loaded.concepts = None
                _, info = train_concepts(bundle, sel.root, bundle.category)
            except CfxError as exc:
                st.error(str(exc))
                return
        st.success(f"Trained in {info['train_seconds']:.0f} s: {info['val_validity']:.0%} of held-out synthetic "
                   f"anomalies become normal at alpha = 0.")
        st.rerun()


def _column(path: ConceptPath, k: int, sel, diff_scale: float) -> float:
    col = CONCEPT_COLOURS[k % len(CONCEPT_COLOURS)]
    st.markdown(f"<span style='color:{col};font-weight:600'>Concept {k + 1}</span>", unsafe_allow_html=True)
    st.session_state.setdefault(f"cc_alpha_{k}", 0.0)
    alpha = st.select_slider(
        "alpha", options=list(SLIDER_ALPHAS), key=f"cc_alpha_{k}", format_func=_fmt_alpha(path),
        label_visibility="collapsed",
        help="1 = the image's own anomaly score, 0 = clearly normal (a low quantile of normal scores); "
             "the label shows the target score")
    i = path.index(alpha)
    img, s, valid = path.images[k, i], float(path.scores[k, i]), bool(path.valid[k, i])
    C.plot(C.image_figure(img, sel.mask, title=f"alpha {alpha:.2f}", height=260), key=f"cc_img_{k}")
    m1, m2 = st.columns(2)
    m1.metric("score", f"{s:.3f}", delta=f"{s - path.score:+.3f}", delta_color="inverse",
              help=f"the real detector's score of this image; target {path.targets[i]:.3f}")
    if alpha >= 1.0:
        m2.metric("verdict", "original")
    else:
        m2.metric("verdict", "normal" if s <= path.threshold else "anomalous",
                  delta="valid" if valid else "not valid", delta_color="normal" if valid else "inverse",
                  help="valid: the detector's decision flipped relative to the original")
    C.plot(C.heat_figure(None, path.difference(k, i), diff_scale, sel.mask, title="difference (concept − original)",
                         height=220, showscale=False, label="change"), key=f"cc_diff_{k}")
    st.caption(f"L1 {path.info['l1'][k, i]:.4f} · edit area {path.info['edit_area'][k, i]:.3f} · locality "
               f"{path.info['locality'][k, i]:.2f} · realism {path.info['realism'][k, i]:.2f} (nearest-normal-patch "
               "distance of the edited region ÷ that of real good parts; ≈1 is as normal as a good part)")
    return alpha


def main() -> None:
    st.title("Concepts: what if the anomaly were normal?")
    st.caption("Each concept is a distinct way, learned by a generator in the detector's VAE latent, in which this "
               "image could become normal. Move a slider from the image's own score (alpha = 1) to clearly normal "
               "(alpha = 0): every image shown is re-scored by the real detector.")
    sel = C.current()
    if not C.require_models(sel):
        return
    bundle = sel.bundle
    try:
        gen = load_concepts(bundle)
    except ModelMissingError as exc:
        _missing(sel, str(exc))
        return
    stamp = str(getattr(gen, "info", {}).get("path", "")) + str(getattr(gen, "info", {}).get("train_seconds", ""))
    t0 = time.perf_counter()
    try:
        mh = "" if sel.mask is None else C.image_hash(np.asarray(sel.mask, np.float32))
        path = _path(bundle.key(), sel.image_hash, stamp, mh, bundle, sel.image, sel.mask)
    except (CfxError, ValueError) as exc:
        st.error(str(exc))
        return
    verdict = "anomalous" if path.anomalous else "normal"
    st.markdown(f"**{sel.name}** · score **{path.score:.3f}** ({verdict}; threshold {path.threshold:.3f}) · "
                f"alpha = 0 targets **{path.s_normal:.3f}**")
    if not path.anomalous:
        st.info("The detector already calls this image normal: the paths below have little to do. "
                "Choose a defective image in the sidebar to see how each concept would repair it.")
    diff_scale = max(1e-3, float(np.abs(path.images - path.image[None, None]).mean(2).max()))
    cols = st.columns(path.k)
    chosen: dict[int, float] = {}
    for k, c in enumerate(cols):
        with c:
            chosen[k] = _column(path, k, sel, diff_scale)

    st.divider()
    left, right = st.columns([1.15, 1])
    with left:
        st.subheader("Compare with the original")
        k = st.radio("Concept", list(range(path.k)), key="cc_compare", horizontal=True,
                     format_func=lambda i: f"concept {i + 1} (alpha {chosen[i]:.2f})")
        i = path.index(chosen[k])
        pos = st.slider(f"← original · concept {k + 1} →", 0, 100, 50, key="cc_wipe",
                        help="wipe between the original and the chosen step")
        view = C.wipe_image(C.rgb_uint8(path.image), C.rgb_uint8(path.images[k, i]), pos)
        st.image(np.kron(view, np.ones((3, 3, 1), np.uint8)),
                 width=384, caption=f"left: concept {k + 1} at alpha {chosen[k]:.2f}, right: original; wipe at {pos}%")
        C.show("concepts", wipe={"concept": k, "alpha": chosen[k], "position": pos})
        buf = io.BytesIO()
        array_to_pil(path.images[k, i]).save(buf, format="PNG")
        st.download_button("⬇ this step (PNG)", data=buf.getvalue(), key="cc_dl",
                           file_name=f"{C.file_stem(sel, 'concept')}_k{k}_a{chosen[k]:.2f}.png", mime="image/png")
    with right:
        C.plot(_score_figure(path, chosen), key="cc_scores")
        at0 = path.index(0.0)
        st.caption(f"At alpha = 0: {int(path.valid[:, at0].sum())} of {path.k} concepts valid; mean pairwise L1 "
                   f"between concepts {path.diversity(at0):.4f}. Path of {path.k}×{len(path.alphas)} steps computed "
                   f"in {path.seconds:.2f} s (cached); this view in {time.perf_counter() - t0:.2f} s.")
    with st.expander("How the concept counterfactuals are made"):
        info = getattr(gen, "info", {})
        st.markdown(
            "- **alpha → score**: target = s_normal + alpha · (score − s_normal), where s_normal is the lower quartile "
            "of held-out normal scores (and at least half a normal SD below the threshold).\n"
            "- **Image**: a local edit of the original. The concept's own image at alpha = 0 says what changes; "
            "the edit keeps the original outside the smallest region (where the selected detector's map is hot, "
            "ordered by the concept's change) whose filling with real normal content (the nearest training image) "
            "or the concept's image makes the detector call it normal. The slider morphs only that region.\n"
            "- **Training** (per category, frozen detector): score pulled to the target, reconstruction and cycle "
            "consistency in the latent, a concept classifier that must tell the concepts apart from their changes "
            "(disentanglement), and a proximity penalty; on train/good images plus synthetic anomalies only.")
        if info:
            st.caption(f"This generator: K = {info.get('k')}, {info.get('steps')} steps, trained in "
                       f"{info.get('train_seconds')} s; held-out synthetic anomalies: "
                       f"{info.get('val_validity', float('nan')):.0%} normal at alpha = 0, concept accuracy "
                       f"{info.get('val_concept_accuracy', float('nan')):.0%}.")


main()
