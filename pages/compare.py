"""Compare: every registered explanation method side by side on the selected image."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cfx import reports as X
from cfx.reports.words import numbers, sentence, value
from pages._common import (show, target_labels, _bind, _sync, bound, current, explain_one, file_stem, heat_figure,
                           image_figure, is_cached, is_heavy, param_inputs, plot, registry, report_downloads, require_models)

NCOLS = 3

st.title("Compare")
sel = current()
if not require_models(sel):
    st.stop()
b, image = sel.bundle, sel.image
reg = registry()
if not reg:
    st.info("No explanation method is registered yet (cfx.explainers.REGISTRY is empty).")
    st.stop()

# ------------------------------------------------------------------ controls
c1, c2, c3 = st.columns([1.4, 3.6, 1.0])
with c1:
    labels = target_labels(b)
    target = bound(st.radio, "Explain", "target", list(labels), format_func=labels.get)
with c2:
    st.session_state.setdefault("compare_methods", list(reg))
    st.session_state["compare_methods"] = [m for m in st.session_state["compare_methods"] if m in reg]
    _bind("compare_methods", "w_compare_methods")
    st.multiselect("Methods", list(reg), key="w_compare_methods", on_change=_sync,
                   args=("compare_methods", "w_compare_methods"),
                   format_func=lambda m: f"{reg[m].label} ({m})" if reg[m].label else m)
    methods = list(st.session_state["compare_methods"])
    auto = st.toggle("Run heavy methods automatically", key="cmp_auto",
                     help="heavy methods (counterfactuals, sampling methods) otherwise run when you press Run")
with c3:
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="cmp_seed"))

with st.expander("Method parameters"):
    params = param_inputs(methods, "cmp_p")

# ------------------------------------------------------------------ run
done = {m for m in methods if is_cached(b, image, m, target, params.get(m), seed, sel.mask)}
heavy_pending = [m for m in methods if m not in done and is_heavy(reg[m])]
light = [m for m in methods if m not in done and not is_heavy(reg[m])]
run_heavy = auto
if heavy_pending and not auto:
    run_heavy = st.button(f"▶ Run {len(heavy_pending)} heavy method(s): {', '.join(heavy_pending)}",
                          type="primary", key="cmp_run")
todo = light + (heavy_pending if run_heavy else [])
results = {}
if todo:
    bar = st.progress(0.0, text="Explaining...")
    for i, m in enumerate(todo):
        bar.progress(i / len(todo), text=f"Running {m} ({i + 1}/{len(todo)})...")
        results[m] = explain_one(b, image, m, target, params.get(m), seed, sel.mask)
    bar.empty()
    if run_heavy and heavy_pending and not auto:
        st.rerun()  # redraw without the Run button: everything asked for is cached now
for m in methods:
    if m not in results and (m in done):
        results[m] = explain_one(b, image, m, target, params.get(m), seed, sel.mask)
pending = [m for m in methods if m not in results]
results = {m: results[m] for m in methods if m in results}
show("compare", results=results, pending=pending)

# ------------------------------------------------------------------ grid
before = next((e.score_before for e in results.values() if e.ok), None)
st.caption(f"**{sel.name}** · target: {labels[target]}"
           + (f" = {before:.3f}" if before is not None else "") + f" (threshold {b.threshold_for(target):.3f}). "
           "One colour scale for every map (red: pushes the target up, blue: down; each map divided by its "
           "scale, shown on hover); green outline: the defect mask.")


def _metrics_line(exp) -> str:
    parts = [f"{exp.seconds:.2f} s", f"target {exp.target}", f"before {exp.score_before:.3f}"]
    if exp.counterfactuals:
        best = exp.counterfactuals[0]
        nv = sum(c.valid for c in exp.counterfactuals)
        parts += [f"after {best.score_after:.3f}", f"valid {nv}/{len(exp.counterfactuals)}",
                  f"L1 {best.metrics.get('l1', float('nan')):.3f}",
                  f"edit area {best.metrics.get('edit_area', float('nan')):.3f}",
                  f"locality {best.metrics.get('locality', float('nan')):.2f}",
                  f"realism {best.metrics.get('realism', float('nan')):.2f}", f"content {best.content or '-'}"]
    if exp.heatmap is not None and sel.mask is not None and sel.mask.any():
        h = np.asarray(exp.heatmap)
        parts.append(f"mean heat in/out of mask {h[sel.mask].mean():.3g}/{h[~sel.mask].mean():.3g}")
    parts += [f"{k} {v}" for k, v in numbers(exp.info)]
    return " · ".join(parts)


first_scale = True
for r in range(0, len(methods), NCOLS):
    cols = st.columns(NCOLS)
    for col, m in zip(cols, methods[r:r + NCOLS]):
        with col.container(border=True):
            st.markdown(f"**{reg[m].label or m}** · `{m}`")
            if m in pending:
                st.info("Heavy method: not run yet. Press Run above.")
                continue
            exp = results[m]
            if not exp.ok:
                st.error(sentence(exp))
                if exp.info.get("traceback"):
                    with st.expander("details"):
                        st.code(exp.info["traceback"])
                continue
            st.markdown(sentence(exp, sel.mask))  # the plain-words lead; the numbers are below
            if exp.heatmap is not None:
                plot(heat_figure(image, exp.heatmap, X.heat_scale(exp), sel.mask, height=280, display=sel.display,
                                 showscale=first_scale, label=m), f"cmp_{m}_heat")
                first_scale = False
            if exp.counterfactuals:
                cf = exp.counterfactuals[0]
                d = cf.image - image
                d = d.mean(0)
                sc = st.columns(2)
                with sc[0]:
                    plot(image_figure(cf.image, sel.mask, "counterfactual", height=200), f"cmp_{m}_cf")
                with sc[1]:
                    plot(heat_figure(None, d, X.max_abs(d), sel.mask, "difference", height=200, showscale=False,
                                     label="change"), f"cmp_{m}_diff")
            with st.expander("numbers"):
                st.caption(_metrics_line(exp))
            st.caption(f"✔ {m} done")

# ------------------------------------------------------------------ table and exports
if results:
    rows = []
    for m, exp in results.items():
        best = exp.best
        rows.append({k: value(v) for k, v in {
            "method": m, "seconds": round(exp.seconds, 3), "target": exp.target,
            "before": exp.score_before, "after": best.score_after if best else None, "threshold": exp.threshold,
            "valid": f"{sum(c.valid for c in exp.counterfactuals)}/{len(exp.counterfactuals)}"
            if exp.counterfactuals else None,
            "L1": best.metrics.get("l1") if best else None,
            "edit area": best.metrics.get("edit_area") if best else None,
            "locality": best.metrics.get("locality") if best else None,
            "realism": best.metrics.get("realism") if best else None,
            "error": exp.error}.items()})
    st.dataframe(pd.DataFrame(rows), hide_index=True)

    def _report() -> X.Report:
        return X.Report.from_bundle(b, image, sel.name, results, mask=sel.mask, target=target,
                                    params={"seed": seed, **{f"{m}.{k}": v for m in results
                                                             for k, v in params.get(m, {}).items()}})

    show("compare", report=_report)
    st.markdown("**Report of the shown results**")
    report_downloads(_report, file_stem(sel, "compare"), "compare", ("png", "json", "pdf", "html"))
