"""Lots: a folder of new, unlabeled part images inspected against the selected category's models
(:mod:`cfx.lots`), the inspector's queue (NG first, then the doubtful parts), each part with its
verdict and map, and an OK / NG decision with a reason on the part on screen."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cfx import reports as X
from cfx.data.imageio import load_image
from cfx.errors import CfxError
from cfx.inert import markdown_text
from cfx.lots import DOUBT_MARGIN, LotJob, decision_summary, folder_signature, lot_files, lot_split
from pages._decide import decision_form, show_verdict
from pages._common import analyse_one, current, heat_figure, image_figure, plot, require_models, reviewer, show

st.title("Lots")
sel = current()
if not require_models(sel):
    st.stop()
b = sel.bundle
st.caption(f"New parts inspected against {markdown_text(f'{sel.dataset}/{sel.category}')} with "
           f"{b.detector.label}: the parts called NG first, then the doubtful ones (called OK within "
           f"{DOUBT_MARGIN:g} good-part standard deviation of the threshold).")


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[tuple[str, str], LotJob]:
    """The lots of this server process, by (model, lot) (shared by sessions; a lot is stored)."""
    return {}


folder = st.text_input("Lot folder", key="lot_folder", placeholder="/path/to/new/parts",
                       help="any folder of part images: nested folders, any names, no labels").strip()
if not folder:
    st.info("Type the folder of a lot of new parts.")
    st.stop()
from cfx.station import REFUSAL, is_allowed  # noqa: E402

if not is_allowed(folder):
    st.error(REFUSAL)
    st.stop()
try:
    n_files = len(lot_files(folder))
except CfxError as exc:
    st.error(markdown_text(str(exc)))
    st.stop()
key = (b.key(), lot_split(folder))
job = _jobs().get(key)
watch = st.toggle("Watch the folder: inspect images as they arrive", key="lot_watch",
                  help="checks the folder every 3 s; only new or changed files are scored")


@st.fragment(run_every=3.0)
def _watch() -> None:
    """While watching: a changed folder starts another inspection (the page then reruns)."""
    sig = folder_signature(folder)
    seen = st.session_state.get("lot_sig")
    if seen is None or seen[0] != key:
        st.session_state["lot_sig"] = (key, sig)
    elif seen[1] != sig and not (_jobs().get(key) and _jobs()[key].running):
        st.session_state["lot_sig"] = (key, sig)
        from pages._results import results_db

        db = results_db()
        if db is not None:
            _jobs()[key] = LotJob(b, folder, db).start()
            st.rerun(scope="app")
    st.caption(f"Watching: {len(sig)} images in the folder.")


if watch:
    _watch()
# a lesson or a restore made another version in use: the lot is inspected with it at once
pending = st.session_state.get("lot_autorun")
autorun = pending is not None and pending[1] == key[1] and job is None
if pending is not None and pending[1] == key[1]:
    st.session_state.pop("lot_autorun")
if job is None or (not job.running and st.button(f"Inspect the lot again ({n_files} files: only new or changed "
                                                  "ones are scored)", key="lot_again")):
    if job is None and not autorun and not st.button(f"Inspect the lot ({n_files} files)", type="primary",
                                                     key="lot_run"):
        st.stop()
    from pages._results import results_db

    db = results_db()
    if db is None:
        st.error("The results database cannot be opened; the lot cannot be stored.")
        st.stop()
    job = _jobs()[key] = LotJob(b, folder, db).start()


@st.fragment(run_every=1.0)
def _progress() -> None:
    if job.running:
        eta = job.eta()
        st.progress(job.done / job.total if job.total else 0.0,
                    text=f"Inspecting: {job.done}/{job.total or n_files} parts"
                         + ("" if eta is None else f", about {eta:.0f} s left"))
    else:
        st.rerun(scope="app")


if job.running:
    _progress()
    st.stop()
if job.error:
    st.error(markdown_text(f"The lot could not be inspected: {job.error}"))
    st.stop()
r = job.result
s = r["summary"]
show("lots", result=r)
st.markdown(f"**{s['images']} parts**: :red[{s['NG']} NG] · :orange[{s['doubtful']} doubtful] · {s['OK']} OK"
            + (f" · {s['unreadable']} not readable" if s["unreadable"] else "") + f" ({r['seconds']:.1f} s)")
for msg in r["skipped"][:5]:
    st.caption(markdown_text(f"not read: {msg}"))

def _rates_table(lesson: dict) -> pd.DataFrame:
    """The lesson's rates before and after, in words."""
    b, a = lesson["before"], lesson["after"]
    pct = lambda r, k: "" if (r.get(k) or {}).get("mean") is None else f"{r[k]['mean']:.1%}"  # noqa: E731
    return pd.DataFrame([
        {"": "threshold", "before": f"{b['threshold']:.3f}", "after": f"{a['threshold']:.3f}"},
        {"": "expected false-alarm rate", "before": pct(b, "expected_fpr"), "after": pct(a, "expected_fpr")},
        {"": "expected detection (synthetic defects)", "before": pct(b, "expected_tpr"), "after": pct(a, "expected_tpr")},
        {"": "false alarms among parts decided OK (a taught part scored as a new part like it)", "before": f"{b['false_alarms']} of {b['decided_ok']}",
         "after": f"{a['false_alarms']} of {a['decided_ok']}"},
        {"": "escapes among parts decided NG", "before": f"{b['escapes']} of {b['decided_ng']}",
         "after": f"{a['escapes']} of {a['decided_ng']}"}])


