"""Counting a computation's model evaluations, and cancelling it from another thread.

Every target evaluation goes through :meth:`cfx.models.bundle.ModelBundle.score`, which calls
:func:`tick` with the number of images in the batch. Inside :func:`metered` that count is added
to the thread's :class:`Meter`, and a set ``cancel`` event stops the computation at its next
batch (:class:`Cancelled`). The Compare page's streamed runs use both: the count gives each
method's evaluations (and, times the measured cost of one batched evaluation, an estimate of its
time); the event is its Cancel button.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from cfx.errors import CfxError


class Cancelled(CfxError):
    """The computation was cancelled by the user."""


@dataclass
class Meter:
    """The evaluations counted so far in one :func:`metered` block.

    Attributes:
        evaluations: images scored through a target (a batch of N counts N).
        cancel: when set, the next evaluation raises :class:`Cancelled`.
    """

    evaluations: int = 0
    cancel: threading.Event | None = field(default=None, repr=False)


_LOCAL = threading.local()


def _stack() -> list[Meter]:
    if not hasattr(_LOCAL, "meters"):
        _LOCAL.meters = []
    return _LOCAL.meters


@contextlib.contextmanager
def metered(cancel: threading.Event | None = None) -> Iterator[Meter]:
    """Count this thread's evaluations inside the block (nested blocks each count theirs).

    Args:
        cancel: an event another thread sets to stop the computation at its next evaluation.

    Yields:
        The block's :class:`Meter`.
    """
    m = Meter(cancel=cancel)
    stack = _stack()
    stack.append(m)
    try:
        yield m
    finally:
        stack.remove(m)


def tick(n: int) -> None:
    """Record ``n`` evaluations in every open :func:`metered` block of this thread.

    Raises:
        Cancelled: when one of those blocks was cancelled.
    """
    stack = _stack()
    if any(m.cancel is not None and m.cancel.is_set() for m in stack):
        raise Cancelled("cancelled")
    for m in stack:
        m.evaluations += int(n)
