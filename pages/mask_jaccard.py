"""Mask Jaccard: were the detected anomalies detected for the right reason?

For every test anomaly with a ground-truth mask, each explanation method's map is compared with
the mask by the optimal Jaccard J* (cfx.metrics); a detected anomaly whose J* is below the cutoff
is flagged "detected for the wrong reason". The run goes on in a background thread (progress,
stop, resume from the results database) at a lowered CPU priority, so the app's other sessions
keep their share; every result lands in the database that Compare, the CLI and other sessions read.

Selection (pages/_common.py): the sidebar's data root and category; the target is the shared
``target`` key. Choosing a row of the table selects that image for every page (``split`` "test",
``image_name``, ``image_index``, ``source`` "dataset"); "Open in Compare" then switches to Compare.
Keys of this page start with ``mj_``.
"""
from __future__ import annotations

import json
import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cfx.atomic import json_default
from cfx.audit import (
    DEFAULT_CUTOFF,
    AuditJob,
    AuditResult,
    audit_category,
    image_detail,
    with_cutoff,
)
from cfx.data.imageio import array_to_pil
from cfx.data.mvtec import MVTecDataset
from cfx.explainers import method_label as name, resolve_methods
from cfx.inert import markdown_text
from pages._fit import needs_fit
from cfx.reports.colours import max_abs
from cfx.reports.encode import pil_png, png_data_uri
from cfx.reports.figures import detail_png, overlay
from pages._common import (
    bound,
    show,
    choose_image,
    current,
    heat_figure,
    param_inputs,
    plot,
    show_model_missing,
    target_labels,
)

COMPARE_PAGE = "pages/compare.py"

OUTCOME_COLOURS = {"detected": "#d62728", "missed": "#1f77b4"}


# ---------------------------------------------------------------- cached resources
@st.cache_data(show_spinner=False, max_entries=8)
def _thumbnails(root: str, category: str, channels: int, size: int) -> dict[str, str]:
    """``<defect>/<file>`` -> a small PNG data URL of every test image."""
    arr = MVTecDataset(root, category, "test", image_size=size, channels=channels).arrays()
    out = {}
    for img, s in zip(arr.images, arr.samples):
        out[s.name] = png_data_uri(pil_png(array_to_pil(img).resize((56, 56))))
    return out


# ---------------------------------------------------------------- selection
def _select_row(r: AuditResult, row: int | None) -> None:
    """A newly chosen table row becomes every page's selected image."""
    if row is None or row == st.session_state.get("mj_last_row"):
        st.session_state["mj_last_row"] = row
        return
    st.session_state["mj_last_row"] = row
    x = r.images[row]
    if st.session_state.get("image_name") != x.image or st.session_state.get("source") != "dataset":
        st.session_state["split"] = "test"
        choose_image(x.image, x.index)
        st.rerun()


def _controls(bundle) -> tuple[list[str], str, float, dict, int | None]:
    from cfx.explainers import REGISTRY

    sel = current()
    known = [m for m in resolve_methods("all") if needs_fit(sel, m) is None]  # the rest needs the explainers' models
    default = [m for m in known if REGISTRY[m].kind == "heatmap"] or known[:1]  # the maps; counterfactuals on demand
    methods = st.pills("Methods", known, selection_mode="multi", default=default, key="mj_methods", format_func=name,
                       help="heatmap methods are judged by their map, counterfactual methods by the "
                            "absolute difference of their closest counterfactual")
    methods = list(methods or [])
    c2, c3 = st.columns([1.3, 1.7])
    with c2:
        labels = target_labels(bundle)
        target = bound(st.selectbox, "Target", "target", list(labels), format_func=labels.get,
                       help="what the methods explain, and whose decision counts as detected")
    cutoff = c3.slider("Cutoff on J*", 0.0, 0.5, DEFAULT_CUTOFF, 0.01, key="mj_cutoff",
                       help="a detected anomaly whose J* is below this is flagged: detected for the wrong reason")
    with st.expander("Run settings"):
        limit = st.number_input("Audit at most this many anomalies (0 = all)", 0, 10000, 0, key="mj_limit",
                                help="spread over the defect types; a quick look before a full run")
        params = param_inputs(methods, "mj_p")
    return methods, target, cutoff, params, (int(limit) or None)


