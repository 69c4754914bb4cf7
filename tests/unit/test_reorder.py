"""The receiver's per-flow reorder buffer in C (csrc/mpt_reorder.c), through cffi.

Each packet carries the tunnel seq (global, +1 per data packet), its flow
bucket and the bucket's 16-bit flow_seq.  Payload ids (the first 8 bytes)
are the tunnel seq unless a test says otherwise, so `out` lists seqs in
delivery order."""
import random
import struct

import pytest

from mpt._datapath import ffi, lib

MS = 1_000_000
HOLD = 50 * MS
ALIVE = 1000 * MS


class Reorder:
    def __init__(self, slots=64, buckets=4, hold=HOLD, alive=ALIVE, slot_size=64):
        self.ids = ffi.new("uint64_t[]", 200000)
        self.sink = ffi.new("struct mpt_sink *", {"ids": self.ids, "n": 0, "cap": 200000})
        self.r = lib.mpt_reorder_new(slots, buckets, slot_size, hold, alive,
                                     ffi.addressof(lib, "mpt_sink_record"), self.sink)
        assert self.r != ffi.NULL

    def input(self, seq, fseq, now, bucket=0, path=0, payload_id=None, size=16,
              run=0):
        pid = seq if payload_id is None else payload_id
        data = struct.pack("!Q", pid % 2**64) + bytes(size - 8)
        lib.mpt_reorder_input(self.r, seq % 2**64, bucket, fseq % 2**16, path, run,
                              data, len(data), now)

    def heard(self, path, now):
        lib.mpt_reorder_heard(self.r, path, now)

    def tick(self, now):
        lib.mpt_reorder_tick(self.r, now)

    def deadline(self):
        return lib.mpt_reorder_deadline(self.r)

    def bucket(self, b):
        return self.r.buckets[b]

    @property
    def out(self):
        return [self.ids[i] for i in range(self.sink.n)]

    @property
    def stats(self):
        return self.r.stats

    def __del__(self):
        lib.mpt_reorder_free(self.r)


class Sender:
    """Numbers packets as the sender does: seq +1 per packet, flow_seq +1
    per packet of the bucket, both from 0."""

    def __init__(self, seq=0):
        self.seq = seq
        self.fseq = {}

    def send(self, bucket):
        f = self.fseq.get(bucket, 0)
        self.fseq[bucket] = f + 1
        self.seq += 1
        return self.seq - 1, f


# --- construction -------------------------------------------------------------

def test_sizes_are_checked_and_slots_rounded_up():
    fn = ffi.addressof(lib, "mpt_sink_record")
    assert lib.mpt_reorder_new(0, 4, 64, HOLD, ALIVE, fn, ffi.NULL) == ffi.NULL
    assert lib.mpt_reorder_new(32769, 4, 64, HOLD, ALIVE, fn, ffi.NULL) == ffi.NULL
    assert lib.mpt_reorder_new(64, 0, 64, HOLD, ALIVE, fn, ffi.NULL) == ffi.NULL
    assert lib.mpt_reorder_new(64, 4097, 64, HOLD, ALIVE, fn, ffi.NULL) == ffi.NULL
    assert lib.mpt_reorder_new(64, 4, 0, HOLD, ALIVE, fn, ffi.NULL) == ffi.NULL
    r = lib.mpt_reorder_new(100, 3, 64, HOLD, ALIVE, fn, ffi.NULL)
    assert r != ffi.NULL and r.nslots == 128 and r.nbuckets == 3
    lib.mpt_reorder_free(r)
    r = lib.mpt_reorder_new(32768, 1, 8, HOLD, ALIVE, fn, ffi.NULL)
    assert r != ffi.NULL
    lib.mpt_reorder_free(r)


def test_memory_at_datapath_size_is_about_ten_megabytes():
    slots, buckets, size = 4096, lib.MPT_FLOW_BUCKETS, 2048
    r = Reorder(slots=slots, buckets=buckets, slot_size=size)
    total = (slots * size + slots * ffi.sizeof("struct mpt_slot_meta")
             + buckets * slots * ffi.sizeof("uint16_t")
             + buckets * r.r.bitmap_words * 8
             + buckets * ffi.sizeof("struct mpt_reorder_bucket")
             + ffi.sizeof("struct mpt_reorder"))
    assert buckets == 64 and r.r.bitmap_words == 64
    assert 8.5e6 < total < 10e6


# --- in order, duplicates, gaps -------------------------------------------------

