"""One timer for a connection's whole life, moved by storing a float.

Re-arming a timer per request (cancel, allocate, insert) is a cost the hot path cannot carry.
A :class:`Deadline` keeps one timer handle: moving the deadline later is a store to ``at``;
the timer, when it fires early, reschedules itself for what is left. Only a deadline moved
earlier than the pending timer replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_expired", "_timer", "_when", "at", "loop")

    def __init__(self, expired: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0  # when the pending timer fires
        self.at = 0.0  # loop time of the deadline; 0 means none, and storing 0 stops it

    def arm(self, seconds: float) -> None:
        at = self.at = self.loop.time() + seconds
        timer = self._timer
        if timer is None or self._when > at:
            if timer is not None:
                timer.cancel()
            self._when = at
            self._timer = self.loop.call_at(at, self._fire)

    def extend(self, seconds: float) -> None:
        """Push a running deadline ``seconds`` from now; a stopped one stays stopped."""
        if self.at:
            self.at = self.loop.time() + seconds

    def close(self) -> None:
        self.at = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        at = self.at
        if not at:
            return
        now = self.loop.time()
        if now < at:
            self._when = at
            self._timer = self.loop.call_at(at, self._fire)
            return
        self.at = 0.0
        self._expired()
