"""Speed of the dashboard (issue 5), measured in a real browser, printed as Markdown for BENCHMARKS.md.

* first page: from the moment the server answers its health check to the home page's title being
  visible in a new browser tab (a fresh ``streamlit run app.py`` per repeat; models are not loaded
  yet: Home does not need them);
* first Inspect: the same for the Inspect page opened directly (includes loading the models);
* page switch: clicking a page in the navigation until it has rendered, models and results warm;
  and how many times the models were loaded over all switches (must be 1 per category);
* slider: on the Counterfactuals page with cached results, one step of the path slider until the
  new step is drawn (the slider's fragment reruns alone);
* first answer (issue 14): on Compare, models warm, from choosing another image in the sidebar
  until its verdict and score against the threshold are shown beside the detector's map (the
  caption naming the new image; the light methods are drawn in the same pass), and until the
  page is idle; then the same with "Run heavy methods automatically" on, while the previous
  image's heavy methods stream in the background (its stream is stopped; the new one starts);
* real folder (issue 15, ``--real DIR``): a fresh server, the sidebar pointed at a copy of a real
  MVTec category folder without models, "Fit the detector (PatchCore) now", then Compare: from
  typing the folder to the first explained image (its detector map and Grad-CAM drawn).

Needs chromium (``/usr/bin/chromium``) and the playwright package; uses the models of
``$CFX_MODELS_DIR`` (default models/).

Usage: python bench/bench_app.py [--repeats 5] [--category brick] [--method clear] [--json out.json]
       [--real ../shared/mvtec-sample/bottle]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("CFX_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGES = ["Inspect", "Compare", "Counterfactuals", "Detector", "Home"]
HEADINGS = {"Home": "cfx: why is this image anomalous?"}  # the page's h1 when not its title


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app.py`` on a free loopback port; ``answered`` is when health said ok."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false", "--logger.level", "info"]
        env = dict(os.environ)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.read().strip() == b"ok":
                        self.answered = time.perf_counter()
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def idle(page) -> None:
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=600_000)


def goto(page, title: str) -> float:
    link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True)
    t0 = time.perf_counter()
    link.click()
    h1 = HEADINGS.get(title, title)
    page.locator('[data-testid="stMain"] h1', has_text=re.compile("^" + re.escape(h1))).first.wait_for(timeout=600_000)
    idle(page)
    return time.perf_counter() - t0 - 0.15


def pick(page, label: str, option: str) -> float:
    """Choose ``option`` in the sidebar's selectbox ``label``; returns the moment of the click that
    chose it (after opening the box and typing the filter)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text=label)
    box.click()
    page.keyboard.type(option)
    opt = page.get_by_role("option", name=option, exact=True)
    opt.wait_for()
    t0 = time.perf_counter()
    opt.click()
    return t0


def images_of(category: str) -> list[str]:
    """Defective test images of a demo category (``<defect>/<file>``), one per defect type first."""
    from cfx.data.demo import ensure_demo

    test = ensure_demo() / category / "test"
    by_defect = [sorted(p.glob("*.png")) for p in sorted(test.iterdir()) if p.is_dir() and p.name != "good"]
    out = []
    for k in range(max(len(x) for x in by_defect)):
        out += [f"{x[k].parent.name}/{x[k].name}" for x in by_defect if k < len(x)]
    return out