def test_in_order_passes_straight_through():
    r = Reorder()
    for s in range(10):
        r.input(s, s, 0)
    assert r.out == list(range(10))
    assert r.stats.held == 0 and r.stats.delivered == 10


def test_interleaved_flows_in_order_are_never_held():
    r = Reorder()
    tx = Sender()
    for i in range(300):
        seq, f = tx.send(i % 3)
        r.input(seq, f, 0, bucket=i % 3, path=i % 2)
        assert r.sink.n == i + 1        # delivered during its own input call
    assert r.out == list(range(300))
    assert r.stats.held == 0


def test_a_fresh_session_expects_flow_seq_zero():
    """The first packet of a bucket with flow_seq 1 waits for 0, which is
    still on its way over another live path."""
    r = Reorder()
    r.heard(0, 0)
    r.input(1, 1, 0, path=1)
    assert r.out == []
    r.input(0, 0, 1 * MS, path=0)
    assert r.out == [0, 1]
    assert r.stats.skipped == 0


def test_out_of_order_is_released_in_order():
    r = Reorder()
    r.input(0, 0, 0)
    r.input(2, 2, 1, path=1)
    r.input(3, 3, 2, path=1)
    assert r.out == [0]
    r.input(1, 1, 3, path=0)
    assert r.out == [0, 1, 2, 3]
    assert r.stats.held == 2


def test_duplicates_are_dropped_and_counted():
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(0, 0, 1, path=0)        # already delivered
    r.input(2, 2, 2, path=1)
    r.input(2, 2, 3, path=1)        # already held
    r.input(1, 1, 4, path=0)
    r.input(2, 2, 5, path=1)        # delivered from the buffer
    assert r.out == [0, 1, 2]
    assert r.stats.duplicates == 3 and r.stats.late == 0


def test_single_live_path_gap_is_a_loss_at_once():
    """On one FIFO path a gap can never fill: nothing waits."""
    r = Reorder()
    r.input(0, 0, 0)
    r.input(2, 2, 1 * MS)
    assert r.out == [0, 2]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1
    assert r.deadline() == -1


def test_gap_released_after_hold_time():
    """Path 0 stays live but brings nothing newer: only the timer helps."""
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 10 * MS, path=1)
    r.tick(10 * MS + HOLD - 1)
    assert r.out == [0]
    assert r.deadline() == 10 * MS + HOLD
    r.tick(10 * MS + HOLD)
    assert r.out == [0, 2]
    assert r.stats.timeouts == 1 and r.stats.skipped == 1
    assert r.deadline() == -1


def test_late_packet_after_skip_is_dropped_as_late():
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 0, path=1)
    r.tick(HOLD)
    r.input(1, 1, HOLD + 1, path=0)
    assert r.out == [0, 2]
    assert r.stats.late == 1 and r.stats.duplicates == 0


def test_loss_proven_by_every_live_path_costs_no_hold_time():
    """Paths are FIFO: once each live path delivered the held packet's seq
    or a newer one, the gap before it is lost and is skipped at once."""
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(1, 1, 0, path=1)
    # 2 was sent on path 0 and lost; 3 on path 1 and 4 on path 0 arrive
    r.input(3, 3, 1 * MS, path=1)
    assert r.out == [0, 1]          # path 0 may still bring 2
    r.input(4, 4, 2 * MS, path=0)
    assert r.out == [0, 1, 3, 4]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1


def test_proof_releases_gap_by_gap():
    """Two gaps in one bucket: the paths' progress proves the first one
    lost but not yet the second."""
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 0, path=1)        # 1 missing
    r.input(4, 4, 0, path=1)        # 3 missing
    r.input(5, 0, 0, bucket=1, path=0)  # another flow takes path 0 past both
    assert r.out == [0, 5, 2, 4]
    assert r.stats.skipped == 2


def test_proof_stops_at_the_first_unproven_gap():
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 0, path=1)        # 1 missing
    r.input(5, 4, 0, path=1)        # 3 missing (it is seq 4)
    r.input(3, 0, 0, bucket=1, path=0)  # path 0 at seq 3: 1 lost, 3 may still come
    assert r.out == [0, 3, 2]
    assert r.bucket(0).next == 3 and r.bucket(0).nheld == 1
    r.input(4, 3, 0, path=0)        # ...and it does
    assert r.out == [0, 3, 2, 4, 5]
    assert r.stats.skipped == 1 and r.stats.late == 0


