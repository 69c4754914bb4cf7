"""The capacity estimate (mpt/capacity.py) against synthetic timelines: a
fluid model of one path (a bottleneck with a buffer, one-way delay both
ways) that the sender fills up to the estimate, with the peer's delivered
counter arriving by probe every 100 ms."""
import math
import random
import statistics

import pytest

from mpt.capacity import CRUISE_GAIN, FLOOR_BPS, CapacityEstimator, Phase
from mpt.path import LossEstimator

MBIT = 1e6
TICK = 0.001


class SimPath:
    """capacity(t), demand(t): bits/s.  The sender sends min(demand,
    estimate); the bottleneck drains at capacity; a queue over `buffer`
    seconds of capacity is dropped.  The peer samples its delivered counter
    every `interval` and the probe (with its clock's time) reaches us owd
    (+ jitter) later; we feed the estimator then, with loss and RTT measured
    as PathHealth does (LossEstimator on the same counters, RTT smoothed by
    1/8).  Random loss strikes before the bottleneck."""

    def __init__(self, capacity, demand, est, owd=0.01, buffer=0.05, interval=0.1,
                 jitter=0.005, random_loss=0.0, peer_clock=True, extra_delay=None, seed=1,
                 paced=True):
        self.capacity, self.demand, self.est = capacity, demand, est
        self.owd, self.buffer, self.interval = owd, buffer, interval
        self.jitter, self.random_loss, self.peer_clock = jitter, random_loss, peer_clock
        self.extra_delay = extra_delay or const(0.0)    # a route change, say
        self.rng = random.Random(seed)
        # False: the demand goes out whatever the estimate (overflow);
        # "startup": so while the estimate grows (as the daemon does it)
        self.paced = paced
        self.t = 0.0
        self.sent = 0.0            # bits
        self.queue = 0.0
        self.dropped = 0.0         # bits over the buffer
        self.out = [0.0]           # cumulative bits out of the bottleneck, per tick
        self.loss = LossEstimator()    # as the daemon measures it, from the same counters
        self.srtt = None
        self.next_probe = interval / 2
        self.arrivals = []         # (arrival time, delivered bits, peer's clock)
        self.history = []          # (t, capacity_bps, phase) after each update

    def delivered_at(self, t):
        k = int((t - self.owd) / TICK)
        return self.out[max(0, min(k, len(self.out) - 1))] if k >= 0 else 0.0

    def run(self, until):
        while self.t < until - 1e-9:
            t = self.t
            cap = self.capacity(t)
            est = self.est.capacity_bps
            unpaced = est == 0 or not self.paced or (
                self.paced == "startup" and self.est.phase is Phase.STARTUP)
            rate = self.demand(t) if unpaced else min(self.demand(t), est)
            send = rate * TICK
            self.sent += send
            self.queue += send * (1 - self.random_loss)
            drained = min(self.queue, cap * TICK)
            self.queue -= drained
            over = max(0.0, self.queue - self.buffer * cap)    # dropped
            self.dropped += over
            self.queue -= over
            self.out.append(self.out[-1] + drained)
            self.t = t + TICK
            if self.t >= self.next_probe:       # the peer probes
                arrive = self.t + self.owd + self.rng.uniform(0, self.jitter)
                self.arrivals.append((arrive, self.delivered_at(self.t), self.t + 1234.5))
                self.next_probe += self.interval
            while self.arrivals and self.arrivals[0][0] <= self.t:
                _, delivered, peer_t = self.arrivals.pop(0)
                rtt = 2 * self.owd + self.extra_delay(self.t) + self.queue / cap
                self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
                sent, delivered = int(self.sent / 8), int(delivered / 8)
                self.loss.sample(self.t, sent, delivered)
                self.est.update(self.t, sent, delivered, self.loss.loss, self.srtt,
                                peer_t if self.peer_clock else None)
                self.history.append((self.t, self.est.capacity_bps / MBIT, self.est.phase))
        return self

    def between(self, a, b):
        return [c for t, c, _ in self.history if a <= t < b]


def const(x):
    return lambda t: x


GREEDY = const(1000 * MBIT)


