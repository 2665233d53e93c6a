"""What driftmon knows about its Kafka broker: reachable or not, since when, how fresh its data is.

Written by the consuming loop (records arrived) and the broker probe job (end offsets, which also
give the consumer lag); read by /readyz, /status and /metrics without a lock. Every field is replaced
whole (floats, strings, a new dict), never mutated, so a reader sees one consistent value of each.
"""

from __future__ import annotations

import logging
import time

__all__ = ["BrokerHealth"]

log = logging.getLogger(__name__)


class BrokerHealth:
    """Reachability of the broker and freshness of what was read from it.

    Parameters
    ----------
    unavailable_after : float
        Seconds without an answer from the broker after which the service is not ready.
    servers : str
        The bootstrap servers, for messages.
    clock : callable
        Wall-clock time in seconds (Unix time).

    Attributes
    ----------
    up : bool
        The broker answered the last probe, or sent records since.
    last_contact : float or None
        Unix time of the last answer from the broker (records or a probe).
    last_fetch : float or None
        Unix time up to which everything on the assigned partitions had been read: when records
        last arrived, or when a probe found nothing left to read.
    lag : dict
        Partition -> messages behind the end of the log, from the last probe; empty while the lag
        cannot be measured (broker unreachable, no partitions), never a stale value.
    lag_timestamp : float or None
        Unix time of the measurement in ``lag``.
    error : str or None
        Why the last probe or connection attempt failed.
    """

    def __init__(self, unavailable_after: float, servers: str, clock=time.time):
        self.unavailable_after = unavailable_after
        self.servers = servers
        self.clock = clock
        self.started = clock()
        self.connected = False  # the consumer exists (bootstrap succeeded)
        self.up = False
        self.last_contact: float | None = None
        self.last_fetch: float | None = None
        self.lag: dict[int, int] = {}
        self.lag_timestamp: float | None = None
        self.error: str | None = None
        self._down_logged = 0.0

    # ---- writers -----------------------------------------------------------------------------

    def records_received(self) -> None:
        now = self.clock()
        self.last_contact = self.last_fetch = now
        if not self.up:
            self._back(now)

    def bootstrapped(self) -> None:
        """The consumer bootstrapped: the broker answered."""
        self.connected = True
        self.last_contact = self.clock()
        if not self.up:
            self._back(self.last_contact)

    def probe_succeeded(self, lag: dict[int, int], caught_up: bool) -> None:
        now = self.clock()
        self.lag, self.lag_timestamp = lag, now
        self.last_contact = now
        if caught_up:
            self.last_fetch = now
        if not self.up:
            self._back(now)

    def probe_failed(self, error: str) -> None:
        now = self.clock()
        self.error = error
        self.lag = {}  # unknown, not frozen
        was_up, self.up = self.up, False
        if was_up or now - self._down_logged >= 30:
            self._down_logged = now
            log.warning("kafka: broker %s unreachable for %.0f s (%s); /readyz turns 503 after %.0f s",
                        self.servers, self.unreachable_for(now), error, self.unavailable_after)

    def _back(self, now: float) -> None:
        if self.last_contact is not None and self.error is not None:
            log.info("kafka: broker %s reachable again", self.servers)
        self.up = True
        self.error = None
        self._down_logged = 0.0

    # ---- readers -----------------------------------------------------------------------------

    def unreachable_for(self, now: float | None = None) -> float:
        """Seconds since the broker last answered (since start if it never did); 0 while it is up."""
        if self.up:
            return 0.0
        now = self.clock() if now is None else now
        return max(0.0, now - (self.last_contact if self.last_contact is not None else self.started))

    def ready(self) -> tuple[bool, str]:
        """(False, why) once the broker has been unreachable for ``unavailable_after``; else (True, "")."""
        down = self.unreachable_for()
        if not self.connected:
            return False, (f"connecting to the Kafka broker at {self.servers} for {down:.0f} s"
                           + (f" ({self.error})" if self.error else ""))
        if down >= self.unavailable_after:
            return False, (f"Kafka broker at {self.servers} unreachable for {down:.0f} s"
                           + (f" ({self.error})" if self.error else "") + "; consuming resumes when it is back")
        return True, ""

    def status(self) -> dict:
        return {"servers": self.servers, "up": self.up, "connected": self.connected,
                "unreachable_seconds": round(self.unreachable_for(), 3), "error": self.error,
                "last_contact_timestamp": self.last_contact, "last_fetch_timestamp": self.last_fetch,
                "lag_timestamp": self.lag_timestamp}
