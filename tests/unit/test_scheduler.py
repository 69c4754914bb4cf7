"""The path scheduler in C (csrc/mpt_sched.c), through cffi, and the Python
policy around it (mpt/scheduler.py).

Time is an argument to the C code, so every timeline here is simulated and
exact: a "second" is 10**9 ns of now_ns values, not wall time."""
import math
import random
from types import SimpleNamespace

import pytest

from mpt import scheduler
from mpt._datapath import ffi, lib

NONE, WAIT = lib.MPT_SCHED_NONE, lib.MPT_SCHED_WAIT
SEC = 1_000_000_000
MS = 1_000_000
MBIT = 1e6
MTU = 1500


def make(weights, mode=None):
    s = ffi.new("struct mpt_sched *")
    lib.mpt_sched_init(s)
    if mode is not None:
        lib.mpt_sched_set_mode(s, mode)
    for i, w in enumerate(weights):
        lib.mpt_sched_set(s, i, w, 1)
    return s


def pick(s, size, now=0):
    return lib.mpt_sched_pick(s, size, now, ffi.NULL)


def pick_at(s, size, now):
    """(path or NONE/WAIT, retry_ns or None)."""
    retry = ffi.new("int64_t *", -12345)
    r = lib.mpt_sched_pick(s, size, now, retry)
    return r, (retry[0] if r == WAIT else None)


def greedy(s, seconds=1.0, size=MTU, start=0):
    """An always-backlogged sender that sleeps exactly until retry_ns:
    bytes per path sent in [start, start + seconds)."""
    end = start + int(seconds * SEC)
    per, now, waits = {}, start, 0
    for _ in range(10_000_000):
        if now >= end:
            break
        r, retry = pick_at(s, size, now)
        if r == WAIT:
            assert retry > now
            now, waits = retry, waits + 1
            continue
        assert r >= 0
        per[r] = per.get(r, 0) + size
    else:
        raise AssertionError("the sender was never paced")
    return per, waits


def offered(s, rate_bps, seconds=1.0, size=MTU, start=0):
    """Packets arriving evenly at rate_bps; one that finds every path full
    is dropped.  Bytes per path (and 'drop')."""
    gap = size * 8 * SEC / rate_bps
    per = {}
    n = int(seconds * rate_bps / (size * 8))
    for k in range(n):
        r = pick(s, size, start + int(k * gap))
        key = "drop" if r == WAIT else r
        assert key == "drop" or key >= 0
        per[key] = per.get(key, 0) + size
    return per


def mbit(nbytes, seconds=1.0):
    return nbytes * 8 / seconds / MBIT


def test_no_active_path_picks_none():
    s = make([])
    assert pick(s, 1000) == -1
    lib.mpt_sched_set(s, 0, 1, 0)
    assert pick(s, 1000) == -1


@pytest.mark.parametrize("weights", [(3, 1), (1, 1), (5, 2, 1), (0.5, 1.5)])
def test_byte_split_follows_weights_in_every_window(weights):
    """3:1 keeps within ±3 % of 75/25 of the bytes over every window of
    ~1 s of traffic at 10 Mbit/s (~1000 packets of mixed sizes)."""
    rng = random.Random(7)
    s = make(weights)
    picks = []
    for _ in range(20000):
        size = rng.choice([64, 576, 1200, 1420]) if rng.random() < 0.5 else rng.randint(40, 1440)
        picks.append((pick(s, size), size))
    total_w = sum(weights)
    window = 1000
    for start in range(0, len(picks) - window, 250):
        per = [0] * len(weights)
        for idx, size in picks[start:start + window]:
            per[idx] += size
        total = sum(per)
        for i, w in enumerate(weights):
            assert abs(per[i] / total - w / total_w) <= 0.03, (start, per)


def test_interleaves_instead_of_bursting():
    s = make([3, 1])
    seq = [pick(s, 1000) for _ in range(16)]
    # the light path appears once in every four packets, never two in a row
    for i in range(0, 16, 4):
        assert seq[i:i + 4].count(1) == 1
    assert all(not (a == 1 and b == 1) for a, b in zip(seq, seq[1:]))


def test_path_leaving_sends_its_share_to_the_others():
    s = make([1, 1, 1])
    for _ in range(30):
        pick(s, 1000)
    lib.mpt_sched_set(s, 1, 1, 0)
    picks = [pick(s, 1000) for _ in range(100)]
    assert 1 not in picks
    assert picks.count(0) == picks.count(2) == 50