# ---------------------------------------------------------------- running
def _run_key(bundle, methods, target, params, limit) -> str:
    return json.dumps([bundle.key(), methods, target, params, limit], sort_keys=True, default=str)


def _job_panel(job: AuditJob) -> None:
    @st.fragment(run_every=2.0)
    def progress() -> None:
        if job.running:
            eta = job.eta()
            left = ("time left after each method's first image" if eta is None
                    else f"about {_duration(eta)} left (each method's measured cost per image)")
            st.progress(job.fraction, text=f"Auditing: {job.done}/{job.total or '?'} units · {left} · "
                                           f"{markdown_text(job.message)}")
            if st.button("Stop", key="mj_stop", type="secondary",
                         help="ends after the current method; what is done stays cached and the next run resumes"):
                job.stop()
                st.toast("Stopping after the current method...")
            part = with_cutoff(job.partial(), st.session_state.get("mj_cutoff", DEFAULT_CUTOFF))
            if part.images:  # the results so far, filling in per image
                st.subheader(f"Summary so far ({len(part.images)} of {part.total} anomalies)")
                _summary(part)
                st.plotly_chart(_scatter(part), width="stretch", key="mj_scatter_live")
                _table(part, {}, key="mj_table_live")
        else:
            st.rerun(scope="app")

    progress()


def _results(root, bundle, category, methods, target, params, limit, key) -> AuditResult | None:
    """This session's result for the settings, else what the disk cache holds (no computation)."""
    held = st.session_state.get("mj_result")
    if held is not None and held[0] == key:
        return held[1]
    with st.spinner("Reading stored results..."):
        r = audit_category(bundle, root, category, methods, target=target, params=params, limit=limit,
                           compute=False)
    last = st.session_state.get("mj_last_run")
    if last is not None and last[0] == key:  # the run's own time and id, not this re-read's
        r.run, r.seconds, r.engine = last[1], last[2], last[3]
    st.session_state["mj_result"] = (key, r)
    return r