def _teach_panel(sel, r: dict, decided: dict) -> None:
    """Teach the detector the lot's overruled false alarms; the versions, and a restore."""
    from cfx.models.bundle import category_dir
    from cfx.models.versions import restore, versions
    from cfx.teaching import last_lesson, overruled, teach

    b = sel.bundle
    over = overruled(r, decided)
    lesson = last_lesson(b.card, b.detector_name)
    with st.expander(f"Teach the detector: {len(over)} false alarm(s) overruled", expanded=bool(over or lesson)):
        if lesson:
            st.caption(markdown_text(f"Version in use: taught {len(lesson['parts'])} part(s)"
                                     + (f" by {lesson['reviewer']}" if lesson.get("reviewer") else "")
                                     + f" at {lesson['at']}; its {lesson['added_patches']} new patches make them "
                                       "normal. Rates before and after:"))
            st.dataframe(_rates_table(lesson), hide_index=True, width="stretch")
            for part in lesson["after"].get("escaped_parts", []):
                st.warning(markdown_text(f"{part} was decided NG and this version calls it OK."))
        if b.detector_name == "patchcore":
            help_ = ("adds their patches to PatchCore's memory bank as a new version, places the threshold again "
                     "with the decisions and inspects the lot with it (about 15 s; a first lesson searches the "
                     "fit's fold banks again: about a minute)")
        else:
            help_ = "the VAE cannot learn at once: it is marked for retraining with these parts"
        if over and st.button(f"Teach the detector these {len(over)} part(s)", key="lot_teach", help=help_,
                              icon=":material/school:"):
            from pages._results import _arrays

            try:
                with st.spinner("Teaching the detector..."):
                    train = _arrays(str(sel.root), sel.category, "train", b.image_size, b.channels)
                    out = teach(b, train.images, r, folder, decided, reviewer=reviewer())
            except CfxError as exc:
                st.error(markdown_text(str(exc)))
            else:
                if "version" in out:
                    st.session_state["lot_autorun"] = (None, r["lot"])  # the new model's key is known after the load
                    st.rerun()
                st.success(f"The {b.detector.label} is marked for retraining with {len(out['marked'])} part(s).")
        rows = versions(category_dir(b.dataset, b.category), b.detector_name, b.card)
        if len(rows) > 1:
            st.dataframe(pd.DataFrame([{"version": v["version"], "in use": "yes" if v["in_use"] else "",
                                        "threshold": round(float(v["threshold"]), 3), "made": v["made"], "by": v["by"],
                                        "at": v["at"]} for v in rows]), hide_index=True, width="stretch")
            others = [v["version"] for v in rows if not v["in_use"]]
            c1, c2 = st.columns([1, 2])
            pick = c1.selectbox("Version", others, key="lot_version", label_visibility="collapsed")
            if c2.button(f"Restore version {pick}", key="lot_restore", icon=":material/history:"):
                try:
                    restore(category_dir(b.dataset, b.category), b.detector_name, int(pick))
                except CfxError as exc:
                    st.error(markdown_text(str(exc)))
                else:
                    st.session_state["lot_autorun"] = (None, r["lot"])
                    st.rerun()


