"""One path's health as the control plane sees it: sans-I/O state machine and
estimators, fed with timestamps and events, tested without sockets.

    probing ──(up_after replies, hold-down over)──► up
       ▲                                            │ the peer reports our data
       │                                            ▼ stalled on this path
       │ a reply, or the link is back            suspect (out of the schedule,
       │                                            │  back to up on a fresh reply)
       └──────────────── down ◄─────────────────────┘
                 silent dead_after probe intervals, carrier lost,
                 address removed, or taken down by hand

Only `up` carries data.  "Silent" means nothing at all arrived on the path:
no probe reply and no data.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

UP_AFTER = 2              # consecutive replies that bring a probing path up


class State(enum.Enum):
    PROBING = "probing"
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True)
class HealthConfig:
    probe_interval: float = 0.1        # a path in use or being brought up
    idle_probe_interval: float = 0.3   # an idle path
    dead_after: int = 3                # silent this many intervals: down
    hold_down: float = 0.5             # no re-admission sooner after a failure


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
class LossEstimator:
    """Loss of one direction from two cumulative counters: packets sent on
    the path by one side and packets received by the other.  Evaluated over
    windows of at least `window` seconds so packets in flight hardly matter;
    smoothed across windows."""

    window: float = 1.0
    loss: float | None = None
    _start: tuple[float, int, int] | None = None

    def sample(self, now: float, sent: int, received: int) -> None:
        if self._start is None or sent < self._start[1] or received < self._start[2]:
            self._start = (now, sent, received)   # first sample, or the peer restarted
            return
        t0, s0, r0 = self._start
        if now - t0 < self.window:
            return
        ds, dr = sent - s0, received - r0
        if ds > 0:
            x = min(1.0, max(0.0, 1 - dr / ds))
            self.loss = x if self.loss is None else 0.5 * self.loss + 0.5 * x
        self._start = (now, sent, received)


@dataclass
class PathHealth:
    cfg: HealthConfig = field(default_factory=HealthConfig)
    state: State = State.PROBING
    since: float = 0.0                 # when the state was entered
    last_heard: float | None = None    # last reply or data
    failed_at: float | None = None     # last failure (down or suspect): hold-down start
    suspect_at: float | None = None
    replies: int = 0                   # consecutive, while probing
    link_ok: bool = True               # carrier and address, per netlink
    admin_up: bool = True              # mptctl path NAME up|down
    in_use: bool = False               # carried data lately: probe at the fast rate
    flaps: int = 0
    probed_every: float = 0.0          # the interval the last probe went out at
    rtt: RttEstimator = field(default_factory=RttEstimator)
    loss_out: LossEstimator = field(default_factory=LossEstimator)
    loss_in: LossEstimator = field(default_factory=LossEstimator)

    @property
    def usable(self) -> bool:
        """May carry data."""
        return self.state is State.UP

    def interval(self) -> float:
        busy = self.in_use or self.state is not State.UP
        return self.cfg.probe_interval if busy else self.cfg.idle_probe_interval

    def dead_time(self) -> float:
        # a path that just went from idle to busy still had its last probe
        # at the idle interval: silence is judged by the slower of the two
        return self.cfg.dead_after * max(self.interval(), self.probed_every)

    def on_probe_sent(self) -> None:
        self.probed_every = self.interval()

    def _enter(self, state: State, now: float) -> State | None:
        if state is self.state:
            return None
        if self.state is State.UP:
            self.flaps += 1
        if state in (State.DOWN, State.SUSPECT):
            self.failed_at = now
        self.state, self.since = state, now
        if state is State.PROBING:
            self.replies = 0
        return state

    # -- events; each returns the new state when it changed, else None --------

    def on_reply(self, now: float, sent_at: float | None = None,
                 rtt: float | None = None) -> State | None:
        """A probe reply came back (`sent_at`: when that probe left)."""
        self.last_heard = now
        if rtt is not None and 0 <= rtt < 60:
            self.rtt.sample(rtt)
        if not self.link_ok or not self.admin_up:
            return None
        if self.state is State.SUSPECT:
            # only a probe sent after the stall proves the path works again,
            # and not before the hold-down is over (a data-only blackhole
            # must not flap at probe speed)
            if sent_at is not None and self.suspect_at is not None and sent_at > self.suspect_at:
                self.replies = UP_AFTER
                return self._maybe_up(now)
            return None
        if self.state is State.DOWN:
            changed = self._enter(State.PROBING, now)
            self.replies = 1
            return changed
        if self.state is State.PROBING:
            self.replies += 1
            return self._maybe_up(now)
        return None

    def on_data(self, now: float) -> None:
        """Data arrived on the path: it is not silent."""
        self.last_heard = now

    def on_stall(self, now: float) -> State | None:
        """The peer reports that our data stopped arriving on this path."""
        if self.state is not State.UP:
            return None
        self.suspect_at = now
        self.replies = 0
        return self._enter(State.SUSPECT, now)

    def on_link(self, now: float, ok: bool) -> State | None:
        """Netlink: carrier and address present (ok) or gone."""
        self.link_ok = ok
        return self._gate(now)

    def on_admin(self, now: float, up: bool) -> State | None:
        """mptctl path NAME up|down."""
        self.admin_up = up
        return self._gate(now)

    def _gate(self, now: float) -> State | None:
        """Down while the link is gone or the path is down by hand; probing
        again once both allow it."""
        if not (self.link_ok and self.admin_up):
            return self._enter(State.DOWN, now)
        if self.state is State.DOWN:
            return self._enter(State.PROBING, now)
        return None

    def tick(self, now: float) -> State | None:
        """Periodic check: silence takes the path down, and a probing (or
        suspect) path that has its replies comes up once the hold-down is over."""
        if self.state in (State.PROBING, State.SUSPECT):
            changed = self._maybe_up(now)
            if changed:
                return changed
        if self.state is State.DOWN:
            return None
        ref = self.last_heard if self.last_heard is not None else self.since
        if now - max(ref, self.since) > self.dead_time():
            return self._enter(State.DOWN, now)
        return None

    def _maybe_up(self, now: float) -> State | None:
        if self.replies < UP_AFTER:
            return None
        if self.failed_at is not None and now - self.failed_at < self.cfg.hold_down:
            return None
        return self._enter(State.UP, now)

    def probe_due(self, now: float, last_probe: float | None) -> bool:
        if not self.link_ok or not self.admin_up:
            return False
        return last_probe is None or now - last_probe >= self.interval()


@dataclass
class StallDetector:
    """Receiver side: notices that data stopped arriving on one path while it
    still arrives on others, long before probes time out, so the sender can
    take the path out within tens of milliseconds (silent failure).

    Fed at each check with the path's cumulative received-packet counter and
    the total over all paths.  Paths of unequal delay are judged fairly: a
    packet that arrived on a fast path at t has its companions on a path d
    slower due by t + d, and the last packets of a burst keep arriving on a
    slow path after a fast one has delivered its last (see `stalled`)."""

    min_stall: float = 0.02       # never report a gap shorter than this
    factor: float = 8.0           # ... or than this many mean inter-arrivals
    missed: float = 4.0           # ... or before the path missed this many packets
    history_span: float = 1.0     # how far back the totals are kept (bounds lag + lead)
    count: int | None = None
    last_arrival: float | None = None
    total_at_arrival: int = 0         # all paths' packets at the last arrival here
    gap_mean: float | None = None     # EWMA of the time per packet
    share_seen: float | None = None   # EWMA of this path's part of all arrivals
    reported: bool = False
    fresh: bool = True                # no arrival yet to measure a gap from
    _totals: deque = field(default_factory=deque)   # (time, total) when total moved

    def update(self, now: float, count: int, total: int) -> None:
        self._remember(now, count, total)
        if self.count is None or count < self.count:
            self.count, self.fresh, self.total_at_arrival = count, True, total
            return
        n = count - self.count
        if n > 0:
            if not self.fresh:
                per = (now - self.last_arrival) / n
                self.gap_mean = per if self.gap_mean is None else 0.8 * self.gap_mean + 0.2 * per
            self.count, self.last_arrival, self.fresh = count, now, False
            self.total_at_arrival = total
            self.reported = False

    def _remember(self, now: float, count: int, total: int) -> None:
        last = self._totals[-1][1] if self._totals else None
        if last is not None and total > last and self.count is not None and count >= self.count:
            frac = min(1.0, (count - self.count) / (total - last))
            self.share_seen = frac if self.share_seen is None else 0.9 * self.share_seen + 0.1 * frac
        if last is None or total != last:
            self._totals.append((now, total))
        # keep one sample older than the span: the total as of the span's start
        while len(self._totals) > 1 and self._totals[1][0] < now - self.history_span:
            self._totals.popleft()

    def _total_as_of(self, t: float) -> int | None:
        """All paths' packet total as it was at time t (None: unknown)."""
        best = None
        for when, total in self._totals:
            if when > t:
                break
            best = total
        return best

    def restart(self, now: float) -> None:
        """The path (re)enters the schedule: judge it only by what arrives
        from now on, at the rate it will have from now on."""
        self.gap_mean, self.reported, self.fresh = None, False, True

    def seen_share(self) -> float:
        """This path's recent part of the arrivals over the others' part."""
        s = self.share_seen or 0.0
        return s / (1 - s) if s < 1 else float("inf")

    def stalled(self, now: float, total: int, share: float,
                lag: float = 0.0, lead: float = 0.0) -> bool:
        """True once per stall: a flowing path went quiet for longer than the
        stall limit while the other paths kept delivering, so many packets
        that this one should have had `missed` of them by now.  `share`: its
        part of the traffic over the other scheduled paths' part.  (Traffic
        that simply ends, or a sparse flow whose next lone packet went
        elsewhere, gives the others too few packets to count.)

        Unequal delays: `lag` is how much later than the fastest other path
        this one's packets may arrive, `lead` how much earlier than the
        slowest (each with its jitter).  What the others delivered counts
        only from `lead` after this path's last arrival (before that they
        still deliver what was sent before its last packet: the end of a
        burst) until `lag` ago (this path's companions of later arrivals
        may still be on their way: the start of one)."""
        if self.reported or self.gap_mean is None or self.last_arrival is None or share <= 0:
            return False
        lag = min(max(0.0, lag), self.history_span / 2)
        lead = min(max(0.0, lead), self.history_span / 2)
        start, end = self.last_arrival + lead, now - lag
        if end - start <= max(self.min_stall, self.factor * self.gap_mean):
            return False
        before = self.total_at_arrival if lead == 0 else self._total_as_of(start)
        after = total if lag == 0 else self._total_as_of(end)
        if before is not None and after is not None and (after - before) * share >= self.missed:
            self.reported = True
            return True
        return False
