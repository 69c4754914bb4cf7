"""Traffic tools for the namespace lab, run as ``python -m mpt.lab.traffic CMD``.

Commands (each prints one JSON line as its result):

``udp-recv --bind ADDR --port P [--json FILE] [--idle 2.0] [--max-time 60]``
    Prints ``ready`` once bound, then records every datagram.  A datagram's
    payload starts with an 8-byte big-endian sequence number and the 8-byte
    send time (``time.monotonic_ns()``, one clock for every namespace).  The
    end marker is seq 2**64-1 followed by the number of datagrams sent.  Stops
    after ``--idle`` s without data (once something arrived), after
    ``--max-time`` s, or ``--linger`` s (default 0.2) after the end marker
    without further data (datagrams overtaken by the marker on another path
    still count).
``udp-send --to ADDR --port P [--rate-mbit R] [--size 1200] [--duration S | --count N]``
    Paced sender (sleeps to a schedule, sends what is due in small bursts),
    sequence from 0, the end marker three times at the end.
``tcp-sink --bind ADDR --port P`` / ``tcp-send --to ADDR --port P --bytes N``
    One connection; the sink answers ``{"bytes", "sha256"}`` after EOF and the
    sender checks the digest (exit 1 on mismatch).
``ping --to ADDR [--dev IF] [--count 1] [--timeout 1] [--size 56]``
    ICMP/ICMPv6 echo over a raw socket (this machine has no ping binary);
    ``--dev`` binds to a device like ``ping -I IF``.  Exit 0 if any reply came.

Importable helpers run them in a lab namespace: :func:`start_udp_receiver`,
:func:`start_tcp_sink` (both wait for ``ready``), :func:`run_udp_send`,
:func:`run_tcp_send`, :func:`ping`.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Sequence

from mpt.sockopt import big_buffers

__all__ = ["ToolProcess", "ToolError", "start_udp_receiver", "start_tcp_sink",
           "run_udp_send", "run_tcp_send", "ping", "END_SEQ", "HEADER"]

HEADER = struct.Struct("!QQ")      # seq, send time (monotonic ns)
END_SEQ = 2 ** 64 - 1
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _emit(obj: dict, path: str | None = None) -> None:
    text = json.dumps(obj)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    else:
        print(text, flush=True)


def _ready() -> None:
    print("ready", flush=True)


# ------------------------------------------------------------------ udp-recv
def _percentile(sorted_vals: Sequence[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def udp_stats(seqs: Sequence[int], arrivals_ns: Sequence[int],
              sent_ns: Sequence[int], sizes: Sequence[int],
              sent: int | None, bin_s: float = 0.5) -> dict:
    """The receiver's summary of one run (pure function, unit-testable)."""
    n = len(seqs)
    seen: set[int] = set()
    highest = -1
    out_of_order = 0
    in_order = True
    for s in seqs:
        if s < highest:
            out_of_order += 1
        if s not in seen:
            if s <= highest:
                in_order = False
            seen.add(s)
        highest = max(highest, s)
    unique = len(seen)
    longest_gap = 0
    for i in range(1, n):
        longest_gap = max(longest_gap, arrivals_ns[i] - arrivals_ns[i - 1])
    bins: list[int] = []
    if n:
        t0 = arrivals_ns[0]
        width = int(bin_s * 1e9)
        for t, size in zip(arrivals_ns, sizes):
            b = (t - t0) // width
            while len(bins) <= b:
                bins.append(0)
            bins[b] += size
    delays = sorted((a - s) / 1e6 for a, s in zip(arrivals_ns, sent_ns))
    lost = None if sent is None else max(0, sent - unique)
    lost_ranges = []
    if sent is not None and lost:
        start = None
        for s in range(sent):
            if s not in seen:
                if start is None:
                    start = s
            elif start is not None:
                lost_ranges.append([start, s - 1])
                start = None
                if len(lost_ranges) >= 20:
                    break
        if start is not None and len(lost_ranges) < 20:
            lost_ranges.append([start, sent - 1])
    return {
        "received": n,
        "unique": unique,
        "duplicates": n - unique,
        "sent": sent,
        "lost": lost,
        "out_of_order": out_of_order,
        "in_order": in_order,
        "longest_gap_ms": longest_gap / 1e6,
        "first_arrival": arrivals_ns[0] / 1e9 if n else None,
        "last_arrival": arrivals_ns[-1] / 1e9 if n else None,
        "bytes": sum(sizes),
        "bin_s": bin_s,
        "bins": bins,
        "one_way_delay_ms": {"median": _percentile(delays, 0.5),
                             "p99": _percentile(delays, 0.99)},
        "lost_ranges": lost_ranges,
    }