from cfx.review import ReviewStore  # noqa: E402

try:
    store = ReviewStore()
    decided = store.latest(sel.dataset, sel.category)
except CfxError as exc:
    st.error(markdown_text(str(exc)))
    decided, store = {}, None
name = lambda row: f"{r['lot']}/{row['path']}"  # noqa: E731  (the part's name in the review store)
d = decision_summary(r["images"], decided, r["lot"])
show("lots", decisions=d)
st.caption(f"Decided {d['decided']} of {d['parts']}: {d['confirmed_ng']} NG confirmed, {d['overruled']} false alarms "
           f"overruled, {d['escapes']} escapes found (called OK, decided NG), {d['confirmed_ok']} OK confirmed.")
_teach_panel(sel, r, decided)
rows = r["images"]
table = pd.DataFrame([{"verdict": x["verdict"], "score": round(x["score"], 3), "part": x["path"],
                       "decision": decided.get(name(x), {}).get("verdict", "")} for x in rows])
def _report():
    """The lot report of these decisions (built once per set of decisions: its repairs cost seconds)."""
    from cfx.reports.lot import lot_report

    key = (r["run"], repr(sorted((k, v.get("verdict"), v.get("reason")) for k, v in decided.items()
                                 if k.startswith(r["lot"] + "/"))), reviewer())
    held = st.session_state.get("lot_report")
    if held is None or held[0] != key:
        held = (key, lot_report(b, r, decided, reviewer=reviewer()))
        st.session_state["lot_report"] = held
    return held[1]


def _downloads() -> None:
    from cfx.reports.lot import LOT_FORMATS
    from cfx.reports.encode import safe_name

    labels = {"pdf": "Lot report (PDF)", "html": "Lot report (HTML)", "csv": "Every part (CSV)",
              "json": "Every part (JSON)"}
    mime = {"pdf": "application/pdf", "html": "text/html", "csv": "text/csv", "json": "application/json"}
    for c, fmt in zip(st.columns(len(LOT_FORMATS)), LOT_FORMATS):
        c.download_button(labels[fmt], data=lambda f=fmt: LOT_FORMATS[f](_report()), mime=mime[fmt],
                          file_name=f"cfx_{safe_name(r['lot'].replace(':', '_'))}.{fmt}", key=f"lot_dl_{fmt}",
                          on_click="ignore", icon=":material/download:")


_downloads()
event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key="lot_table", height=min(360, 38 + 35 * len(rows)))
picked = list(getattr(getattr(event, "selection", None), "rows", []) or [])
# the part on screen: a newly picked row, else where the keyboard's "and next" moved to
if picked and picked[0] != st.session_state.get("lot_picked"):
    st.session_state["lot_index"] = int(picked[0])
st.session_state["lot_picked"] = picked[0] if picked else None
i = min(int(st.session_state.get("lot_index", 0)), len(rows) - 1)
part = rows[i]
st.caption(f"Part {i + 1} of {len(rows)} in the queue.")
st.subheader(markdown_text(part["path"]))
image = load_image(f"{folder}/{part['path']}", b.image_size, b.channels)
a = analyse_one(b, image)
show_verdict(float(a["score"]), b.threshold, bool(a["anomalous"]))
c1, c2 = st.columns(2)
with c1:
    plot(image_figure(image, None, "part"), "lot_image")
with c2:
    plot(heat_figure(image, a["heatmap"], None, None, "the detector's map (yellow: beyond a good part)", label="heat"),
         "lot_heat")
    st.caption(X.calibrated_caption(np.asarray(a["heatmap"])).capitalize() + ".")
if store is not None:
    def _advance() -> None:
        st.session_state["lot_index"] = min(i + 1, len(rows) - 1)

    decision_form(store, "lot", "part", name(part), name(part), decided.get(name(part), {}),
                  "NG" if part["verdict"] == "NG" else "OK",
                  {"dataset": sel.dataset, "category": sel.category, "model": b.key(), "score": part["score"],
                   "threshold": part["threshold"]}, reviewer=reviewer(), on_next=_advance, on_skip=_advance,
                  last=i + 1 >= len(rows), shown_as=part["path"])
