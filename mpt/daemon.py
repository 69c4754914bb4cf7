"""mptd: asyncio (uvloop) wiring of config, TUN device, path sockets, the C
datapath, hellos and the control socket.

Python sets policy and answers control packets; the C thread moves data.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field

from . import control, scheduler, wire
from .config import TunnelConfig
from .datapath import MAX_PATHS, Datapath, socket_address, unpack_sockaddr
from .path import PathHealth
from .tun import Tun, interface_mtu

log = logging.getLogger("mptd")

SOCK_BUF = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33   # Linux; not exported by the socket module
DEAD_AFTER_HELLOS = 3      # a path unanswered this many keepalive intervals is down
SERVER_MTU = 1500 - 40 - 8 - wire.HDR_LEN - wire.TAG_RESERVE   # safe on IPv6 paths
STARTUP_HELLOS = 0.1       # hello interval until a client path first comes up


@dataclass
class Path:
    index: int
    name: str
    weight: float
    health: PathHealth
    interface: str | None = None
    local: str | None = None
    peer: tuple[str, int] | None = None
    sock: socket.socket | None = None
    last_error: str | None = None
    counters: dict = field(default_factory=dict)


def _tune(sock: socket.socket) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCK_BUF)
    sock.setblocking(False)


def default_mtu(cfg: TunnelConfig) -> int:
    """Smallest path MTU minus our overhead (IP, UDP, header, tag room)."""
    if cfg.role == "server":
        return SERVER_MTU
    mtus = []
    for p in cfg.paths:
        ip_hdr = 40 if p.peer and p.peer.host and p.peer.host.version == 6 else 20
        link = (interface_mtu(p.interface) if p.interface else None) or 1500
        mtus.append(link - ip_hdr - 8 - wire.HDR_LEN - wire.TAG_RESERVE)
    return max(576, min(mtus))


class Daemon:
    def __init__(self, cfg: TunnelConfig):
        self.cfg = cfg
        self.server = cfg.role == "server"
        self.session = secrets.randbelow(0xFFFF) + 1
        self.dead_after = DEAD_AFTER_HELLOS * cfg.keepalive
        self.paths: dict[int, Path] = {}
        self.tun: Tun | None = None
        self.dp: Datapath | None = None
        self.listen_sock: socket.socket | None = None
        self.ctrl_rx: socket.socket | None = None
        self.ctrl_tx: socket.socket | None = None
        self.hold = scheduler.hold_time(cfg.hold_time, [])
        self.started = time.monotonic()
        self.bad_control = 0
        self.stopping: asyncio.Event | None = None

    # -- setup -------------------------------------------------------------

    def open(self) -> None:
        """Create the device, sockets and datapath.  Called before the event
        loop starts: pyroute2's synchronous IPRoute cannot run inside one."""
        cfg = self.cfg
        self.mtu = cfg.mtu or default_mtu(cfg)
        self.tun = Tun(cfg.name)
        self.tun.configure(self.mtu, cfg.addresses, cfg.routes)
        self.ctrl_rx, self.ctrl_tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctrl_rx.setblocking(False)
        self.ctrl_tx.setblocking(False)
        if self.server:
            self._open_listen()
        listen_fd = self.listen_sock.fileno() if self.server else -1
        self.dp = Datapath(self.tun.fd, self.ctrl_tx.fileno(), listen_fd, self.session,
                           self.hold, self.dead_after)
        if not self.server:
            for i, pc in enumerate(cfg.paths):
                self.paths[i] = Path(
                    index=i, name=pc.name, weight=pc.weight,
                    health=PathHealth(self.dead_after), interface=pc.interface,
                    local=str(pc.local) if pc.local else None,
                    peer=(str(pc.peer.host), pc.peer.port))
                self._open_path_socket(self.paths[i])
        self.dp.start()

    def _open_listen(self) -> None:
        ep = self.cfg.listen
        if ep.host is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr = ("::", ep.port)
        else:
            fam = socket.AF_INET6 if ep.host.version == 6 else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM)
            addr = (str(ep.host), ep.port)
        try:
            s.bind(addr)
        except OSError as e:
            s.close()
            raise OSError(f"cannot listen on {ep}: {e.strerror}") from None
        _tune(s)
        self.listen_sock = s

    def _open_path_socket(self, p: Path) -> bool:
        """(Re)open a client path's socket; on failure the path stays out
        and the next keepalive tick tries again."""
        host = p.peer[0]
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            if p.interface:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, p.interface.encode())
            s.bind((p.local or "", 0))
        except OSError as e:
            s.close()
            msg = f"path {p.name}: cannot bind to {p.interface or p.local}: {e.strerror}"
            if msg != p.last_error:
                log.warning("%s; retrying", msg)
                p.last_error = msg
            return False
        _tune(s)
        p.sock, p.last_error = s, None
        self.dp.set_path(p.index, s.fileno(), p.peer, p.weight, False)
        return True

    # -- policy --------------------------------------------------------------

    def _push_table(self) -> None:
        for e in scheduler.path_table(self.paths.values()):
            p = self.paths[e.index]
            fd = p.sock.fileno() if p.sock else (self.listen_sock.fileno() if self.server else -1)
            peer = None if self.server else p.peer
            self.dp.set_path(e.index, fd, peer, e.weight, e.active)
        rtts = [p.health.rtt.srtt for p in self.paths.values()
                if p.health.up and p.health.rtt.srtt is not None]
        hold = scheduler.hold_time(self.cfg.hold_time, rtts)
        if abs(hold - self.hold) > 0.001:
            self.hold = hold
            self.dp.set_hold(hold, self.dead_after)

    # -- control packets -----------------------------------------------------

    def _send_hello(self, p: Path, kind: str, echo_ns: int = 0, to=None) -> None:
        c = self.dp.counters()["path"][p.index]
        pkt = wire.build_control(p.index, self.session, kind=kind, weight=p.weight,
                                 sent_ns=time.monotonic_ns(), echo_ns=echo_ns,
                                 tx_packets=c["tx_packets"], rx_packets=c["rx_packets"],
                                 name=p.name)
        sock = self.listen_sock if self.server else p.sock
        try:
            sock.sendto(pkt, to or p.peer)
        except OSError as e:
            log.debug("path %s: hello not sent: %s", p.name, e.strerror)

    def _on_control_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.ctrl_rx.recv(4096)
            except BlockingIOError:
                return
            meta_len = wire.CTRL_META.size
            if len(data) < meta_len + wire.HDR_LEN:
                self.bad_control += 1
                continue
            fd, alen, raw = wire.CTRL_META.unpack_from(data)
            src = unpack_sockaddr(raw[:alen])
            reply_to = socket_address(raw[:alen])
            pkt = data[meta_len:]
            try:
                _, _, idx, _, _, _ = wire.parse_header(pkt)
                msg = wire.parse_control(pkt)
            except Exception:  # construct raises many kinds on garbage
                self.bad_control += 1
                continue
            if src is None or idx >= MAX_PATHS:
                self.bad_control += 1
                continue
            if self.server:
                self._server_hello(idx, src, reply_to, msg)
            else:
                self._client_ack(idx, fd, msg)

    def _server_hello(self, idx: int, src, reply_to, msg) -> None:
        """The C side has already learned the path's address from this
        packet; here the path enters the schedule and the hello is answered."""
        if msg.kind != "hello":
            self.bad_control += 1
            return
        now = time.monotonic()
        p = self.paths.get(idx)
        if p is None:
            p = self.paths[idx] = Path(index=idx, name=msg.name, weight=msg.weight,
                                       health=PathHealth(self.dead_after))
            log.info("path %s (%d) learned from %s:%d", msg.name, idx, *src)
        elif p.peer != src and p.peer is not None:
            log.info("path %s moved %s:%d -> %s:%d", p.name, *p.peer, *src)
        changed = p.health.on_reply(now) or p.peer != src or p.weight != msg.weight
        p.name, p.weight, p.peer = msg.name, msg.weight, src
        if changed:
            self.dp.set_path(idx, self.listen_sock.fileno(), None, p.weight, True)
        self._send_hello(p, "hello_ack", echo_ns=msg.sent_ns, to=reply_to)

    def _client_ack(self, idx: int, fd: int, msg) -> None:
        p = self.paths.get(idx)
        if msg.kind != "hello_ack" or p is None or p.sock is None or p.sock.fileno() != fd:
            self.bad_control += 1
            return
        rtt = (time.monotonic_ns() - msg.echo_ns) / 1e9
        if p.health.on_reply(time.monotonic(), rtt if rtt < 60 else None):
            log.info("path %s up (rtt %.1f ms)", p.name, rtt * 1e3)
            self._push_table()

    # -- timers ----------------------------------------------------------------

    async def _keepalive(self) -> None:
        while True:
            now = time.monotonic()
            changed = False
            for p in list(self.paths.values()):
                if not self.server:
                    if p.sock is None and not self._open_path_socket(p):
                        continue
                    self._send_hello(p, "hello")
                if p.health.on_tick(now):
                    log.warning("path %s down: no answer for %.1f s", p.name, self.dead_after)
                    changed = True
            if changed:
                self._push_table()
            starting = not self.server and not any(p.health.up for p in self.paths.values())
            await asyncio.sleep(min(STARTUP_HELLOS, self.cfg.keepalive) if starting
                                else self.cfg.keepalive)

    # -- status ------------------------------------------------------------------

    def status(self) -> dict:
        c = self.dp.counters()
        paths = []
        total_tx = sum(c["path"][p.index]["tx_bytes"] for p in self.paths.values()) or 1
        for p in sorted(self.paths.values(), key=lambda p: p.index):
            pc = c["path"][p.index]
            local = None
            sock = p.sock if not self.server else self.listen_sock
            if sock is not None:
                host, port = sock.getsockname()[:2]
                local = f"{host}:{port}"
            peer = self.dp.peer(p.index) if self.server else p.peer
            paths.append({
                "name": p.name, "index": p.index, "device": p.interface,
                "local": local, "remote": f"{peer[0]}:{peer[1]}" if peer else None,
                "state": "up" if p.health.up else "down", "weight": p.weight,
                "rtt_ms": round(p.health.rtt.srtt * 1e3, 3) if p.health.rtt.srtt else None,
                "share": round(pc["tx_bytes"] / total_tx, 4),
                **pc,
                "error": p.last_error,
            })
        glob = {k: v for k, v in c.items() if k != "path"}
        glob["drop_bad_control"] = self.bad_control
        return {"tunnel": self.cfg.name, "role": self.cfg.role, "session": self.session,
                "mtu": self.mtu, "hold_ms": round(self.hold * 1e3, 3),
                "uptime": round(time.monotonic() - self.started, 3),
                "paths": paths, "counters": glob}

    def _handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        raise ValueError(f"unknown command {cmd!r}")

    # -- run -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT/SIGHUP; the caller closes afterwards."""
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stopping.set)
        server = None
        tasks = []
        try:
            loop.add_reader(self.ctrl_rx.fileno(), self._on_control_readable)
            server = await control.serve(self.cfg.control, self._handle)
            tasks.append(asyncio.create_task(self._keepalive()))
            log.info("%s up: %s, mtu %d, %d path(s)", self.cfg.name, self.cfg.role, self.mtu,
                     len(self.cfg.paths))
            done = asyncio.create_task(self.stopping.wait())
            finished, _ = await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                if t is not done and t.exception():
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
            if server is not None:
                server.close()
                try:
                    os.unlink(self.cfg.control)
                except OSError:
                    pass
            if self.ctrl_rx is not None:
                loop.remove_reader(self.ctrl_rx.fileno())

    def close(self) -> None:
        if self.dp is not None:
            self.dp.close()
            self.dp = None
        for p in self.paths.values():
            if p.sock is not None:
                p.sock.close()
        for s in (self.listen_sock, self.ctrl_rx, self.ctrl_tx):
            if s is not None:
                s.close()
        if self.tun is not None:
            self.tun.close()  # the device disappears with its fd
            self.tun = None
