"""How much one path can carry: the capacity estimate the auto scheduler
paces each path at (sans-I/O, fed with timestamps and counters).

Inputs, once per probe interval (~100 ms), best when the peer's counters
arrive: the bytes we have sent on the path so far, the bytes the peer reports
delivered on it so far (from its probes; same units as the bytes the
scheduler paces), the path's loss and smoothed RTT, and the peer's clock
when it read its counter (the probe's timestamp; optional, it takes the
network's jitter out of the delivery rate; without it a capacity drop takes
about a second to follow rather than a few hundred ms, and a lossy path's
own loss is not learned).
Output: `capacity_bps`, the
rate the scheduler may send the path at (0 = unknown), and `delivery_bps`,
what the path was measured to deliver (for status).

Policy (after BBR, adapted to counters that arrive every 100 ms).  Rates
are in what we send: a path that loses a steady share p of what it gets is
credited delivery / (1 - p).

* Delivery rate.  Each update gives a sample: delivered bytes over the last
  SPAN (0.2 s; one probe interval alone is too noisy).  `delivery_bps` is
  the maximum of the samples of the last WINDOW (3 s: longer than a
  cruise, so cruising a little under it does not wear it down).  A sample counts
  only when it reflects a full path: we sent at least FULL of the estimate
  for a whole feedback loop (RTT + two probe intervals + SPAN, the time
  before what we send shows in the peer's counters).  A sample from an
  app-limited time counts only if it is higher: a TCP flow that sends a
  little under the estimate after a loss shows its own limit, not the
  path's (taken as the path's, the estimate followed the flow down and its
  next growth spilled to slower paths).  The window moves
  with counted samples only, so while traffic is light the last
  measurement stands rather than collapsing to the light rate.
* The estimate is a gain times delivery_bps, never below the floor:
    startup  +25 % per step (an update, at least an RTT apart) while the
             path is filled and clean (the delivery of the filled path shows
             no loss beyond its own and the RTT no queueing), at most
             STARTUP_GAIN x delivery_bps; ends with an overload;
    drain    DRAIN_GAIN, as long as the queue the RTT shows needs to empty
             at that gain (at least what a probe added, at most MAX_DRAIN);
    cruise   CRUISE_GAIN; after CRUISE_TIME of full sending, and clean, probe;
    probe    PROBE_GAIN for one feedback loop, then drain.  The queue a
             probe of a full path leaves is (gain - 1) x a loop of its rate:
             a few ms, which a shallow link buffer holds.  If delivery grew
             by PROBE_GROWTH the drain is short and another probe follows,
             from the new delivery rate; PROBE_CHAIN probes that grew in a
             row mean a lot more room: startup again (one grown probe alone
             is more likely noise, and startup's 25 % steps on a full path
             would overflow its buffer: a loss for every TCP flow on it).
* Overload, judged on samples of a filled path (at least FILLED of the
  estimate: a path can be overloaded below its estimate): (a) the delivery fell short
  of SHORTFALL of the least we sent in all the time the sample can reflect
  (a capacity drop; comparing with the least makes it immune to the
  counters' lag), or (b) the loss figure is LOSS_RISE above the path's own
  loss, still rising, and the delivery confirms it, or (c) the RTT is more
  than RTT_RISE + RTT_SLACK above its minimum of the last BASE_WINDOW and,
  after a back-off, that far above the RTT then (a route change raises the
  RTT for good: one back-off, not one per loop).  Back off: delivery_bps
  becomes the rate measured now (the last interval's if lower and the
  peer's clock makes it exact), then drain; later samples that reach back
  before the back-off count only as far as the last interval confirms
  them.  The smoothed loss and RTT still show a corrected overload for a
  while: no verdicts on them during a drain and one loop after it.
* The path's own (random) loss, by the peer's clock only: the least loss
  figure of the last BASE_WINDOW taken while cruising steadily without
  overload, if the delivery rate bears it out; or a shortfall that persists
  at the same share after we backed off and sent clearly less (congestion
  would have eased) -- taken as the path's loss, not as another overload,
  so a lossy path does not ratchet down.
* The initial guess (constructor; the configured rate, or 0 = unknown)
  stands in for a measurement until real ones replace it and is not grown
  before a measurement confirms it.  Unknown stays 0 until the first sample
  (every sample counts then); from then on the estimate is at least
  floor_bps, so a path always gets enough traffic to show what it carries.
"""
from __future__ import annotations

