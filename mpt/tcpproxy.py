"""The transparent TCP proxy between the two routers, over Linux MPTCP.

client (router A)  nftables (mpt/nft.py) redirects the LAN's TCP to a local
                   listener.  For each connection: read the original
                   destination (SO_ORIGINAL_DST), open an MPTCP connection to
                   the server's proxy, send a request naming the destination,
                   authenticated with the tunnel key, wait for the verdict,
                   then relay both ways.
server (router B)  accept MPTCP connections, check the request (HMAC, age,
                   nonce never seen), connect to the destination, answer the
                   verdict, relay.  Anything unauthenticated is reset without
                   a byte of answer: router B is never an open proxy.

Relaying is splice() through a pipe, one thread per direction: the bytes
stay in the kernel.  EOF is passed on as a half-close (shutdown SHUT_WR), a
reset as a reset (SO_LINGER 0), and a destination that refuses, times out or
is unreachable as a reset of the LAN connection.

The request (79 bytes):
    magic "MPTP" · version 1 · nonce (16) · unix time ns (8) ·
    destination address (16, IPv4-mapped for IPv4) · port (2) ·
    HMAC-SHA256(key, "mpt-tcp-proxy" + all of the above) (32)
The verdict: one byte, 0 connected, else why not (VERDICTS).
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("mptd")

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
SO_ORIGINAL_DST = 80           # also IP6T_SO_ORIGINAL_DST at SOL_IPV6

MAGIC, VERSION = b"MPTP", 1
REQUEST = struct.Struct("!4sB16sQ16sH")
TAG_LEN = 32
REQUEST_LEN = REQUEST.size + TAG_LEN
LABEL = b"mpt-tcp-proxy"
MAX_AGE = 120.0                # seconds a request stays valid (clock skew included)
SETUP_TIMEOUT = 5.0            # to read a request or a verdict
CONNECT_TIMEOUT = 10.0         # to reach the destination
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20

OK, REFUSED, TIMED_OUT, UNREACHABLE, FAILED = range(5)
VERDICTS = {OK: "connected", REFUSED: "refused", TIMED_OUT: "timed out",
            UNREACHABLE: "unreachable", FAILED: "failed"}


class BadRequest(ValueError):
    pass


def build_request(key: bytes, host: str, port: int, *, now: float | None = None,
                  nonce: bytes | None = None) -> bytes:
    ip = ipaddress.ip_address(host)
    addr = (ip.packed if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}").packed)
    body = REQUEST.pack(MAGIC, VERSION, nonce or secrets.token_bytes(16),
                        int((time.time() if now is None else now) * 1e9), addr, port)
    return body + hmac.new(key, LABEL + body, hashlib.sha256).digest()


@dataclass
class ReplayGuard:
    """Nonces seen within MAX_AGE: a captured request cannot be replayed."""
    seen: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, nonce: bytes, now: float) -> bool:
        with self.lock:
            if len(self.seen) > 4096:
                self.seen = {n: t for n, t in self.seen.items() if t > now}
            if self.seen.get(nonce, 0) > now:
                return False
            self.seen[nonce] = now + 2 * MAX_AGE
            return True


def parse_request(key: bytes, data: bytes, guard: ReplayGuard,
                  now: float | None = None) -> tuple[str, int]:
    """(host, port) of a valid request; BadRequest otherwise."""
    now = time.time() if now is None else now
    if len(data) != REQUEST_LEN:
        raise BadRequest("short request")
    body, tag = data[:REQUEST.size], data[REQUEST.size:]
    if not hmac.compare_digest(tag, hmac.new(key, LABEL + body, hashlib.sha256).digest()):
        raise BadRequest("bad authentication tag")
    magic, version, nonce, t_ns, addr, port = REQUEST.unpack(body)
    if magic != MAGIC or version != VERSION:
        raise BadRequest("unknown version")
    if abs(now - t_ns / 1e9) > MAX_AGE:
        raise BadRequest("request too old or from the future")
    if not guard.check(nonce, now):
        raise BadRequest("replayed request")
    ip = ipaddress.IPv6Address(addr)
    return str(ip.ipv4_mapped or ip), port


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def reset(sock: socket.socket) -> None:
    """Close with a RST, not a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where a redirected connection was going (nftables redirect / NAT)."""
    if sock.family == socket.AF_INET6 and not sock.getsockname()[0].startswith("::ffff:"):
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        ip = ipaddress.IPv6Address(raw[8:24])
        return str(ip.ipv4_mapped or ip), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


def subflows(sock: socket.socket) -> int | None:
    """Subflows of an MPTCP connection (struct mptcp_info: first byte counts
    the subflows besides the initial one)."""
    try:
        return sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)[0] + 1
    except OSError:
        return None


@dataclass
class Stats:
    active: int = 0
    total: int = 0
    refused: int = 0             # server: bad requests; client: destinations that failed
    bytes_out: int = 0           # client → server direction
    bytes_in: int = 0
    conns: dict = field(default_factory=dict)   # id -> info for status
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pump(src: socket.socket, dst: socket.socket, count) -> None:
    """Move bytes src → dst with splice until EOF or error, then pass the EOF
    (half-close) or the reset on."""
    r, w = os.pipe()
    try:
        try:
            import fcntl
            fcntl.fcntl(w, 1031, PIPE_SIZE)   # F_SETPIPE_SZ: fewer syscalls
        except OSError:
            pass
        while True:
            n = os.splice(src.fileno(), w, CHUNK)
            if n == 0:
                dst.shutdown(socket.SHUT_WR)
                return
            while n:
                m = os.splice(r, dst.fileno(), n)
                n -= m
                count(m)
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH):
            try:
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                dst.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif e.errno not in (errno.EBADF, errno.ENOTCONN):
            log.debug("relay: %s", e)
    finally:
        os.close(r)
        os.close(w)


def relay(a: socket.socket, b: socket.socket, stats: Stats, info: dict) -> None:
    """Both directions until both ended; then both sockets are closed."""
    def add(field_name):
        def count(n):
            with stats.lock:
                info[field_name] += n
                setattr(stats, field_name, getattr(stats, field_name) + n)
        return count

    t = threading.Thread(target=_pump, args=(b, a, add("bytes_in")), daemon=True)
    t.start()
    _pump(a, b, add("bytes_out"))
    t.join()
    a.close()
    b.close()


class _Proxy:
    """Shared by both roles: a listening socket whose connections are each
    handled by `handle` in a thread of their own."""

    def __init__(self, key: bytes):
        self.key = key
        self.stats = Stats()
        self.listener: socket.socket | None = None
        self._ids = 0

    def attach(self, loop) -> None:
        loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("tcp proxy: accept: %s", e)
                return
            conn.setblocking(True)
            self._ids += 1
            info = {"id": self._ids, "peer": f"{peer[0]}:{peer[1]}", "dst": None,
                    "subflows": None, "bytes_out": 0, "bytes_in": 0, "since": time.time()}
            threading.Thread(target=self._run, args=(conn, info), daemon=True).start()

    def _run(self, conn: socket.socket, info: dict) -> None:
        with self.stats.lock:
            self.stats.active += 1
            self.stats.total += 1
            self.stats.conns[info["id"]] = info
        try:
            self.handle(conn, info)
        except Exception as e:  # one connection's failure never touches the daemon
            log.warning("tcp proxy: connection %s: %s", info["peer"], e)
            conn.close()
        finally:
            with self.stats.lock:
                self.stats.active -= 1
                self.stats.conns.pop(info["id"], None)

    def handle(self, conn: socket.socket, info: dict) -> None:
        raise NotImplementedError

    def status(self) -> dict:
        with self.stats.lock:
            conns = [dict(c) for c in self.stats.conns.values()]
        for c in conns:
            c["since"] = round(c["since"], 3)
        s = self.stats
        return {"active": s.active, "total": s.total, "refused": s.refused,
                "bytes_out": s.bytes_out, "bytes_in": s.bytes_in, "connections": conns}

    def close(self, loop) -> None:
        if self.listener is not None:
            loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None


def _listen(proto: int, port: int, host: str = "::") -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, port))
    s.listen(512)
    s.setblocking(False)
    return s


class ClientProxy(_Proxy):
    """Router A: LAN connections in (redirected), MPTCP out to the server."""

    def __init__(self, key: bytes, port: int, server: tuple[str, int]):
        super().__init__(key)
        self.server = server
        self.listener = _listen(socket.IPPROTO_TCP, port)

    def handle(self, lan: socket.socket, info: dict) -> None:
        host, port = original_destination(lan)
        info["dst"] = f"{host}:{port}"
        fam = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
        up = socket.socket(fam, socket.SOCK_STREAM, IPPROTO_MPTCP)
        up.settimeout(SETUP_TIMEOUT + CONNECT_TIMEOUT)
        try:
            up.connect(self.server)
            up.sendall(build_request(self.key, host, port))
            verdict = recv_exact(up, 1)
        except OSError as e:
            log.info("tcp proxy: %s -> %s: server unreachable: %s", info["peer"], info["dst"], e)
            verdict = b""
        if verdict != bytes([OK]):
            why = VERDICTS.get(verdict[0], "failed") if verdict else "no answer from the server"
            log.info("tcp proxy: %s -> %s %s", info["peer"], info["dst"], why)
            self.stats.refused += 1
            up.close()
            reset(lan)     # the LAN client sees its connection refused
            return
        up.settimeout(None)
        info["subflows"] = subflows(up)
        relay(lan, up, self.stats, info)


class ServerProxy(_Proxy):
    """Router B: MPTCP connections from the client in, the destinations out."""

    def __init__(self, key: bytes, port: int, host: str = "::"):
        super().__init__(key)
        self.guard = ReplayGuard()
        self.listener = _listen(IPPROTO_MPTCP, port, host)

    def handle(self, conn: socket.socket, info: dict) -> None:
        conn.settimeout(SETUP_TIMEOUT)
        try:
            host, port = parse_request(self.key, recv_exact(conn, REQUEST_LEN), self.guard)
        except (BadRequest, OSError) as e:
            self.stats.refused += 1
            log.info("tcp proxy: refused %s: %s", info["peer"], e)   # no log line per packet
            reset(conn)
            return
        info["dst"] = f"{host}:{port}"
        try:
            out = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
            verdict = OK
        except ConnectionRefusedError:
            verdict = REFUSED
        except (TimeoutError, socket.timeout):
            verdict = TIMED_OUT
        except OSError as e:
            verdict = UNREACHABLE if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else FAILED
        conn.sendall(bytes([verdict]))
        if verdict != OK:
            conn.close()
            return
        conn.settimeout(None)
        out.settimeout(None)
        info["subflows"] = subflows(conn)
        relay(conn, out, self.stats, info)