def test_joining_path_gets_no_catch_up_burst():
    s = make([1, 1])
    for _ in range(1000):
        pick(s, 1000)
    lib.mpt_sched_set(s, 2, 1, 1)
    picks = [pick(s, 1000) for _ in range(30)]
    assert picks.count(2) == 10  # its fair third, from the start


def test_long_run_keeps_precision():
    """Virtual times are rebased; the split stays exact after 10^8 bytes·weight."""
    s = make([1000, 1])
    for _ in range(200000):
        pick(s, 1500)
    picks = [pick(s, 1500) for _ in range(1001)]
    assert picks.count(1) in (1, 2)


# -- rate caps and pacing (both modes) ----------------------------------------

def capped(rate_bps, burst=0, mode=None, n=1):
    s = make([1] * n, mode)
    for i in range(n):
        lib.mpt_sched_set_rate(s, i, rate_bps, burst)
    return s


@pytest.mark.parametrize("mode", [lib.MPT_SCHED_WEIGHTED, lib.MPT_SCHED_AUTO])
@pytest.mark.parametrize("rate", [1 * MBIT, 7.3 * MBIT, 20 * MBIT, 100 * MBIT, 940 * MBIT])
def test_rate_cap_holds_within_one_percent_over_a_second(rate, mode):
    s = capped(rate, mode=mode)
    # from a full bucket: at most one bucket (2 ms, at least 3000 B) above the rate
    per, waits = greedy(s, 1.0)
    burst = max(rate / 8 * 0.002, lib.MPT_SCHED_MIN_BURST)
    assert waits > 0
    assert rate / 8 <= per[0] <= rate / 8 + burst + MTU
    # sustained: the next second, within 1 % (the bucket's 3000 B alone are
    # 2.4 % of a second at 1 Mbit/s, hence not counted twice)
    per, waits = greedy(s, 1.0, start=SEC)
    assert abs(mbit(per[0]) - rate / MBIT) <= 0.01 * rate / MBIT


@pytest.mark.parametrize("overhead", [28, 48])
def test_rate_counts_each_packet_with_the_paths_header_bytes(overhead):
    """A path's outer headers count against its rate: 20 Mbit/s of IP packets
    on the link, whatever the packet size; a larger overhead than the cap
    allows is cut to it."""
    for size in (100, 1200):
        s = capped(20 * MBIT)
        lib.mpt_sched_set_overhead(s, 0, overhead)
        greedy(s, 1.0, size=size)                      # spend the first bucket
        per, _ = greedy(s, 1.0, size=size, start=SEC)
        wire = per[0] * (size + overhead) / size
        assert abs(mbit(wire) - 20) <= 0.2, (size, mbit(per[0]), mbit(wire))
    lib.mpt_sched_set_overhead(s, 0, 10**6)
    assert s.path[0].overhead == lib.MPT_SCHED_MAX_OVERHEAD
    lib.mpt_sched_set_overhead(s, lib.MPT_MAX_PATHS, 28)   # no such path: ignored


def test_weights_count_the_header_bytes_too():
    """1:1 weights over an IPv4 and an IPv6 path: equal bytes on the links,
    not equal datagram bytes."""
    s = make([1, 1])
    lib.mpt_sched_set_overhead(s, 0, 28)
    lib.mpt_sched_set_overhead(s, 1, 48)
    per = {}
    for _ in range(10000):
        r = pick(s, 100)
        per[r] = per.get(r, 0) + 100
    wire = [per[0] * 128 / 100, per[1] * 148 / 100]
    assert abs(wire[0] - wire[1]) <= 148, wire


@pytest.mark.parametrize("rate", [12 * MBIT, 7.3 * MBIT, 0.3 * MBIT, 999.9 * MBIT])
@pytest.mark.parametrize("size", [64, 1000, 1500, 9000])
def test_retry_ns_is_exact(rate, size):
    s = capped(rate)
    now = 1_000_000_007
    while True:                     # empty the bucket
        r, retry = pick_at(s, size, now)
        if r == WAIT:
            break
        assert r == 0
    for _ in range(50):
        assert retry > now
        r, again = pick_at(s, size, retry - 1)
        assert (r, again) == (WAIT, retry)         # one ns early: still no room
        r, _ = pick_at(s, size, retry)
        assert r == 0                              # exactly then: room
        now = retry
        r, retry = pick_at(s, size, now)
        assert r == WAIT                           # and only for that one packet
    # steady state: packets are spaced by their transmission time at the rate
    gap = size * 8 * SEC / rate
    assert abs((retry - now) - gap) <= 1


