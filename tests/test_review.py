"""cfx.review: the inspector's OK / NG decisions survive a reopen, keep their history, export as
CSV, and a broken database is one readable line."""
from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from cfx.errors import DataError
from cfx.detectors import rates_at
from cfx.review import ReviewStore


def test_decisions_survive_a_reopen_and_keep_history(tmp_path):
    db = tmp_path / "review.sqlite"
    a = ReviewStore(db)
    a.record("demo", "brick", "crack/001.png", "m@1", "NG", " scratch ", score=4.2, threshold=3.8)
    a.record("demo", "brick", "crack/001.png", "m@1", "OK", "false alarm", score=4.2, threshold=3.8)
    a.record("demo", "tablet", "good/000.png", "m@2", "OK")
    b = ReviewStore(db)  # another process or a restarted server
    latest = b.latest("demo", "brick")
    assert list(latest) == ["crack/001.png"] and latest["crack/001.png"]["verdict"] == "OK"
    assert latest["crack/001.png"]["reason"] == "false alarm" and latest["crack/001.png"]["score"] == 4.2
    assert [r["verdict"] for r in b.history("demo", "brick")] == ["NG", "OK"]
    assert b.history()[0]["reason"] == "scratch"
    rows = list(csv.DictReader(io.StringIO(b.csv_text("demo"))))
    assert len(rows) == 3 and set(rows[0]) >= {"at", "detector", "model version", "score", "threshold", "verdict",
                                                "reason", "model key"}
    assert rows[0]["model key"] == "m@1"

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_csv_names_the_detector():
    from cfx.review import describe_model

    assert describe_model("real/bottle@:patchcore@1a053a0e0b9b77") == ("PatchCore (EfficientNet-Lite0)", "1a053a0e")
    assert describe_model("demo/brick@49050c45a9e0:vae@abcdef123456") == ("VAE multi-score", "49050c45-abcdef12")


def test_bad_verdict_and_broken_database(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    with pytest.raises(DataError, match="OK or NG"):
        store.record("demo", "brick", "x.png", "m", "maybe")
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    fresh = ReviewStore(broken)  # moved aside to a dated name, a new one started, and the user told
    (aside,) = tmp_path.glob("broken.sqlite.corrupt-*")
    assert aside.read_bytes() == b"this is not a database" * 100
    assert aside.name in fresh.notice and "new one" in fresh.notice and "\n" not in fresh.notice
    assert fresh.latest("demo", "brick") == {}


def test_queue_rates():
    """The review queue's live rates are cfx.detectors.rates_at on the good and the defective scores."""
    assert rates_at(0.5, [0.1, 0.9], [0.4, 0.8]) == {"fpr": 0.5, "tpr": 0.5}
    assert rates_at(0.5, [0.1], []) == {"fpr": 0.0, "tpr": None}