@pytest.mark.parametrize("start", [5, 100])
@pytest.mark.parametrize("owd,jitter,peer_clock", [
    (0.005, 0.0, True), (0.01, 0.002, True), (0.03, 0.01, True), (0.05, 0.02, True),
    (0.01, 0.002, False), (0.03, 0.01, False)])
def test_converges_to_a_20_mbit_path(start, owd, jitter, peer_clock):
    sim = SimPath(const(20 * MBIT), GREEDY, CapacityEstimator(start * MBIT),
                  owd=owd, jitter=jitter, peer_clock=peer_clock).run(12)
    late = sim.between(4, 12)
    # cruising just under the measured rate, with brief probes (x1.1) and
    # drains (x0.9, emptying the queue a probe or an overshoot built)
    assert 0.98 * CRUISE_GAIN * 20 <= statistics.median(late) <= 25   # 2 %: the measurement's noise
    assert sum(19 <= c <= 25.5 for c in late) >= 2 / 3 * len(late)
    assert min(late) >= 0.7 * 20 and max(late) <= 1.3 * 20
    assert 19 * MBIT <= sim.est.delivery_bps <= 22 * MBIT
    # and the path was actually used: near capacity delivered over the late part
    delivered_bps = (sim.delivered_at(12) - sim.delivered_at(4)) / (12 - 4)
    assert delivered_bps >= 0.9 * 20 * MBIT


def test_a_guess_grows_only_on_measured_delivery():
    """Startup raises the estimate only once a delivery sample of the
    filled path shows no loss or queueing: a guess five times too high is
    never raised further."""
    sim = SimPath(const(20 * MBIT), GREEDY, CapacityEstimator(100 * MBIT)).run(3)
    assert max(c for _, c, _ in sim.history) == 100
    assert sim.between(2, 3) and max(sim.between(2, 3)) <= 1.26 * 20


def test_startup_reaches_100_mbit_from_the_floor_within_a_few_seconds():
    sim = SimPath(const(100 * MBIT), GREEDY, CapacityEstimator(0)).run(8)
    first = next(t for t, c, _ in sim.history if c >= 90)
    assert first <= 4.0
    late = sim.between(5, 8)
    assert 0.99 * CRUISE_GAIN * 100 <= statistics.median(late) <= 125


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("peer_clock,within", [(True, 0.5), (False, 1.1)])
def test_a_capacity_drop_is_followed_within_a_second(peer_clock, within, seed):
    """With the peer's clock the latest interval's delivery is exact and the
    first back-off lands on the new rate; without, the first lands between
    old and new, and the second a feedback loop and a drain later."""
    sim = SimPath(lambda t: 100 * MBIT if t < 6 else 50 * MBIT, GREEDY,
                  CapacityEstimator(100 * MBIT), peer_clock=peer_clock, seed=seed).run(12)
    assert 95 <= statistics.median(sim.between(3, 6)) <= 125
    soon = sim.between(6 + within, 7.5 + within)    # before the next probe
    assert 0.7 * 50 <= min(soon) and max(soon) <= 1.15 * 50
    after = sim.between(6 + within, 12)
    assert max(after) <= 1.3 * 50
    assert 0.98 * 50 <= statistics.median(after) <= 62.5


@pytest.mark.parametrize("random_loss", [0, 0.1])
def test_a_capacity_rise_is_found(random_loss):
    """Also on a lossy path: probing needs the path "clean", which its own
    steady loss must not spoil."""
    sim = SimPath(lambda t: 20 * MBIT if t < 5 else 60 * MBIT, GREEDY,
                  CapacityEstimator(20 * MBIT), random_loss=random_loss).run(15)
    carries = 1 / (1 - random_loss)      # what it takes to deliver 1 through the loss
    # (until the path's own loss is learned, a little under)
    assert 0.9 * 20 <= statistics.median(sim.between(3, 5)) / carries <= 25
    assert 0.97 * 60 <= statistics.median(sim.between(12, 15)) / carries <= 75


def test_app_limited_traffic_keeps_the_recent_measurement():
    sim = SimPath(const(100 * MBIT), lambda t: 1000 * MBIT if t < 5 else 5 * MBIT,
                  CapacityEstimator(100 * MBIT)).run(15)
    light = sim.between(6, 15)
    assert min(light) >= 0.75 * 100             # a drain may end, nothing falls further
    assert statistics.median(light) >= 95
    assert sim.est.delivery_bps >= 95 * MBIT
    assert sim.est.phase is Phase.CRUISE        # no probing while nothing fills the path


