"""cfx dashboard: why did the anomaly detector call this image defective, and what would make it
look normal? Run with ``streamlit run app.py``.

Pages live in pages/ (pages/_common.py holds the shared helpers and is not a page). The sidebar
(data root, category, split, image) is the same on every page and the selection persists in
st.session_state: ``pages._common.current()`` draws it once per run and stores it in
``st.session_state["selection"]`` (app.py numbers its runs in ``st.session_state["_cfx_run"]``). It is drawn here before every page but Home; Home draws it after its static
text, so that the first page shows at once while torch and the models load.
"""
from __future__ import annotations


import streamlit as st


st.set_page_config(page_title="cfx: why is it anomalous?", page_icon=":material/troubleshoot:", layout="wide")
# Less empty space above each page's title (Streamlit's default is 6rem): at 1280x720 the first
# images of Compare then show without scrolling. Pills wrap onto more lines instead of scrolling
# sideways (a method's pill would be cut off). A style block alone takes no room on the page.
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem;padding-bottom:3rem}"
        "[data-testid='stButtonGroup'] div:has(> button){flex-wrap:wrap;overflow-x:visible}</style>")

#: (file, title, icon), in the navigation's order.
PAGES = [
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/inspect.py", "Inspect", ":material/search:"),
    ("pages/lots.py", "Lots", ":material/inventory_2:"),
    ("pages/compare.py", "Compare", ":material/grid_view:"),
    ("pages/counterfactuals.py", "Counterfactuals", ":material/compare:"),
    ("pages/concepts.py", "Concepts", ":material/tune:"),
    ("pages/mask_jaccard.py", "Mask Jaccard", ":material/target:"),
    ("pages/detector.py", "Detector", ":material/monitoring:"),
]

RUN_KEY, DRAWN_KEY = "_cfx_run", "_cfx_selection_run"  # as in pages/_common.py (not imported yet on Home)
st.session_state[RUN_KEY] = st.session_state.get(RUN_KEY, 0) + 1  # this run's number

from pages._auth import require_user  # noqa: E402 - sign-in before any page (pages/_auth.py)

require_user()

nav = st.navigation([st.Page(f, title=t, icon=i, default=(f == "pages/home.py"))
                     for f, t, i in PAGES])
if nav.title != "Home":
    from pages._common import current

    current()


def _sidebar_if_missing() -> None:
    if st.session_state.get(DRAWN_KEY) != st.session_state[RUN_KEY]:
        from pages._common import current

        current()


try:
    nav.run()
except BaseException as exc:
    if type(exc).__name__ != "RerunException":  # st.stop() or an error: the sidebar still shows
        _sidebar_if_missing()
    raise
_sidebar_if_missing()

from cfx import warm  # noqa: E402 - after the page is drawn: the libraries' imports and shap's compilation

warm.start()  # once per process, in a low-priority background thread (cfx/warm.py)
