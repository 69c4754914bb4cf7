"""The anti-replay window in C (csrc/mpt_replay.c), through cffi."""
import random

import pytest

from mpt._datapath import ffi, lib

W = lib.MPT_REPLAY_WINDOW
NEW, SEEN, OLD = lib.MPT_REPLAY_NEW, lib.MPT_REPLAY_SEEN, lib.MPT_REPLAY_TOO_OLD
MAX = 2**64 - 1


class Replay:
    def __init__(self):
        self.r = ffi.new("struct mpt_replay *")
        lib.mpt_replay_reset(self.r)

    def check(self, seq):
        return lib.mpt_replay_check(self.r, seq)

    def update(self, seq):
        return lib.mpt_replay_update(self.r, seq)


class Model:
    """The specification, naively: a set of every accepted sequence."""

    def __init__(self):
        self.top, self.seen = None, set()

    def check(self, seq):
        if self.top is None or seq > self.top:
            return NEW
        if self.top - seq >= W:
            return OLD
        return SEEN if seq in self.seen else NEW

    def update(self, seq):
        v = self.check(seq)
        if v == NEW:
            self.seen.add(seq)
            self.top = seq if self.top is None else max(self.top, seq)
        return v


def test_window_constant():
    assert W == 65536
    assert ffi.sizeof("struct mpt_replay") == 16 + W // 8


def test_fresh_state_accepts_zero_once():
    r = Replay()
    assert r.check(0) == NEW
    assert r.update(0) == NEW
    assert r.check(0) == SEEN
    assert r.update(0) == SEEN
    assert r.update(1) == NEW


@pytest.mark.parametrize("first", [0, 1, 63, 64, W, 12345678, 2**63, MAX])
def test_fresh_state_accepts_any_first_sequence(first):
    r = Replay()
    assert r.update(first) == NEW
    assert r.update(first) == SEEN
    assert r.r.top == first


def test_check_does_not_record():
    r = Replay()
    for _ in range(3):
        assert r.check(5) == NEW
    assert r.r.started == 0
    r.update(10)
    for _ in range(3):
        assert r.check(7) == NEW
        assert r.check(11) == NEW
    assert r.r.top == 10
    assert r.update(7) == NEW
    assert r.check(7) == SEEN


def test_duplicates_in_the_window_are_seen():
    r = Replay()
    for s in range(0, 1000, 3):
        assert r.update(s) == NEW
    for s in range(1000):
        assert r.check(s) == (SEEN if s % 3 == 0 else NEW)
    for s in range(1, 1000, 3):
        assert r.update(s) == NEW
        assert r.update(s) == SEEN


def test_far_late_is_too_old_and_changes_nothing():
    r = Replay()
    r.update(100_000)
    for s in (0, 1, 100_000 - W - 1000):
        assert r.check(s) == OLD
        assert r.update(s) == OLD
    assert r.r.top == 100_000
    assert r.check(100_000 - W + 1) == NEW


@pytest.mark.parametrize("top", [W - 1, W, W + 1, 10 * W + 37, 2**63, MAX])
def test_window_edge_is_exact(top):
    # the newest and the W-1 before it are remembered; W behind is too old
    r = Replay()
    r.update(top)
    assert r.check(top - (W - 1)) == NEW
    if top >= W:
        assert r.check(top - W) == OLD
    assert r.update(top - (W - 1)) == NEW
    assert r.check(top - (W - 1)) == SEEN
    r.update(top - 5)
    if top < MAX:
        r.update(top + 1)   # the edge moves by one: the oldest falls out
        assert r.check(top - (W - 1)) == OLD
        assert r.update(top - (W - 1)) == OLD
        assert r.check(top - (W - 2)) == NEW
        assert r.check(top - 5) == SEEN


def test_full_window_is_remembered_then_slides_out_one_by_one():
    r = Replay()
    for s in range(W):
        assert r.update(s) == NEW
    assert all(r.check(s) == SEEN for s in range(W))
    for k in range(1, 200):
        assert r.update(W - 1 + k) == NEW
        assert r.check(k - 1) == OLD
        assert r.check(k) == SEEN
        assert r.check(W - 1 + k) == SEEN


@pytest.mark.parametrize("jump", [1, 2, 63, 64, 65, 127, 128, 1000, W - 65, W - 64, W - 1,
                                  W, W + 1, 3 * W + 17, 2**32, 2**63])
