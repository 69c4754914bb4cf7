"""The receiver's reorder buffer in C (csrc/mpt_reorder.c), through cffi."""
import struct

import pytest

from mpt._datapath import ffi, lib

MS = 1_000_000
HOLD = 50 * MS
ALIVE = 1000 * MS


class Reorder:
    def __init__(self, slots=64, hold=HOLD, alive=ALIVE, slot_size=64):
        self.ids = ffi.new("uint64_t[]", 100000)
        self.sink = ffi.new("struct mpt_sink *", {"ids": self.ids, "n": 0, "cap": 100000})
        self.r = lib.mpt_reorder_new(slots, slot_size, hold, alive,
                                     ffi.addressof(lib, "mpt_sink_record"), self.sink)
        assert self.r != ffi.NULL

    def input(self, seq, now, path=0, payload_id=None, size=16):
        pid = seq if payload_id is None else payload_id
        data = struct.pack("!Q", pid) + bytes(size - 8)
        lib.mpt_reorder_input(self.r, seq, path, data, len(data), now)

    def tick(self, now):
        lib.mpt_reorder_tick(self.r, now)

    @property
    def out(self):
        return [self.ids[i] for i in range(self.sink.n)]

    @property
    def stats(self):
        return self.r.stats

    def __del__(self):
        lib.mpt_reorder_free(self.r)


def test_in_order_passes_straight_through():
    r = Reorder()
    for s in range(10):
        r.input(s, 0)
    assert r.out == list(range(10))
    assert r.stats.held == 0


def test_first_packet_sets_the_start():
    r = Reorder()
    r.input(1000, 0)
    r.input(1001, 0)
    assert r.out == [1000, 1001]


def test_out_of_order_is_released_in_order():
    r = Reorder()
    r.input(0, 0)
    r.input(2, 1, path=1)
    r.input(3, 2, path=1)
    assert r.out == [0]
    r.input(1, 3, path=0)
    assert r.out == [0, 1, 2, 3]
    assert r.stats.held == 2


def test_duplicates_are_dropped_and_counted():
    r = Reorder()
    r.input(0, 0, path=0)
    r.input(0, 1, path=0)       # already delivered
    r.input(2, 2, path=1)
    r.input(2, 3, path=1)       # already held
    r.input(1, 4, path=0)
    assert r.out == [0, 1, 2]
    assert r.stats.duplicates == 2


def test_single_live_path_gap_is_a_loss_at_once():
    """On one FIFO path a gap can never fill: nothing is held."""
    r = Reorder()
    r.input(0, 0)
    r.input(2, 1 * MS)
    assert r.out == [0, 2]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1


def test_gap_released_after_hold_time():
    """Path 0 stays live but brings nothing newer: only the timer helps."""
    r = Reorder()
    r.input(0, 0, path=0)
    r.input(2, 10 * MS, path=1)
    r.tick(10 * MS + HOLD - 1)
    assert r.out == [0]
    assert lib.mpt_reorder_deadline(r.r) == 10 * MS + HOLD
    r.tick(10 * MS + HOLD)
    assert r.out == [0, 2]
    assert r.stats.timeouts == 1 and r.stats.skipped == 1
    assert lib.mpt_reorder_deadline(r.r) == -1


def test_late_packet_after_skip_is_dropped_as_late():
    r = Reorder()
    r.input(0, 0, path=0)
    r.input(2, 0, path=1)
    r.tick(HOLD)
    r.input(1, HOLD + 1, path=0)
    assert r.out == [0, 2]
    assert r.stats.late == 1 and r.stats.duplicates == 0


def test_loss_proven_by_every_live_path_costs_no_hold_time():
    """Paths are FIFO: once each live path delivered something newer than
    the gap, the gap is lost and is skipped at once."""
    r = Reorder()
    r.input(0, 0, path=0)
    r.input(1, 0, path=1)
    # 2 was sent on path 0 and lost; 3 on path 1 and 4 on path 0 arrive
    r.input(3, 1 * MS, path=1)
    assert r.out == [0, 1]      # path 0 may still bring 2
    r.input(4, 2 * MS, path=0)
    assert r.out == [0, 1, 3, 4]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1


