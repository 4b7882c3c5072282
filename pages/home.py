"""Home: what each page answers, which device runs the models, and where the data comes from."""
from __future__ import annotations

import streamlit as st

# the text first: it shows while torch and the models load (below)
st.title("cfx: why is this image anomalous?")
st.markdown(
    "A visual anomaly detector scores each image: **PatchCore** by default (how far each patch of the "
    "part is from the nearest patch of good parts, on ImageNet features of EfficientNet-Lite0), or a "
    "**VAE** (its reconstruction error plus the Mahalanobis distance of its latent code). This "
    "dashboard shows **why** it called an image defective and **what would make it look normal**.")

st.markdown("""
| Page | Answers |
|---|---|
| **Inspect** | What does the detector say about this image? Score against threshold, decision, classifier probability, reconstruction, heatmap, the ground-truth mask. Browse, filter or upload images. |
| **Lots** | How did a lot of new, unlabeled parts fare? Any folder of part images inspected against a fitted category: the NG parts first, then the doubtful ones, each with its verdict and map, and an OK / NG decision with a reason. |
| **Compare** | Where does each explanation method put the blame? Every method side by side on one colour scale, with its time and metrics; download a PNG, JSON, PDF or HTML report. |
| **Counterfactuals** | What is the closest image the detector calls normal? Original, counterfactual and difference, a comparison slider, and the path across the decision boundary step by step. |
| **Concepts** | Which different kinds of change would make this anomaly normal: colour only, structure only, both, one region at a time? One slider per concept, from the original to its edit; a kind that is not enough alone is said so. |
| **Mask Jaccard** | Were the anomalies detected for the right reason? The optimal Jaccard of each explanation against the defect mask, over a whole category, and for each flag whether the explainer or the detector is at fault. |
| **Detector** | How good is the detector? ROC curves, score histograms with the threshold, confusion matrix, model card. |
""")

from pages._common import current, show_model_missing  # noqa: E402, I001  (heavy: after the text, and first)
from cfx import config  # noqa: E402
from cfx.data.demo import CATEGORIES, is_demo_root  # noqa: E402
from cfx.models.bundle import available_models  # noqa: E402

sel = current()
c1, c2 = st.columns(2)
with c1:
    st.subheader("Models")
    st.markdown(f"Models run on **{config.device_label()}**.")
    st.caption(f"Checkpoints: `{config.models_dir(sel.dataset if sel is not None else None)}`")
    if sel is not None:
        have = available_models(sel.dataset)
        st.markdown(f"Trained categories of **{sel.dataset}**: {', '.join(have) or 'none'}")
        if sel.bundle is None and sel.model_error:
            show_model_missing(sel.model_error, "on any page (the Fit button)")
with c2:
    st.subheader("Data")
    if sel is None:
        st.warning("No usable data root; fix the path in the sidebar.")
    elif is_demo_root(sel.root):
        st.info(
            "You are looking at the **embedded demo**: synthetic images in the MVTec AD layout "
            f"({', '.join(CATEGORIES)}), generated offline under `{sel.root}`. The `shortcut` category "
            "is built so that its classifier can cheat (a stamp away from the defect); the Mask Jaccard "
            "page catches it.")
        st.markdown(
            "**Use real MVTec AD:** type the folder that holds `bottle/`, `screw/`, ... into "
            "*MVTec AD root* in the sidebar, pick a category and press **Fit the detector** on any page "
            "(PatchCore needs no training: about 2 minutes for 200 good images on a CPU). Its models are "
            f"kept in `{config.models_dir('real')}`, outside this folder.")
    else:
        st.success(f"Data root `{sel.root}` (dataset **{sel.dataset}**).")