def test_pacing_spaces_mtu_packets_by_their_time_at_the_rate():
    s = capped(12 * MBIT)           # 1500 B at 12 Mbit/s = exactly 1 ms
    times, now = [], 0
    while len(times) < 20:
        r, retry = pick_at(s, MTU, now)
        if r == WAIT:
            now = retry
        else:
            times.append(now)
    gaps = {b - a for a, b in zip(times, times[1:])}
    # the 3000-byte default bucket sends two at once, then one per ms
    assert times[:2] == [0, 0] and gaps == {0, MS}
    assert times[2] == MS


@pytest.mark.parametrize("rate,burst,expect", [
    (100 * MBIT, 0, 16),      # default: 2 ms = 25000 B
    (1 * MBIT, 0, 2),         # default floor: 3000 B
    (100 * MBIT, 10000, 6),   # asked for
    (100 * MBIT, 1000, 1),    # smaller than a packet: one packet fits a full bucket
])
def test_bucket_size(rate, burst, expect):
    s = capped(rate, burst)
    burst_n = 0
    while pick(s, MTU, 5 * SEC) == 0:
        burst_n += 1
    assert burst_n == expect
    # an idle bucket fills up to its size, never beyond
    burst_n = 0
    while pick(s, MTU, 500 * SEC) == 0:
        burst_n += 1
    assert burst_n == expect


def test_rate_change_keeps_the_bytes_owed():
    s = capped(8 * MBIT, 3000)      # 1 byte per µs
    for _ in range(2):
        assert pick(s, MTU, 0) == 0
    r, retry = pick_at(s, MTU, 0)
    # two packets emptied the 3000 B bucket: 1.5 ms until 1500 B fit again
    assert (r, retry) == (WAIT, 1500 * 1000)
    lib.mpt_sched_set_rate(s, 0, 16 * MBIT, 3000)
    r, retry = pick_at(s, MTU, 0)
    assert (r, retry) == (WAIT, 750 * 1000)    # the same bytes, at the new rate
    lib.mpt_sched_set_rate(s, 0, 0, 0)         # cap removed: no pacing at all
    assert [pick(s, MTU, 0) for _ in range(100)] == [0] * 100
    lib.mpt_sched_set_rate(s, 0, 8 * MBIT, 3000)  # a new cap starts with a full bucket
    assert [pick(s, MTU, 0) for _ in range(3)] == [0, 0, WAIT]


def test_time_going_backwards_gives_no_credit():
    s = capped(12 * MBIT)
    assert [pick(s, MTU, 10 * SEC) for _ in range(3)] == [0, 0, WAIT]
    r, retry = pick_at(s, MTU, 3 * SEC)        # clock stepped back
    assert (r, retry) == (WAIT, 10 * SEC + MS)
    assert pick(s, MTU, 10 * SEC + MS) == 0
    # a packet sent at a stepped-back time is charged as of the latest time seen
    s = capped(12 * MBIT)
    assert pick(s, MTU, 10 * SEC) == 0
    assert pick(s, MTU, 3 * SEC) == 0
    assert pick_at(s, MTU, 10 * SEC) == (WAIT, 10 * SEC + MS)


@pytest.mark.parametrize("now", [-(2 ** 63), -1, 0, 2 ** 62, 2 ** 63 - 1])
def test_extreme_times_and_sizes(now):
    s = capped(1 * MBIT, 0, n=2)
    lib.mpt_sched_set_rate(s, 1, lib.MPT_SCHED_MIN_RATE_BPS, 0)
    for size in (0, 1, MTU, 2 ** 32 - 1, MTU):
        r, retry = pick_at(s, size, now)
        assert r in (0, 1) or (r == WAIT and (retry > now or retry == 2 ** 63 - 1))
    r, retry = pick_at(s, 2 ** 32 - 1, now)
    assert r == WAIT and retry > now or retry == 2 ** 63 - 1   # saturates instead of wrapping


