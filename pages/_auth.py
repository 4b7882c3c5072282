"""Sign-in for a shared station (not a page): who is using the app, or a stop.

* ``$CFX_TRUSTED_USER_HEADER`` set (the app runs behind a reverse proxy that signs users in): the
  user is that request header's value; a request without it is refused.
* else a ``password`` in Streamlit's secrets (``.streamlit/secrets.toml``): a sign-in form asks for
  a name and the password once per browser session.
* else no sign-in: the reviewer types a name beside each decision.

The user's name goes into ``st.session_state["user"]`` and into every review decision.
"""
from __future__ import annotations

import streamlit as st

from cfx import config
from cfx.station import password_matches


def _secret_password() -> str | None:
    try:
        value = st.secrets.get("password")
    except Exception:  # noqa: BLE001 - no secrets file: no password sign-in
        return None
    return str(value) if value else None


def require_user() -> str | None:
    """The signed-in user's name (None when the station has no sign-in); stops the run with a
    sign-in form or a refusal otherwise."""
    header = config.trusted_user_header()
    if header:
        user = (st.context.headers.get(header) or "").strip()
        if not user:
            st.error("This station admits users signed in through its proxy only.")
            st.stop()
        st.session_state["user"] = user
        return user
    password = _secret_password()
    if password is None:
        return None
    if st.session_state.get("user"):
        return st.session_state["user"]
    st.title("Sign in")
    with st.form("sign_in"):
        name = st.text_input("Your name", key="signin_name")
        given = st.text_input("Password", type="password", key="signin_password")
        if st.form_submit_button("Sign in", type="primary"):
            if name.strip() and password_matches(given, password):
                st.session_state["user"] = name.strip()
                st.rerun()
            st.error("Name or password not accepted.")
    st.stop()
