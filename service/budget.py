"""The decode budget: how many pixels all requests in flight may be decoding at once.

An image's cost is the pixels its decoding materialises (:class:`service.imaging.Probed`), known from its
header before any pixel exists. A costly request takes its whole cost from the budget before it decodes
and gives it back when decoding ends; one that does not fit is refused at once (HTTP 429, like a full
batch queue) rather than queued behind work that may take seconds. A cheap request (at most
``cheap_pixels`` in all) is never refused here: it decodes in its own threads (see
:mod:`service.routes`), so a flood of costly images gets fast 429s while cheap requests keep going.

Only touched from the event loop, so a plain counter needs no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from service.metrics import Metrics


class DecodeBusy(RuntimeError):
    """The decode budget is spent by requests in flight; the client should retry later (HTTP 429)."""


class DecodeBudget:
    def __init__(self, limit_pixels: int, cheap_pixels: int = 1 << 20, metrics: Metrics | None = None) -> None:
        self.limit = limit_pixels
        self.cheap_pixels = cheap_pixels
        self.costly_in_flight = 0  # what the limit bounds
        self.in_flight = 0  # all, for the gauge
        self.metrics = metrics

    def is_cheap(self, pixels: int) -> bool:
        return pixels <= self.cheap_pixels

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Take ``pixels`` for the body of the ``with``, or raise :class:`DecodeBusy` at once."""
        costly = 0 if self.is_cheap(pixels) else pixels
        if costly and self.costly_in_flight and self.costly_in_flight + costly > self.limit:
            raise DecodeBusy(f"{self.costly_in_flight} pixels are being decoded and this request adds {pixels} "
                             f"(limit {self.limit}); retry later")
        self._add(pixels, costly)
        try:
            yield
        finally:
            self._add(-pixels, -costly)

    def _add(self, pixels: int, costly: int) -> None:
        self.in_flight += pixels
        self.costly_in_flight += costly
        if self.metrics:
            self.metrics.decode_pixels.set(self.in_flight)