@pytest.mark.parametrize("share", [0.86, 0.9])
def test_traffic_just_under_the_estimate_does_not_wear_it_down(share):
    """A TCP flow after a loss sends a little under the estimate for seconds:
    that is the flow's limit, not the path's.  Taken as the path's, the
    estimate followed the flow down (cruising at 0.98 of it, and probes the
    flow could not fill), and the flow's next growth spilled to slower paths."""
    sim = SimPath(const(100 * MBIT), lambda t: 1000 * MBIT if t < 5 else share * 100 * MBIT,
                  CapacityEstimator(0), buffer=0.02, jitter=0.002, paced="startup").run(25)
    assert min(sim.between(8, 25)) >= CRUISE_GAIN * 100 - 1
    assert sim.est.delivery_bps >= 99 * MBIT


def test_a_configured_rate_is_used_to_the_full_not_cruised_under():
    """`rate = 20mbit` on a 100 Mbit/s link: the datapath never sends more
    than 20, so a delivery of 20 shows the rate, not the link.  The estimate
    stays at the rate (cruising at 0.98 of the delivery would leave 2 % of
    the rate unused); without the ceiling it cruises under it."""
    def run(ceiling):
        sim = SimPath(const(100 * MBIT), const(20 * MBIT),      # min(rate, estimate)
                      CapacityEstimator(20 * MBIT, ceiling_bps=ceiling)).run(12)
        return sim, sum(1 for _, c, ph in sim.history if ph is Phase.CRUISE and c < 20)
    sim, under = run(20 * MBIT)
    assert under == 0, sim.history
    assert sum(1 for _, c, ph in sim.history if ph is Phase.CRUISE) >= 60   # it did cruise
    _, under_without = run(0)
    assert under_without > 0            # what the ceiling is for


def test_a_configured_rate_above_the_link_does_not_hold_the_estimate_up():
    sim = SimPath(const(15 * MBIT), GREEDY,
                  CapacityEstimator(20 * MBIT, ceiling_bps=20 * MBIT)).run(12)
    assert max(sim.between(6, 12)) <= 16, sim.between(6, 12)


def test_an_unused_spill_path_keeps_its_guess():
    sim = SimPath(const(20 * MBIT), const(0), CapacityEstimator(20 * MBIT)).run(5)
    assert all(c == 20 for c in sim.between(0, 5))


def test_an_idle_unknown_path_sits_at_the_floor_and_grows_once_used():
    est = CapacityEstimator(0)
    assert est.capacity_bps == 0
    sim = SimPath(const(50 * MBIT), lambda t: 0 if t < 3 else 1000 * MBIT, est,
                  paced="startup").run(8)
    assert sim.between(0, 0.1) == [] or all(c == 0 for c in sim.between(0, 0.1))
    idle = sim.between(0.5, 3)
    assert idle and all(c == FLOOR_BPS / MBIT for c in idle)
    assert 0.98 * CRUISE_GAIN * 50 <= statistics.median(sim.between(6, 8)) <= 62.5


def test_unknown_until_the_first_sample():
    est = CapacityEstimator(0)
    est.update(0.0, 0, 0, 0.0, 0.02)
    assert est.capacity_bps == 0
    est.update(0.1, 125_000, 100_000, 0.0, 0.02)
    assert est.capacity_bps == 0                # one interval is not a sample yet
    est.update(0.2, 250_000, 225_000, 0.0, 0.02)
    assert est.capacity_bps == pytest.approx(max(FLOOR_BPS, 225_000 * 8 / 0.2))


@pytest.mark.parametrize("random_loss", [0.03, 0.2])
def test_random_loss_is_not_taken_for_congestion(random_loss):
    sim = SimPath(const(40 * MBIT), GREEDY, CapacityEstimator(40 * MBIT),
                  random_loss=random_loss).run(15)
    late = sim.between(5, 15)
    assert statistics.median(late) >= 0.9 * 40
    assert min(late) >= 0.7 * 40


