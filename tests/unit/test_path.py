"""Path health: the state machine and estimators, without sockets."""
import pytest

from mpt.path import (UP_AFTER, HealthConfig, LossEstimator, PathHealth, RttEstimator,
                      StallDetector, State)

CFG = HealthConfig(probe_interval=0.1, idle_probe_interval=0.3, dead_after=3, hold_down=0.5)


def up_path(now=0.0):
    h = PathHealth(CFG, since=now)
    for i in range(UP_AFTER):
        h.on_reply(now + 0.01 * i, sent_at=now)
    assert h.state is State.UP
    return h


def test_starts_probing_and_comes_up_after_replies():
    h = PathHealth(CFG, since=0.0)
    assert h.state is State.PROBING and not h.usable
    assert h.on_reply(0.01, sent_at=0.0, rtt=0.01) is None
    assert h.on_reply(0.11, sent_at=0.1, rtt=0.01) is State.UP
    assert h.usable


def test_silence_for_dead_after_intervals_takes_it_down():
    h = up_path()
    h.in_use = True
    h.on_reply(1.0, sent_at=0.99)
    assert h.tick(1.0 + 0.29) is None
    assert h.tick(1.0 + 0.31) is State.DOWN
    assert not h.usable


def test_idle_path_is_probed_slowly_but_dies_within_a_second():
    h = up_path()
    h.in_use = False
    assert h.interval() == CFG.idle_probe_interval
    assert h.probe_due(1.0, 0.75) is False and h.probe_due(1.0, 0.7) is True
    h.on_reply(1.0)
    assert h.tick(1.85) is None
    assert h.tick(1.91) is State.DOWN       # 3 x 300 ms: within about a second


def test_data_counts_as_not_silent():
    h = up_path()
    h.in_use = True
    for t in range(1, 20):
        h.on_data(t * 0.1)
        assert h.tick(t * 0.1 + 0.05) is None


def test_stall_makes_suspect_and_only_a_fresh_reply_after_hold_down_restores():
    h = up_path()
    assert h.on_stall(1.0) is State.SUSPECT and not h.usable
    assert h.on_reply(1.02, sent_at=0.95) is None      # a probe from before the stall
    assert h.tick(1.3) is None and h.state is State.SUSPECT   # no fresh reply yet
    h = up_path()
    h.on_stall(1.0)
    assert h.on_reply(1.12, sent_at=1.05) is None      # fresh, but within the hold-down
    assert h.state is State.SUSPECT
    for t in (1.2, 1.3, 1.4):
        h.on_reply(t, sent_at=t - 0.01)
        assert h.tick(t) is None
    assert h.on_reply(1.5, sent_at=1.49) is State.UP
    assert h.flaps == 1


def test_busy_after_idle_is_not_declared_dead_by_the_shorter_interval():
    h = up_path()
    h.in_use = False
    h.on_probe_sent()                                  # sent at the idle interval
    h.on_reply(1.0)
    h.in_use = True                                    # traffic starts
    assert h.tick(1.31) is None                        # 0.31 s > 3 x 0.1 s, < 3 x 0.3 s
    h.on_probe_sent()
    h.on_reply(1.4)
    assert h.tick(1.71) is State.DOWN


def test_suspect_path_that_stays_silent_goes_down():
    h = up_path()
    h.on_reply(1.0)
    h.on_stall(1.0)
    assert h.tick(1.31) is State.DOWN


def test_link_loss_is_immediate_and_link_return_probes_again():
    h = up_path()
    assert h.on_link(1.0, False) is State.DOWN
    assert not h.probe_due(1.5, None)                  # nothing to send on
    assert h.on_reply(1.1) is None                     # stale reply changes nothing
    assert h.on_link(2.0, True) is State.PROBING
    assert h.probe_due(2.0, None)
    h.on_reply(2.05)
    assert h.on_reply(2.15) is State.UP


def test_hold_down_delays_readmission_after_leaving():
    h = up_path()
    h.on_link(1.0, False)
    h.on_link(1.1, True)
    h.on_reply(1.12)
    assert h.on_reply(1.2) is None                     # replies enough, but hold-down
    assert h.tick(1.45) is None
    assert h.tick(1.51) is State.UP                    # 0.5 s after it left


def test_admin_down_and_up():
    h = up_path()
    assert h.on_admin(1.0, False) is State.DOWN
    assert h.on_reply(1.1) is None and h.state is State.DOWN
    assert not h.probe_due(1.2, None)
    assert h.on_admin(2.0, True) is State.PROBING


def test_twenty_flaps_end_up():
    h = up_path()
    t = 1.0
    for _ in range(20):
        h.on_link(t, False)
        h.on_link(t + 0.05, True)
        t += 0.1
    assert h.state is State.PROBING and h.flaps == 1   # it never got back up in between
    for i in range(UP_AFTER):
        h.on_reply(t + 0.01 * i)
    assert h.state is State.PROBING                    # last failure only 0.1 s ago
    last_failure = t - 0.1
    while t < last_failure + CFG.hold_down - 0.02:      # probes keep being answered
        assert h.on_reply(t) is None and h.tick(t) is None
        t += 0.05
    h.on_reply(last_failure + CFG.hold_down - 0.01)
    assert h.tick(last_failure + CFG.hold_down + 0.01) is State.UP


def test_rtt_estimator():
    r = RttEstimator()
    r.sample(0.1)
    assert (r.srtt, r.rttvar) == (0.1, 0.05)
    for _ in range(50):
        r.sample(0.02)
    assert r.srtt == pytest.approx(0.02, abs=1e-3) and r.rttvar < 0.002