def real_folder(browser, folder: Path, logdir: Path) -> float:
    """Seconds from typing a copy of a real category folder (no models) into the sidebar to the
    first explained image on Compare (a fresh server and models folder)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="cfx-bench-"))
    root = tmp / "mvtec"
    shutil.copytree(folder, root / folder.name)
    os.environ["CFX_MODELS_DIR"], old = str(tmp / "models"), os.environ.get("CFX_MODELS_DIR")
    try:
        srv = Server(logdir / "app-real.log")
    finally:
        os.environ.pop("CFX_MODELS_DIR") if old is None else os.environ.__setitem__("CFX_MODELS_DIR", old)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(srv.url)
        page.get_by_text("cfx: why is this image anomalous?").wait_for(timeout=120_000)
        idle(page)
        box = page.locator('[data-testid="stSidebar"]').get_by_label("MVTec AD root (empty: the demo)", exact=True)
        t0 = time.perf_counter()
        box.fill(str(root))
        box.press("Enter")
        idle(page)
        goto(page, "Compare")
        page.get_by_role("button", name="Fit the detector (PatchCore) now").click()
        page.get_by_text("✔ gradcam done", exact=True).first.wait_for(timeout=600_000)
        seconds = time.perf_counter() - t0
        print(f"real folder -> first explained image: {seconds:.1f} s", file=sys.stderr, flush=True)
        return seconds
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (n={len(xs)}, min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--category", default="brick")
    ap.add_argument("--method", default="clear", help="a counterfactual method with a path (clear, gradient)")
    ap.add_argument("--json", help="write the raw timings here")
    ap.add_argument("--skip-cold", action="store_true", help="skip the fresh-server measurements")
    ap.add_argument("--real", help="a real MVTec category folder: time folder -> first explained image")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is absent: nothing measured")
        return 1
    from playwright.sync_api import sync_playwright

    from cfx import config

    logdir = ROOT / "bench" / "out"
    logdir.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list[float]] = {"first_page": [], "first_inspect": [], "switch": [], "slider": [],
                                   "first_answer": [], "first_answer_idle": [], "first_answer_streaming": [],
                                   "real_folder": []}
    loads = None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for r in range(0 if args.skip_cold else args.repeats):
            for what, path, wait_for in (("first_page", "", "cfx: why is this image anomalous?"),
                                         ("first_inspect", "/inspect", "Anomaly score")):
                srv = Server(logdir / f"app-{what}-{r}.log")
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(srv.url + path)
                    page.get_by_text(wait_for).first.wait_for(timeout=120_000)
                    raw[what].append(time.perf_counter() - srv.answered)
                    print(f"{what}: {raw[what][-1]:.2f} s", file=sys.stderr, flush=True)
                    page.close()
                finally:
                    srv.stop()
        # warm session: page switches and the slider
        srv = Server(logdir / "app-warm.log")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(srv.url)
            page.get_by_text("cfx: why is this image anomalous?").wait_for(timeout=120_000)
            idle(page)
            box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Category")
            box.click()
            page.keyboard.type(args.category)
            page.get_by_role("option", name=args.category, exact=True).click()
            idle(page)
            for title in PAGES:  # warm every page once (models, split scores, light explanations)
                goto(page, title)
            for _ in range(args.repeats):
                for title in PAGES:
                    raw["switch"].append(goto(page, title))
            goto(page, "Compare")
            for name in images_of(args.category)[:args.repeats + 1]:
                t0 = pick(page, "Image", name)
                page.get_by_text(re.compile(rf"^{re.escape(name)} · target")).first.wait_for(timeout=120_000)
                t1 = time.perf_counter()
                idle(page)
                raw["first_answer"].append(t1 - t0)
                raw["first_answer_idle"].append(time.perf_counter() - t0 - 0.15)
            raw["first_answer"], raw["first_answer_idle"] = raw["first_answer"][1:], raw["first_answer_idle"][1:]
            goto(page, "Counterfactuals")
            box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(has_text="Method")
            box.click()
            page.get_by_role("option", name=re.compile(rf"\({args.method}\)$")).click()
            idle(page)
            find = page.get_by_role("button", name=re.compile("Find counterfactuals"))
            if find.count():
                find.click()
            page.get_by_text("Path from the original").wait_for(timeout=600_000)
            idle(page)
            thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Step").locator("input[type=range]")
            n = int(thumb.get_attribute("max"))
            for i in range(4 * args.repeats):  # one step left, one step right, ...
                key, step = ("ArrowLeft", n - 1) if i % 2 == 0 else ("ArrowRight", n)
                thumb.focus()
                t0 = time.perf_counter()
                page.keyboard.press(key)
                page.get_by_text(re.compile(rf"^step {step}/{n}\b")).first.wait_for(timeout=60_000)
                raw["slider"].append(time.perf_counter() - t0)
                idle(page)
            # first answer while the heavy methods stream: with "Run heavy methods automatically"
            # each chosen image starts its heavy methods in the background (the previous image's
            # stream is stopped), so the verdict is drawn while another method holds the model
            goto(page, "Compare")
            page.get_by_text("Run heavy methods automatically").click()
            page.wait_for_timeout(1000)
            for name in images_of(args.category)[args.repeats + 1:2 * args.repeats + 2]:
                t0 = pick(page, "Image", name)
                page.get_by_text(re.compile(rf"^{re.escape(name)} · target")).first.wait_for(timeout=120_000)
                raw["first_answer_streaming"].append(time.perf_counter() - t0)
                page.get_by_text("Running ·").first.wait_for(timeout=120_000)  # its stream has started
        finally:
            srv.stop()
        text = (logdir / "app-warm.log").read_text()
        loads = text.count("cfx: loaded models")
        if args.real:
            raw["real_folder"].append(real_folder(browser, Path(args.real), logdir))
        browser.close()

    from cfx.config import device_label

    print(f"### Dashboard speed ({_dt.date.today().isoformat()}, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, models on {device_label()}, models dir {config.models_dir()})\n")
    print("| measure | median | target |")
    print("|---|---|---|")
    if raw["first_page"]:
        print(f"| first page (Home) after the server answers | {med(raw['first_page'])} | < 5 s |")
        print(f"| first Inspect (loads the models) after the server answers | {med(raw['first_inspect'])} | |")
    print(f"| page switch, warm | {med(raw['switch'])} | no model reload |")
    if raw["slider"]:
        print(f"| path slider step on cached results ({args.method}) | {med(raw['slider'])} | < 0.3 s |")
    if raw["first_answer"]:
        print(f"| first answer on Compare (verdict, score, detector map) after choosing an image | "
              f"{med(raw['first_answer'])} | <= 1 s |")
        print(f"| ... until the page is idle (light methods drawn) | {med(raw['first_answer_idle'])} | |")
    if raw["first_answer_streaming"]:
        print(f"| first answer on Compare while the previous image's heavy methods stream | "
              f"{med(raw['first_answer_streaming'])} | <= 1 s |")
    if raw["real_folder"]:
        print(f"| real folder ({args.real}) -> fitted -> first explained image | {med(raw['real_folder'])} | <= 120 s |")
    print(f"\nModel loads in the warm session over {len(raw['switch']) + len(PAGES)} page switches: {loads} "
          f"(1 expected: one category).")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "model_loads": loads}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