# ---------------------------------------------------------------- display
def _summary(r: AuditResult) -> None:
    s = r.summary()
    table = pd.DataFrame({
        "method": [name(m) for m in r.methods],
        "flagged (of detected)": [s["flagged_fraction"][m] for m in r.methods],
        "flagged": [f"{s['n_flagged'][m]}/{s['n_evaluated'][m]}" for m in r.methods],
        "explainer at fault": [s["fault"][m]["explainer"] for m in r.methods],
        "detector at fault": [s["fault"][m]["detector"] for m in r.methods],
        "mean J*": [s["mean_optimal_jaccard"][m] for m in r.methods],
        "mean J* (detected)": [s["mean_optimal_jaccard_detected"][m] for m in r.methods],
        "pixel AUROC": [s["pixel_auroc"][m] for m in r.methods],
        "errors": [s["n_errors"][m] for m in r.methods],
    })
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "flagged (of detected)": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "mean J*": st.column_config.NumberColumn(format="%.3f"),
        "mean J* (detected)": st.column_config.NumberColumn(format="%.3f"),
        "pixel AUROC": st.column_config.NumberColumn(format="%.3f"),
    })
    if any(s["fault"][m]["explainer"] or s["fault"][m]["detector"] for m in r.methods):
        st.caption("A flag blames the explainer when the detector's own map does localise the defect (its J* "
                   f"reaches the cutoff {r.cutoff:g}): the detector looked at the right thing and the method's map "
                   "misses it. It blames the detector when its own map misses the defect too.")
    a = s["agreement"]
    if a["n"] and len(r.methods) > 1:
        st.caption(f"{s['n_detected']} of {len(r.images)} audited anomalies detected. On the {a['n']} detected "
                   f"ones every method explained, all methods agree on {a['all_agree']:.0%}; "
                   f"{a['flagged_by_all']} flagged by all, {a['flagged_by_any']} by at least one.")
    else:
        st.caption(f"{s['n_detected']} of {len(r.images)} audited anomalies detected.")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _table(r: AuditResult, thumbs: dict[str, str], key: str = "mj_table") -> int | None:
    """The sortable table; returns the index (into r.images) of the selected row."""
    rows = []
    for x in r.images:
        d = {"thumbnail": thumbs.get(x.image), "image": x.image, "defect": x.defect, "score": x.score,
             "decision": "anomalous" if x.anomalous else "normal"}
        for m in r.methods:
            d[f"J* {name(m)}"] = x.methods[m].optimal_jaccard
        d["detector J*"] = x.detector_jaccard
        d["flagged by"] = ", ".join(f"{name(m)} ({x.methods[m].fault} at fault)" if x.methods[m].fault else name(m)
                                    for m in x.flagged_by)
        d["flags"] = len(x.flagged_by)
        rows.append(d)
    df = pd.DataFrame(rows)
    cfg = {"thumbnail": st.column_config.ImageColumn("", width="small"),
           "score": st.column_config.NumberColumn(
               format="%.3f", help=f"{r.target}; threshold {r.images[0].threshold:.3f}" if r.images else r.target)}
    for m in r.methods:
        cfg[f"J* {name(m)}"] = st.column_config.NumberColumn(format="%.3f")
    cfg["detector J*"] = st.column_config.NumberColumn(format="%.3f", help="J* of the detector's own map")
    event = st.dataframe(df, hide_index=True, width="stretch", column_config=cfg, on_select="rerun",
                         selection_mode="single-row", key=key, height=min(420, 38 + 35 * len(df)))
    sel = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    return int(sel[0]) if sel else None


def _scatter(r: AuditResult) -> go.Figure:
    ms = r.methods
    fig = go.Figure()
    shapes = ["circle", "diamond", "square", "triangle-up", "x", "cross", "star"]
    for k, m in enumerate(ms):
        for outcome, colour in OUTCOME_COLOURS.items():
            pts = [x for x in r.images if x.methods[m].status == "ok" and (x.anomalous == (outcome == "detected"))]
            if not pts:
                continue
            fig.add_trace(go.Scatter(
                x=[x.score for x in pts], y=[x.methods[m].optimal_jaccard for x in pts], mode="markers",
                name=f"{name(m)} · {outcome}", legendgroup=m,
                marker=dict(color=colour, symbol=shapes[k % len(shapes)], size=8, opacity=0.75,
                            line=dict(width=0.5, color="white")),
                text=[x.image for x in pts],
                hovertemplate="%{text}<br>score %{x:.3f}<br>J* %{y:.3f}<extra>" + m + "</extra>"))
    fig.add_hline(y=r.cutoff, line_dash="dash", line_color="gray", annotation_text=f"cutoff {r.cutoff:.2f}")
    if r.images:
        fig.add_vline(x=r.images[0].threshold, line_dash="dot", line_color="black", annotation_text="threshold")
    fig.add_shape(type="rect", xref="x", yref="y", x0=r.images[0].threshold if r.images else 0,
                  x1=max([x.score for x in r.images] + [0]) * 1.02 + 1e-9, y0=0, y1=r.cutoff,
                  fillcolor="red", opacity=0.07, line_width=0)
    fig.update_layout(xaxis_title=f"{'anomaly score' if r.target == 'score' else 'classifier P(anomalous)'}",
                      yaxis_title="optimal Jaccard J*", yaxis_range=[-0.02, 1.02], height=420,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(font=dict(size=10)),
                      title=dict(text="J* against the anomaly score (shaded: detected for the wrong reason)",
                                 font=dict(size=13)))
    return fig