def test_idle_but_heard_path_still_holds_the_gap():
    """A path that carried no data but is alive (control packets) may still
    bring the missing packet: no early skip."""
    r = Reorder()
    r.input(0, 0, 0, path=0)
    r.heard(1, 0)
    r.input(2, 2, 1 * MS, path=0)   # 1 is on its way over path 1
    assert r.out == [0]
    r.input(1, 1, 5 * MS, path=1)
    assert r.out == [0, 1, 2]
    assert r.stats.skipped == 0


def test_a_silent_path_stops_counting_after_the_alive_window():
    r = Reorder(alive=10 * MS)
    r.heard(1, 0)
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 5 * MS, path=0)   # path 1 may still bring 1
    assert r.out == [0]
    r.tick(10 * MS)                 # 10 ms silent: still alive
    assert r.out == [0]
    r.tick(10 * MS + 1)             # no longer: path 0 alone proves the loss
    assert r.out == [0, 2]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1


def test_heard_upto_lets_a_probe_only_path_prove_a_loss():
    """A control packet reporting the peer's next seq tells that nothing
    older is still on its way over that path."""
    r = Reorder()
    r.heard(1, 0)
    r.input(0, 0, 0, path=0)
    r.input(2, 2, 1 * MS, path=0)   # 1 missing; path 1 carried no data
    lib.mpt_reorder_heard_upto(r.r, 1, 1, 2 * MS)   # sent before 1: proves nothing
    assert r.out == [0]
    lib.mpt_reorder_heard_upto(r.r, 1, 2, 3 * MS)   # sent after 1
    assert r.out == [0, 2]
    assert r.stats.timeouts == 0 and r.stats.skipped == 1
    lib.mpt_reorder_heard_upto(r.r, 1, 1, 4 * MS)   # never moves a frontier back
    assert r.r.frontier[1] == 2


# --- per flow ------------------------------------------------------------------

def test_loss_in_one_flow_never_holds_back_another():
    r = Reorder()
    r.input(0, 0, 0, bucket=0, path=0)
    # seq 1 (bucket 0, flow_seq 1) lost; seq 2 waits behind it
    r.input(2, 2, 1 * MS, bucket=0, path=1)
    assert r.out == [0] and r.bucket(0).nheld == 1
    for i in range(100):            # bucket 1 streams over path 1 meanwhile
        r.input(3 + i, i, 2 * MS + i, bucket=1, path=1)
        assert r.out[-1] == 3 + i   # delivered during its own input call
    assert r.stats.held == 1        # only bucket 0's packet ever waited
    assert r.bucket(0).nheld == 1   # path 0 may still bring seq 1
    r.input(103, 100, 3 * MS, bucket=1, path=0)
    assert r.out[-2:] == [103, 2]   # path 0 past seq 2: bucket 0's loss proven
    assert r.stats.timeouts == 0 and r.stats.skipped == 1


def test_flow_on_one_path_loss_proven_when_other_paths_are_past():
    """Bucket 0 uses path 0 only, bucket 1 path 1 only.  A loss on path 0
    costs no hold time once path 1 has delivered something newer."""
    r = Reorder()
    tx = Sender()
    now = 0

    def send(bucket, path, lost=False):
        nonlocal now
        seq, f = tx.send(bucket)
        now += MS
        if not lost:
            r.input(seq, f, now, bucket=bucket, path=path)
        return seq

    send(0, 0)
    send(1, 1)
    send(0, 0, lost=True)
    a = send(0, 0)              # behind the loss; path 1 is not past it yet
    assert a not in r.out
    b = send(1, 1)              # path 1 passes it: proven at once
    assert r.out[-2:] == [b, a]
    # path 1 already ahead: the next loss is proven on arrival
    send(0, 0, lost=True)
    seq, f = tx.send(0)         # on the slow path
    c = send(1, 1)              # on the fast path, arrives first
    r.input(seq, f, now + 1, bucket=0, path=0)
    assert r.out[-2:] == [c, seq]
    assert r.stats.timeouts == 0 and r.stats.skipped == 2
    assert r.r.nheld == 0 and r.deadline() == -1