def test_garbage_settings_are_harmless():
    s = make([1, 1])
    for bad in (math.nan, math.inf, -math.inf, -5.0):
        lib.mpt_sched_set_rate(s, 0, bad, bad)
        lib.mpt_sched_set_measure(s, 0, bad, bad)
        lib.mpt_sched_set(s, 2, bad, 1)
        assert not s.path[2].active
    for idx in (-1, lib.MPT_MAX_PATHS, 2 ** 31 - 1, -2 ** 31):
        lib.mpt_sched_set(s, idx, 1, 1)
        lib.mpt_sched_set_rate(s, idx, MBIT, 0)
        lib.mpt_sched_set_measure(s, idx, MBIT, 1000)
    lib.mpt_sched_set_mode(s, 77)       # unknown mode: weighted
    assert s.mode == lib.MPT_SCHED_WEIGHTED
    picks = [pick(s, 1000) for _ in range(10)]
    assert picks.count(0) == picks.count(1) == 5   # still plain 1:1, unpaced
    # a tiny rate is raised to the minimum rather than stalling for ever
    lib.mpt_sched_set_rate(s, 0, 1e-9, 0)
    assert s.path[0].ns_per_byte == pytest.approx(8e9 / lib.MPT_SCHED_MIN_RATE_BPS)


def test_absurd_rates_keep_the_schedule_finite():
    """Huge rates are cut to MPT_SCHED_MAX_RATE_BPS: sums of them stay
    finite, so no virtual time becomes inf or NaN."""
    s = make([1, 1, 1], lib.MPT_SCHED_AUTO)
    for i in range(3):
        lib.mpt_sched_set_measure(s, i, 1.7e308, 1000)
    lib.mpt_sched_set_rate(s, 0, 1.7e308, 1.7e308)
    assert s.path[1].capacity_bps == lib.MPT_SCHED_MAX_RATE_BPS
    picks = [pick(s, 9000, k) for k in range(3000)]
    assert sorted(set(picks)) == [0, 1, 2]
    assert all(math.isfinite(s.path[i].vtime) for i in range(3))
    assert abs(picks.count(0) - picks.count(2)) <= 1


# -- weighted mode with caps --------------------------------------------------

def test_weighted_skips_a_capped_path_and_others_take_its_share():
    s = make([1, 1, 2])
    lib.mpt_sched_set_rate(s, 0, 10 * MBIT, 0)
    per = offered(s, 100 * MBIT)
    assert "drop" not in per
    assert mbit(per[0]) == pytest.approx(10, rel=0.01)
    # the rest by the others' weights, 1:2
    assert per[2] / per[1] == pytest.approx(2, rel=0.01)


def test_weighted_capped_path_gets_no_catch_up_credit():
    s = make([1, 1])
    lib.mpt_sched_set_rate(s, 0, 10 * MBIT, 0)
    offered(s, 100 * MBIT)                      # path 0 skipped thousands of times
    per = offered(s, 8 * MBIT, start=SEC)       # now the cap does not bind
    assert per[0] == pytest.approx(per[1], abs=MTU)   # plain 1:1 again, no burst to catch up
    seq = [pick(s, MTU, 3 * SEC + k * 10 * MS) for k in range(20)]
    assert seq[:2].count(0) == 1 and seq.count(0) == 10


def test_weighted_waits_only_when_every_active_path_is_capped_and_empty():
    s = make([1, 1, 1])
    lib.mpt_sched_set_rate(s, 0, 12 * MBIT, MTU)   # 1 ms per packet
    lib.mpt_sched_set_rate(s, 1, 6 * MBIT, MTU)    # 2 ms per packet
    lib.mpt_sched_set(s, 2, 1, 0)                  # uncapped, but not active
    assert sorted(pick(s, MTU, 0) for _ in range(2)) == [0, 1]
    r, retry = pick_at(s, MTU, 0)
    assert (r, retry) == (WAIT, MS)               # the sooner of the two
    assert pick(s, MTU, MS) == 0
    r, retry = pick_at(s, MTU, MS)
    assert (r, retry) == (WAIT, 2 * MS)
    lib.mpt_sched_set(s, 2, 1, 1)                  # an uncapped path: never WAIT
    assert [pick(s, MTU, MS) for _ in range(5)] == [2] * 5