def _curve_figure(detail, method: str) -> go.Figure:
    c = detail.curve
    t, j, s = c.downsampled(800)
    hover = "selected %{x:.2%}<br>J %{y:.3f}<br>threshold %{customdata:.4g}<extra></extra>"
    fig = go.Figure(go.Scatter(x=s, y=j, mode="lines", customdata=t, name="Jaccard", hovertemplate=hover))
    fig.add_trace(go.Scatter(x=[c.best_selected], y=[c.jaccard], mode="markers", marker=dict(size=11, color="#d62728"),
                             name=f"J* {c.jaccard:.3f}", hovertemplate="J* %{y:.3f}<extra></extra>"))
    fig.add_vline(x=c.mask_fraction, line_dash="dot", line_color="green", annotation_text="mask size")
    fig.update_layout(xaxis_type="log", xaxis_title="share of pixels selected (map >= threshold)",
                      yaxis_title="Jaccard with the mask", yaxis_range=[0, 1.02], height=300,
                      margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                      title=dict(text=f"{name(method)}: Jaccard along the threshold sweep", font=dict(size=13)))
    return fig


def _detail(root, bundle, category, r: AuditResult, row_index: int) -> None:
    x = r.images[row_index]
    st.subheader(f"{x.image}")
    st.caption(f"{r.target} {x.score:.3f} (threshold {x.threshold:.3f}): {'anomalous' if x.anomalous else 'normal'}"
               f" · detector {x.detector_score:.3f} · classifier {x.classifier_prob:.3f}"
               + (f" · flagged by {', '.join(x.flagged_by)}" if x.flagged_by else ""))
    c1, c2 = st.columns([3, 1])
    ok = [m for m in r.methods if x.methods[m].status != "pending"]
    if not ok:
        st.info("Not audited yet: run the audit.")
        return
    method = c1.radio("Method", ok, horizontal=True, key="mj_detail_method",
                      format_func=lambda m: f"{name(m)} (J* {x.methods[m].optimal_jaccard:.3f})"
                      if x.methods[m].optimal_jaccard is not None else f"{name(m)} (error)")
    if c2.button("Open in Compare", key="mj_open", type="primary", help="explain this image with every method"):
        st.session_state["split"] = "test"
        choose_image(x.image, x.index)
        st.switch_page(COMPARE_PAGE)
    d = image_detail(bundle, root, category, x.image, method, r.target, r.params.get(method), r.seed, compute=False)
    if d is None:
        st.info("This method's map is not cached any more: run the audit again.")
        return
    if d.map is None:
        st.error(markdown_text(f"{name(method)}: {d.error}"))
        return
    a, b, c = st.columns(3)
    a.image(overlay(d.image, d.best_mask, (1.0, 0.6, 0.0)), width="stretch", clamp=True,
            caption=f"{name(method)}: best selection ({d.curve.best_selected:.1%} of pixels)")
    b.image(overlay(d.image, d.mask, (0.1, 0.9, 0.2)), caption="ground truth", width="stretch", clamp=True)
    with c:  # the shared colour scale of every map (cfx.reports.colours)
        plot(heat_figure(d.image, d.map, max_abs(d.map), mask=d.mask, title=f"{name(method)} map", height=260,
                         showscale=False), key="mj_heat")
    st.plotly_chart(_curve_figure(d, method), width="stretch", key="mj_curve")
    st.download_button("Figure (PNG)", detail_png(d, method, f"{r.dataset}/{category} {x.image} · target {r.target} · "
                                                   f"model {r.model}"),
                       file_name=f"audit-{category}-{x.image.replace('/', '-')}-{method}.png", mime="image/png",
                       key="mj_dl_png")


