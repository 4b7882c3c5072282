"""The audit on Dask distributed: a LocalCluster on loopback gives the single-process rows, a worker
killed mid-run loses no finished result, and a rerun runs nothing twice (row counts in the database)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3

import pytest

from cfx.audit import audit_category
from cfx.audit.distributed import audit_distributed, dask_client
from cfx.cli import main

pytestmark = pytest.mark.slow


def _rows(db_path) -> int:
    with sqlite3.connect(db_path) as con:
        return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def _units(db_path) -> list[tuple]:
    with sqlite3.connect(db_path) as con:
        return con.execute("SELECT image, method FROM results ORDER BY image, method").fetchall()


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as c:
        yield c


def test_cluster_rows_equal_the_single_process_audit(client, demo_bundle, demo_root, tmp_path):
    b = demo_bundle("brick")
    methods = ["recon", "gradcam"]
    r = audit_distributed(b, demo_root, "brick", methods, limit=4, cache=tmp_path / "dask", client=client)
    single = audit_category(b, demo_root, "brick", methods, limit=4, cache=tmp_path / "local")
    assert r.engine == "dask" and not r.stopped and r.run
    assert [x.image for x in r.images] == [x.image for x in single.images]
    for x, y in zip(r.images, single.images):
        for m in methods:  # deterministic methods: identical J*
            assert x.methods[m].optimal_jaccard == y.methods[m].optimal_jaccard
    assert _rows(tmp_path / "dask" / "results.sqlite") == 8
    again = audit_distributed(b, demo_root, "brick", methods, limit=4, cache=tmp_path / "dask", client=client)
    assert all(x.methods[m].cached for x in again.images for m in methods)
    assert _rows(tmp_path / "dask" / "results.sqlite") == 8


def test_killed_worker_loses_nothing_and_rerun_runs_nothing_twice(client, demo_bundle, demo_root, tmp_path):
    b = demo_bundle("brick")
    db = tmp_path / "results.sqlite"
    pids = sorted(set(client.run(os.getpid).values()))
    killed: list[int] = []
    stored_at_kill: list[int] = []

    def progress(done, total, message):
        if done == 3 and not killed:
            stored_at_kill.append(_rows(db))
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    methods = ["lime"]
    params = {"lime": {"num_samples": 120}}
    r = audit_distributed(b, demo_root, "brick", methods, limit=8, params=params, cache=db, client=client,
                          progress=progress)
    assert killed, "the run ended before a worker could be killed"
    n = len(r.images) * len(methods)
    units = _units(db)
    assert len(units) == len(set(units)), "a unit was stored twice"
    assert _rows(db) >= stored_at_kill[0]  # nothing finished was lost
    # a rerun completes whatever the killed worker left and computes nothing twice
    again = audit_distributed(b, demo_root, "brick", methods, limit=8, params=params, cache=db, client=client)
    assert not again.stopped and all(x.complete for x in again.images)
    assert _rows(db) == n and len(set(_units(db))) == n
    third = audit_distributed(b, demo_root, "brick", methods, limit=8, params=params, cache=db, client=client)
    assert all(x.methods["lime"].cached for x in third.images) and _rows(db) == n


def test_cli_category_all_on_one_worker_writes_the_run(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CFX_RESULTS_DB", str(tmp_path / "r.sqlite"))
    out = tmp_path / "out"
    code = main(["audit", "--category", "all", "--methods", "recon", "--limit", "2", "--workers", "1", "--json",
                 "--out", str(out), "--quiet", "--detector", "vae"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    cats = set(doc["categories"])
    assert {"brick", "tablet"} <= cats
    assert all(c["engine"] == "dask" and len(c["images"]) == 2 for c in doc["categories"].values())
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("dataset,category,method") and len(summary) == 1 + len(cats)
    assert (out / "audit-demo-brick-score.csv").read_text().count("\n") == 1 + 2


def test_background_job_on_the_cluster(demo_bundle, demo_root, tmp_path):
    from cfx.audit import AuditJob

    job = AuditJob(demo_bundle("brick"), demo_root, "brick", engine="dask", workers=1, methods="recon", limit=3,
                   cache=tmp_path).start()
    job.join(300)
    assert not job.running and job.error is None and job.done == job.total == 3
    assert job.result.engine == "dask" and len(job.result.images) == 3
