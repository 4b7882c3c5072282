"""Streamed heavy methods: each result as soon as it is done, evaluations counted, a running
method cancelled at its next evaluation while the others still run, estimates from the plan and
the measured cost of one batched evaluation."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cfx.explainers import REGISTRY
from cfx.explainers.base import CANCELLED
from cfx.explainers.stream import ExplainStream, evaluation_cost, planned_evaluations
from cfx.meter import Cancelled, metered, tick


@pytest.fixture
def anomaly(demo_bundle, demo_root):
    from cfx.data.mvtec import MVTecDataset

    b = demo_bundle("brick")
    arr = MVTecDataset(demo_root, "brick", "test", image_size=b.image_size, channels=b.channels).arrays()
    i = int(np.flatnonzero(arr.labels == 1)[0])
    return b, arr.images[i], arr.masks[i]


def test_meter_counts_nested_blocks_and_cancels():
    ev = threading.Event()
    with metered() as outer:
        tick(3)
        with metered(ev) as inner:
            tick(2)
            ev.set()
            with pytest.raises(Cancelled):
                tick(1)
    assert (outer.evaluations, inner.evaluations) == (5, 2)
    tick(7)  # outside any block: nothing to count, nothing raised


def test_evaluations_are_counted_and_match_the_plan(anomaly):
    b, image, _ = anomaly
    for m, p in (("lime", {"num_samples": 120}), ("shap", {"max_evals": 200})):
        e = REGISTRY[m](b).attribute(image, **p)
        assert e.info["evaluations"] == planned_evaluations(b, m, params=p)


def test_stream_fills_results_in_order_and_cancels_only_the_running_method(anomaly, slow_method):
    _Slow = slow_method
    b, image, mask = anomaly
    stored = []
    s = ExplainStream(b, image, ["lime", _Slow.name, "gradient"], params={"lime": {"num_samples": 60}},
                      mask=mask, on_result=lambda e: stored.append(e.method)).start()
    t0 = time.time()
    while s.current != _Slow.name and s.running and time.time() - t0 < 120:
        time.sleep(0.02)
    assert "lime" in s.snapshot() and s.snapshot()["lime"].ok  # the first result is there before the rest
    assert s.pending() == [_Slow.name, "gradient"]
    assert s.estimate("lime") == pytest.approx(61 * s.cost)
    time.sleep(0.3)
    s.cancel()
    s.join(120)
    res = s.snapshot()
    assert res[_Slow.name].error == CANCELLED and s.cancelled(_Slow.name)
    assert res["gradient"].ok and res["gradient"].counterfactuals
    assert stored == ["lime", "gradient"]  # a cancelled method is not stored
    assert not s.add(["lime"])  # the stream has ended: the page starts a new one


def test_stop_runs_no_other_method(anomaly, slow_method):
    _Slow = slow_method
    b, image, _ = anomaly
    s = ExplainStream(b, image, [_Slow.name, "lime"]).start()
    while s.current != _Slow.name and s.running:
        time.sleep(0.02)
    s.stop()
    s.join(60)
    assert set(s.snapshot()) == {_Slow.name} and s.snapshot()[_Slow.name].error == CANCELLED


def test_evaluation_cost_is_measured_once(anomaly):
    b, image, _ = anomaly
    c = evaluation_cost(b, image)
    assert 0 < c < 1 and evaluation_cost(b, image) == c


def test_state_holds_every_method_in_exactly_one_place(anomaly):
    b, image, _ = anomaly
    methods = {"lime", "gradient"}
    s = ExplainStream(b, image, ["lime", "gradient"], params={"lime": {"num_samples": 60}}).start()
    views = []
    while s.running:
        views.append(s.state())
        time.sleep(0.001)
    views.append(s.state())
    for done, pending in views:  # the page draws from one view: no method is missed or drawn twice
        assert set(done) | set(pending) == methods and not set(done) & set(pending)
    assert views[-1][1] == [] and all(e.ok for e in views[-1][0].values())