def cmd_udp_recv(a: argparse.Namespace) -> int:
    sock = socket.socket(_family(a.bind), socket.SOCK_DGRAM)
    big_buffers(sock, 8 << 20)
    if a.dev:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.dev.encode())
    sock.bind((a.bind, a.port))
    _ready()
    seqs, arrivals, sent_ts, sizes = array("Q"), array("q"), array("q"), array("I")
    buf = bytearray(65536)
    start = time.monotonic()
    end_max = start + a.max_time
    sent = None
    end_seen = False
    unpack = HEADER.unpack_from
    now_ns = time.monotonic_ns
    while True:
        now = time.monotonic()
        if now >= end_max:
            break
        wait = end_max - now
        if end_seen:
            wait = min(wait, a.linger)
        elif seqs:
            wait = min(wait, a.idle)
        sock.settimeout(wait)
        try:
            n = sock.recv_into(buf)
        except socket.timeout:
            break
        t = now_ns()
        if n < HEADER.size:
            continue
        seq, ts = unpack(buf)
        if seq == END_SEQ:
            sent = ts
            end_seen = True
            continue
        seqs.append(seq)
        arrivals.append(t)
        sent_ts.append(ts)
        sizes.append(n)
    stats = udp_stats(seqs, arrivals, sent_ts, sizes, sent, a.bin)
    stats["end_seen"] = end_seen
    _emit(stats, a.json)
    return 0


# ------------------------------------------------------------------ udp-send
def cmd_udp_send(a: argparse.Namespace) -> int:
    if a.size < HEADER.size + 8:
        raise SystemExit("--size must be at least 24")
    fam = _family(a.to)
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    big_buffers(sock)
    if a.dev:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.dev.encode())
    if a.bind:
        sock.bind((a.bind, 0))
    dest = (a.to, a.port)
    payload = bytearray(os.urandom(a.size))
    pack_into = HEADER.pack_into
    sendto = sock.sendto
    now_ns = time.monotonic_ns
    interval_ns = int(a.size * 8 / (a.rate_mbit * 1e6) * 1e9) if a.rate_mbit else 0
    count = a.count
    if count is None and a.duration is not None and interval_ns:
        count = max(1, int(a.duration * 1e9 // interval_ns))
    stop_ns = None if a.duration is None else int(a.duration * 1e9)
    errors = 0
    i = 0
    t0 = now_ns()
    while True:
        now = now_ns()
        if count is not None and i >= count:
            break
        if count is None and stop_ns is not None and now - t0 >= stop_ns:
            break
        due = t0 + i * interval_ns
        if due > now:
            time.sleep((due - now) / 1e9)
            continue
        # Send what is due, a small burst at most, then look at the clock again.
        for _ in range(a.burst):
            if count is not None and i >= count:
                break
            pack_into(payload, 0, i, now_ns())
            try:
                sendto(payload, dest)
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETUNREACH,
                                   errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EPERM,
                                   errno.EINVAL, errno.ENETDOWN, errno.EADDRNOTAVAIL):
                    raise
                errors += 1
            i += 1
            if interval_ns and t0 + i * interval_ns > now:
                break
    duration = (now_ns() - t0) / 1e9
    end = bytearray(HEADER.pack(END_SEQ, i))
    for _ in range(3):
        try:
            sendto(end, dest)
        except OSError:
            errors += 1
        time.sleep(0.005)   # pacing of the markers, not synchronisation
    _emit({"sent": i, "duration": duration, "send_errors": errors,
           "rate_mbit": i * a.size * 8 / duration / 1e6 if duration > 0 else None})
    return 0


# ----------------------------------------------------------------- tcp tools
def _tcp_socket(fam: int, mptcp: bool) -> socket.socket:
    proto = 262 if mptcp else 0    # IPPROTO_MPTCP
    return socket.socket(fam, socket.SOCK_STREAM, proto)


def cmd_tcp_sink(a: argparse.Namespace) -> int:
    srv = _tcp_socket(_family(a.bind), a.mptcp)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(1)
    _ready()
    srv.settimeout(a.timeout)
    conn, _peer = srv.accept()
    conn.settimeout(a.timeout)
    h = hashlib.sha256()
    total = 0
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    t0 = time.monotonic()
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        h.update(view[:n])
        total += n
    elapsed = time.monotonic() - t0
    reply = {"bytes": total, "sha256": h.hexdigest()}
    conn.sendall((json.dumps(reply) + "\n").encode())
    conn.close()
    srv.close()
    reply["seconds"] = elapsed
    _emit(reply)
    return 0


def cmd_tcp_send(a: argparse.Namespace) -> int:
    fam = _family(a.to)
    sock = _tcp_socket(fam, a.mptcp)
    if a.dev:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.dev.encode())
    if a.cc:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, a.cc.encode())
    sock.settimeout(a.timeout)
    sock.connect((a.to, a.port))
    rng = random.Random(a.seed)
    h = hashlib.sha256()
    left = a.bytes
    t0 = time.monotonic()
    while left > 0:
        chunk = rng.randbytes(min(left, 256 * 1024))
        h.update(chunk)
        sock.sendall(chunk)
        left -= len(chunk)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while not data.endswith(b"\n"):
        more = sock.recv(4096)
        if not more:
            break
        data += more
    elapsed = time.monotonic() - t0
    sock.close()
    try:
        reply = json.loads(data.decode())
    except ValueError:
        reply = {}
    ok = reply.get("bytes") == a.bytes and reply.get("sha256") == h.hexdigest()
    _emit({"bytes": a.bytes, "ok": ok, "seconds": elapsed,
           "mbit": a.bytes * 8 / elapsed / 1e6 if elapsed > 0 else None,
           "sink": reply})
    return 0 if ok else 1


