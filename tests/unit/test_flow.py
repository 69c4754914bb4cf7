"""The sender's flow bucket of an inner packet (csrc/mpt_flow.c), through cffi."""
import ctypes
import ipaddress
import mmap
import random
import struct

import pytest

from mpt._datapath import ffi, lib

N = 64
TCP, UDP, DCCP, SCTP, UDPLITE, ICMP, GRE = 6, 17, 33, 132, 136, 1, 47
PROT_NONE = 0       # <sys/mman.h>; the mmap module does not export it


def ipv4(src="198.18.0.1", dst="198.19.0.1", proto=TCP, sport=40000, dport=443, *,
         flags_off=0, ident=1, ttl=64, options=b"", payload=b"x" * 20):
    ihl = 5 + len(options) // 4
    body = struct.pack("!HH", sport, dport) + payload if proto != ICMP else payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(body), ident, flags_off,
                      ttl, proto, 0, ipaddress.IPv4Address(src).packed,
                      ipaddress.IPv4Address(dst).packed)
    return hdr + options + body


def ipv6(src="2001:2::1", dst="2001:2::2", nh=TCP, sport=40000, dport=443, *, hlim=64,
         payload=b"x" * 20):
    body = struct.pack("!HH", sport, dport) + payload
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, hlim,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + body


def bucket(pkt, n=N):
    return lib.mpt_flow_bucket(pkt, len(pkt), n)


class GuardedBuffer:
    """Places bytes right before a page that cannot be read: any read past
    the given length faults, instrumented build or not."""

    def __init__(self):
        self.page = mmap.PAGESIZE
        self.m = mmap.mmap(-1, 2 * self.page)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.m))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(self.base + self.page, self.page, PROT_NONE) == 0

    def bucket(self, data, n=N):
        off = self.page - len(data)
        self.m[off:self.page] = data
        return lib.mpt_flow_bucket(ffi.cast("const uint8_t *", self.base + off), len(data), n)


@pytest.fixture(scope="module")
def guarded():
    return GuardedBuffer()


def test_same_five_tuple_same_bucket_whatever_else_changes():
    a = ipv4(ident=1, ttl=64, payload=b"a" * 20)
    b = ipv4(ident=999, ttl=3, payload=b"b" * 1000)
    assert bucket(a) == bucket(b)
    a6 = ipv6(hlim=64, payload=b"")
    b6 = ipv6(hlim=1, payload=b"z" * 500)
    assert bucket(a6) == bucket(b6)


@pytest.mark.parametrize("proto", [TCP, UDP, DCCP, SCTP, UDPLITE])
def test_ports_matter_for_transports_with_ports(proto):
    by_sport = {bucket(ipv4(proto=proto, sport=p)) for p in range(40000, 40200)}
    by_dport = {bucket(ipv4(proto=proto, dport=p)) for p in range(1, 201)}
    by_sport6 = {bucket(ipv6(nh=proto, sport=p)) for p in range(40000, 40200)}
    assert len(by_sport) > 50 and len(by_dport) > 50 and len(by_sport6) > 50


@pytest.mark.parametrize("proto", [ICMP, GRE, 50])
def test_without_ports_only_addresses_and_protocol_count(proto):
    buckets = {bucket(ipv4(proto=proto, sport=p, payload=bytes([p % 256]) * 8))
               for p in range(200)}
    assert len(buckets) == 1


def test_addresses_and_protocol_matter():
    by_src = {bucket(ipv4(src=f"198.18.0.{i}")) for i in range(1, 201)}
    by_dst = {bucket(ipv4(dst=f"198.19.{i}.1")) for i in range(200)}
    by_src6 = {bucket(ipv6(src=f"2001:2::{i:x}")) for i in range(1, 201)}
    by_dst6 = {bucket(ipv6(dst=f"2001:2:0:{i:x}::1")) for i in range(200)}
    assert min(map(len, (by_src, by_dst, by_src6, by_dst6))) > 50
    differs = sum(bucket(ipv4(proto=TCP, sport=p)) != bucket(ipv4(proto=UDP, sport=p))
                  for p in range(100))
    assert differs > 80


def test_ipv4_fragments_of_a_datagram_stay_together():
    first = ipv4(proto=UDP, flags_off=0x2000, ident=7)                # MF, offset 0
    middle = ipv4(proto=UDP, flags_off=0x2000 | 185, ident=7, payload=b"\x99" * 40)
    last = ipv4(proto=UDP, flags_off=370, ident=7, payload=b"\x11" * 9)  # offset, no MF
    assert bucket(first) == bucket(middle) == bucket(last)
    # ports are not looked at in a fragment, so every fragmented datagram
    # between the same hosts shares that bucket
    other = ipv4(proto=UDP, sport=1, dport=2, flags_off=0x2000, ident=8)
    assert bucket(other) == bucket(first)


def test_dont_fragment_is_no_fragment():
    differs = sum(bucket(ipv4(sport=p, flags_off=0x4000)) != bucket(ipv4(sport=p + 1,
                                                                          flags_off=0x4000))
                  for p in range(100))
    assert differs > 80
    assert bucket(ipv4(flags_off=0x4000)) == bucket(ipv4(flags_off=0))


