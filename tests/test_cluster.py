"""The local Dask cluster starts whatever this process's main module is (after a Streamlit page
ran here, it is that page), says why in one line when it cannot start, and goes with its owner."""
from __future__ import annotations

import os
import sys
import types

import pytest

from cfx.cluster import dask_client, local_cluster
from cfx.errors import DataError

pytestmark = pytest.mark.slow


def test_workers_start_when_the_main_module_is_a_script_that_must_not_rerun(tmp_path, monkeypatch):
    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('a spawned worker re-ran the page script')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake)  # what Streamlit's script runner leaves behind
    with dask_client(workers=1) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 1 and os.getpid() not in pids.values()
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_a_cluster_that_cannot_start_says_why(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(DataError, match="did not start"):
        with local_cluster(1, start_timeout=20):
            pass


@pytest.mark.parametrize("cuda, n_cores, expected", [(False, 2, 2), (False, 16, 16), (True, 16, 2), (True, 1, 1)])
def test_default_workers_one_per_core_or_two_on_a_gpu(monkeypatch, cuda, n_cores, expected):
    import torch

    import cfx.cluster as C

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(C, "cores", lambda: n_cores)
    assert C.default_workers() == expected
