"""The weighted byte scheduler in C (csrc/mpt_sched.c), through cffi, and
the Python policy around it (mpt/scheduler.py)."""
import random
from types import SimpleNamespace

import pytest

from mpt import scheduler
from mpt._datapath import ffi, lib


def make(weights):
    s = ffi.new("struct mpt_sched *")
    lib.mpt_sched_init(s)
    for i, w in enumerate(weights):
        lib.mpt_sched_set(s, i, w, 1)
    return s


def test_no_active_path_picks_none():
    s = make([])
    assert lib.mpt_sched_pick(s, 1000) == -1
    lib.mpt_sched_set(s, 0, 1, 0)
    assert lib.mpt_sched_pick(s, 1000) == -1


@pytest.mark.parametrize("weights", [(3, 1), (1, 1), (5, 2, 1), (0.5, 1.5)])
def test_byte_split_follows_weights_in_every_window(weights):
    """3:1 keeps within ±3 % of 75/25 of the bytes over every window of
    ~1 s of traffic at 10 Mbit/s (~1000 packets of mixed sizes)."""
    rng = random.Random(7)
    s = make(weights)
    picks = []
    for _ in range(20000):
        size = rng.choice([64, 576, 1200, 1420]) if rng.random() < 0.5 else rng.randint(40, 1440)
        picks.append((lib.mpt_sched_pick(s, size), size))
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
    seq = [lib.mpt_sched_pick(s, 1000) for _ in range(16)]
    # the light path appears once in every four packets, never two in a row
    for i in range(0, 16, 4):
        assert seq[i:i + 4].count(1) == 1
    assert all(not (a == 1 and b == 1) for a, b in zip(seq, seq[1:]))


def test_path_leaving_sends_its_share_to_the_others():
    s = make([1, 1, 1])
    for _ in range(30):
        lib.mpt_sched_pick(s, 1000)
    lib.mpt_sched_set(s, 1, 1, 0)
    picks = [lib.mpt_sched_pick(s, 1000) for _ in range(100)]
    assert 1 not in picks
    assert picks.count(0) == picks.count(2) == 50


def test_joining_path_gets_no_catch_up_burst():
    s = make([1, 1])
    for _ in range(1000):
        lib.mpt_sched_pick(s, 1000)
    lib.mpt_sched_set(s, 2, 1, 1)
    picks = [lib.mpt_sched_pick(s, 1000) for _ in range(30)]
    assert picks.count(2) == 10  # its fair third, from the start


def test_long_run_keeps_precision():
    """Virtual times are rebased; the split stays exact after 10^8 bytes·weight."""
    s = make([1000, 1])
    for _ in range(200000):
        lib.mpt_sched_pick(s, 1500)
    picks = [lib.mpt_sched_pick(s, 1500) for _ in range(1001)]
    assert picks.count(1) in (1, 2)


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
    assert far == pytest.approx(0.110)
    assert scheduler.hold_time(None, [0.01, 10.0]) == scheduler.MAX_HOLD