def test_each_bucket_times_out_on_its_own():
    r = Reorder()
    r.heard(2, 0)                   # a live path without data: no proofs
    r.input(0, 0, 0, bucket=0)
    r.input(2, 2, 10 * MS, bucket=0, path=1)    # bucket 0 holds from 10 ms
    r.input(3, 1, 20 * MS, bucket=1, path=1)    # bucket 1 holds from 20 ms
    assert r.deadline() == 10 * MS + HOLD
    r.tick(10 * MS + HOLD)
    assert r.out == [0, 2]
    assert r.deadline() == 20 * MS + HOLD
    r.tick(20 * MS + HOLD - 1)
    assert r.out == [0, 2]
    r.tick(20 * MS + HOLD)
    assert r.out == [0, 2, 3]
    assert r.stats.timeouts == 2 and r.deadline() == -1


# --- deadline ------------------------------------------------------------------

def test_deadline_is_the_earliest_first_held_packet_over_all_buckets():
    hold = 1000 * MS
    r = Reorder(buckets=64, hold=hold, alive=10 * hold)
    r.heard(2, 0)                   # no proofs: only the timer releases
    assert r.deadline() == -1
    arrivals = {b: (37 * b) % 64 * MS + 1 for b in range(64)}   # all different
    for b, t in arrivals.items():
        r.input(1000 + b, 1, t, bucket=b, path=1)   # flow_seq 0 missing everywhere
    assert r.r.nheld == 64
    order = sorted(arrivals, key=arrivals.get)
    for n, b in enumerate(order):
        assert r.deadline() == arrivals[b] + hold
        r.tick(arrivals[b] + hold)
        assert r.bucket(b).nheld == 0 and r.r.nheld == 63 - n
    assert r.deadline() == -1 and r.stats.timeouts == 64


def test_deadline_follows_the_first_held_packet_not_the_oldest():
    r = Reorder()
    r.heard(2, 0)
    r.input(0, 0, 0)
    r.input(4, 4, 5 * MS, path=1)   # 3 missing, held since 5 ms
    r.input(2, 2, 10 * MS, path=1)  # 1 missing, held since 10 ms: first in line
    assert r.deadline() == 10 * MS + HOLD
    r.tick(10 * MS + HOLD)          # both gaps time out in one tick
    assert r.out == [0, 2, 4]
    assert r.stats.timeouts == 2 and r.deadline() == -1


def test_deadline_after_set_hold():
    r = Reorder()
    r.heard(2, 0)
    r.input(2, 2, 10 * MS, path=1)
    lib.mpt_reorder_set_hold(r.r, 5 * MS, ALIVE)
    assert r.deadline() == 15 * MS
    r.tick(15 * MS)
    assert r.out == [2]


# --- storage -------------------------------------------------------------------

def test_bucket_window_overflow_jumps_and_releases_in_order():
    """A flow_seq beyond the bucket's window (a run of losses longer than
    the window): what is held goes out in order, the rest is given up and
    the new packet is delivered at once."""
    r = Reorder(slots=16)
    r.input(0, 0, 0)
    r.input(3, 3, 0, path=1)
    r.input(5, 5, 0, path=1)
    r.input(1000, 1000, 0, path=1)
    assert r.out == [0, 3, 5, 1000]
    assert r.stats.overflows == 1 and r.stats.skipped == 2 + 1 + 994
    r.input(999, 999, 0, path=0)    # still on its way: too late now
    r.input(1001, 1001, 0, path=1)
    assert r.out == [0, 3, 5, 1000, 1001]
    assert r.stats.late == 1 and r.r.nheld == 0


def test_window_overflow_gives_up_oldest_gap():
    r = Reorder(slots=8)
    r.input(0, 0, 0)
    for s in range(2, 9):           # 1 missing, window of 8 fills
        r.input(s, s, 0, path=1)
    assert r.out == [0]
    r.input(9, 9, 0, path=1)        # needs room: 1 is given up
    assert r.out == [0] + list(range(2, 10))
    assert r.stats.overflows == 1 and r.stats.skipped == 1


def test_slot_taken_by_another_flow_releases_only_that_flow():
    r = Reorder(slots=8)
    r.input(0, 0, 0, bucket=0, path=0)
    # seq 1 (bucket 0) lost; seq 2 waits in slot 2
    r.input(2, 2, 0, bucket=0, path=1)
    r.input(3, 0, 0, bucket=1, path=1)
    # seq 4 (bucket 1) on its way over path 0; 5..9 wait in slots 5..7, 0, 1
    for s in range(5, 10):
        r.input(s, s - 3, 0, bucket=1, path=1)
    assert r.out == [0, 3]
    r.input(10, 7, 0, bucket=1, path=1)     # slot 2: bucket 0 gives up seq 1
    assert r.out == [0, 3, 2]
    assert r.stats.overflows == 1 and r.bucket(1).nheld == 6
    r.input(4, 1, 0, bucket=1, path=0)
    assert r.out == [0, 3, 2] + list(range(4, 11))
    assert r.stats.skipped == 1 and r.r.nheld == 0