def test_ipv4_ports_are_read_after_the_options():
    opts_a, opts_b = b"\x01" * 4, b"\x94\x04\x00\x00"   # NOPs, router alert
    assert bucket(ipv4(options=opts_a)) == bucket(ipv4(options=opts_b))
    ports = {bucket(ipv4(options=opts_a, sport=p)) for p in range(200)}
    assert len(ports) > 50


def test_ipv6_extension_headers_are_not_followed():
    """Next header is the protocol: with an extension header in front (here
    a fragment header) the bytes after the fixed header do not count."""
    frag = {bucket(ipv6(nh=44, sport=p, payload=bytes([p % 256]) * 8)) for p in range(200)}
    hop = {bucket(ipv6(nh=0, sport=p)) for p in range(200)}
    assert len(frag) == 1 and len(hop) == 1


def test_spread_over_buckets_is_even():
    rng = random.Random(1)
    counts = [0] * N
    n = 64 * 200
    for _ in range(n):
        src = ipaddress.IPv4Address(rng.getrandbits(32))
        dst = ipaddress.IPv4Address(rng.getrandbits(32))
        counts[bucket(ipv4(str(src), str(dst), rng.choice([TCP, UDP]),
                           rng.getrandbits(16), rng.getrandbits(16)))] += 1
    chi2 = sum((c - 200) ** 2 / 200 for c in counts)
    assert chi2 < 130                      # 63 degrees of freedom: mean 63, sd 11
    assert min(counts) > 120 and max(counts) < 290


@pytest.mark.parametrize("make", [
    lambda p: ipv4(sport=p),                               # one client, many connections
    lambda p: ipv4(dport=p, proto=UDP),
    lambda p: ipv6(sport=p),
    lambda p: ipv4(src=f"198.18.{p // 256}.{p % 256}", proto=ICMP),
])
def test_spread_of_neighbouring_flows_is_even(make):
    counts = [0] * N
    for p in range(64 * 100):
        counts[bucket(make(p))] += 1
    chi2 = sum((c - 100) ** 2 / 100 for c in counts)
    assert chi2 < 130
    assert min(counts) > 50 and max(counts) < 160


@pytest.mark.parametrize("n", [1, 3, 64, 4096])
def test_bucket_is_always_below_nbuckets(n):
    rng = random.Random(n)
    for _ in range(500):
        pkt = rng.choice([ipv4(sport=rng.getrandbits(16)), ipv6(dport=rng.getrandbits(16)),
                          rng.randbytes(rng.randrange(80))])
        assert 0 <= bucket(pkt, n) < n


def test_zero_buckets_gives_bucket_zero():
    assert bucket(ipv4(), 0) == 0
    assert lib.mpt_flow_bucket(ffi.NULL, 0, 0) == 0


def test_empty_input_is_safe():
    assert 0 <= lib.mpt_flow_bucket(ffi.NULL, 0, N) < N


BASES = [
    ("v4 tcp", ipv4(payload=b"p" * 60)),
    ("v4 udp", ipv4(proto=UDP, payload=b"p" * 60)),
    ("v4 options", ipv4(options=b"\x01" * 40, payload=b"p" * 20)),   # ihl 15
    ("v4 fragment", ipv4(flags_off=0x2000 | 3, payload=b"p" * 60)),
    ("v4 ihl 15 claimed", bytes([0x4f]) + ipv4(payload=b"p" * 60)[1:]),
    ("v4 ihl 2", bytes([0x42]) + ipv4(payload=b"p" * 60)[1:]),
    ("v6 tcp", ipv6(payload=b"p" * 40)),
    ("v6 frag", ipv6(nh=44, payload=b"p" * 40)),
    ("not ip", bytes(range(0x70, 0x70 + 80))),
]


@pytest.mark.parametrize("name,pkt", BASES, ids=[b[0] for b in BASES])
def test_truncated_inputs_of_every_length_are_safe(guarded, name, pkt):
    seen = set()
    for n in range(0, 61):
        b = guarded.bucket(pkt[:n])
        assert 0 <= b < N
        assert guarded.bucket(pkt[:n]) == b == bucket(pkt[:n])   # deterministic
        seen.add(b)
    assert len(seen) > 1        # a truncation is hashed on what there is


def test_truncated_before_the_ports_hashes_without_them(guarded):
    a = ipv4(sport=1, dport=2)[:22]     # half the ports: not enough for them
    b = ipv4(sport=3, dport=4)[:22]
    assert guarded.bucket(a) == guarded.bucket(b)
    a6 = ipv6(sport=1, dport=2)[:43]
    b6 = ipv6(sport=3, dport=4)[:43]
    assert guarded.bucket(a6) == guarded.bucket(b6)


def test_garbage_never_reads_past_the_end(guarded):
    rng = random.Random(5)
    for _ in range(3000):
        n = rng.randrange(0, 100)
        data = bytearray(rng.randbytes(n))
        if n and rng.random() < 0.6:
            data[0] = (rng.choice([4, 6]) << 4) | rng.getrandbits(4)
        assert 0 <= guarded.bucket(bytes(data)) < N
