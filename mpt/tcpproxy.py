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

With encryption on (the client's `encrypt`, carried in the request) the
payload between the routers travels in AES-256-GCM frames instead, with keys
of its own per connection and direction (HKDF from the tunnel key and the
request's nonce):  length (2) · ciphertext · tag (16), the length
authenticated as associated data, the nonce a per-direction frame counter.

The request (80 bytes):
    magic "MPTP" · version 1 · flags (bit 0: encrypt) · nonce (16) ·
    unix time ns (8) · destination address (16, IPv4-mapped for IPv4) ·
    port (2) · HMAC-SHA256(key, "mpt-tcp-proxy" + all of the above) (32)
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
FLAG_ENCRYPT = 1
REQUEST = struct.Struct("!4sBB16sQ16sH")
TAG_LEN = 32
REQUEST_LEN = REQUEST.size + TAG_LEN
LABEL = b"mpt-tcp-proxy"
MAX_AGE = 120.0                # seconds a request stays valid (clock skew included)
SETUP_TIMEOUT = 5.0            # to read a request or a verdict
CONNECT_TIMEOUT = 10.0         # to reach the destination
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20

FRAME = 16384                  # plaintext bytes per encrypted frame at most
TAG = 16

OK, REFUSED, TIMED_OUT, UNREACHABLE, FAILED, NEEDS_ENCRYPTION = range(6)
VERDICTS = {OK: "connected", REFUSED: "refused", TIMED_OUT: "timed out",
            UNREACHABLE: "unreachable", FAILED: "failed",
            NEEDS_ENCRYPTION: "refused: the server requires encrypt = on"}


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    host: str
    port: int
    encrypt: bool
    nonce: bytes


def build_request(key: bytes, host: str, port: int, *, encrypt: bool = False,
                  now: float | None = None, nonce: bytes | None = None) -> bytes:
    ip = ipaddress.ip_address(host)
    addr = (ip.packed if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}").packed)
    body = REQUEST.pack(MAGIC, VERSION, FLAG_ENCRYPT if encrypt else 0,
                        nonce or secrets.token_bytes(16),
                        int((time.time() if now is None else now) * 1e9), addr, port)
    return body + hmac.new(key, LABEL + body, hashlib.sha256).digest()


def payload_keys(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """(client→server, server→client) AES-256-GCM keys of one connection."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=nonce,
               info=LABEL + b" payload").derive(key)
    return okm[:32], okm[32:]


class Sealer:
    """One direction's frames: seal() plaintext, open() what the peer sealed."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self.aead = AESGCM(key)
        self.counter = 0

    def _nonce(self) -> bytes:
        n = self.counter.to_bytes(12, "big")
        self.counter += 1
        return n

    def seal(self, data: bytes) -> bytes:
        hdr = len(data).to_bytes(2, "big")
        return hdr + self.aead.encrypt(self._nonce(), data, hdr)

    def open(self, hdr: bytes, body: bytes) -> bytes:
        """cryptography's InvalidTag on anything forged or reordered."""
        return self.aead.decrypt(self._nonce(), body, hdr)


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
                  now: float | None = None) -> Request:
    """The destination and options of a valid request; BadRequest otherwise."""
    now = time.time() if now is None else now
    if len(data) != REQUEST_LEN:
        raise BadRequest("short request")
    body, tag = data[:REQUEST.size], data[REQUEST.size:]
    if not hmac.compare_digest(tag, hmac.new(key, LABEL + body, hashlib.sha256).digest()):
        raise BadRequest("bad authentication tag")
    magic, version, flags, nonce, t_ns, addr, port = REQUEST.unpack(body)
    if magic != MAGIC or version != VERSION or flags & ~FLAG_ENCRYPT:
        raise BadRequest("unknown version")
    if abs(now - t_ns / 1e9) > MAX_AGE:
        raise BadRequest("request too old or from the future")
    if not guard.check(nonce, now):
        raise BadRequest("replayed request")
    ip = ipaddress.IPv6Address(addr)
    return Request(str(ip.ipv4_mapped or ip), port, bool(flags & FLAG_ENCRYPT), nonce)


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
    the subflows besides the initial one); None once it is closed."""
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
        _pass_on_error(e, dst)
    finally:
        os.close(r)
        os.close(w)


def _pass_on_error(e: OSError, dst: socket.socket) -> None:
    if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH):
        try:
            dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            dst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    elif e.errno not in (errno.EBADF, errno.ENOTCONN):
        log.debug("relay: %s", e)


def _pump_seal(src: socket.socket, dst: socket.socket, sealer: Sealer, count) -> None:
    """Plaintext src → frames to dst."""
    try:
        while True:
            data = src.recv(FRAME)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(sealer.seal(data))
            count(len(data))
    except OSError as e:
        _pass_on_error(e, dst)


def _pump_open(src: socket.socket, dst: socket.socket, opener: Sealer, count) -> None:
    """Frames from src → plaintext to dst; a forged frame resets both sides."""
    from cryptography.exceptions import InvalidTag
    try:
        while True:
            hdr = recv_exact(src, 2)
            if not hdr:
                dst.shutdown(socket.SHUT_WR)
                return
            n = int.from_bytes(hdr.ljust(2, b"\0"), "big")
            body = recv_exact(src, n + TAG) if len(hdr) == 2 and 0 < n <= FRAME else b""
            if len(body) != n + TAG:
                raise ConnectionResetError(errno.ECONNRESET, "truncated frame")
            try:
                data = opener.open(hdr, body)
            except InvalidTag:
                log.info("tcp proxy: forged frame, connection reset")
                reset(src)
                raise ConnectionResetError(errno.ECONNRESET, "forged frame") from None
            dst.sendall(data)
            count(len(data))
    except OSError as e:
        _pass_on_error(e, dst)


def relay(a: socket.socket, b: socket.socket, stats: Stats, info: dict,
          a_to_b=None, b_to_a=None) -> None:
    """Both directions until both ended; then both sockets are closed.
    a→b counts as bytes_out.  `a_to_b`/`b_to_a`: None to splice, else
    ("seal" | "open", Sealer) for the encrypted leg."""
    def add(field_name):
        def count(n):
            with stats.lock:
                info[field_name] += n
                setattr(stats, field_name, getattr(stats, field_name) + n)
        return count

    def pump(src, dst, how, count):
        if how is None:
            return _pump(src, dst, count)
        kind, sealer = how
        return (_pump_seal if kind == "seal" else _pump_open)(src, dst, sealer, count)

    t = threading.Thread(target=pump, args=(b, a, b_to_a, add("bytes_in")), daemon=True)
    t.start()
    pump(a, b, a_to_b, add("bytes_out"))
    t.join()
    a.close()
    b.close()


class _Proxy:
    """Shared by both roles: a listening socket whose connections are each
    handled by `handle` in a thread of their own."""

    def __init__(self, key: bytes, encrypt: bool = False):
        self.key = key
        self.encrypt = encrypt
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
            mptcp_sock = c.pop("mptcp", None)
            if mptcp_sock is not None:   # counted now: subflows come and go
                c["subflows"] = subflows(mptcp_sock)
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

    def __init__(self, key: bytes, port: int, server: tuple[str, int], encrypt: bool = False):
        super().__init__(key, encrypt)
        self.server = server
        self.listener = _listen(socket.IPPROTO_TCP, port)

    def handle(self, lan: socket.socket, info: dict) -> None:
        host, port = original_destination(lan)
        info["dst"] = f"{host}:{port}"
        fam = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
        up = socket.socket(fam, socket.SOCK_STREAM, IPPROTO_MPTCP)
        up.settimeout(SETUP_TIMEOUT + CONNECT_TIMEOUT)
        nonce = secrets.token_bytes(16)
        try:
            up.connect(self.server)
            up.sendall(build_request(self.key, host, port, encrypt=self.encrypt, nonce=nonce))
            verdict = recv_exact(up, 1)
        except OSError as e:
            log.info("tcp proxy: %s -> %s: server unreachable: %s", info["peer"], info["dst"], e)
            verdict = b""
        if verdict != bytes([OK]):
            why = VERDICTS.get(verdict[0], "failed") if verdict else "no answer from the server"
            log.debug("tcp proxy: %s -> %s %s", info["peer"], info["dst"], why)
            self.stats.refused += 1
            up.close()
            reset(lan)     # the LAN client sees its connection refused
            return
        up.settimeout(None)
        info["mptcp"] = up
        if self.encrypt:
            c2s, s2c = payload_keys(self.key, nonce)
            relay(lan, up, self.stats, info, ("seal", Sealer(c2s)), ("open", Sealer(s2c)))
        else:
            relay(lan, up, self.stats, info)


class ServerProxy(_Proxy):
    """Router B: MPTCP connections from the client in, the destinations out."""

    def __init__(self, key: bytes, port: int, host: str = "::", encrypt: bool = False):
        super().__init__(key, encrypt)
        self.guard = ReplayGuard()
        self.listener = _listen(IPPROTO_MPTCP, port, host)

    def handle(self, conn: socket.socket, info: dict) -> None:
        conn.settimeout(SETUP_TIMEOUT)
        try:
            req = parse_request(self.key, recv_exact(conn, REQUEST_LEN), self.guard)
        except (BadRequest, OSError) as e:
            self.stats.refused += 1
            log.debug("tcp proxy: refused %s: %s", info["peer"], e)   # no log line per packet
            reset(conn)
            return
        host, port = req.host, req.port
        info["dst"] = f"{host}:{port}"
        if self.encrypt and not req.encrypt:
            conn.sendall(bytes([NEEDS_ENCRYPTION]))
            conn.close()
            return
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
        info["mptcp"] = conn
        if req.encrypt:
            c2s, s2c = payload_keys(self.key, req.nonce)
            relay(conn, out, self.stats, info, ("open", Sealer(c2s)), ("seal", Sealer(s2c)))
        else:
            relay(conn, out, self.stats, info)