import enum
import math
from collections import deque
from typing import NamedTuple

WINDOW = 3.0           # s: max filter of the delivery rate
SPAN = 0.2             # s: each delivery sample covers at least this
BASE_WINDOW = 10.0     # s: min RTT and loss floor
FLOOR_BPS = 1e6
FILLED = 0.85          # sent >= this share of the estimate: the path was filled
FULL = 0.95            # ... this share: the traffic wanted all of it (not app-limited)
STEP_GAIN = 1.25       # startup: per step
STARTUP_GAIN = 1.25    # startup: at most this times the delivery rate (overflow finds more)
PROBE_GAIN = 1.05
DRAIN_GAIN = 0.9
PROBE_GROWTH = 1.03    # a probe that grew delivery this much: probe again
PROBE_CHAIN = 3        # ... this many in a row: startup again
PLATEAU_GROWTH = 1.25  # startup ends once delivery has not grown this much while
PLATEAU_LOOPS = 1.5    # ... we sent on the path for this many feedback loops (the
                       #     path is full, or the traffic is)
CRUISE_TIME = 2.0      # s of filled sending between probes
CRUISE_GAIN = 0.98     # cruise a little under the delivery rate, so a queue left by a
                       # probe drains rather than standing (it costs every flow delay)
SHORTFALL = 0.85
LOSS_RISE = 0.02
RTT_RISE = 0.25
RTT_SLACK = 0.005      # s
DEFAULT_RTT = 0.1      # s, while none is known
MAX_DRAIN = 1.0        # s
MAX_LOSS_CREDIT = 0.5  # steady loss made up for by sending more, at most
STEADY_SAME = 0.05     # shortfall shares this close are the same
STEADY = 1.05          # send rates within this factor are steady


def _probe_drain(probed_for: float) -> float:
    """How long DRAIN_GAIN takes to empty what probing a full path for
    `probed_for` seconds queued."""
    return probed_for * (PROBE_GAIN - 1) / (1 - DRAIN_GAIN)


def _since(since: float | None, now: float) -> float:
    """When a run of intervals began (`since`, or now if it begins now)."""
    return now if since is None else since


def _inflated(rtt: float) -> float:
    """An RTT above this one shows queueing."""
    return rtt * (1 + RTT_RISE) + RTT_SLACK


