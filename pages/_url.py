"""The selection in the page's URL (query parameters): a reload or a shared link opens the same
view. A data root from the URL passes the same checks as a typed one (the caller's ``set_root``)."""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

#: query parameter -> the plain session key it fills
URL_KEYS = {"root": "data_root", "category": "category", "split": "split", "detector": "detector",
            "image": "image_name"}


def read_url(set_root: Callable[[], None]) -> None:
    """Once per session: the URL's selection into the session's plain keys (``set_root`` checks
    and applies ``st.session_state["w_data_root"]``, as when the user types it)."""
    if "_cfx_url_read" in st.session_state:
        return
    st.session_state["_cfx_url_read"] = True
    q = st.query_params
    if q.get("root"):
        st.session_state["w_data_root"] = q["root"]
        set_root()
    for p, k in URL_KEYS.items():
        if p != "root" and q.get(p) and not (p == "split" and q[p] not in ("test", "train")):
            st.session_state[k] = q[p]


def write_url(sel: Any) -> None:
    """The selection into the URL's query parameters (only what differs, so no needless update)."""
    want = {"root": st.session_state.get("data_root") or None, "category": sel.category, "split": sel.split,
            "detector": sel.bundle.detector_name if sel.bundle is not None else None,
            "image": sel.name if sel.source == "dataset" and sel.name else None}
    q = st.query_params
    for p, v in want.items():
        if v is None:
            if p in q:
                del q[p]
        elif q.get(p) != str(v):
            q[p] = str(v)