# ---------------------------------------------------------------- page
def main() -> None:
    st.title("Mask Jaccard audit")
    st.markdown("Was each anomaly detected **for the right reason**? For every test anomaly with a known defect "
                "mask, each method's explanation is compared with the mask by the optimal Jaccard **J\\***: the "
                "best overlap over all thresholds of the map (attributions under 1 % of the map's peak count as "
                "none). A detected anomaly with J\\* below the cutoff is flagged: the model found something, but "
                "not the defect.")
    sel = current()
    if sel is None:
        st.info("Choose a valid data root in the sidebar.")
        return
    if sel.bundle is None:
        show_model_missing(sel.model_error or f"no trained model for {sel.dataset}/{sel.category}")
        return
    root, category, bundle = sel.root, sel.category, sel.bundle
    methods, target, cutoff, params, limit = _controls(bundle)
    if not methods:
        st.info("Choose at least one method.")
        return
    key = _run_key(bundle, methods, target, params, limit)
    job: AuditJob | None = st.session_state.get("mj_job")
    job_key = st.session_state.get("mj_job_key")
    if job is not None and not job.running and job_key is not None:
        # a finished (or stopped) run: everything it did is in the results database, read back
        # in full below (a stopped run's own result holds only the images it reached)
        st.session_state.pop("mj_result", None)
        if job.result is not None:
            st.session_state["mj_last_run"] = (job_key, job.result.run, job.result.seconds, job.result.engine)
        elif job.error:
            st.error(f"The audit failed: {job.error}")
        st.session_state["mj_job"] = st.session_state["mj_job_key"] = None
        job = None
    if job is not None and job.running:
        if job_key != key:
            st.info("An audit with other settings is running; stop it to start this one.")
        _job_panel(job)
        return

    result = _results(root, bundle, category, methods, target, params, limit, key)
    pending = sum(m.status == "pending" for x in result.images for m in x.methods.values())
    n_units = len(result.images) * len(methods)
    show("mask_jaccard", result=result, stored=n_units - pending, units=n_units)
    label = "Run audit" if pending == n_units else ("Resume audit" if pending else "Re-check cache")
    c1, c2 = st.columns([1, 3])
    if pending:
        c2.caption(f"{n_units - pending} of {n_units} (image, method) results stored; {pending} to compute. "
                   "The results fill in per image as the run goes, with the time left from each method's measured "
                   "cost; you can stop and resume at any time.")
    else:
        c2.caption(f"All {n_units} results stored (model {bundle.key()}).")
    if c1.button(label, type="primary" if pending else "secondary", key="mj_run", disabled=not pending):
        job = AuditJob(bundle, root, category, engine="local", methods=methods, target=target, params=params,
                       limit=limit).start()
        st.session_state["mj_job"], st.session_state["mj_job_key"] = job, key
        st.session_state.pop("mj_result", None)
        time.sleep(0.2)
        st.rerun()

    shown = with_cutoff(result, cutoff)
    shown.images = [x for x in shown.images if any(m.status != "pending" for m in x.methods.values())]
    if not shown.images:
        st.info(f"{result.total} anomalies with a mask in {category}; nothing audited yet with these settings.")
        return
    st.subheader("Summary")
    _summary(shown)
    st.plotly_chart(_scatter(shown), width="stretch", key="mj_scatter")
    st.subheader("Anomalies")
    st.caption("Click a row to see its maps and J* curve below, and to open it in Compare.")
    thumbs = _thumbnails(str(root), category, bundle.channels, bundle.image_size)
    row = _table(shown, thumbs)
    _select_row(shown, row)
    d1, d2 = st.columns(2)
    d1.download_button("Audit (JSON)", json.dumps(shown.to_json(), indent=2, default=json_default),
                       file_name=f"audit-{category}-{target}.json", mime="application/json", key="mj_dl_json")
    d2.download_button("Table (CSV)", pd.DataFrame(shown.rows()).to_csv(index=False),
                       file_name=f"audit-{category}-{target}.csv", mime="text/csv", key="mj_dl_csv")
    if row is None:
        wanted = st.session_state.get("image_name")
        names = [x.image for x in shown.images]
        row = names.index(wanted) if wanted in names else 0
    _detail(root, bundle, category, shown, row)


main()