def test_a_route_change_is_not_taken_for_queueing_again_and_again():
    """The RTT rises for good (min RTT still remembers the old route for
    BASE_WINDOW): at most one back-off for it, not one per loop."""
    sim = SimPath(const(40 * MBIT), GREEDY, CapacityEstimator(40 * MBIT),
                  extra_delay=lambda t: 0.0 if t < 5 else 0.04).run(5)
    before = sim.est.backoffs
    sim.run(15)
    assert sim.est.backoffs - before <= 3
    assert statistics.median(sim.between(5, 15)) >= 0.88 * 40   # the drains are gentle, and longer


def test_a_bufferbloated_path_converges_without_undershooting():
    """A second of buffer: the overshoot queue drains long after the
    back-off, while the smoothed RTT still climbs; the estimate must not be
    pushed down to the drain's rate."""
    sim = SimPath(const(20 * MBIT), GREEDY, CapacityEstimator(100 * MBIT), buffer=1.0).run(15)
    after = sim.between(3, 15)
    assert min(after) >= 0.7 * 20
    assert 0.98 * 20 <= statistics.median(after) <= 25


def test_the_estimate_never_goes_below_the_floor():
    est = CapacityEstimator(10 * MBIT, floor_bps=2 * MBIT)
    t, sent = 0.0, 0
    for _ in range(100):                        # sending, nothing delivered, heavy loss
        t += 0.1
        sent += 200_000
        est.update(t, sent, 0, 0.9, 0.5)
        assert est.capacity_bps >= 2 * MBIT
    assert est.capacity_bps == 2 * MBIT
    assert est.backoffs >= 1


def test_floor_must_be_a_rate():
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError):
            CapacityEstimator(10 * MBIT, floor_bps=bad)
    assert CapacityEstimator(math.nan).capacity_bps == 0
    assert CapacityEstimator(-5).capacity_bps == 0
    assert CapacityEstimator(0.5 * MBIT).capacity_bps == FLOOR_BPS


def test_bad_and_stale_inputs_change_nothing():
    est = CapacityEstimator(30 * MBIT)
    est.update(1.0, 1000, 1000, 0.0, 0.02)
    before = (est.capacity_bps, est.delivery_bps, est.phase)
    est.update(1.0, 5_000_000, 5_000_000, 0.0, 0.02)       # same time
    est.update(0.5, 5_000_000, 5_000_000, 0.0, 0.02)       # earlier
    est.update(math.nan, 5_000_000, 5_000_000, 0.0, 0.02)
    est.update(math.inf, 5_000_000, 5_000_000, 0.0, 0.02)
    est.update(2.0, -1, 0, 0.0, 0.02)
    assert (est.capacity_bps, est.delivery_bps, est.phase) == before
    # garbage loss and RTT are ignored, not fatal
    est.update(1.1, 2000, 2000, math.nan, math.inf)
    est.update(1.2, 3000, 3000, -3.0, -1.0)
    est.update(1.3, 4000, 4000, None, None)
    assert est.capacity_bps >= FLOOR_BPS


def test_a_counter_restart_is_not_a_rate():
    est = CapacityEstimator(30 * MBIT)
    t = 0.0
    for k in range(30):                          # 30 Mbit/s, the whole estimate
        t += 0.1
        est.update(t, k * 375_000, k * 375_000, 0.0, 0.02)
    before = est.delivery_bps
    # the peer restarted: its counter starts from 0 again
    est.update(t + 0.1, 30 * 375_000, 1000, 0.0, 0.02)
    est.update(t + 0.2, 31 * 375_000, 2000, 0.0, 0.02)
    est.update(t + 0.3, 32 * 375_000, 3000, 0.0, 0.02)
    assert est.delivery_bps == before            # no negative or huge rate
    assert est.capacity_bps >= 0.75 * 30 * MBIT


