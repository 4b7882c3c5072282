"""Every command the README shows runs as written: each line of each ``bash`` block, in order, from
the project's root, in bash.

Two parts of the two first-page commands are not run here: ``pip install -r requirements.txt`` is
what ``.ci/run`` has just done, and ``python -m pytest`` is this run. ``streamlit run`` lines are
started and must answer the health check (on a free port set through Streamlit's environment, the
command itself unchanged). The blocks that fit models on the real sample are slow and skip without
it. Models go to a temporary copy of ``models/`` whose demo files must come back byte-identical.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "mvtec-sample"


def blocks() -> list[list[str]]:
    """The README's ``bash`` blocks as lists of commands (comments and blank lines dropped)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in body.splitlines()]
        out.append([ln for ln in lines if ln and not ln.startswith("#")])
    return out


def runnable(cmd: str) -> str | None:
    """The part of a README line this test runs (None: nothing)."""
    cmd = re.sub(r"^pip install -r requirements\.txt && ", "", cmd)
    return None if cmd in ("python -m pytest", "pip install -r requirements.txt") else cmd


BLOCKS = blocks()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _serve(cmd: str, env: dict[str, str], log: Path) -> None:
    port = _free_port()
    env = {**env, "STREAMLIT_SERVER_PORT": str(port), "STREAMLIT_SERVER_HEADLESS": "true",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, f"{cmd!r} did not serve:\n{log.read_text()[-2000:]}"
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _slow(block: list[str]) -> bool:
    return any(" train" in c or "../shared" in c for c in block)


@pytest.mark.parametrize("index", [pytest.param(i, marks=[pytest.mark.slow] if _slow(b) else [], id=f"block{i}")
                                   for i, b in enumerate(BLOCKS)])
def test_readme_block_runs_as_written(index, tmp_path):
    block = [c for c in map(runnable, BLOCKS[index]) if c]
    if not block:
        pytest.skip("this block is the install and the test run themselves")
    if any("../shared" in c for c in block) and not SHARED.is_dir():
        pytest.skip("../shared/mvtec-sample is absent")
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "demo", models / "demo")
    before = _digests(models / "demo")
    env = {**os.environ, "CFX_MODELS_DIR": str(models)}
    for cmd in block:
        if "streamlit run" in cmd:
            _serve(cmd, env, tmp_path / "streamlit.log")
            continue
        r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, f"{cmd!r} exited {r.returncode}:\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert _digests(models / "demo") == before  # no README command changes the shipped demo models


def test_the_readme_shows_both_first_commands():
    flat = [c for b in BLOCKS for c in b]
    assert "pip install -r requirements.txt && streamlit run app.py" in flat
    assert "pip install -r requirements.txt && python -m pytest" in flat
