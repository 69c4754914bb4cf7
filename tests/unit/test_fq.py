"""The pacing backlog's flow-fair queue in C (csrc/mpt_fq.c), through cffi,
checked against a plain Python model of the same rules."""
import random

from mpt._datapath import ffi, lib

SLOTS, QUEUES = lib.MPT_FQ_SLOTS, lib.MPT_FQ_QUEUES


class Backlog:
    """The C queue plus what a caller keeps per slot: which packet it holds."""

    def __init__(self):
        self.f = ffi.new("struct mpt_fq *")
        lib.mpt_fq_init(self.f)
        self.held = {}
        self.dropped = []

    def push(self, queue, packet):
        d = ffi.new("int *")
        s = lib.mpt_fq_push(self.f, queue, d)
        if d[0] >= 0:
            self.dropped.append(self.held.pop(d[0]))
        assert 0 <= s < SLOTS and s not in self.held
        self.held[s] = packet

    def pop(self):
        s = lib.mpt_fq_peek(self.f)
        if s < 0:
            return None
        lib.mpt_fq_pop(self.f)
        return self.held.pop(s)

    def drain(self):
        out = []
        while (p := self.pop()) is not None:
            out.append(p)
        assert self.f.n == 0
        return out


def test_empty_queue_has_nothing_to_offer():
    b = Backlog()
    assert lib.mpt_fq_peek(b.f) == -1
    lib.mpt_fq_pop(b.f)                  # harmless
    assert b.f.n == 0 and b.drain() == []


def test_one_flow_is_fifo():
    b = Backlog()
    for i in range(100):
        b.push(7, i)
    assert b.drain() == list(range(100))


def test_sparse_packet_waits_one_turn_not_the_bulk_backlog():
    b = Backlog()
    for i in range(500):
        b.push(1, ("bulk", i))
    b.pop()                              # the bulk flow is being served
    b.push(2, ("ping", 0))
    # the bulk flow has the next turn, the ping the one after it
    out = b.drain()
    assert out[:3] == [("bulk", 1), ("ping", 0), ("bulk", 2)]
    assert [p for p in out if p[0] == "bulk"] == [("bulk", i) for i in range(1, 500)]


def test_busy_flows_take_turns_one_packet_each():
    b = Backlog()
    for i in range(4):
        for q in (3, 9, 3 + QUEUES):     # 3 and 3 + QUEUES share a queue
            b.push(q, (q % QUEUES, i))
    out = b.drain()
    assert [q for q, _ in out[:4]] == [3, 9, 3, 9]
    # every queue keeps its own order, whatever the interleaving
    for q in (3, 9):
        seq = [i for k, i in out if k == q]
        assert seq == sorted(seq) and len(seq) == (8 if q == 3 else 4)


def test_full_backlog_drops_the_oldest_of_the_longest_queue():
    b = Backlog()
    for i in range(SLOTS - 10):
        b.push(5, ("bulk", i))
    for i in range(10):
        b.push(6, ("other", i))
    assert b.f.n == SLOTS and b.dropped == []
    b.push(6, ("other", 10))             # full: the bulk flow pays
    b.push(8, ("new", 0))
    assert b.dropped == [("bulk", 0), ("bulk", 1)] and b.f.n == SLOTS
    out = b.drain()
    assert len(out) == SLOTS and ("new", 0) in out and ("other", 10) in out


def test_two_flows_overloading_it_end_up_sharing_it():
    b = Backlog()
    b.push(1, ("one", 0))
    for i in range(SLOTS - 1):
        b.push(2, ("two", i))
    for i in range(SLOTS):               # a second bulk flow arrives
        b.push(3, ("three", i))
    assert ("one", 0) not in b.dropped   # never the longest
    assert b.dropped[0] == ("two", 0)    # the longest pays first
    out = b.drain()
    assert len(out) == SLOTS and out[0] == ("one", 0)
    two, three = (sum(1 for k, _ in out if k == name) for name in ("two", "three"))
    assert abs(two - three) <= 1, (two, three)


def model_check(seed, ops=20000):
    """Random pushes and pops against a Python model of the same rules."""
    rnd = random.Random(seed)
    b = Backlog()
    queues = {}            # queue -> list of packets
    turn = []              # queues in turn order
    n = 0
    for step in range(ops):
        if rnd.random() < (0.7 if step % 4000 < 2500 else 0.35):   # fill, then drain
            q = rnd.choice([rnd.randrange(QUEUES * 4), 0, 1])   # a few hot flows
            k = q % QUEUES
            if n == SLOTS:
                fat = max(range(QUEUES), key=lambda j: (len(queues.get(j, [])), -j))
                expect_drop = queues[fat].pop(0)
                n -= 1
                assert queues[fat]           # the longest never empties
            else:
                expect_drop = None
            before = len(b.dropped)
            b.push(q, step)
            assert (b.dropped[-1] if len(b.dropped) > before else None) == expect_drop
            if not queues.get(k):
                queues[k] = []
                turn.append(k)
            queues[k].append(step)
            n += 1
        else:
            got = b.pop()
            if not turn:
                assert got is None
                continue
            k = turn.pop(0)
            assert got == queues[k].pop(0), step
            if queues[k]:
                turn.append(k)
            n -= 1
        assert b.f.n == n


def test_matches_the_model_under_random_load():
    for seed in range(5):
        model_check(seed)
