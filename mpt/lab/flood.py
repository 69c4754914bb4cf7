"""Hostile traffic for the lab: capture real tunnel datagrams, replay them,
and flood a tunnel port with forged ones.  Run as ``python -m mpt.lab.flood CMD``
inside a lab namespace; each command prints one JSON line as its result.

``capture --dev IF --port P [--count N] [--types 0,1] [--timeout S] --out FILE``
    An AF_PACKET socket on IF (both directions) keeps the UDP payloads of
    IPv4 datagrams to port P, optionally only mpt packets of the given header
    types (0 data, 1 control, 2 handshake), and writes them to FILE (each a
    2-byte big-endian length and the bytes).  Prints ``ready`` once the socket
    is bound; stops after N datagrams or S seconds.  The tap sees a datagram
    as the device transmits it, so by the time it is written to FILE the
    original has been handed to the next hop.
``send --to HOST:PORT --count N [--mix garbage=1,truncated=1,header=1,badtag=1,replay=1,init=1]
        [--spoof ADDRS] [--capture FILE] [--session S] [--inner-dst ADDR:PORT] [--rate PPS]
        [--max-queue BYTES] [--seed S]``
    Sends exactly N datagrams (counted: the sum of what sendmmsg accepted)
    from a pool of distinct forged datagrams in the given proportions:

    garbage    random bytes, mostly short, some longer than any mpt packet
    truncated  0..15 bytes (shorter than a header); a header of the real
               session with a fresh sequence and 0..15 bytes (shorter than a
               tag); a captured datagram cut short
    header     well-formed v2 headers (data, control, now and then handshake)
               with random session indexes other than the real one
    badtag     the real session and key phase, a fresh sequence, and a
               payload that would be a valid inner packet if it were accepted
    replay     captured datagrams byte for byte (data and control only)
    init       handshake inits with a random nonce, key and MAC (the server's
               datapath cannot tell them from real ones: it answers a cookie
               when over its handshake limit, Python refuses them)

    The real session, key phase and a sequence number beyond anything the
    peer sent are read from the capture (``--session`` overrides the session).
    Forged inner packets are IPv4/UDP to ``--inner-dst`` (a ``udp-recv`` of
    mpt.lab.traffic) numbered from FORGED_SEQ_BASE: one that got through
    would show up there.  The pool holds at most ``--pool`` datagrams and is
    sent round after round until N are out; with ``--mix replay=1`` and N
    equal to the capture's size every captured datagram goes exactly once.

    ``--spoof A[,B...]`` sends them from forged source addresses, IPv4
    addresses or prefixes, one at random per datagram, with random source
    ports (a raw socket: root, IPv4 only).

    ``--rate`` caps the datagrams per second.  ``--max-queue`` (when run in
    the receiver's namespace) pauses while the receiving socket on PORT holds
    more than BYTES (``/proc/net/udp``): the flood then measures what the
    receiver does with hostile input, not how fast the kernel drops when its
    socket buffer overflows (which would drop the real traffic as well).  The
    result reports the socket's kernel drop counter before and after.

Importable helpers run them in a lab namespace: :func:`start_capture`,
:func:`run_send`, and the pure pieces :func:`build_pool`,
:func:`ipv4_udp`, :func:`load_capture`, :func:`udp_socket_state`.
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence

from mpt.lab.traffic import HEADER as STREAM_HEADER
from mpt.lab.traffic import ToolProcess
from mpt.sockopt import big_buffers

__all__ = ["CATEGORIES", "FORGED_SEQ_BASE", "build_pool", "ipv4_udp", "load_capture",
           "save_capture", "udp_socket_state", "parse_mix", "start_capture", "run_send"]

CATEGORIES = ("garbage", "truncated", "header", "badtag", "replay", "init")
HS_INIT_HEAD = b"MPTH\x01\x01"      # as mpt/handshake.py: magic, version, kind init
HS_INIT_LEN = 73
FORGED_SEQ_BASE = 1 << 40          # stream sequence numbers of forged inner packets
MPT_VERSION = 2
MPT_HDR = struct.Struct("!BBHHHQ")  # as mpt/wire.py: ver/type, phase/path, session, ...
MPT_HDR_LEN = MPT_HDR.size
TAG_LEN = 16
MPT_MAX_DATAGRAM = 16 + 2048 + 16  # the datapath's receive buffer (MPT_BUF_LEN)
FRESH_SEQ_GAP = 1 << 30            # forged sequences start this far beyond the capture
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


# ----------------------------------------------------------------- captures
def save_capture(path: str, datagrams: Sequence[bytes]) -> None:
    with open(path, "wb") as f:
        for d in datagrams:
            f.write(struct.pack("!H", len(d)) + d)


def load_capture(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    out, i = [], 0
    while i + 2 <= len(data):
        (n,) = struct.unpack_from("!H", data, i)
        if i + 2 + n > len(data):
            raise ValueError(f"{path}: truncated record at byte {i}")
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def mpt_type(datagram: bytes) -> int | None:
    """The header type of an mpt datagram, None if it is not one."""
    if len(datagram) < MPT_HDR_LEN or datagram[0] >> 4 != MPT_VERSION:
        return None
    return datagram[0] & 0x0F


def cmd_capture(a: argparse.Namespace) -> int:
    types = {int(t) for t in a.types.split(",")} if a.types else None
    # only ETH_P_ALL sockets see what the device transmits, not just what it receives
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    s.bind((a.dev, ETH_P_ALL))
    print("ready", flush=True)
    kept: list[bytes] = []
    seen = 0
    deadline = time.monotonic() + a.timeout
    while len(kept) < a.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            pkt, (_dev, proto, *_rest) = s.recvfrom(65536)
        except socket.timeout:
            break
        if proto != ETH_P_IP or len(pkt) < 28 or pkt[0] >> 4 != 4 \
                or pkt[9] != socket.IPPROTO_UDP:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
        if dport != a.port:
            continue
        seen += 1
        payload = pkt[ihl + 8:total]
        if types is not None and mpt_type(payload) not in types:
            continue
        kept.append(payload)
    save_capture(a.out, kept)
    print(json.dumps({"captured": len(kept), "seen": seen, "file": a.out}), flush=True)
    return 0


# ------------------------------------------------------------ forged packets
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """One whole IPv4/UDP packet (header checksum set, UDP checksum 0)."""
    total = 20 + 8 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return hdr + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in CATEGORIES:
            raise ValueError(f"unknown category {name!r} (one of {', '.join(CATEGORIES)})")
        mix[name] = float(weight) if weight else 1.0
        if mix[name] < 0:
            raise ValueError(f"negative weight for {name}")
    if sum(mix.values()) <= 0:
        raise ValueError("the mix is empty")
    return mix


def _session_of(capture: Sequence[bytes]) -> tuple[int | None, int, int]:
    """(most common session, its key phase, highest sequence) of the
    captured data and control datagrams."""
    hdrs = [MPT_HDR.unpack_from(d) for d in capture if mpt_type(d) in (0, 1)]
    if not hdrs:
        return None, 0, 0
    session = Counter(h[2] for h in hdrs).most_common(1)[0][0]
    mine = [h for h in hdrs if h[2] == session]
    return session, mine[-1][1] >> 7, max(h[5] for h in mine)


def build_pool(n: int, mix: dict[str, float], rng: random.Random,
               capture: Sequence[bytes] = (), session: int | None = None,
               inner_dst: tuple[str, int] = ("198.18.200.2", 9),
               inner_src: str = "198.18.100.2") -> tuple[list[bytes], list[str]]:
    """n forged datagrams in the proportions of `mix`, shuffled, and the
    category of each.  Pure (given rng): no I/O."""
    replays = [d for d in capture if mpt_type(d) in (0, 1)]
    real, phase, top = _session_of(capture)
    if session is not None:
        real = session
    if mix.get("replay") and not replays:
        raise ValueError("replay needs a capture with data or control datagrams")
    if real is None and (mix.get("badtag") or mix.get("truncated")):
        raise ValueError("badtag and truncated need the real session (--session or a capture)")
    fresh = top + FRESH_SEQ_GAP
    forged_seq = [FORGED_SEQ_BASE]

    def inner(size: int) -> bytes:
        body = bytearray(rng.randbytes(max(STREAM_HEADER.size, size)))
        STREAM_HEADER.pack_into(body, 0, forged_seq[0], time.monotonic_ns())
        forged_seq[0] += 1
        return ipv4_udp(inner_src, inner_dst[0], 40000 + rng.randrange(1000), inner_dst[1],
                        bytes(body))

    def header(typ: int, sess: int, ph: int, seq: int) -> bytes:
        return MPT_HDR.pack((MPT_VERSION << 4) | typ, (ph << 7) | rng.randrange(16), sess,
                            rng.randrange(64), rng.randrange(65536), seq)

    def garbage() -> bytes:
        r = rng.random()
        if r < 0.02:   # longer than the datapath's buffer
            return rng.randbytes(rng.randrange(MPT_MAX_DATAGRAM + 1, 4000))
        return rng.randbytes(rng.randrange(0, 65) if r < 0.5 else rng.randrange(65, 1473))

    def truncated() -> bytes:
        r = rng.random()
        if r < 0.4:      # shorter than a header
            src = rng.choice(replays) if replays and rng.random() < 0.5 else garbage()
            return src[:rng.randrange(0, MPT_HDR_LEN)]
        if r < 0.8 or not replays:   # a header of the real session, shorter than a tag
            return header(rng.randrange(2), real, phase, fresh + rng.randrange(1 << 20)) + \
                rng.randbytes(rng.randrange(0, TAG_LEN))
        src = rng.choice(replays)    # a real datagram cut short
        return src[:rng.randrange(MPT_HDR_LEN, len(src))] if len(src) > MPT_HDR_LEN else src

    def forged_header() -> bytes:
        sess = rng.randrange(65536)
        while sess == real:
            sess = rng.randrange(65536)
        typ = 2 if rng.random() < 0.05 else rng.randrange(2)
        return header(typ, sess, rng.randrange(2), rng.getrandbits(64)) + \
            inner(rng.randrange(0, 1300)) + rng.randbytes(TAG_LEN)

    def badtag() -> bytes:
        return header(rng.randrange(2), real, phase, fresh + rng.randrange(1 << 20)) + \
            inner(rng.randrange(0, 1300)) + rng.randbytes(TAG_LEN)

    replay_pos = [0]

    def replay() -> bytes:
        d = replays[replay_pos[0] % len(replays)]
        replay_pos[0] += 1
        return d

    def init() -> bytes:
        return MPT_HDR.pack((MPT_VERSION << 4) | 2, rng.randrange(16), 0, 0, 0, 0) + \
            HS_INIT_HEAD + rng.randbytes(HS_INIT_LEN - len(HS_INIT_HEAD))

    makers = {"garbage": garbage, "truncated": truncated, "header": forged_header,
              "badtag": badtag, "replay": replay, "init": init}
    total = sum(mix.values())
    cats: list[str] = []
    for name in CATEGORIES:
        cats += [name] * round(n * mix.get(name, 0.0) / total)
    while len(cats) < n:   # rounding
        cats.append(max(mix, key=mix.get))
    del cats[n:]
    if list(mix) != ["replay"]:
        rng.shuffle(cats)
    return [makers[c]() for c in cats], cats


# --------------------------------------------------------------- the sender
class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _sockaddr(host: str, port: int) -> tuple[int, bytes]:
    """(family, struct sockaddr_in/in6 bytes)."""
    if ":" in host:
        return socket.AF_INET6, struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0)
    return socket.AF_INET, struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
        + socket.inet_aton(host) + bytes(8)


def udp_socket_state(port: int) -> dict | None:
    """{"rx_queue": bytes, "drops": n} of the UDP socket(s) bound to `port`
    in this namespace (/proc/net/udp and udp6), None if there is none."""
    found = None
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 13 or int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            found = found or {"rx_queue": 0, "drops": 0}
            found["rx_queue"] += int(fields[4].split(":")[1], 16)
            found["drops"] += int(fields[-1])
    return found


def spoofed(pool: Sequence[bytes], sources: Sequence[str], to: tuple[str, int],
            rng: random.Random) -> list[bytes]:
    """Each datagram as a whole IPv4/UDP packet to `to` from a random one of
    `sources` (addresses or prefixes) and a random port."""
    nets = [ipaddress.IPv4Network(a, strict=False) for a in sources]
    out = []
    for d in pool:
        net = rng.choice(nets)
        src = str(net[rng.randrange(net.num_addresses)])
        out.append(ipv4_udp(src, to[0], rng.randrange(1024, 65536), to[1], d))
    return out


class Sender:
    """sendmmsg of a fixed pool of datagrams to one address, in batches
    (raw: the pool holds whole IPv4 packets, sent on a raw socket)."""

    BATCH = 64

    def __init__(self, pool: Sequence[bytes], to: tuple[str, int], raw: bool = False):
        family, addr = _sockaddr(*to)
        self.sock = (socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) if raw
                     else socket.socket(family, socket.SOCK_DGRAM))
        big_buffers(self.sock, 8 << 20)
        self._addr = ctypes.create_string_buffer(addr, len(addr))
        self._data = ctypes.create_string_buffer(b"".join(pool) or b"\0")
        n = len(pool)
        self._iov = (_Iovec * n)()
        self._msgs = (_Mmsghdr * n)()
        base, off = ctypes.addressof(self._data), 0
        for i, d in enumerate(pool):
            self._iov[i].iov_base, self._iov[i].iov_len = base + off, len(d)
            off += len(d)
            h = self._msgs[i].msg_hdr
            h.msg_name, h.msg_namelen = ctypes.addressof(self._addr), len(addr)
            h.msg_iov = ctypes.pointer(self._iov[i])
            h.msg_iovlen = 1
        self.n = n
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint,
                                        ctypes.c_int]
        self.errors = 0

    def send(self, pos: int, count: int) -> int:
        """Send pool[pos:pos+count] (within the pool); how many went."""
        ptr = ctypes.addressof(self._msgs) + pos * ctypes.sizeof(_Mmsghdr)
        sent = self._libc.sendmmsg(self.sock.fileno(), ptr, count, 0)
        if sent < 0:
            self.errors += 1
            return 0
        return sent

    def close(self) -> None:
        self.sock.close()


def flood(sender: Sender, count: int, rate: float = 0.0, max_queue: int = 0,
          port: int = 0) -> dict:
    """Send `count` datagrams from the sender's pool, round after round."""
    sent = pos = 0
    paused = 0.0
    # with a rate, batches of 0.5 ms worth: an even stream, not bursts with
    # gaps in which a rate limiter's token would go to whoever comes first
    batch = max(1, min(Sender.BATCH, int(rate * 0.0005))) if rate else Sender.BATCH
    t0 = time.monotonic()
    next_check = 0
    while sent < count:
        if rate:
            due = t0 + sent / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        if max_queue and sent >= next_check:
            next_check = sent + 512
            t = time.monotonic()
            while (st := udp_socket_state(port)) is not None and st["rx_queue"] > max_queue:
                time.sleep(0.0005)   # back-pressure: the receiver is behind
            paused += time.monotonic() - t
        n = min(batch, count - sent, sender.n - pos)
        done = sender.send(pos, n)
        if done == 0 and sender.errors > 1000:
            raise OSError(ctypes.get_errno(), f"sendmmsg keeps failing: "
                          f"{os.strerror(ctypes.get_errno())}")
        sent += done
        pos = (pos + done) % sender.n
    return {"sent": sent, "seconds": time.monotonic() - t0, "paused_s": paused,
            "send_errors": sender.errors}