def test_weighted_ignores_measurements():
    s = make([1, 1])
    lib.mpt_sched_set_measure(s, 0, 1 * MBIT, 1000)
    lib.mpt_sched_set_measure(s, 1, 100 * MBIT, 50000)
    per = offered(s, 50 * MBIT)
    assert "drop" not in per and per[0] == pytest.approx(per[1], abs=MTU)


# -- auto mode ----------------------------------------------------------------

def auto(*paths):
    """paths: (capacity Mbit/s or 0, delay ms or 0[, weight])."""
    s = make([], lib.MPT_SCHED_AUTO)
    for i, spec in enumerate(paths):
        cap, delay = spec[0], spec[1]
        weight = spec[2] if len(spec) > 2 else 1
        lib.mpt_sched_set(s, i, weight, 1)
        lib.mpt_sched_set_measure(s, i, cap * MBIT, delay * 1000)
    return s


def test_auto_uses_only_the_lowest_delay_path_while_it_has_room():
    s = auto((20, 30), (100, 5))
    per = offered(s, 95 * MBIT)
    assert set(per) == {1}


@pytest.mark.parametrize("load", [110, 119])
def test_auto_spills_exactly_at_capacity(load):
    s = auto((20, 30), (100, 5))
    per = offered(s, load * MBIT)
    assert "drop" not in per
    assert mbit(per[1]) == pytest.approx(100, rel=0.01)
    assert mbit(per[0]) == pytest.approx(load - 100, rel=0.05)


def test_auto_overload_fills_every_path_to_its_capacity_then_waits():
    s = auto((20, 30), (100, 5), (5, 80))
    per = offered(s, 200 * MBIT)
    assert mbit(per[1]) == pytest.approx(100, rel=0.01)
    assert mbit(per[0]) == pytest.approx(20, rel=0.01)
    assert mbit(per[2]) == pytest.approx(5, rel=0.01)
    assert mbit(per["drop"]) == pytest.approx(75, rel=0.02)
    per, waits = greedy(s, 1.0, start=2 * SEC)   # a pacing sender gets exactly the sum
    assert mbit(sum(per.values())) == pytest.approx(125, rel=0.01)


def test_auto_rate_cap_below_capacity_wins():
    s = auto((20, 30), (100, 5))
    lib.mpt_sched_set_rate(s, 1, 50 * MBIT, 0)
    per = offered(s, 60 * MBIT)
    assert mbit(per[1]) == pytest.approx(50, rel=0.01)
    assert mbit(per[0]) == pytest.approx(10, rel=0.05)


def test_auto_equal_delays_share_by_capacity_smoothly():
    s = auto((100, 10), (25, 10.6))     # within 1 ms: one tier
    seq = [pick(s, MTU, k * 240_000) for k in range(5000)]   # 50 Mbit/s
    assert WAIT not in seq
    assert seq.count(1) == 1000         # 25 / 125 of the packets
    for k in range(0, 5000 - 5, 5):     # and interleaved: one in five, never runs
        assert seq[k:k + 5].count(1) == 1
    # overloaded, each is paced at its own capacity
    per = offered(s, 200 * MBIT, start=2 * SEC)
    assert mbit(per[0]) == pytest.approx(100, rel=0.01)
    assert mbit(per[1]) == pytest.approx(25, rel=0.01)


def test_auto_delays_just_outside_the_tolerance_fill_first():
    s = auto((100, 10), (25, 11.01))
    per = offered(s, 50 * MBIT)
    assert set(per) == {0}


def test_auto_tiers_are_anchored_at_their_lowest_delay():
    # 10, 10.8, 11.6 ms: the third is more than 1 ms above the tier's lowest
    s = auto((10, 10), (10, 10.8), (10, 11.6))
    tiers = [s.tier[k] for k in range(s.n)]
    assert [s.order[k] for k in range(s.n)] == [0, 1, 2]
    assert tiers == [0, 0, 1]


def test_auto_path_leaving_and_joining():
    s = auto((20, 30), (100, 5))
    lib.mpt_sched_set(s, 1, 1, 0)                  # the fast path leaves
    per = offered(s, 50 * MBIT)
    assert mbit(per[0]) == pytest.approx(20, rel=0.01) and 1 not in per
    lib.mpt_sched_set(s, 1, 1, 1)                  # and is back
    per = offered(s, 50 * MBIT, start=SEC)
    assert set(per) == {1}
    lib.mpt_sched_set(s, 0, 1, 0)
    lib.mpt_sched_set(s, 1, 1, 0)
    assert pick(s, MTU, 2 * SEC) == NONE