def test_slot_taken_by_own_flow_then_delivered_without_copy():
    r = Reorder(slots=8)
    r.input(0, 0, 0, bucket=0, path=0)
    r.input(2, 2, 0, bucket=0, path=1)      # flow_seq 1 missing, held in slot 2
    for s in range(3, 10):
        r.input(s, s - 3, 0, bucket=1, path=1)  # in order: no slots used
    held = r.stats.held
    r.input(10, 3, 0, bucket=0, path=1)     # slot 2 is needed: release bucket 0 to 2
    assert r.out == [0] + list(range(3, 10)) + [2, 10]
    assert r.stats.overflows == 1 and r.stats.held == held


def test_slot_eviction_can_make_the_new_packet_late():
    """Garbage: a held packet with a higher flow_seq but an older seq owns
    the slot; releasing it leaves the new packet behind."""
    r = Reorder(slots=8)
    r.input(0, 0, 0, path=0)
    r.input(2, 5, 0, path=1)        # slot 2, flow_seq 5
    r.input(10, 3, 0, path=1)       # slot 2 again, flow_seq 3 < 5
    assert r.out == [0, 2]
    assert r.stats.late == 1 and r.stats.overflows == 1 and r.r.nheld == 0


def test_memory_is_bounded_by_the_slots():
    """Every other packet lost over 8 flows: everything is delivered or held
    and nothing more than the pool is ever held."""
    r = Reorder(slots=32, buckets=8)
    r.heard(1, 0)                   # no proofs: storage is the limit
    tx = Sender()
    sent = 0
    for i in range(20000):
        seq, f = tx.send(i % 8)
        if (i // 8) % 2:            # every other packet of each flow arrives
            r.input(seq, f, 0, bucket=i % 8, path=0)
            sent += 1
        assert r.r.nheld <= 32
    assert sum(r.bucket(b).nheld for b in range(8)) == r.r.nheld
    assert r.stats.delivered + r.r.nheld == sent
    assert r.stats.duplicates == 0 and r.stats.late == 0


def test_too_big_is_refused():
    r = Reorder(slot_size=32)
    r.input(0, 0, 0, size=64)
    assert r.out == [] and r.stats.too_big == 1


# --- sequence spaces ----------------------------------------------------------

def test_tunnel_seq_wraps_at_2_to_the_64():
    r = Reorder()
    top = 2**64 - 3
    seqs = [top, top + 2, top + 1, top + 3, top + 5, top + 4, top + 6]  # top+3 == 0
    for i, s in enumerate(seqs):
        r.input(s, s - top, i, path=i % 2)
    assert r.out == [(top + k) % 2**64 for k in range(7)]
    assert r.stats.late == 0 and r.stats.skipped == 0


def test_tunnel_seq_wrap_with_proof_across_it():
    r = Reorder()
    top = 2**64 - 2
    r.input(top, 0, 0, path=0)
    r.input(top + 2, 2, 0, path=1)          # seq 0 after the wrap, flow_seq 1 missing
    r.input(top + 3, 0, 0, bucket=1, path=0)  # path 0 at seq 1: past it
    assert r.out == [top, 1, 0]
    assert r.stats.skipped == 1 and r.stats.timeouts == 0


def test_flow_seq_wraps_at_2_to_the_16():
    r = Reorder()
    data = bytes(16)
    for s in range(65533):          # in order up to the wrap
        lib.mpt_reorder_input(r.r, s, 0, s, 0, 0, data, 16, 0)
    assert r.stats.delivered == 65533 and r.bucket(0).next == 65533
    seqs = [65533 + k for k in (0, 2, 1, 3, 5, 4, 6)]   # each path stays FIFO
    for i, s in enumerate(seqs):
        r.input(s, s, i, path=i % 2)
    assert r.out[65533:] == [65533, 65534, 65535, 65536, 65537, 65538, 65539]
    assert r.bucket(0).next == 65540 - 65536
    assert r.stats.late == 0 and r.stats.skipped == 0 and r.stats.held == 2
    r.input(65536, 0, 10, path=1)   # a duplicate after the wrap
    assert r.stats.duplicates == 1


@pytest.mark.parametrize("jump", [2**20, 2**40, 2**62, 2**63 - 1])
def test_far_tunnel_seq_keeps_the_proof_working(jump):
    """A sequence far ahead on one path is just a frontier far ahead."""
    r = Reorder()
    r.input(0, 0, 0, bucket=0, path=0)
    r.input(2, 1, 0, bucket=1, path=1)      # bucket 1's flow_seq 0 missing
    r.input(jump, 1, 0, bucket=0, path=1)
    assert r.out == [0, jump]               # path 0 may still bring seq 1
    r.input(jump + 1, 2, 0, bucket=0, path=0)
    assert r.out == [0, jump, jump + 1, 2]
    assert r.stats.skipped == 1 and r.stats.timeouts == 0 and r.r.nheld == 0


def test_one_forged_far_seq_does_not_pin_a_path_frontier():
    """The frontier is the latest seq on a path, so the next genuine packet
    undoes a forged one; taking the maximum would prove gaps that are not."""
    r = Reorder()
    r.input(0, 0, 0, bucket=0, path=0)
    r.input(1, 1, 0, bucket=0, path=1)
    r.input(2**62, 0, 0, bucket=2, path=1)  # forged
    r.input(2, 2, 0, bucket=0, path=1)      # genuine again: path 1 at 2
    # seq 3 (bucket 1) is on its way over path 1; seq 4 arrives on path 0
    r.input(4, 1, 0, bucket=1, path=0)
    assert 4 not in r.out
    r.input(3, 0, 0, bucket=1, path=1)
    assert r.out[-2:] == [3, 4]
    assert r.stats.late == 0 and r.stats.skipped == 0


# --- garbage -------------------------------------------------------------------

def test_garbage_flow_seq_far_away_costs_one_jump_not_a_wedged_bucket():
    r = Reorder()
    for s in range(10):
        r.input(s, s, 0)
    r.input(10, 40000, 0, payload_id=999)   # garbage flow_seq, genuine seq
    for s in range(11, 30):                 # the genuine flow goes on
        r.input(s, s - 1, 0)
        assert r.out[-1] == s
    assert r.out == list(range(10)) + [999] + list(range(11, 30))
    assert r.r.nheld == 0


def test_garbage_flow_seq_with_an_old_seq_is_dropped():
    r = Reorder()
    for s in range(10):
        r.input(s, s, 0)
    r.input(5, 40000, 0)            # old seq: behind the release point
    r.input(3, 7000, 0)
    r.input(10, 10, 0)
    assert r.out == list(range(11))
    assert r.stats.duplicates + r.stats.late == 2 and r.r.nheld == 0


def test_garbage_flow_seq_inside_the_window_does_not_wedge():
    """A garbage flow_seq a little ahead sits in the window; the genuine
    flow keeps being delivered at once and the bucket ends empty."""
    r = Reorder()
    r.heard(1, 0)                   # no proofs
    for s in range(5):
        r.input(s, s, 0)
    r.input(5, 30, 0, payload_id=999)
    for s in range(6, 60):
        r.input(s, s - 1, 0)
        assert s in r.out[-2:]      # delivered at once (maybe behind the garbage)
    assert 999 in r.out and r.r.nheld == 0
    genuine = [x for x in r.out if x != 999]
    assert genuine == list(range(5)) + list(range(6, 60))


def test_a_garbage_bucket_number_is_taken_modulo():
    r = Reorder(buckets=4)
    r.input(0, 0, 0, bucket=2**32 - 1)
    assert r.bucket(3).next == 1 and r.out == [0]


@pytest.mark.parametrize("path", [-1, 16, 1000])
def test_a_garbage_path_index_still_delivers(path):
    r = Reorder()
    r.input(0, 0, 0, path=path)
    r.heard(path, 0)
    lib.mpt_reorder_heard_upto(r.r, path, 5, 0)
    assert r.out == [0]


def test_garbage_headers_never_break_the_invariants():
    """Random seqs, buckets and flow_seqs: every packet is delivered, held
    or counted, and memory stays within the pool."""
    rng = random.Random(7)
    r = Reorder(slots=32, buckets=4)
    n = 0
    for i in range(5000):
        seq = rng.choice([rng.getrandbits(64), i, i + rng.randrange(-40, 40)])
        fseq = rng.choice([rng.getrandbits(16), i % 65536, (i + rng.randrange(-40, 40)) % 65536])
        r.input(seq, fseq, i * 1000, bucket=rng.getrandbits(32), path=rng.randrange(-1, 18))
        n += 1
        if i % 7 == 0:
            r.tick(i * 1000)
        assert r.r.nheld <= 32
    st = r.stats
    assert st.delivered + st.duplicates + st.late + r.r.nheld == n
    r.tick(10**12)
    assert r.r.nheld == 0 and st.delivered + st.duplicates + st.late == n


# --- reset ---------------------------------------------------------------------

def test_reset_restarts_every_bucket_at_zero():
    r = Reorder()
    r.input(0, 0, 0, bucket=0, path=0)
    r.input(2, 2, 0, bucket=0, path=1)      # held: 1 may come over path 0
    r.input(3, 0, 0, bucket=1, path=1)
    lib.mpt_reorder_reset(r.r)              # the sender restarted: 2 is discarded
    assert r.r.nheld == 0 and r.deadline() == -1
    r.input(0, 0, 1, bucket=0, payload_id=100)   # not a duplicate: a new session
    r.input(1, 0, 1, bucket=1, payload_id=101)
    r.input(2, 1, 1, bucket=1, payload_id=102)
    assert r.out == [0, 3, 100, 101, 102]
    assert r.stats.duplicates == 0 and r.stats.late == 0


def test_a_path_without_data_in_this_session_proves_nothing():
    """Path 1 carried data before the sender restarted; in the new session it
    carries only probes so far: its old frontier must not prove a loss."""
    r = Reorder()
    r.input(1000, 1000, 0, path=1)
    lib.mpt_reorder_reset(r.r)
    skipped = r.stats.skipped       # stats outlive a reset
    r.heard(1, 1)
    r.input(0, 0, 1, path=0)
    r.input(2, 2, 2, path=0)        # 1 may be on its way over path 1
    assert r.out == [1000, 0]
    r.input(1, 1, 3, path=1)
    assert r.out == [1000, 0, 1, 2] and r.stats.skipped == skipped


def test_reset_forgets_the_paths():
    r = Reorder()
    r.input(0, 0, 0, path=1)
    lib.mpt_reorder_reset(r.r)
    r.input(0, 0, 1, path=0)
    r.input(2, 2, 2, path=0)        # path 1 no longer counts: a loss at once
    assert r.out == [0, 0, 2] and r.stats.timeouts == 0


# --- whole streams ---------------------------------------------------------------

def simulate(seed, n=3000, loss=0.0, dup=0.0, nbuckets=8, slots=1024):
    """FIFO paths with different delays and jitter; ticks at each deadline
    as the datapath does.  Returns (reorder, sent, lost)."""
    rng = random.Random(seed)
    r = Reorder(slots=slots, buckets=nbuckets, hold=30 * MS)
    for p in range(3):              # probes made every path live before data
        r.heard(p, 0)
    tx = Sender()
    delays = [1 * MS, 5 * MS, 20 * MS]
    last_arrival = [0, 0, 0]
    events = []
    sent, lost = {}, set()
    for i in range(n):
        t = i * 50_000              # 20 kpps
        b = rng.randrange(nbuckets)
        seq, f = tx.send(b)
        p = rng.randrange(3)
        sent[seq] = (b, f)
        arrival = max(last_arrival[p], t + delays[p] + rng.randrange(2 * MS))
        last_arrival[p] = arrival   # the path stays FIFO
        if rng.random() < loss:
            lost.add(seq)
            continue
        events.append((arrival, seq, b, f, p))
        if rng.random() < dup:
            events.append((arrival + 1, seq, b, f, p))
    events.sort()
    for arrival, seq, b, f, p in events:
        while 0 <= r.deadline() <= arrival:
            r.tick(r.deadline())
        r.input(seq, f, arrival, bucket=b, path=p)
    r.timeouts_in_stream = r.stats.timeouts
    r.tick(events[-1][0] + HOLD)    # the end: nothing follows the last gaps
    return r, sent, lost


def check_flow_order(out, sent):
    per_bucket = {}
    for seq in out:
        b, f = sent[seq]
        per_bucket.setdefault(b, []).append(seq)
    for seqs in per_bucket.values():
        assert seqs == sorted(seqs)


@pytest.mark.parametrize("seed", range(3))
def test_reordered_stream_without_loss_is_delivered_whole_and_in_flow_order(seed):
    r, sent, _ = simulate(seed)
    out = r.out
    assert sorted(out) == sorted(sent)
    check_flow_order(out, sent)
    assert r.stats.skipped == 0 and r.stats.late == 0 and r.stats.timeouts == 0
    assert r.stats.held > 1000      # the paths did reorder


@pytest.mark.parametrize("seed", range(3))
def test_losses_are_proven_by_the_paths_and_nothing_arrives_too_late(seed):
    """With FIFO paths that all carry traffic, the frontier proof never
    gives up a packet that is still coming, and losses cost no hold time
    (only the gaps at the very end, where nothing follows, time out)."""
    r, sent, lost = simulate(seed, loss=0.03, dup=0.02)
    out = r.out
    assert len(out) == len(set(out))
    assert set(out) == set(sent) - lost
    check_flow_order(out, sent)
    assert r.stats.late == 0
    assert r.stats.duplicates > 0
    # a loss after a flow's last arriving packet has nothing to be skipped for
    last = {}
    for seq in out:
        last[sent[seq][0]] = max(last.get(sent[seq][0], -1), seq)
    assert r.stats.skipped == sum(1 for s in lost if s < last.get(sent[s][0], -1))
    assert r.timeouts_in_stream == 0
    assert r.r.nheld == 0


# -- the sender's run: a flow on one path is never held -------------------------
# Path 1 is live but idle (its frontier proves nothing); the flow is bucket 1.

def test_gap_covered_by_the_run_is_a_loss_at_once():
    r = Reorder()
    r.input(0, 0, 0, path=1)
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(3, 2, MS, path=0, bucket=1, run=1)       # flow_seq 1 went before it on path 0
    assert r.out == [0, 1, 3]
    assert r.stats.held == 0 and r.stats.skipped == 1 and r.stats.timeouts == 0


def test_two_losses_in_a_row_covered_by_the_run():
    r = Reorder()
    r.input(0, 0, 0, path=1)
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(4, 3, MS, path=0, bucket=1, run=2)
    assert r.out == [0, 1, 4] and r.stats.skipped == 2 and r.stats.held == 0


def test_without_a_run_the_same_gap_waits():
    r = Reorder()
    r.input(0, 0, 0, path=1)
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(3, 2, MS, path=0, bucket=1)
    assert r.out == [0, 1] and r.stats.held == 1


def test_the_run_proves_only_as_far_as_it_reaches():
    """flow_seq 1 and 2 missing, 3 has run 1: 2 is lost, 1 may still come on
    the other path; when it does, 2 is skipped without waiting."""
    r = Reorder()
    r.input(0, 0, 0, path=1)
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(4, 3, MS, path=0, bucket=1, run=1)
    assert r.out == [0, 1] and r.stats.held == 1
    r.input(2, 1, 2 * MS, path=1, bucket=1)
    assert r.out == [0, 1, 2, 4]
    assert r.stats.skipped == 1 and r.stats.timeouts == 0 and r.bucket(1).nheld == 0


def test_a_run_reaching_past_a_held_packet_releases_it_in_order():
    """flow_seq 1 missing, 2 held (it came on path 1), then 3 with run 2 on
    path 0: 1 went on path 0 before 3, so it is lost; 2 and 3 follow."""
    r = Reorder()
    r.input(0, 0, 0, path=2)                          # holds back the frontier proof
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(3, 2, MS, path=1, bucket=1)
    assert r.out == [0, 1]
    r.input(4, 3, 2 * MS, path=0, bucket=1, run=2)
    assert r.out == [0, 1, 3, 4] and r.stats.skipped == 1 and r.bucket(1).nheld == 0


def test_a_run_on_a_duplicate_of_a_held_packet_skips_nothing():
    r = Reorder()
    r.input(0, 0, 0, path=2)                          # holds back the frontier proof
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(3, 2, MS, path=1, bucket=1)               # held behind flow_seq 1
    r.input(3, 2, MS, path=0, bucket=1, run=1)        # the same again, with a run
    assert r.out == [0, 1] and r.stats.duplicates == 1 and r.stats.skipped == 0


def test_runs_above_the_wire_maximum_are_capped():
    r = Reorder()
    r.input(0, 0, 0, path=1)
    r.input(1, 0, 0, path=0, bucket=1)
    r.input(6, 5, MS, path=0, bucket=1, run=200)     # claims more than 3: only 3 count
    assert r.out == [0, 1] and r.stats.held == 1