def test_idle_but_heard_path_still_holds_the_gap():
    """A path that carried no data recently but is alive (control packets)
    may still bring the missing packet: no early skip."""
    r = Reorder()
    r.input(0, 0, path=0)
    lib.mpt_reorder_heard(r.r, 1, 0)
    r.input(2, 1 * MS, path=0)  # 1 is on its way over path 1
    assert r.out == [0]
    r.input(1, 5 * MS, path=1)
    assert r.out == [0, 1, 2]
    assert r.stats.skipped == 0


def test_wraps_at_2_to_the_64():
    r = Reorder()
    top = 2**64 - 3
    seqs = [top, top + 2, top + 1, 0, 2, 1, 3]   # top+3 == 0 wraps
    for i, s in enumerate(seqs):
        r.input(s % 2**64, i, path=i % 2)
    assert r.out == [top, top + 1, top + 2, 0, 1, 2, 3]
    assert r.stats.late == 0 and r.stats.skipped == 0


def test_window_overflow_gives_up_oldest_gap():
    r = Reorder(slots=8)
    r.input(0, 0)
    for s in range(2, 9):       # 1 missing, buffer of 8 fills
        r.input(s, 0, path=1)
    assert r.out == [0]
    r.input(9, 0, path=1)       # needs room: 1 is given up
    assert r.out == list(range(0, 1)) + list(range(2, 10))
    assert r.stats.overflows == 1


def test_far_jump_releases_everything_held_in_order():
    r = Reorder(slots=16)
    r.input(0, 0)
    r.input(3, 0, path=1)
    r.input(5, 0, path=1)
    r.input(1000, 0, path=1)
    assert r.out == [0, 3, 5]     # 985..999 may still come over path 0
    r.tick(HOLD)
    assert r.out == [0, 3, 5, 1000]
    assert r.stats.overflows == 1


@pytest.mark.parametrize("jump", [2**20, 2**40, 2**62, 2**63 - 1])
def test_huge_jump_costs_one_pass_not_one_step_per_number(jump):
    """A forged sequence far ahead must not stall the datapath."""
    import time
    r = Reorder(slots=64)
    r.input(0, 0, path=0)
    r.input(3, 0, path=1)
    t = time.monotonic()
    r.input(jump, 0, path=1)
    assert time.monotonic() - t < 0.5
    assert r.out[:2] == [0, 3]
    assert r.r.next >= jump - 64
    r.input(jump + 1, 0, path=1)
    r.tick(HOLD * 2)
    assert r.out[-2:] == [jump, jump + 1]


def test_memory_is_bounded_by_the_slots():
    r = Reorder(slots=32)
    for s in range(1, 100000, 2):   # every other packet lost, all held briefly
        r.input(s, s, path=0)
    assert r.r.nheld <= 32


def test_too_big_is_refused():
    r = Reorder(slot_size=32)
    r.input(0, 0, size=64)
    assert r.out == [] and r.stats.too_big == 1


def test_reset_restarts_sequence_space():
    r = Reorder()
    r.input(500, 0, path=0)
    r.input(502, 0, path=1)     # held: 501 may come over path 0
    lib.mpt_reorder_reset(r.r)  # the sender restarted: 502 is discarded
    r.input(7, 1)
    r.input(8, 1)
    assert r.out == [500, 7, 8]


@pytest.mark.parametrize("seed", range(5))
def test_random_reordering_delivers_each_packet_once_in_order(seed):
    import random
    rng = random.Random(seed)
    r = Reorder(slots=256, alive=1)
    seqs = list(range(2000))
    # reorder within a window of 20, drop 2 %, duplicate 2 %
    arrivals = sorted(seqs, key=lambda s: s + rng.uniform(0, 20))
    arrivals = [s for s in arrivals if rng.random() > 0.02]
    arrivals += [rng.choice(arrivals) for _ in range(40)]
    now = 0
    for s in arrivals:
        now += MS
        r.input(s, now, path=rng.randrange(2))
        r.tick(now)
    r.tick(now + HOLD)
    out = r.out
    assert out == sorted(set(out))          # in order, no duplicate
    assert r.r.nheld == 0
