"""Fault injection: every model file and the card, truncated, empty or replaced by another
category's (a wrong hash), gives one readable line: exit code 2 on the CLI (an explanation method's
own model: that method's error, the others still run), and in the app an error on the page while
the other categories still work."""
from __future__ import annotations

import json
import shutil

import pytest

from cfx.cli import main

from cfx import config

DETECTOR_FILES = ["patchcore.pt", "vae.pt", "ae.pt", "classifier.pt", "card.json"]
METHOD_FILES = {"ensemble.pt": "gradient"}
FAULTS = ["truncated", "empty", "wrong_hash"]


def _models(tmp_path, file: str, fault: str):
    """A models folder with the demo's brick and gravel, brick's ``file`` broken by ``fault``."""
    src = config.PROJECT_ROOT / "models" / "demo"
    dst = tmp_path / "models" / "demo"
    for cat in ("brick", "gravel"):
        shutil.copytree(src / cat, dst / cat)
    target = dst / "brick" / file
    data = target.read_bytes()
    if fault == "truncated":
        target.write_bytes(data[: len(data) // 3])
    elif fault == "empty":
        target.write_bytes(b"")
    elif file == "card.json":  # a card that is JSON but not a card
        target.write_text(json.dumps(["not", "a", "card"]))
    else:  # another category's file of the same kind
        target.write_bytes((src / "gravel" / file).read_bytes())
    return tmp_path / "models"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("file", DETECTOR_FILES)
def test_cli_says_one_line(file, fault, tmp_path, monkeypatch, capsys, demo_root):
    monkeypatch.setenv("CFX_MODELS_DIR", str(_models(tmp_path, file, fault)))
    code = main(["evaluate", "--category", "brick", "--json"])
    out, err = capsys.readouterr()
    assert code == 2, (out[:200], err)
    assert err.startswith("cfx: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "python -m cfx train" in err and "brick" in err
    if fault == "truncated":  # the other category still works
        assert main(["evaluate", "--category", "gravel", "--detector", "patchcore", "--json"]) == 0
        capsys.readouterr()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("file", list(METHOD_FILES))
def test_cli_method_model_fails_alone(file, fault, tmp_path, monkeypatch, capsys, demo_root):
    monkeypatch.setenv("CFX_MODELS_DIR", str(_models(tmp_path, file, fault)))
    method = METHOD_FILES[file]
    code = main(["explain", "--category", "brick", "--method", f"recon,{method}", "--json",
                 "--out", str(tmp_path / "out")])
    out, _ = capsys.readouterr()
    assert code == 0
    methods = json.loads(out)["methods"]
    assert methods["recon"]["error"] is None
    err = methods[method]["error"]
    assert err and "\n" not in err and "python -m cfx " in err and "train" in err, err


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("file", DETECTOR_FILES)
def test_app_shows_the_line_and_goes_on(file, fault, tmp_path, monkeypatch, demo_root):
    from streamlit.testing.v1 import AppTest

    import cfx.explainers  # noqa: F401  (registers the methods, as the app does)

    monkeypatch.setenv("CFX_MODELS_DIR", str(_models(tmp_path, file, fault)))
    at = AppTest.from_file(str(config.PROJECT_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/inspect.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="w_category").value == "brick"
    lines = [w.value for w in at.warning]  # what is wrong, and the fit offered in the app (no command line)
    assert any("brick" in w and "fit them here" in w for w in lines) and not any("cfx train" in w for w in lines), lines
    assert at.button(key="fit_patchcore")
    at.selectbox(key="w_category").select("gravel").run()
    assert not at.exception and not at.error, [e.value for e in at.error]


# ---------------------------------------------------------------- databases
DATABASES = {"results": "CFX_RESULTS_DB", "review": "CFX_REVIEW_DB"}


def _broken_db(tmp_path, fault: str):
    """A database file: truncated (a real database cut short), empty, or not a database at all."""
    import sqlite3

    path = tmp_path / f"{fault}.sqlite"
    if fault == "empty":
        path.write_bytes(b"")
        return path
    if fault == "truncated":
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE t (x BLOB)")
            con.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 50)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return path
    path.write_bytes(b"not a database, just some text " * 200)
    return path


DB_FAULTS = ["truncated", "empty", "garbage"]


@pytest.mark.parametrize("fault", DB_FAULTS)
def test_cli_damaged_results_database_is_one_line(fault, tmp_path, monkeypatch, capsys, demo_root):
    monkeypatch.setenv("CFX_RESULTS_DB", str(_broken_db(tmp_path, fault)))
    code = main(["audit", "--category", "brick", "--methods", "recon", "--limit", "1", "--workers", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["category"] == "brick", err
    if fault == "empty":  # an empty file is an empty database: it is simply used
        return
    # a damaged one is moved aside to a dated name, a new one started, and the user told in one line
    assert err.startswith("cfx: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "results database" in err and "damaged" in err and "moved to" in err and "new one" in err
    assert list(tmp_path.rglob("*.corrupt-*"))


@pytest.mark.parametrize("fault", DB_FAULTS)
@pytest.mark.parametrize("db", list(DATABASES))
def test_app_goes_on_with_a_damaged_database(db, fault, tmp_path, monkeypatch, demo_root):
    """Compare still explains and Inspect's review queue says in one line that the damaged file was
    moved aside and a new one started."""
    from streamlit.testing.v1 import AppTest

    import cfx.explainers  # noqa: F401

    monkeypatch.setenv(DATABASES[db], str(_broken_db(tmp_path, fault)))
    at = AppTest.from_file(str(config.PROJECT_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page("pages/inspect.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if db == "review" and fault != "empty":  # moved aside, a new one started, the user told; the queue draws
        warnings = [w.value for w in at.warning]
        assert any("review database" in w and "moved to" in w and "\n" not in w for w in warnings), warnings
        assert at.button(key="rv_save") is not None