def test_auto_joining_equal_delay_path_gets_no_catch_up_burst():
    s = auto((100, 10), (100, 10))
    lib.mpt_sched_set(s, 1, 1, 0)
    offered(s, 50 * MBIT)                          # path 0 alone for a second
    lib.mpt_sched_set(s, 1, 1, 1)
    seq = [pick(s, MTU, SEC + k * 240_000) for k in range(40)]
    assert seq.count(1) == 20 and all(a != b for a, b in zip(seq, seq[1:]))


def test_auto_unknown_capacity_gets_its_weight_share_of_the_known_total():
    s = auto((100, 5, 2), (0, 30, 1))   # known 100 at weight 2: weight 1 is worth 50
    per = offered(s, 200 * MBIT)
    assert mbit(per[0]) == pytest.approx(100, rel=0.01)
    assert mbit(per[1]) == pytest.approx(50, rel=0.01)
    lib.mpt_sched_set_measure(s, 1, 10 * MBIT, 30_000)   # once measured, that counts
    per = offered(s, 200 * MBIT, start=2 * SEC)
    assert mbit(per[1]) == pytest.approx(10, rel=0.01)


def test_auto_rate_cap_makes_a_path_known():
    s = auto((0, 5), (0, 30))
    lib.mpt_sched_set_rate(s, 0, 40 * MBIT, 0)
    per = offered(s, 200 * MBIT)
    assert mbit(per[0]) == pytest.approx(40, rel=0.01)
    assert mbit(per[1]) == pytest.approx(40, rel=0.01)   # weight 1 of the known 40 at weight 1


def test_auto_nothing_known_is_unpaced_on_the_lowest_delay_tier():
    s = auto((0, 30), (0, 5), (0, 5.5, 3))
    per = offered(s, 1000 * MBIT, seconds=0.1)
    assert "drop" not in per and 0 not in per
    total = per[1] + per[2]
    assert per[1] == pytest.approx(total / 4, abs=MTU)    # split by weight inside the tier


def test_auto_unknown_delay_ranks_last():
    s = auto((10, 0), (10, 50))
    per = offered(s, 15 * MBIT)
    assert mbit(per[1]) == pytest.approx(10, rel=0.01)
    assert mbit(per[0]) == pytest.approx(5, rel=0.05)


def test_auto_wait_retry_is_the_first_path_with_room():
    s = auto((12, 5), (6, 30))
    for path in (0, 0, 1, 1):                      # both 3000 B buckets emptied
        assert pick(s, MTU, 0) == path
    r, retry = pick_at(s, MTU, 0)
    assert (r, retry) == (WAIT, MS)
    assert pick(s, MTU, MS) == 0


def test_auto_no_path_is_none_not_wait():
    s = make([], lib.MPT_SCHED_AUTO)
    assert pick_at(s, MTU, 0) == (NONE, None)
    lib.mpt_sched_set_measure(s, 0, 10 * MBIT, 1000)
    assert pick_at(s, MTU, 0) == (NONE, None)


def test_mode_switch_back_to_weighted_drops_the_measured_pacing():
    s = auto((10, 5), (10, 30))
    lib.mpt_sched_set_mode(s, lib.MPT_SCHED_WEIGHTED)
    per = offered(s, 100 * MBIT)
    assert "drop" not in per and per[0] == pytest.approx(per[1], abs=MTU)


def test_auto_many_paths_stay_within_bounds():
    rng = random.Random(3)
    s = make([], lib.MPT_SCHED_AUTO)
    now = 0
    for step in range(3000):
        i = rng.randrange(lib.MPT_MAX_PATHS)
        what = rng.random()
        if what < 0.3:
            lib.mpt_sched_set(s, i, rng.choice([0, 0.5, 1, 3]), rng.random() < 0.8)
        elif what < 0.6:
            lib.mpt_sched_set_measure(s, i, rng.choice([0, 1e3, 5e6, 1e9]),
                                      rng.choice([0, 900, 1000, 60000]))
        elif what < 0.7:
            lib.mpt_sched_set_rate(s, i, rng.choice([0, 1e6, 1e8]), rng.choice([0, 100, 1e6]))
        now += rng.randrange(0, 200_000)
        r, retry = pick_at(s, rng.choice([0, 64, MTU, 9000]), now)
        actives = [k for k in range(lib.MPT_MAX_PATHS) if s.path[k].active]
        if not actives:
            assert r == NONE
        elif r == WAIT:
            assert retry > now
        else:
            assert r in actives


