"""Compare: every registered explanation method side by side on the selected image."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from cfx.explainers.base import CANCELLED, method_label
from cfx.inert import markdown_text
from cfx.metrics.edits import coinciding

from cfx import reports as X
from cfx.reports.words import numbers, sentence, value
from pages._fit import fit_panel, needs_fit
from pages._common import (reviewer, for_app, show, target_labels, _bind, _sync, bound, current, explain_one, file_stem, heat_figure,
                           image_figure, is_cached, is_heavy, param_inputs, plot, registry, report_downloads, require_models,
                           start_stream, stream_for)

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
def _choose_methods() -> None:
    _sync("compare_methods", "w_compare_methods")
    st.session_state["compare_methods_chosen"] = True


c1, c2, c3 = st.columns([1.4, 3.6, 1.0])
with c1:
    labels = target_labels(b)
    target = bound(st.radio, "Explain", "target", list(labels), format_func=labels.get)
with c2:
    # a method whose models are missing is offered with what it needs, never run into an error; until
    # the user picks the methods, the choice is every method these models can run (so after a fit too)
    needs = {m: needs_fit(sel, m) for m in reg}
    if not st.session_state.get("compare_methods_chosen"):
        st.session_state["compare_methods"] = [m for m in reg if needs[m] is None]
    st.session_state["compare_methods"] = [m for m in st.session_state["compare_methods"] if m in reg]
    _bind("compare_methods", "w_compare_methods")
    # pills, not a multiselect: every method stays readable at 1280 px (a multiselect's chips are cut off)
    st.pills("Methods", list(reg), selection_mode="multi", key="w_compare_methods", on_change=_choose_methods,
             format_func=lambda m: (method_label(m)) + (" (needs a fit)" if needs[m] else ""))
    chosen = list(st.session_state["compare_methods"])
    methods = [m for m in chosen if needs[m] is None]
    auto = st.toggle("Run heavy methods automatically", key="cmp_auto",
                     help="heavy methods (counterfactuals, sampling methods) otherwise run when you press Run")
with c3:
    seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="cmp_seed"))

with st.expander("Method parameters"):
    params = param_inputs(methods, "cmp_p")

# ------------------------------------------------------------------ run
# The light methods (the detector's map among them) run here at once and never wait for a heavy
# one; the heavy ones run in this session's background stream and fill their cells as they finish.
done = {m for m in methods if is_cached(b, image, m, target, params.get(m), seed, sel.mask)}
results = {m: explain_one(b, image, m, target, params.get(m), seed, sel.mask)
           for m in methods if m in done or not is_heavy(reg[m])}
stream = stream_for(b, image, target, seed, params)
# One view of the stream for the whole run: whether it was alive (read first: a stream that ends after
# this read has all its results in the state below), then its results and pending methods together.
alive = stream is not None and stream.running
snap, pend = stream.state() if stream is not None else ({}, [])
# its finished results of the chosen methods (a cancelled one is not a result)
finished = {m: e for m, e in snap.items() if m in methods and m not in results and e.error != CANCELLED}
in_stream = set(pend)


def _shown_head(pending: list[str]) -> str | None:
    """The first of the stream's pending methods that the page shows (the one live cell)."""
    return next((p for p in pending if p in methods), None)


head = _shown_head(pend) if alive else None
waiting = [m for m in methods if m not in results and m not in finished and m not in in_stream]
# in automatic mode a method the user cancelled waits for Run
auto_run = [m for m in waiting if not (stream is not None and stream.cancelled(m))] if auto else []
todo: list[str] = []
if waiting and (auto_run or st.button(f"▶ Run {len(waiting)} heavy method(s): {', '.join(method_label(m) for m in waiting)}",
                                      type="primary", key="cmp_run")):
    todo = auto_run or waiting  # started at the end of this run, after the first answer is drawn

# ------------------------------------------------------------------ grid
labels_line = f"**{markdown_text(sel.name)}** · target: {labels[target]}"


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


def _placeholder(m: str) -> None:
    """A heavy method's cell before its result: running (elapsed of the estimate, Cancel) or
    queued (its estimate) in the stream, or not run yet."""
    if m in todo:
        st.info("Starting...")
        return
    est = stream.estimate(m) if stream is not None else None
    about = f"about {est:.0f} s" if est is not None and est >= 1 else (
        "under a second" if est is not None else "estimate after the first batch")
    if stream is not None and stream.running and stream.current == m:
        spent = time.time() - (stream.current_started or time.time())
        st.progress(min(spent / est, 0.99) if est else 0.0, text=f"Running · {spent:.0f} s of {about}")
        if st.button("Cancel", key=f"cmp_cancel_{m}"):
            stream.cancel()
    elif stream is not None and stream.running and m in stream.pending():
        st.info(f"Queued · {about}.")
    elif stream is not None and stream.cancelled(m):
        st.info("Cancelled. Press Run to compute it.")
    else:
        st.info("Heavy method: not run yet. Press Run above.")