def test_loss_estimator_windows_and_restart():
    est = LossEstimator(window=1.0)
    est.sample(0.0, 0, 0)
    est.sample(0.5, 500, 400)
    assert est.loss is None                            # window not over
    est.sample(1.0, 1000, 900)
    assert est.loss == pytest.approx(0.1)
    est.sample(2.0, 2000, 1900)
    assert est.loss == pytest.approx(0.05)             # smoothed
    est.sample(3.0, 10, 10)                            # the peer restarted
    assert est.loss == pytest.approx(0.05)


def feed(d, times, first_count=0, per_step=1, others_per_step=1):
    """Arrivals on the watched path at `times`; the other paths deliver
    `others_per_step` packets per arrival too.  Returns (count, total)."""
    count, total = first_count, 0
    for t in times:
        count += per_step
        total += per_step + others_per_step
        d.update(t, count, total)
    return count, total


def test_stall_detector_reports_once_when_others_deliver():
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)], per_step=2, others_per_step=2)
    # the path stops at 0.099; the other one keeps its 2 packets per ms
    assert not d.stalled(0.099 + 0.015, total + 30, share=1.0)   # too soon
    assert d.stalled(0.099 + 0.022, total + 44, share=1.0)
    assert not d.stalled(0.2, total + 200, share=1.0)             # once
    d.update(0.3, count + 1, total + 201)
    assert not d.reported


def test_stall_detector_quiet_when_everything_stops():
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)])
    # the other path brought 2 more packets, then the traffic ended: no stall
    assert not d.stalled(1.0, total + 2, share=1.0)
    assert not d.stalled(1.0, total, share=1.0)


def test_stall_detector_ignores_a_sparse_flow_after_a_burst():
    """A burst, then one packet a second (rate-limited ICMP errors, say): the
    next lone packet going to the other path is no stall."""
    d = StallDetector()
    count, total = feed(d, [0.0, 0.0003, 0.0006])
    assert not d.stalled(1.0, total + 1, share=1.0)
    assert not d.stalled(3.0, total + 3, share=1.0)
    assert d.stalled(4.0, total + 4, share=1.0)      # 4 missed: it is one


def test_stall_detector_scales_with_weights():
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)], others_per_step=3)
    # weights 1:3: four packets elsewhere are only one missed here
    assert not d.stalled(0.2, total + 4, share=1 / 3)
    assert d.stalled(0.2, total + 12, share=1 / 3)


def test_stall_detector_restarted_path_is_judged_by_new_arrivals_only():
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)])   # then it left the schedule
    d.restart(5.0)                                     # back in it at 5 s
    assert not d.stalled(5.05, total + 100, share=1.0)  # nothing new yet: no verdict
    assert d.last_arrival == 0.099                     # only real arrivals count
    count, total = feed(d, [5.0 + i * 0.001 for i in range(1, 50)], first_count=count)
    assert d.gap_mean == pytest.approx(0.001)          # the old pause is not a gap
    assert d.stalled(5.049 + 0.03, total + 30, share=1.0)


def test_stall_detector_scales_with_slow_flows():
    d = StallDetector()
    count, total = feed(d, [i * 0.1 for i in range(20)])   # 10 packets per second
    assert not d.stalled(1.9 + 0.5, total + 5, share=1.0)  # 8 gaps = 0.8 s not over
    assert d.stalled(1.9 + 0.81, total + 8, share=1.0)


def test_stall_detector_waits_out_the_delay_spread():
    """Path 1 is 30 ms slower than path 2.  After a pause, a new burst shows
    up on path 2 first: 30 ms of its packets are no evidence against path 1."""
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)])
    # pause until 1.0 s; then only the fast path delivers, 2 packets per ms
    for i in range(30):
        total += 2
        d.update(1.0 + i * 0.001, count, total)
        assert not d.stalled(1.0 + i * 0.001, total, share=1.0, lag=0.035)
    assert d.stalled(1.0 + 0.03, total, share=1.0) # without the allowance: a false stall


@pytest.mark.parametrize("spread", ["lag", "lead"])
def test_stall_detector_allowing_for_delay_spread_still_finds_a_real_stall(spread):
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)])   # last arrival 0.099
    t = 0.099
    while not d.stalled(t, total, share=1.0, **{spread: 0.035}):
        t += 0.001
        total += 2
        d.update(t, count, total)
        assert t < 0.2
    # quiet for the stall limit plus the spread, and the evidence is old enough
    assert 0.02 + 0.035 < t - 0.099 < 0.02 + 0.035 + 0.01


def test_stall_detector_learns_the_share_it_gets():
    d = StallDetector()
    feed(d, [i * 0.001 for i in range(200)], others_per_step=3)   # a quarter of the packets
    assert d.seen_share() == pytest.approx(1 / 3, rel=0.05)


def test_stall_detector_lets_a_slow_path_finish_the_burst():
    """The watched path is 30 ms faster: when a burst ends, its last packet
    arrives 30 ms before the slow path's last ones."""
    d = StallDetector()
    count, total = feed(d, [i * 0.001 for i in range(100)])   # last arrival 0.099
    for i in range(1, 31):                     # the slow path finishes the burst
        total += 2
        d.update(0.099 + i * 0.001, count, total)
        assert not d.stalled(0.099 + i * 0.001, total, share=1.0, lead=0.035)
    assert not d.stalled(0.5, total, share=1.0, lead=0.035)   # and then all is quiet
    assert d.stalled(0.5, total, share=1.0)                  # without the lead: false stall