def cmd_send(a: argparse.Namespace) -> int:
    host, _, port = a.to.rpartition(":")
    host = host.strip("[]")
    port = int(port)
    ihost, _, iport = a.inner_dst.rpartition(":")
    capture = load_capture(a.capture) if a.capture else []
    mix = parse_mix(a.mix)
    pool, cats = build_pool(min(a.pool, a.count), mix, random.Random(a.seed), capture,
                            a.session, (ihost, int(iport)), a.inner_src)
    wire_pool = pool
    if a.spoof:
        wire_pool = spoofed(pool, a.spoof.split(","), (host, port), random.Random(a.seed + 1))
    sender = Sender(wire_pool, (host, port), raw=bool(a.spoof))
    before = udp_socket_state(port)
    res = flood(sender, a.count, a.rate, a.max_queue, port)
    after = udp_socket_state(port)
    sender.close()
    # how many of each category went: whole rounds plus the partial last one
    rounds, rest = divmod(res["sent"], len(pool))
    per = Counter({c: k * rounds for c, k in Counter(cats).items()})
    per.update(cats[:rest])
    res.update({"pool": len(pool), "categories": dict(per),
                "socket_drops": None if before is None or after is None
                else after["drops"] - before["drops"]})
    print(json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mpt.lab.flood")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("capture", help="keep UDP payloads to a port seen on a device")
    p.add_argument("--dev", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--types", help="only mpt packets of these header types, e.g. 0,1")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("send", help="send forged datagrams")
    p.add_argument("--to", required=True, help="HOST:PORT ([v6]:PORT)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mix", default=",".join(CATEGORIES))
    p.add_argument("--capture", help="datagrams from `capture` (replays, the session)")
    p.add_argument("--session", type=int, help="the real session index (default: the capture's)")
    p.add_argument("--inner-dst", default="198.18.200.2:9")
    p.add_argument("--inner-src", default="198.18.100.2")
    p.add_argument("--rate", type=float, default=0.0, help="datagrams per second (0: no cap)")
    p.add_argument("--spoof", help="forged IPv4 source addresses or prefixes, comma-separated")
    p.add_argument("--max-queue", type=int, default=0,
                   help="pause while the receiving socket holds more bytes than this")
    p.add_argument("--pool", type=int, default=65536, help="distinct datagrams at most")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_send)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


# ------------------------------------------------------------------- helpers
class FloodProcess(ToolProcess):
    """A ``python -m mpt.lab.flood`` command in a lab namespace."""

    def __init__(self, lab, ns: str, args: Sequence[str]):
        import subprocess
        self.ns = ns
        self.args = list(args)
        self.proc = lab.popen(ns, [sys.executable, "-m", "mpt.lab.flood", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._out = b""


def start_capture(lab, ns: str, dev: str, port: int, out: str, *, count: int = 100,
                  types: str | None = "0,1", timeout: float = 10.0) -> FloodProcess:
    """Start ``capture`` in ``ns`` and wait until its socket is bound;
    ``.result()`` gives {"captured", "seen", "file"}."""
    args = ["capture", "--dev", dev, "--port", str(port), "--count", str(count),
            "--timeout", str(timeout), "--out", out]
    if types:
        args += ["--types", types]
    return FloodProcess(lab, ns, args).wait_ready()


def run_send(lab, ns: str, to: str, count: int, *, timeout: float = 120.0, **kw) -> dict:
    """Run ``send`` to completion; kw: mix, capture, session, inner_dst,
    inner_src, rate, max_queue, pool, seed.  Returns its JSON."""
    args = ["send", "--to", to, "--count", str(count)]
    for k, v in kw.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    h = FloodProcess(lab, ns, args)
    res = h.result(timeout)
    if h.returncode != 0:
        raise RuntimeError(f"flood send failed: {res} {h.stderr}")
    return res


if __name__ == "__main__":
    sys.exit(main())