def _cell(m: str, exp, first_scale: bool) -> bool:
    """One finished method's cell; returns whether the colour scale still has to be shown."""
    if not exp.ok and "ModelMissingError" in (exp.error or ""):  # e.g. models refitted meanwhile
        st.info(for_app(exp.error.split(": ", 1)[-1]))
        return first_scale
    if not exp.ok:
        st.error(sentence(exp))
        if exp.info.get("traceback"):
            with st.expander("details"):
                st.code(exp.info["traceback"])
        return first_scale
    if exp.heatmap is not None:  # the map first (in view at 1280x720), its plain-words reading below
        plot(heat_figure(image, exp.heatmap, None if X.calibrated(exp) else X.heat_scale(exp), sel.mask, height=280,
                         display=sel.display,
                         showscale=first_scale, label=method_label(m)), f"cmp_{m}_heat")
        first_scale = False
    if exp.counterfactuals:
        cf = exp.counterfactuals[0]
        d = (cf.image - image).mean(0)
        sc = st.columns(2)
        with sc[0]:
            plot(image_figure(cf.image, sel.mask, "counterfactual", height=200), f"cmp_{m}_cf")
        with sc[1]:
            plot(heat_figure(None, d, X.max_abs(d), sel.mask, "difference", height=200, showscale=False,
                             label="change"), f"cmp_{m}_diff")
    st.markdown(sentence(exp, sel.mask))
    with st.expander("numbers"):
        st.caption(_metrics_line(exp))
    st.caption(f"✔ {method_label(m)} done")
    return first_scale


@st.fragment(run_every=1.0)
def _live(m: str, cost_known: bool) -> None:
    """The running (or next) method's cell: only this placeholder polls (the finished cells and the queued
    ones are not redrawn every second); when the method (or the stream) ends, the page reruns once
    to draw its result and the next method's live cell."""
    done, pending = stream.state()
    if m in done or _shown_head(pending) != m or not stream.running or (not cost_known and stream.cost is not None):
        st.rerun()  # also once the cost of an evaluation is measured: the queued cells' estimates
    _placeholder(m)


results = {**results, **finished}
results = {m: results[m] for m in methods if m in results}
show("compare", results=results, pending=[m for m in methods if m not in results])
before = next((e.score_before for e in results.values() if e.ok), None)
thr = b.threshold_for(target)
verdict = "" if before is None else (" — **anomalous**" if before > thr else " — **normal**")
st.markdown(labels_line + (f" = {before:.3f}" if before is not None else "") + f" (threshold {thr:.3f})" + verdict + ".",
            help="One colour scale for every map (red: pushes the target up, blue: down; each map divided by its "
                 "largest value; the detector's own map: pale within a good part's range, red above it up to the "
                 "image's peak, yellow line where it leaves the normal range); green outline: the defect mask.")
first_scale = True
for r in range(0, len(chosen), NCOLS):
    cols = st.columns(NCOLS)
    for col, m in zip(cols, chosen[r:r + NCOLS]):
        with col.container(border=True):
            st.markdown(f"**{method_label(m)}**")
            if needs[m]:
                st.info(needs[m])
            elif m in results:
                first_scale = _cell(m, results[m], first_scale)
            elif m == head:
                _live(m, stream.cost is not None)  # only this cell polls; the queued ones are redrawn when it ends
            else:
                _placeholder(m)

if any(needs[m] for m in chosen):
    with st.expander("Fit the missing models", expanded=True):
        fit_panel(sel)

same = coinciding(image, {m: e.best.image for m, e in results.items() if e.ok and e.best is not None and e.best.valid})
for a, c in same:
    st.caption(f"{method_label(a)} and {method_label(c)} coincide: they end in the same edit of the image.")

# ------------------------------------------------------------------ table and exports
if results:
    rows = []
    for m, exp in results.items():
        best = exp.best
        rows.append({k: value(v) for k, v in {
            "method": method_label(m), "seconds": round(exp.seconds, 3), "target": exp.target,
            "before": exp.score_before, "after": best.score_after if best else None, "threshold": exp.threshold,
            "valid": f"{sum(c.valid for c in exp.counterfactuals)}/{len(exp.counterfactuals)}"
            if exp.counterfactuals else None,
            "L1": best.metrics.get("l1") if best else None,
            "edit area": best.metrics.get("edit_area") if best else None,
            "locality": best.metrics.get("locality") if best else None,
            "realism": best.metrics.get("realism") if best else None,
            "realism (pixels)": best.metrics.get("realism_pixels") if best else None,
            "seam": best.metrics.get("seam") if best else None,
            "map on its hot region": best.repair_properties.get("localized") if best else None,
            "map elsewhere": best.repair_properties.get("non_degradation") if best else None,
            "error": exp.error}.items()})
    table = pd.DataFrame(rows)
    if not any(e.error for e in results.values()):
        table = table.drop(columns="error")
    st.dataframe(table, hide_index=True)

    def _report() -> X.Report:
        return X.Report.from_bundle(b, image, sel.name, results, mask=sel.mask, target=target,
                                    params={"seed": seed, **{f"{m}.{k}": v for m in results
                                                             for k, v in params.get(m, {}).items()}},
                                    reviewer=reviewer())

    show("compare", report=_report)
    st.markdown("**Report of the shown results**")
    report_downloads(_report, file_stem(sel, "compare"), "compare", ("png", "json", "pdf", "html"))

# ------------------------------------------------------------------ start the heavy methods
# only now: the verdict, the detector's map and the light methods above went out first, and the
# heavy methods' threads do not compete with drawing them; the rerun draws their live cells
if todo:
    if stream is None or not stream.add(todo, params):
        start_stream(b, image, todo, target, params, seed, sel.mask)
    st.rerun()
