"""Heavy methods on one image in a background thread, each result available the moment it is done.

:class:`ExplainStream` runs the chosen methods one after another (each under the bundle's lock, as
:func:`~cfx.explainers.base.explain` always does), hands every finished
:class:`~cfx.explainers.base.Explanation` to ``on_result`` (the app stores it in the results
database) and keeps it for polling. The running method can be cancelled at its next model
evaluation (:mod:`cfx.meter`); the rest can be dropped.

While a method waits or runs, :meth:`ExplainStream.estimate` gives its expected seconds: its planned
evaluations (:func:`planned_evaluations`) x the measured cost of one batched evaluation of this
model and target on this device (:func:`evaluation_cost`, measured once per process).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cfx.explainers.base import CANCELLED, REGISTRY, Explanation, explain

log = logging.getLogger(__name__)
_COSTS: dict[tuple, float] = {}
_EVALS: dict[tuple, int] = {}
_MEMO_LOCK = threading.Lock()


def evaluation_cost(bundle, image: np.ndarray, target: str = "score") -> float:
    """Seconds per image of one batched evaluation of ``target`` on this device (copies of
    ``image``, two of the bundle's batches but at most 16 images, scored in one call as the
    methods score theirs, after a warm-up; measured once per model, target and device in this
    process)."""
    key = (bundle.key(), target, str(bundle.device))
    with _MEMO_LOCK:
        if key in _COSTS:
            return _COSTS[key]
    n = max(2, min(2 * int(bundle.forward_batch), 16))
    batch = np.repeat(np.asarray(image, np.float32)[None], n, axis=0)
    bundle.score_numpy(batch[:2], target)
    t0 = time.perf_counter()
    bundle.score_numpy(batch, target)
    cost = (time.perf_counter() - t0) / n
    with _MEMO_LOCK:
        _COSTS[key] = cost
    return cost


def _memo_key(bundle, method: str, target: str, params: dict[str, Any]) -> tuple:
    return bundle.key(), method, target, json.dumps(params, sort_keys=True, default=str)


def planned_evaluations(bundle, method: str, target: str = "score", params: dict[str, Any] | None = None
                        ) -> int | None:
    """How many images ``method`` will score: exact where the method fixes it
    (:meth:`~cfx.explainers.base.Explainer.planned_evaluations`), else the count of its last run
    with these parameters on this model in this process, else the method's typical count
    (``typical_evaluations``), else None."""
    cls = REGISTRY[method]
    p = {**cls.defaults, **(params or {})}
    n = cls.planned_evaluations(p)
    if n is None:
        with _MEMO_LOCK:
            n = _EVALS.get(_memo_key(bundle, method, target, p))
    return n if n is not None else cls.typical_evaluations


def remember_evaluations(bundle, exp: Explanation) -> None:
    """Keep a finished run's evaluation count for the next estimate of the same method."""
    if exp.ok and "evaluations" in exp.info:
        with _MEMO_LOCK:
            _EVALS[_memo_key(bundle, exp.method, exp.target, exp.params)] = int(exp.info["evaluations"])


class ExplainStream:
    """Methods on one image, one after another in a daemon thread.

    Args:
        bundle: the category's models.
        image: float32 (C, H, W).
        methods: registered method names, in the order to run them.
        target: the explained target.
        params: per-method parameters.
        seed: the methods' seed.
        mask: the ground-truth mask, if known (counterfactuals' locality).
        on_result: called with each finished explanation (in the stream's thread; exceptions
            are logged, never lose the result).
    """

    def __init__(self, bundle, image: np.ndarray, methods: Sequence[str], target: str = "score",
                 params: dict[str, dict[str, Any]] | None = None, seed: int = 0, mask: np.ndarray | None = None,
                 on_result: Callable[[Explanation], None] | None = None) -> None:
        self.bundle, self.image, self.target, self.seed, self.mask = bundle, image, target, int(seed), mask
        self.methods: list[str] = []
        self.params: dict[str, dict[str, Any]] = {}
        self.on_result = on_result
        self.results: dict[str, Explanation] = {}
        self.current: str | None = None
        self.current_started: float | None = None
        self.cost: float | None = None
        self.error: str | None = None
        self._queue: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cfx-explain-stream", daemon=True)
        self.add(methods, params)

    def add(self, methods: Sequence[str], params: dict[str, dict[str, Any]] | None = None) -> bool:
        """Queue more methods (a cancelled one runs again); False when the stream has ended
        (start a new one)."""
        with self._lock:
            if self._closed:
                return False
            for m in methods:
                if m in self.results and self.results[m].error == CANCELLED:
                    del self.results[m]
                if m not in self.methods:
                    self.methods.append(m)
                self.params[m] = dict((params or {}).get(m, {}))
                if m not in self.results and m not in self._queue and m != self.current:
                    self._queue.append(m)
            return True

    def start(self) -> "ExplainStream":
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Cancel the running method (at its next evaluation); the others still run."""
        self._cancel.set()

    def stop(self) -> None:
        """Cancel the running method and run no other."""
        self._stop.set()
        self._cancel.set()

    def snapshot(self) -> dict[str, Explanation]:
        """The finished results so far (method -> explanation)."""
        with self._lock:
            return dict(self.results)

    def pending(self) -> list[str]:
        """Methods not finished yet: the running one first, then the queue."""
        with self._lock:
            return ([self.current] if self.current else []) + list(self._queue)

    def state(self) -> tuple[dict[str, Explanation], list[str]]:
        """The finished results and the pending methods read together, under one lock: a method is
        in exactly one of them (a page that draws from both never misses one that finished between
        two reads)."""
        with self._lock:
            return dict(self.results), ([self.current] if self.current else []) + list(self._queue)

    def cancelled(self, method: str) -> bool:
        """Whether ``method`` was cancelled (and not queued again)."""
        with self._lock:
            e = self.results.get(method)
            return e is not None and e.error == CANCELLED

    def estimate(self, method: str) -> float | None:
        """Expected seconds of ``method``: planned evaluations x the measured cost of one batched
        evaluation (None before that cost is measured or without a plan)."""
        n = planned_evaluations(self.bundle, method, self.target, self.params.get(method))
        return None if n is None or self.cost is None else n * self.cost

    def _next(self) -> str | None:
        with self._lock:
            if self._stop.is_set() or not self._queue:
                self._closed = True
                self.current = self.current_started = None
                return None
            self.current, self.current_started = self._queue.pop(0), time.time()
            self._cancel.clear()
            return self.current

    def _run(self) -> None:
        try:
            self.cost = evaluation_cost(self.bundle, self.image, self.target)
        except Exception as exc:  # noqa: BLE001 - the methods report their own failure below
            self.error = f"{type(exc).__name__}: {exc}"
        while (m := self._next()) is not None:
            with self.bundle.lock:
                exp = explain(self.bundle, self.image, [m], self.target, self.seed, {m: self.params[m]},
                              mask=self.mask, cancel=self._cancel)[m]
            remember_evaluations(self.bundle, exp)
            if self.on_result is not None and exp.error != CANCELLED:
                try:
                    self.on_result(exp)
                except Exception:  # noqa: BLE001 - the result is still shown
                    log.exception("storing %s failed", m)
            with self._lock:
                self.results[m] = exp
                self.current = None