# ---------------------------------------------------------------------- ping
def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def cmd_ping(a: argparse.Namespace) -> int:
    fam = _family(a.to)
    v6 = fam == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(fam, socket.SOCK_RAW, proto)
    if a.dev:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.dev.encode())
    ident = os.getpid() & 0xFFFF
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    replies = []
    for seq in range(a.count):
        body = struct.pack("!Q", time.monotonic_ns()) + b"mpt-lab-ping"
        body += bytes(max(0, a.size - len(body)))
        hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
        csum = 0 if v6 else _icmp_checksum(hdr + body)   # kernel fills ICMPv6's
        pkt = struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + body
        t_send = time.monotonic()
        try:
            sock.sendto(pkt, (a.to, 0))
        except OSError as e:
            replies.append(None)
            print(f"send: {e}", file=sys.stderr)
            continue
        deadline = t_send + a.timeout
        got = None
        while got is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                break
            data, src = sock.recvfrom(2048)
            off = 0 if v6 else (data[0] & 0x0F) * 4
            if len(data) < off + 8:
                continue
            typ, _code, _c, rid, rseq = struct.unpack_from("!BBHHH", data, off)
            if typ == rep_type and rid == ident and rseq == seq:
                got = (time.monotonic() - t_send) * 1e3
        replies.append(got)
    ok = [r for r in replies if r is not None]
    _emit({"to": a.to, "dev": a.dev, "sent": a.count, "received": len(ok),
           "rtt_ms": ok})
    return 0 if ok else 1


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mpt.lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("udp-recv", help="record a UDP sequence stream")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dev", help="SO_BINDTODEVICE")
    p.add_argument("--json", help="write the result here instead of stdout")
    p.add_argument("--idle", type=float, default=2.0)
    p.add_argument("--linger", type=float, default=0.2,
                   help="seconds without data after the end marker before stopping")
    p.add_argument("--max-time", type=float, default=60.0)
    p.add_argument("--bin", type=float, default=0.5, help="bin width, seconds")
    p.set_defaults(func=cmd_udp_recv)

    p = sub.add_parser("udp-send", help="send a paced UDP sequence stream")
    p.add_argument("--to", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate-mbit", type=float)
    p.add_argument("--size", type=int, default=1200, help="UDP payload bytes")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--duration", type=float)
    g.add_argument("--count", type=int)
    p.add_argument("--burst", type=int, default=16, help="max datagrams per wake-up")
    p.add_argument("--dev", help="SO_BINDTODEVICE")
    p.add_argument("--bind", help="source address")
    p.set_defaults(func=cmd_udp_send)

    p = sub.add_parser("tcp-sink", help="receive one TCP stream, answer its sha256")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--mptcp", action="store_true")
    p.set_defaults(func=cmd_tcp_sink)

    p = sub.add_parser("tcp-send", help="send N pseudo-random bytes, verify sha256")
    p.add_argument("--to", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--dev", help="SO_BINDTODEVICE")
    p.add_argument("--cc", help="TCP congestion control for this socket")
    p.add_argument("--mptcp", action="store_true")
    p.set_defaults(func=cmd_tcp_send)

    p = sub.add_parser("ping", help="ICMP echo over a raw socket")
    p.add_argument("--to", required=True)
    p.add_argument("--dev", help="bind to this device, like ping -I")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1.0, help="per echo, seconds")
    p.add_argument("--size", type=int, default=56, help="echo payload bytes")
    p.set_defaults(func=cmd_ping)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return a.func(a)


# ------------------------------------------------------------------- helpers
class ToolError(RuntimeError):
    pass


class ToolProcess:
    """A traffic tool running in a lab namespace (stdout/stderr piped)."""

    def __init__(self, lab, ns: str, args: Sequence[str]):
        import subprocess
        self.ns = ns
        self.args = list(args)
        self.proc = lab.popen(ns, [sys.executable, "-m", "mpt.lab.traffic", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              bufsize=0)
        self._out = b""

    def _fail(self, why: str) -> ToolError:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            out, err = self.proc.communicate(timeout=5)
        except Exception:
            out, err = b"", b""
        return ToolError(f"{why}: {' '.join(self.args)} in {self.ns} "
                         f"(exit {self.proc.returncode})\nstdout: "
                         f"{(self._out + (out or b'')).decode(errors='replace').strip()}\n"
                         f"stderr: {(err or b'').decode(errors='replace').strip()}")

    def wait_ready(self, timeout: float = 10.0) -> "ToolProcess":
        """Block until the tool printed ``ready`` (or fail with its stderr)."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"ready\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"not ready after {timeout}s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise self._fail("exited before ready")
                self._out += chunk
        self._out = self._out.split(b"ready\n", 1)[1]
        return self

    def result(self, timeout: float = 60.0) -> dict:
        """Wait for exit; return the JSON the tool printed last."""
        import subprocess
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"still running after {timeout}s") from None
        text = (self._out + out).decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        try:
            res = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise ToolError(f"no JSON result from {' '.join(self.args)} in {self.ns} "
                            f"(exit {self.proc.returncode})\nstdout: {text.strip()}\n"
                            f"stderr: {err.decode(errors='replace').strip()}") from None
        self.returncode = self.proc.returncode
        self.stderr = err.decode(errors="replace")
        return res

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()


def _opt(args: list[str], name: str, value) -> None:
    if value is None or value is False:
        return
    args.append(f"--{name.replace('_', '-')}")
    if value is not True:
        args.append(str(value))


def start_udp_receiver(lab, ns: str, bind: str, port: int, *,
                       ready_timeout: float = 10.0, **kw) -> ToolProcess:
    """Start ``udp-recv`` in ``ns`` and wait for ``ready``.

    kw: idle, linger, max_time, bin, dev.  ``handle.result()`` gives the stats.
    """
    args = ["udp-recv", "--bind", bind, "--port", str(port)]
    for k, v in kw.items():
        _opt(args, k, v)
    return ToolProcess(lab, ns, args).wait_ready(ready_timeout)


def start_tcp_sink(lab, ns: str, bind: str, port: int, *,
                   ready_timeout: float = 10.0, **kw) -> ToolProcess:
    """Start ``tcp-sink`` in ``ns`` and wait for ``ready``.  kw: timeout, mptcp."""
    args = ["tcp-sink", "--bind", bind, "--port", str(port)]
    for k, v in kw.items():
        _opt(args, k, v)
    return ToolProcess(lab, ns, args).wait_ready(ready_timeout)


def run_udp_send(lab, ns: str, to: str, port: int, *, timeout: float | None = None,
                 **kw) -> dict:
    """Run ``udp-send`` to completion; kw: rate_mbit, size, duration, count, burst, dev, bind."""
    args = ["udp-send", "--to", to, "--port", str(port)]
    for k, v in kw.items():
        _opt(args, k, v)
    if timeout is None:
        timeout = (kw.get("duration") or 30) + 30
    h = ToolProcess(lab, ns, args)
    res = h.result(timeout)
    if h.returncode != 0:
        raise ToolError(f"udp-send failed: {res} {h.stderr}")
    return res


def run_tcp_send(lab, ns: str, to: str, port: int, nbytes: int, *,
                 timeout: float = 60.0, **kw) -> dict:
    """Run ``tcp-send``; returns its JSON (``ok`` False on digest mismatch)."""
    args = ["tcp-send", "--to", to, "--port", str(port), "--bytes", str(nbytes),
            "--timeout", str(timeout)]
    for k, v in kw.items():
        _opt(args, k, v)
    return ToolProcess(lab, ns, args).result(timeout + 10)


def ping(lab, ns: str, to: str, *, dev: str | None = None, count: int = 1,
         timeout: float = 1.0, size: int = 56) -> bool:
    """True if ``to`` answered an ICMP echo from ``ns`` (optionally via ``dev``)."""
    args = ["ping", "--to", to, "--count", str(count), "--timeout", str(timeout),
            "--size", str(size)]
    _opt(args, "dev", dev)
    h = ToolProcess(lab, ns, args)
    res = h.result(count * timeout + 20)
    return h.returncode == 0 and res.get("received", 0) > 0


if __name__ == "__main__":
    sys.exit(main())