@pytest.mark.parametrize("start", [0, 17, 63, W - 3])
def test_forward_jump_forgets_exactly_what_fell_out(start, jump):
    r, m = Replay(), Model()
    # fill the window behind `start` in a pattern that is not word-aligned, then jump
    for s in range(max(0, start - W + 1), start + 1):
        if s % 2 == 0 or s % 7 == 0 or s == start:
            assert r.update(s) == m.update(s)
    top = start + jump
    assert r.update(top) == m.update(top) == NEW
    assert r.r.top == top
    probes = set(range(max(0, top - W - 70), top + 70))
    probes |= set(range(max(0, start - W - 70), start + 70))
    for s in sorted(probes):
        assert r.check(s) == m.check(s), s


def test_jump_by_2_63_and_then_small_steps():
    r = Replay()
    r.update(5)
    r.update(2**63 + 5)
    assert r.check(5) == OLD
    assert r.check(2**63 + 5) == SEEN
    assert r.check(2**63 + 5 - (W - 1)) == NEW
    assert r.check(2**63 + 4) == NEW
    for s in range(2**63 + 6, 2**63 + 200):
        assert r.update(s) == NEW
    assert r.update(2**63 + 4) == NEW
    assert r.update(2**63 + 4) == SEEN
    # and a second jump the same size lands at the very top
    assert r.update(2**63 + 5 + (2**63 - 6)) == NEW
    assert r.r.top == MAX


def test_near_2_64_no_wrap_around():
    r = Replay()
    base = MAX - W - 100
    for s in range(base, MAX + 1, 5):
        assert r.update(s) == NEW
    assert r.update(MAX) in (NEW, SEEN)
    r.update(MAX)
    assert r.r.top == MAX
    assert r.check(MAX) == SEEN
    assert r.check(MAX - (W - 1)) in (NEW, SEEN)
    assert r.check(MAX - W) == OLD
    # sequences do not wrap: small numbers after the top are old, never new
    for s in (0, 1, W - 1, W, 2**63):
        assert r.check(s) == OLD
        assert r.update(s) == OLD
    assert r.r.top == MAX
    # everything still in the window answers as the model says
    m = Model()
    for s in range(base, MAX + 1, 5):
        m.update(s)
    m.update(MAX)
    for s in range(MAX - W - 10, MAX + 1):
        assert r.check(s) == m.check(s)


def test_jump_from_zero_to_the_very_top():
    r = Replay()
    r.update(0)
    assert r.update(MAX) == NEW
    assert r.check(0) == OLD
    assert r.check(MAX - 1) == NEW


def test_reset_forgets_everything():
    r = Replay()
    for s in range(0, 5000, 7):
        r.update(s)
    lib.mpt_replay_reset(r.r)
    assert r.r.started == 0 and r.r.top == 0
    assert all(b == 0 for b in r.r.bits)
    for s in range(0, 5000, 7):
        assert r.update(s) == NEW


def test_random_order_stream_within_the_window():
    # 100k sequences, each arriving at most ~40k behind the newest: every one
    # is new exactly once, a duplicate right after is seen, and at the end
    # the last W are all seen and everything older is too old.
    n, spread = 100_000, 40_000
    rng = random.Random(1)
    order = sorted(range(n), key=lambda s: s + rng.uniform(0, spread))
    r = Replay()
    newest = -1
    for s in order:
        newest = max(newest, s)
        assert newest - s < W
        assert r.check(s) == NEW
        assert r.update(s) == NEW
        assert r.update(s) == SEEN
    assert r.r.top == n - 1
    for s in range(n):
        assert r.check(s) == (SEEN if s > n - 1 - W else OLD)


def test_random_operations_match_the_model():
    rng = random.Random(7)
    r, m = Replay(), Model()
    steps = [1, 2, 63, 64, 65, 500, W - 1, W, W + 1, 2**40]
    for i in range(30_000):
        top = m.top or 0
        kind = rng.random()
        if kind < 0.5:
            seq = top + rng.choice(steps) if m.top is not None else rng.randrange(3)
        elif kind < 0.9:
            seq = max(0, top - rng.randrange(W + 200))
        else:
            seq = rng.choice(sorted(m.seen)[-50:]) if m.seen else 0
        seq = min(seq, MAX)
        assert r.check(seq) == m.check(seq), (i, seq)
        if rng.random() < 0.8:
            assert r.update(seq) == m.update(seq), (i, seq)
        if i % 5000 == 0 and m.top is not None:
            m.seen = {s for s in m.seen if m.top - s < W}
    for s in range(max(0, m.top - W - 5), m.top + 5):
        assert r.check(s) == m.check(s)
