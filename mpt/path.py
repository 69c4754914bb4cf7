"""One path's health as the control plane sees it: sans-I/O, fed with
timestamps and hello replies, tested without sockets.

For now a path is up while hellos are answered and goes down when none has
been answered for `dead_after` seconds; the full probing → up → suspect →
down machine comes with the path-health work.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RttEstimator:
    """Smoothed RTT and variance, RFC 6298 (alpha 1/8, beta 1/4)."""

    srtt: float | None = None
    rttvar: float | None = None

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt


@dataclass
class PathHealth:
    dead_after: float
    up: bool = False
    last_heard: float | None = None
    rtt: RttEstimator = field(default_factory=RttEstimator)

    def on_reply(self, now: float, rtt: float | None = None) -> bool:
        """A hello (server) or hello_ack (client) arrived.  True if the path
        just came up."""
        self.last_heard = now
        if rtt is not None and rtt >= 0:
            self.rtt.sample(rtt)
        if not self.up:
            self.up = True
            return True
        return False

    def on_tick(self, now: float) -> bool:
        """Periodic check.  True if the path just went down."""
        if self.up and self.last_heard is not None and now - self.last_heard > self.dead_after:
            self.up = False
            return True
        return False
