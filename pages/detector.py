"""Detector: how well the category's detectors separate good from defective test images (every
fitted detector side by side, then the selected one's scores in detail)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cfx import reports as X
from cfx.metrics.detection import DETECTOR_SCORE, detector_evaluation, expected_rates_text, resolution_hint
from pages._common import show, analyse_split, current, require_models

st.title("Detector")
sel = current()
if sel is None or sel.bundle is None:
    require_models(sel)
    st.stop()
b = sel.bundle
arr, scores = analyse_split(b, sel.root, sel.category, "test")


@st.cache_data(show_spinner=False, max_entries=16)
def _evaluate(model_key: str, root: str, category: str, _labels, _scores, _defects) -> dict:
    return detector_evaluation(b, _labels, _scores, _defects)


def _short_rule(rule: str, info: dict) -> str:
    if info.get("target_fpr") is not None:
        return f"{info['target_fpr']:.0%} false alarms on good parts" + (
            "" if (info.get("calibration") or {}).get("reached", True) else " (not reachable: max + 1 SD)")
    return "held-out good parts + 1 SD" if "held-out real" in rule else (rule or "?")


@st.cache_data(show_spinner="Scoring the test split with every detector...", max_entries=16)
def _side_by_side(keys: tuple[str, ...], root: str, category: str) -> list[dict]:
    rows = []
    for name in b.detectors:
        v = b.using(name)
        arr_v, sc = analyse_split(v, sel.root, category, "test")
        e = detector_evaluation(v, arr_v.labels, sc)["scores"][DETECTOR_SCORE]
        rule = v.card.get("detectors", {}).get(name, {}).get("threshold_rule") or v.card.get("threshold_rule", "")
        rows.append({"detector": name, "label": v.detector.label, "auroc": e["auroc"], "fpr": e["fpr"], "tpr": e["tpr"],
                     "threshold": e["threshold"], "fpr_good": e["fpr_good"], "tpr_defect": e["tpr_defect"],
                     "rule": _short_rule(rule, v.card.get("detectors", {}).get(name, {}))})
    return rows


ev = _evaluate(b.key(), str(sel.root), sel.category, arr.labels, scores, [s.defect for s in arr.samples])
show("detector", evaluation=ev)
st.caption(f"{sel.dataset}/{sel.category}: {ev['n']} test images, {ev['n_defective']} defective · model `{b.key()}`")
hint = resolution_hint(ev["scores"][DETECTOR_SCORE]["auroc"], b.image_size, arr.samples)
if hint:
    from pages._fit import hires_fit, n_train

    st.info(f"Hint: {hint}.")
    hires_fit(sel, n_train(sel))

if len(b.detectors) > 1:
    st.subheader("Detectors side by side")
    side = _side_by_side(tuple(b.using(n).key() for n in b.detectors), str(sel.root), sel.category)
    st.dataframe(pd.DataFrame([{
        "detector": r["label"], "AUROC": "n/a" if r["auroc"] is None else round(r["auroc"], 3),
        "good called defective": "n/a" if r["fpr_good"] is None else f"{r['fpr_good']:.0%}",
        "defects found": "n/a" if r["tpr_defect"] is None else f"{r['tpr_defect']:.0%}",
        "threshold": round(r["threshold"], 3), "threshold rule": r["rule"]} for r in side]), hide_index=True,
        width="stretch")  # the whole width: no column is cut off at 1280 px
    s1, s2 = st.columns([1.2, 1])
    with s1:
        st.caption("Test split, at each detector's stored threshold (its rule is in the model card below). "
                   "Pick the explained detector in the sidebar.")
    with s2:
        rf = go.Figure()
        for r in side:
            if r["fpr"]:
                rf.add_trace(go.Scatter(x=r["fpr"], y=r["tpr"], mode="lines", name=f"{r['label']} ({r['auroc']:.3f})"))
        rf.update_layout(title="ROC: every detector", height=300, xaxis_title="false positive rate",
                         yaxis_title="true positive rate", margin={"l": 10, "r": 10, "t": 40, "b": 10})
        st.plotly_chart(rf, key="det_roc_all")
    st.subheader(f"Selected: {b.detector.label}")

cols = st.columns(4)
for c, (name, e) in zip(cols, ev["scores"].items()):
    c.metric(f"AUROC: {name}", "n/a" if e["auroc"] is None else f"{e['auroc']:.3f}")

c1, c2 = st.columns(2)
with c1:
    fig = go.Figure()
    for name, e in ev["scores"].items():
        if e["fpr"]:
            fig.add_trace(go.Scatter(x=e["fpr"], y=e["tpr"], mode="lines", name=f"{name} ({e['auroc']:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"},
                             showlegend=False, hoverinfo="skip"))
    fig.update_layout(title="ROC curves", xaxis_title="false positive rate", yaxis_title="true positive rate",
                      height=400, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"x": 0.45, "y": 0.05})
    st.plotly_chart(fig, key="det_roc")
with c2:
    which = st.selectbox("Score", list(ev["scores"]), key="det_which")
    e = ev["scores"][which]
    allv = np.r_[e["normal"], e["defective"], e["threshold"]]
    bins = {"start": float(allv.min()), "end": float(allv.max()), "size": float(np.ptp(allv) / 30 or 1.0)}
    h = go.Figure()
    h.add_trace(go.Histogram(x=e["normal"], name="good", opacity=0.6, marker_color="#1f77b4", xbins=bins))
    h.add_trace(go.Histogram(x=e["defective"], name="defective", opacity=0.6, marker_color="#d62728", xbins=bins))
    h.add_vline(x=e["threshold"], line_dash="dash", annotation_text=f"threshold {e['threshold']:.3f}")
    h.update_layout(barmode="overlay", title=f"{which} score: good vs defective", height=340,
                    margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=which, yaxis_title="images")
    st.plotly_chart(h, key="det_hist")

c3, c4 = st.columns([1, 1.2])
with c3:
    cm = np.asarray(e["confusion"])
    f = go.Figure(go.Heatmap(z=cm, x=["normal", "anomalous"], y=["good", "defective"], colorscale="Blues",
                             showscale=False, text=cm, texttemplate="%{text}", textfont={"size": 18},
                             hovertemplate="truth %{y}, says %{x}: %{z}<extra></extra>"))
    f.update_layout(title=f"confusion at the {which} threshold", height=320, xaxis_title="model says",
                    yaxis_title="truth", yaxis_autorange="reversed", margin={"l": 10, "r": 10, "t": 40, "b": 10})
    st.plotly_chart(f, key="det_cm")
    tn, fp, fn, tp = cm.ravel()
    st.caption(f"accuracy {(tn + tp) / max(1, cm.sum()):.3f} · recall {tp / max(1, tp + fn):.3f} · "
               f"precision {tp / max(1, tp + fp):.3f}")
    if ev["per_defect_auroc"]:
        st.dataframe(pd.DataFrame([{"defect": k, f"AUROC ({DETECTOR_SCORE})": round(v, 3)}
                                   for k, v in ev["per_defect_auroc"].items()]), hide_index=True)
with c4:
    st.markdown("**Model card**")
    card = b.card
    info = card.get("detectors", {}).get(b.detector_name, {})
    rule = info.get("threshold_rule") or card.get("threshold_rule", "?")
    st.markdown(f"{b.detector.label} · data `{card.get('data_root', '?')}` · seed {card.get('seed', '?')} · "
                f"threshold rule: {rule}")
    expected = expected_rates_text(card, b.detector_name)
    if expected:
        st.info(expected)
    for w in info.get("warnings", []):
        st.warning(w)
    st.json(card, expanded=False)

d1, d2 = st.columns(2)
d1.download_button("⬇ PNG figure", data=lambda: X.detector_png(ev), file_name=f"cfx_detector_{sel.category}.png",
                   mime="image/png", key="det_png", on_click="ignore")
d2.download_button("⬇ JSON numbers", data=lambda: json.dumps({**ev, "card": b.card}, indent=2).encode(),
                   file_name=f"cfx_detector_{sel.category}.json", mime="application/json", key="det_json",
                   on_click="ignore")