def _paths(*specs):
    return [SimpleNamespace(index=i, weight=w, usable=up, priority=prio)
            for i, (w, up, prio) in enumerate(specs)]


def _active(*specs):
    return [e.index for e in scheduler.path_table(_paths(*specs)) if e.active]


def test_path_table_activates_only_usable_paths():
    table = scheduler.path_table(_paths((3, True, 0), (1, False, 0)))
    assert [(e.index, e.weight, e.active) for e in table] == [(0, 3, True), (1, 1, False)]


def test_backup_carries_data_only_while_no_better_path_is_usable():
    assert _active((1, True, 0), (1, True, 0), (1, True, 1)) == [0, 1]
    assert _active((1, False, 0), (1, True, 0), (1, True, 1)) == [1]
    assert _active((1, False, 0), (1, False, 0), (1, True, 1)) == [2]
    assert _active((1, False, 0), (1, True, 2), (1, True, 1)) == [2]
    assert _active((1, False, 0), (1, False, 2)) == []


def test_hold_time_configured_wins():
    assert scheduler.hold_time(0.02, [0.01, 0.2]) == 0.02


def test_hold_time_default_without_rtts():
    assert scheduler.hold_time(None, []) == scheduler.DEFAULT_HOLD
    assert scheduler.hold_time(None, [0.03]) == scheduler.DEFAULT_HOLD


def test_hold_time_follows_rtt_spread_and_is_bounded():
    near = scheduler.hold_time(None, [0.010, 0.012])
    far = scheduler.hold_time(None, [0.010, 0.110])
    assert scheduler.MIN_HOLD <= near < far
    assert far == pytest.approx(2 * 0.05 + scheduler.HOLD_MARGIN)
    assert scheduler.hold_time(None, [0.01, 10.0]) == scheduler.MAX_HOLD


# -- auto overflow: beyond the estimates, by capacity, never past a cap -----------

def overflow_picks(s, n, now=0):
    return [lib.mpt_sched_overflow(s, MTU, now) for _ in range(n)]


def test_overflow_splits_by_capacity_over_all_tiers():
    s = auto((20, 30), (100, 5), (5, 80))
    seq = overflow_picks(s, 2500)
    assert [seq.count(i) for i in range(3)] == pytest.approx([400, 2000, 100], abs=2)


def test_overflow_takes_no_tokens():
    s = auto((100, 5),)
    while pick(s, MTU, 0) != WAIT:                # empty the bucket
        pass
    before = pick_at(s, MTU, 0)
    assert overflow_picks(s, 100) == [0] * 100
    assert pick_at(s, MTU, 0) == before


def test_overflow_never_exceeds_a_configured_rate():
    s = auto((20, 30), (100, 5))
    lib.mpt_sched_set_rate(s, 1, 50 * MBIT, 0)    # the cap binds: a hard limit
    assert set(overflow_picks(s, 100)) == {0}
    lib.mpt_sched_set_rate(s, 0, 10 * MBIT, 0)
    assert set(overflow_picks(s, 10)) == {WAIT}
    lib.mpt_sched_set_rate(s, 1, 500 * MBIT, 0)   # cap above the estimate: soft again
    assert set(overflow_picks(s, 10)) == {1}


def test_overflow_gives_an_idle_path_no_burst_credit():
    s = auto((50, 5), (50, 5))
    overflow_picks(s, 1000, now=0)                # both clocks run ahead of now...
    later = 10 * SEC                              # ...and are then left behind by it
    seq = overflow_picks(s, 100, now=later)
    assert seq.count(0) == pytest.approx(50, abs=1)


def test_overflow_is_auto_only():
    s = make([1, 1])
    lib.mpt_sched_set_rate(s, 0, 10 * MBIT, 0)
    assert set(overflow_picks(s, 5)) == {WAIT}
