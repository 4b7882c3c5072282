"""The detector's verdict line and the inspector's OK / NG form, shared by Inspect's review queue
and the Lots page (one decision flow: always on the part on screen, its stored decision prefilled,
keyboard-fast). Not a page."""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from cfx.errors import CfxError
from cfx.inert import markdown_text


def show_verdict(score: float, threshold: float, anomalous: bool, help: str | None = None) -> None:
    """The detector's verdict as one line that wraps, never a metric that cuts "anomalous" or the
    threshold short."""
    word, colour = ("Anomalous", "red") if anomalous else ("Normal", "green")
    st.markdown(f"#### :{colour}[{word}] · anomaly score {score:.3f} against the threshold {threshold:.3f} "
                f"({score - threshold:+.3f})", help=help)


def decision_form(store, key: str, noun: str, part: str | None, ident: Any, stored: dict[str, Any], default: str,
                  record: dict[str, Any], reviewer: str | None = None, on_next: Callable[[], None] | None = None,
                  on_skip: Callable[[], None] | None = None, last: bool = False, shown_as: str | None = None) -> None:
    """The OK / NG form of the part on screen, with a reason; Save, and "OK / NG, next <noun>"
    (Alt+O / Alt+N: decide and call ``on_next``), and "Next <noun>" (Alt+J) when ``on_skip``.

    Args:
        store: the :class:`~cfx.review.ReviewStore`. key: the widgets' key prefix.
        part: the part's name in the store (None: nothing to decide on; the buttons are disabled).
        ident: what makes the form a new one (then ``stored`` or ``default`` is prefilled).
        record: ``dataset``, ``category``, ``model``, ``score``, ``threshold`` of the decision.
        reviewer: the reviewer's name; None asks for it (the signed-in user's, shown, when there is one).
        last: the part is the queue's last ("Next" disabled). shown_as: the part's name in the toast.
    """
    if st.session_state.get(f"{key}_for") != ident:  # a new part: its stored decision, prefilled
        st.session_state[f"{key}_for"] = ident
        st.session_state[f"{key}_verdict"] = stored.get("verdict") or default
        st.session_state[f"{key}_reason"] = stored.get("reason") or ""
    cols = st.columns([1, 3, 2, 1] if reviewer is None else [1, 3, 1], vertical_alignment="bottom")
    verdict = cols[0].radio("Decision", ["OK", "NG"], horizontal=True, key=f"{key}_verdict")
    reason = cols[1].text_input("Reason", key=f"{key}_reason", placeholder="e.g. scratch on the rim")
    if reviewer is None:
        user = st.session_state.get("user")
        if user:
            cols[2].text_input("Reviewer", value=user, disabled=True, key=f"{key}_user_shown")
            reviewer = user
        else:
            reviewer = cols[2].text_input("Reviewer", key=f"{key}_reviewer", placeholder="your name")
    off = part is None
    save = cols[-1].button("Save", key=f"{key}_save", type="primary", disabled=off)
    k = st.columns(3)
    ok_next = k[0].button(f"OK, next {noun}", key=f"{key}_ok_next", shortcut="Alt+O", disabled=off)
    ng_next = k[1].button(f"NG, next {noun}", key=f"{key}_ng_next", shortcut="Alt+N", disabled=off)
    skip = on_skip is not None and k[2].button(f"Next {noun}", key=f"{key}_next", shortcut="Alt+J", disabled=last)
    if save or ok_next or ng_next:
        chosen = "OK" if ok_next else "NG" if ng_next else verdict
        try:
            row = store.record(record["dataset"], record["category"], part, record["model"], chosen, reason,
                               score=float(record["score"]), threshold=float(record["threshold"]), reviewer=reviewer)
        except CfxError as exc:
            st.error(markdown_text(str(exc)))
            return
        st.toast(markdown_text(f"{shown_as or part}: {row['verdict']} " + ("held: the database is locked; it is written when "
                                                              "the lock clears" if row["held"] else "saved")))
        st.session_state.pop(f"{key}_for", None)  # prefill again from what was stored
        if (ok_next or ng_next) and on_next is not None:
            on_next()
        st.rerun()
    if skip:
        on_skip()
        st.rerun()