def test_delivery_rate_uses_the_peers_clock():
    est = CapacityEstimator(0)
    # reports reach us at uneven times; the peer read them exactly 0.1 s apart
    arrivals = [0.0, 0.13, 0.2, 0.36, 0.41, 0.5]
    for k, t in enumerate(arrivals):
        est.update(t, k * 250_000, k * 250_000, 0.0, 0.02, reported_at=50.0 + k * 0.1)
    assert est.delivery_bps == pytest.approx(20 * MBIT)
    # the peer restarted: its clock and counter begin again; rates are
    # measured from the restart on (now 30 Mbit/s), none across it
    for k, t in enumerate([0.6, 0.75, 0.8, 0.9, 1.0]):
        est.update(t, (6 + k) * 375_000, 100 + k * 375_000, 0.0, 0.02, reported_at=0.01 + k * 0.1)
    assert est.delivery_bps == pytest.approx(30 * MBIT)
    # a report without the peer's time after ones with it: measured afresh too
    for k, t in enumerate([1.1, 1.2, 1.3, 1.4]):
        est.update(t, (11 + k) * 500_000, 10 ** 9 + k * 500_000, 0.0, 0.02)
    assert est.delivery_bps == pytest.approx(40 * MBIT)


def test_a_huge_time_jump_is_one_slow_sample():
    est = CapacityEstimator(30 * MBIT)
    est.update(0.0, 0, 0, 0.0, 0.02)
    est.update(0.1, 375_000, 375_000, 0.0, 0.02)
    est.update(1e6, 750_000, 750_000, 0.0, 0.02)     # a suspend, say
    assert est.capacity_bps >= 0.75 * 30 * MBIT     # not filled: no collapse
    assert est.capacity_bps <= 2 * 30 * MBIT


def test_startup_with_overflow_finds_the_capacity_within_a_second():
    """As the daemon runs it: traffic beyond the estimate overflows onto the
    path while the estimate grows, so the delivery shows the capacity at
    once; the estimate never runs far ahead of it, and startup ends."""
    sim = SimPath(const(100 * MBIT), GREEDY, CapacityEstimator(0), paced="startup").run(8)
    first = next(t for t, c, _ in sim.history if c >= 90)
    assert first <= 1.0
    assert max(c for _, c, _ in sim.history) <= 1.25 * 100
    assert sim.est.phase is not Phase.STARTUP
    assert 0.99 * CRUISE_GAIN * 100 <= statistics.median(sim.between(2, 8)) <= 105


def test_startup_ends_when_the_traffic_stops_growing():
    """Traffic of 60 Mbit/s on a 100 Mbit/s path: the delivery plateaus at
    60 and startup ends, the estimate staying near what was shown."""
    sim = SimPath(const(100 * MBIT), const(60 * MBIT), CapacityEstimator(0), paced="startup").run(5)
    assert sim.est.phase is not Phase.STARTUP
    assert max(sim.between(2, 5)) <= 1.25 * 60


@pytest.mark.parametrize("seed", range(4))
def test_probes_of_a_full_path_do_not_restart_startup(seed):
    """A greedy flow on a full 50 Mbit/s path with a shallow (20 ms) buffer:
    its probes must fit in the buffer, and a few per cent of growth they
    show is the path's known capacity, not room for startup's 25 % steps,
    which would overflow the buffer (a loss for every TCP flow on it)."""
    sim = SimPath(const(50 * MBIT), GREEDY, CapacityEstimator(0), buffer=0.02, jitter=0.002,
                  seed=seed, paced="startup").run(4)
    dropped = sim.dropped
    sim.run(30)
    assert [t for t, _, ph in sim.history if t > 4 and ph is Phase.STARTUP] == []
    assert sim.dropped - dropped <= 0.001 * 26 * 50 * MBIT
    assert 0.93 * 50 <= statistics.median(sim.between(4, 30)) <= 51


def test_an_overload_ends_a_chain_of_grown_probes():
    """A probe that grew delivery is followed by another, but not once the
    path has been found overloaded: the drain after a back-off ends in
    cruise (the capacity falls from 60 to 10 Mbit/s during a chain)."""
    cap = [20 * MBIT]
    sim = SimPath(lambda t: cap[0], GREEDY, CapacityEstimator(20 * MBIT)).run(5)
    cap[0] = 60 * MBIT
    while sim.est._grown == 0:          # the first probe that grew delivery
        assert sim.t < 20
        sim.run(sim.t + 0.01)
    cap[0] = 10 * MBIT
    backoffs = sim.est.backoffs
    while sim.est.backoffs == backoffs:
        assert sim.t < 25
        sim.run(sim.t + 0.01)
    while sim.est.phase is Phase.DRAIN:
        sim.run(sim.t + 0.01)
    assert sim.est.phase is Phase.CRUISE
