"""numpy's BLAS kept to one thread while an explanation method runs.

The methods interleave the detector's batches (torch's own thread pool) with small numpy/scipy
linear algebra: LIME's ridge refits, shap's and dice-ml's bookkeeping, CLEAR's regressions. After
each such call OpenBLAS's worker threads keep spinning for a while, on the cores torch needs for the
next batch: measured on the 2-core CPU, LIME's batches after a refit ran 40-60% slower, and the
whole LIME run on the demo brick took 1.35-1.42 s instead of 1.12-1.17 s (BENCHMARKS.md). Those
matrices are a few hundred rows: one thread computes them as fast.

The limit is set and restored by the thread that runs the method (OpenBLAS's setting behaves
per thread in some builds and process-wide in others; either way only speed depends on it).
"""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def quiet_blas() -> Iterator[None]:
    """Hold numpy's (and scipy's) BLAS at one thread inside the block, then restore it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