class Phase(enum.Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    CRUISE = "cruise"
    PROBE = "probe"


_GAIN = {Phase.DRAIN: DRAIN_GAIN, Phase.CRUISE: CRUISE_GAIN}


class _WindowedExtreme:
    """Running max (or min) of (time, value) samples over a time window."""

    def __init__(self, window: float, largest: bool):
        self.window, self.largest = window, largest
        self._q: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        q = self._q
        while q and (q[-1][1] <= value if self.largest else q[-1][1] >= value):
            q.pop()
        q.append((now, value))
        self.expire(now)

    def expire(self, now: float) -> None:
        q = self._q
        while q and q[0][0] < now - self.window:
            q.popleft()

    def reset(self, now: float, value: float) -> None:
        self._q.clear()
        self._q.append((now, value))

    @property
    def value(self) -> float | None:
        return self._q[0][1] if self._q else None


class _Report(NamedTuple):
    t: float                   # our clock
    sent: int                  # our counter
    delivered: int             # the peer's counter ...
    peer_t: float | None       # ... read at this time of the peer's clock
    sent_bps: float | None     # our send rate over the interval before


class CapacityEstimator:
    """One path's capacity; see the module docstring for the policy."""

    def __init__(self, initial_bps: float = 0.0, floor_bps: float = FLOOR_BPS,
                 ceiling_bps: float = 0.0):
        if not (math.isfinite(floor_bps) and floor_bps > 0):
            raise ValueError("floor_bps must be a positive rate")
        self.floor_bps = floor_bps
        # a configured rate: the datapath never sends more, so a delivery
        # close to it shows the rate, not the link's limit, and cruising at
        # CRUISE_GAIN of it would leave the rate's last 2 % unused
        self.ceiling_bps = ceiling_bps if math.isfinite(ceiling_bps) and ceiling_bps > 0 else 0.0
        initial = initial_bps if math.isfinite(initial_bps) and initial_bps > 0 else 0.0
        self._seed = initial
        self._est = max(floor_bps, initial) if initial else 0.0
        self.phase = Phase.STARTUP
        self.backoffs = 0                          # overloads seen (status, tests)
        self._bw = _WindowedExtreme(WINDOW, largest=True)
        self._min_rtt = _WindowedExtreme(BASE_WINDOW, largest=False)
        self._loss_floor = _WindowedExtreme(BASE_WINDOW, largest=False)
        self._rtt: float | None = None
        self._loss: float | None = None
        # the RTT at the last back-off: queueing must grow well beyond it to
        # call for another (a route change raises the RTT for good, and one
        # back-off is all that deserves; a queue being drained shrinks)
        self._rtt_ref: float | None = None
        self._rtt_ref_at = 0.0
        self._shortfall: tuple[float, float, float] | None = None   # (when, sent, share)
        self._steady_loss = (-math.inf, 0.0)                         # (when, loss)
        self._hist: deque[_Report] = deque()
        self._filled_since: float | None = None
        self._full_since: float | None = None
        self._since = 0.0                          # phase entered
        self._phase_len = 0.0                      # drain/probe: how long it lasts
        self._last_step = -math.inf
        self._cruise_filled = 0.0
        self._probe_bw = 0.0
        self._grown = 0                            # probes in a row that grew delivery
        self._plateau = (0.0, 0.0)                 # startup: (delivery to beat, sending since)
        self._quiet_until = -math.inf              # no loss/RTT verdicts before
        self._fresh_from = -math.inf               # samples must start no earlier

    @property
    def capacity_bps(self) -> float:
        """What the scheduler may send on the path (bits/s); 0 = unknown."""
        return self._est

    @property
    def delivery_bps(self) -> float:
        """The measured delivery rate (max over the window); 0 = none yet."""
        return self._bw.value or 0.0

    # -- the update ------------------------------------------------------------

    def update(self, now: float, sent_bytes: int, delivered_bytes: int,
               loss: float | None, rtt: float | None,
               reported_at: float | None = None) -> None:
        """now: our clock (s); sent_bytes: what we sent on the path so far;
        delivered_bytes: what the peer reports it received on it so far;
        loss: the path's loss in this direction (0..1, None = unknown); rtt:
        its smoothed RTT (s, None = unknown); reported_at: when the peer
        read its counter, on its own clock (s; the probe's timestamp):
        delivery rates then use the peer's intervals, free of the jitter
        with which its probes reach us."""
        if not math.isfinite(now) or sent_bytes < 0 or delivered_bytes < 0:
            return
        if loss is not None and not math.isfinite(loss):
            loss = None
        if loss is not None:
            loss = min(1.0, max(0.0, loss))
        if rtt is not None and not (math.isfinite(rtt) and 0 < rtt < 60):
            rtt = None
        if reported_at is not None and not math.isfinite(reported_at):
            reported_at = None
        if self._hist:
            last = self._hist[-1]
            if now <= last.t:
                return                             # stale or repeated
            if (sent_bytes < last.sent or delivered_bytes < last.delivered
                    or (reported_at is None) != (last.peer_t is None)
                    or (reported_at is not None and reported_at < last.peer_t)):
                # a counter or clock restarted (the peer or we): measure afresh
                self._hist.clear()
                self._filled_since = self._full_since = None
        prev_loss = self._loss
        if rtt is not None:
            self._rtt = rtt
            self._min_rtt.add(now, rtt)
            if self._rtt_ref is not None and (not self._queueing(rtt)
                                              or now - self._rtt_ref_at > BASE_WINDOW):
                self._rtt_ref = None
        if loss is not None:
            self._loss = loss
        self._loss_floor.expire(now)
        if not self._hist:
            self._hist.append(_Report(now, sent_bytes, delivered_bytes, reported_at, None))
            if self._seed and self._bw.value is None:
                self._bw.reset(now, self._seed)    # the guess stands in for a sample
            return

        prev = self._est
        last = self._hist[-1]
        dt = now - last.t
        sent_bps = 8 * (sent_bytes - last.sent) / dt
        filled = prev > 0 and sent_bps >= FILLED * prev
        full = prev > 0 and sent_bps >= FULL * prev
        self._filled_since = _since(self._filled_since, last.t) if filled else None
        self._full_since = _since(self._full_since, last.t) if full else None
        self._hist.append(_Report(now, sent_bytes, delivered_bytes, reported_at, sent_bps))
        loop = self._feedback_loop(dt)
        while len(self._hist) > 2 and self._hist[1].t <= now - loop - SPAN:
            self._hist.popleft()

        sample = self._delivery_rate(now)
        if sample is None:
            return
        rate, since = sample
        known = self._bw.value
        covered = self._filled_since is not None and now - self._filled_since >= loop
        limited = self._full_since is None or now - self._full_since < loop
        counted: float | None = rate
        if since < self._fresh_from:
            # the span reaches back before the last back-off, maybe before a
            # drop: only as far as the latest interval confirms it
            latest = self._latest_rate()
            counted = min(rate, latest) if latest is not None else None
        if counted is not None and (prev == 0 or (covered and not limited)
                                    or (known is not None and counted > known)):
            self._bw.add(now, counted)

        # verdicts only on a sample of what the path did while we filled it
        if covered:
            cause = self._overload(now, rate, loss, prev_loss, loop, now >= self._quiet_until)
            if cause and cause != "queueing" and self._steady(now, rate, loop):
                cause = None
            sent_min, sent_max = self._sent_range(now, loop)
            if (not cause and loss is not None and self.phase is Phase.CRUISE
                    and now >= self._quiet_until and sent_max <= STEADY * sent_min
                    and self._hist[-1].peer_t is not None and 1 - rate / sent_min >= loss / 2):
                # no overload while sending steadily what the path was
                # measured to deliver: the loss then is the path's own, if
                # the delivery rate bears the loss figure out (which lags,
                # and may still show an overload just corrected; only
                # exact enough by the peer's clock)
                self._loss_floor.add(now, loss)
            if cause:
                # to the latest interval's rate if lower: the span may still
                # hold deliveries from before a drop (with the peer's clock
                # one interval is exact enough; without, too noisy)
                latest = self._latest_rate()
                self._back_off(now, min(rate, latest) if latest is not None else rate, loop)
        # clean: what the path delivered while we filled it shows neither
        # queueing nor loss beyond its own
        clean = (covered and not self._queueing(self._rtt)
                 and not self._short(now, rate, loop, LOSS_RISE))
        self._advance(now, dt, filled, full, clean, loop, sent_bps > 0)

    def _feedback_loop(self, dt: float) -> float:
        """How long until what we send shows in a delivery sample, generously:
        the RTT, the age of the peer's counters (about an interval, twice for
        jitter) and the span of a sample."""
        rtt = self._rtt if self._rtt is not None else DEFAULT_RTT
        return rtt + 2 * min(max(dt, 0.05), 0.5) + SPAN

    def _delivery_rate(self, now: float) -> tuple[float, float] | None:
        """Delivery rate over the last >= SPAN, and since when (None: not
        that much history, or the peer's counter has not moved on since)."""
        newest = self._hist[-1]
        for old in reversed(self._hist):
            if now - old.t >= SPAN:
                if newest.peer_t is None:
                    return 8 * (newest.delivered - old.delivered) / (now - old.t), old.t
                took = newest.peer_t - old.peer_t
                return (8 * (newest.delivered - old.delivered) / took, old.t) if took > 0 else None
        return None

    def _latest_rate(self) -> float | None:
        """Delivery rate over the last interval, by the peer's clock."""
        newest, before = self._hist[-1], self._hist[-2]
        if newest.peer_t is None or newest.peer_t <= before.peer_t:
            return None
        return 8 * (newest.delivered - before.delivered) / (newest.peer_t - before.peer_t)

    def _overload(self, now: float, span_rate: float, loss: float | None,
                  prev_loss: float | None, loop: float, signals: bool) -> str | None:
        """Why the path is overloaded now (None: it is not).  `signals`: may
        the loss and RTT figures be believed yet."""
        # the loss figure is smoothed and lags: only while it still grows
        # does it tell of an overload now rather than of one just ended
        floor = self._floor(now)
        if (signals and loss is not None and loss > floor + LOSS_RISE
                and (prev_loss is None or loss > prev_loss)
                and self._short(now, span_rate, loop, LOSS_RISE)):
            return "loss"   # confirmed by the delivery rate: no artefact of the counters' lag
        if (signals and self._queueing(self._rtt)
                and (self._rtt_ref is None or self._rtt > _inflated(self._rtt_ref))):
            return "queueing"
        if self._short(now, span_rate, loop, 1 - SHORTFALL):
            return "shortfall"
        return None

    def _short(self, now: float, span_rate: float, loop: float, margin: float) -> bool:
        """The path delivered less than we sent it, beyond its steady loss
        and `margin` (a share of what we sent).  Lag-proof: compared with
        the least we sent in all the time the sample can reflect."""
        return span_rate < (1 - self._floor(now)) * (1 - margin) * self._sent_range(now, loop)[0]

    def _sent_range(self, now: float, loop: float) -> tuple[float, float]:
        """The least and most we sent in the time a sample can reflect."""
        rates = [r.sent_bps for r in self._hist if r.sent_bps is not None and r.t > now - loop]
        return min(rates), max(rates)

    def _steady(self, now: float, span_rate: float, loop: float) -> bool:
        """A delivery shortfall that persists, at the same share, after we
        backed off and sent clearly less, is the path's own loss, not
        congestion (which a lower rate cures): learn it as the loss floor
        (cruising would not show it, every cruise ending in a shortfall)."""
        if self._hist[-1].peer_t is None:
            return False    # only the peer's clock makes the shares exact enough
        sent = self._sent_range(now, loop)[0]
        share = span_rate / sent
        last = self._shortfall
        self._shortfall = (now, sent, share)
        if (last is None or now - last[0] > BASE_WINDOW or sent > 0.9 * last[1]
                or abs(share - last[2]) > STEADY_SAME or 1 - share > MAX_LOSS_CREDIT):
            # (a path that loses more than MAX_LOSS_CREDIT is overloaded:
            # overflow can keep what we send high after a back-off)
            return False
        self._steady_loss = (now, min(MAX_LOSS_CREDIT, 1 - share))
        return True

    def _floor(self, now: float) -> float:
        """The path's steady loss: the least loss of the last BASE_WINDOW,
        or a shortfall that persisted at a lower rate."""
        floor = self._loss_floor.value or 0.0
        at, steady = self._steady_loss
        return max(floor, steady) if now - at <= BASE_WINDOW else floor

    def _queueing(self, rtt: float | None) -> bool:
        min_rtt = self._min_rtt.value
        return rtt is not None and min_rtt is not None and rtt > _inflated(min_rtt)

    def _back_off(self, now: float, rate: float, loop: float) -> None:
        self.backoffs += 1
        self._grown = 0              # an overload ends a chain of grown probes
        self._rtt_ref, self._rtt_ref_at = self._rtt, now
        self._bw.reset(now, max(self.floor_bps, rate))
        self._fresh_from = now       # samples reaching back before now are stale
        self._enter(Phase.DRAIN, now, self._drain_time(loop), loop)

    def _drain_time(self, loop: float) -> float:
        """About long enough for DRAIN_GAIN to empty the queue the RTT shows
        (queue / (1 - gain)), at least one probe's worth."""
        queue = 0.0
        if self._rtt is not None and self._min_rtt.value:
            queue = max(0.0, self._rtt - self._min_rtt.value)
        return min(MAX_DRAIN, max(_probe_drain(self._probe_time(loop)), queue / (1 - DRAIN_GAIN)))

    def _start_probe(self, now: float, bw: float, loop: float) -> None:
        self._probe_bw = bw
        self._enter(Phase.PROBE, now, self._probe_time(loop))

    def _probe_time(self, loop: float) -> float:
        # the peer's counters show a change after about loop - SPAN/2
        return loop - SPAN / 2

    def _enter(self, phase: Phase, now: float, length: float = 0.0, loop: float = 0.0) -> None:
        self.phase, self._since, self._phase_len = phase, now, length
        if phase is Phase.CRUISE:
            self._cruise_filled = 0.0
        if phase is Phase.STARTUP:
            self._plateau = (self._bw.value or 0.0, now)
        if phase is Phase.DRAIN:
            # the smoothed loss and RTT still show the overload the drain
            # corrects, until a loop after it: no verdicts on them till then
            # (the delivery shortfall is lag-proof)
            self._quiet_until = now + length + loop

    def _advance(self, now: float, dt: float, filled: bool, full: bool, clean: bool,
                 loop: float, sending: bool) -> None:
        bw = self._bw.value or 0.0
        phase = self.phase
        if phase is Phase.STARTUP and bw > 0:
            # the delivery stopped growing while we sent: the path is full
            # (or the traffic is), and startup's overshoot is drained.  (A
            # path we send nothing on keeps its guess.)
            best, since = self._plateau
            if bw >= PLATEAU_GROWTH * best or not sending:
                self._plateau = (bw if bw >= PLATEAU_GROWTH * best else best, now)
            elif now - since >= PLATEAU_LOOPS * loop:
                self._enter(Phase.DRAIN, now, self._drain_time(loop), loop)
        elif phase is Phase.DRAIN:
            if now - self._since >= self._phase_len:
                if self._grown:
                    self._start_probe(now, bw, loop)
                else:
                    self._enter(Phase.CRUISE, now)
        elif phase is Phase.CRUISE:
            if full:        # (traffic that does not fill the estimate cannot fill a probe)
                self._cruise_filled += dt
                if self._cruise_filled >= CRUISE_TIME and clean:
                    self._start_probe(now, bw, loop)
        elif phase is Phase.PROBE:
            grew = bw >= PROBE_GROWTH * self._probe_bw
            if grew and self._grown + 1 >= PROBE_CHAIN:
                self._grown = 0
                self._enter(Phase.STARTUP, now)
            elif grew or now - self._since >= self._phase_len:
                # drain what the probe has queued so far
                self._grown = self._grown + 1 if grew else 0
                self._enter(Phase.DRAIN, now, _probe_drain(now - self._since), loop)

        # what we may send for the path to deliver bw, its steady loss included
        lossy = 1 - min(self._floor(now), MAX_LOSS_CREDIT)
        carries = bw / lossy
        if self._est == 0:
            self._est = max(self.floor_bps, carries)
        elif self.phase is Phase.STARTUP:
            # what the path delivered, it carries: never less than that
            # (traffic beyond the estimate overflows onto the paths)
            self._est = max(self._est, carries)
            if filled and clean and now - self._last_step >= (self._rtt or 0.0):
                self._est = max(self._est, min(self._est * STEP_GAIN, STARTUP_GAIN * carries))
                self._last_step = now
            self._est = max(self.floor_bps, min(self._est, STARTUP_GAIN * carries))
        elif self.phase is Phase.PROBE:
            self._est = max(self.floor_bps, PROBE_GAIN * self._probe_bw / lossy)
        else:
            est = _GAIN[self.phase] * carries
            if self.phase is Phase.CRUISE and self.ceiling_bps and carries >= FULL * self.ceiling_bps:
                est = max(est, self.ceiling_bps)
            self._est = max(self.floor_bps, est)
