"""mptd: asyncio (uvloop) wiring of config, TUN device, path sockets, the C
datapath, path health, netlink and the control socket.

Python sets policy, runs the session handshakes (mpt/handshake.py) and
answers control packets; the C thread moves, seals and opens every packet.
A watch tick every WATCH_TICK reads the datapath's counters and drives the
handshakes and the path state machines (mpt/path.py): probes, silence,
stalls.

A client has one peer (the server).  A server has one Peer per client
router ([peer NAME] sections, or one implicit peer): each has its own
session, keys, paths, and inner prefixes.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

from . import cipher as ciphers
from . import control, handshake, mptcp, netlink, nft, scheduler, tcpproxy, wire
from .capacity import CapacityEstimator, Phase
from .config import IMPLICIT_PEER, TunnelConfig
from .datapath import MAX_PATHS, MAX_PEERS, Datapath, socket_address, unpack_sockaddr
from .path import HealthConfig, PathHealth, State, StallDetector
from .sockopt import IP_PKTINFO, big_buffers
from .tun import Tun, interface_mtu

log = logging.getLogger("mptd")

SOCK_BUF = 4 << 20
SERVER_MTU = 1500 - 40 - 8 - wire.HDR_LEN - wire.TAG_RESERVE   # safe on IPv6 paths
WATCH_TICK = 0.01           # how often counters are read and paths checked
IN_USE_WINDOW = 0.5         # a path that sent data this recently is "in use"
TABLE_BASE = 1000           # default routing table of path i: TABLE_BASE + i
MAX_WEIGHT = 1000.0         # as in tunnel.conf
MPTCP_SUBFLOWS = 8          # per-connection limit of the kernel's path manager
NO_KEY = bytes(32)          # the "pre-shared key" of cipher = none without a key file
HANDSHAKE_RESTART = 5.0     # an unanswered new-session handshake starts afresh this often
HANDSHAKE_LOG_EVERY = 10.0  # at most one log line about refused handshakes this often
SESSION_LIVE = 0.5          # server: a session this recently heard from is not replaced
SAME_TIER_DELAY = 0.001     # auto: one-way delays this close are one tier (MPT_SCHED_SAME_DELAY_US)


def _printable(name: str) -> str:
    """A peer-supplied path name, safe to log and show."""
    return "".join(c if c.isprintable() else "?" for c in name)[:32] or "?"


def _tune(sock: socket.socket) -> None:
    big_buffers(sock, SOCK_BUF)
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


@dataclass
class Path:
    index: int
    name: str
    weight: float
    peer_index: int = 0                       # the datapath peer it belongs to
    priority: int = 0
    health: PathHealth | None = None
    interface: str | None = None
    local: str | None = None                  # client: source address from the config
    peer: tuple | None = None                 # client: the server; server: the client
    sock: socket.socket | None = None
    routes: netlink.PathRoutes | None = None
    last_error: str | None = None
    last_probe: float | None = None
    last_tx: int = 0
    last_tx_change: float = 0.0
    last_rx: int = 0
    stall: StallDetector = field(default_factory=StallDetector)
    # server side: what the client told us
    heard: float = 0.0
    interval: float = 0.1
    client_usable: bool = False
    reply_to: tuple | None = None              # server: peer in the listen socket's form
    reply_from: tuple[int, bytes] = (0, b"")   # server: our address the client sends to
    endpoint_generation: int = 0               # client: MPTCP endpoint id rotation
    endpoint_source: str | None = None         # client: the address of its endpoint now
    cookie: bytes = b""                        # client: the server's handshake cookie for
    cookie_at: float = -math.inf               # this path's address, and when it came
    peer_tx: int = 0                           # the other side's counters for this path
    peer_rx: int = 0
    tx_bytes: int = 0                          # our counters for it, at the last tick
    rx_bytes: int = 0
    capacity: CapacityEstimator = field(default_factory=CapacityEstimator)

    @property
    def usable(self) -> bool:
        return self.health.usable


@dataclass
class Peer:
    """The other end of a session: the server (on a client) or one client
    router (on a server)."""
    index: int                                  # in the datapath
    name: str
    psk: bytes = field(repr=False)
    allowed: tuple = ()
    paths: dict[int, Path] = field(default_factory=dict)
    table: list = field(default_factory=list)
    hold: float = scheduler.DEFAULT_HOLD
    overflow: bool = True                       # auto: the datapath may overflow (set so)
    local_index: int = 0                        # ours, in the headers it sends us
    remote_index: int = 0                       # its, in the headers we send it
    phase: int = 0                              # key phase we send with (after the switch)
    keys: handshake.SessionKeys | None = None
    keyed_at: float = 0.0                       # when the current keys were installed
    heard: float = 0.0                          # last authenticated control packet
    data_heard: float = 0.0                     # last data packet (authenticated in C)
    # client: the handshake in progress, if any
    initiator: handshake.Initiator | None = None
    init_sent: float = -math.inf
    init_started: float = 0.0
    nonce_pushed: bytes | None = None           # the init nonce the datapath knows
    rekeying: bool = False
    packets_sent: int = 0                       # data and control, at the last tick
    tx_at_key: int = 0                          # packets_sent when the keys were installed


def _pktinfo(local: tuple[int, bytes]) -> list:
    """Ancillary data making a reply leave from `local` (as mpt_pktinfo.c)."""
    family, addr = local
    if family == 4:   # struct in_pktinfo: ifindex, spec_dst, addr
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, addr[:4], bytes(4)))]
    if family == 6:   # struct in6_pktinfo: addr, ifindex
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, addr[:16] + struct.pack("=i", 0))]
    return []


def _relearn(ipr, routes: netlink.PathRoutes) -> None:
    netlink.learn_routes(ipr, routes)
    netlink.install(ipr, routes)


class Daemon:
    def __init__(self, cfg: TunnelConfig):
        self.cfg = cfg
        self.server = cfg.role == "server"
        self.cipher = ciphers.NAMES[ciphers.resolve(cfg.cipher)]
        self.hcfg = HealthConfig(cfg.probe_interval, cfg.idle_probe_interval, cfg.dead_after,
                                 cfg.hold_down)
        self.peers: dict[int, Peer] = {}
        self.tun: Tun | None = None
        self.dp: Datapath | None = None
        self.nl: netlink.Netlink | None = None
        self.watcher: netlink.LinkWatcher | None = None
        self.listen_sock: socket.socket | None = None
        self.ctrl_rx: socket.socket | None = None
        self.ctrl_tx: socket.socket | None = None
        self.responders: dict[int, handshake.Responder] = {}
        self.answered: dict[int, tuple[bytes, bytes]] = {}   # peer -> (last init, response)
        self.started = time.monotonic()
        self.bad_control = 0
        self.bad_handshakes = 0
        self.cookies_received = 0
        self.bad_handshakes_logged = 0
        self.last_handshake_log = -math.inf
        self.stopping: asyncio.Event | None = None
        self.proxy: tcpproxy.ClientProxy | tcpproxy.ServerProxy | None = None
        self.nft_installed = False
        self.mss_clamped = False

    @property
    def paths(self) -> dict[int, Path]:
        """The client's paths (its one peer's)."""
        return self.peers[0].paths

    def _all_paths(self):
        for peer in self.peers.values():
            yield from peer.paths.values()

    def _new_index(self) -> int:
        """A session index no peer uses, ours included (the peer's packets
        name it; a client's new session must not reuse its current one)."""
        used = {p.local_index for p in self.peers.values()}
        while True:
            index = secrets.randbelow(0xFFFF) + 1
            if index not in used:
                return index

    # -- setup ---------------------------------------------------------------

    def open(self) -> None:
        """Create the device, sockets, routing and datapath.  Called before
        the event loop starts (pyroute2's IPRoute cannot run inside one)."""
        cfg = self.cfg
        if self.cipher == ciphers.NAMES["none"]:
            log.warning("cipher = none: the tunnel is neither encrypted nor authenticated; "
                        "anyone who can reach its port can send into the LAN")
        self.mtu = cfg.mtu or default_mtu(cfg)
        routes = list(cfg.routes)
        if self.server:
            routes += [n for pc in cfg.peers for n in pc.allowed
                       if pc.name != IMPLICIT_PEER and n not in routes]
        self.tun = Tun(cfg.name)
        self.tun.configure(self.mtu, cfg.addresses, tuple(routes))
        try:
            nft.install_mss_clamp(cfg.name, cfg.name, self.mtu)
            self.mss_clamped = True
        except nft.NftError as e:
            log.warning("TCP MSS not clamped to the tunnel MTU (LAN TCP will start slowly): %s", e)
        self.ctrl_rx, self.ctrl_tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctrl_rx.setblocking(False)
        self.ctrl_tx.setblocking(False)
        if self.server:
            self._open_listen()
        listen_fd = self.listen_sock.fileno() if self.server else -1
        self.dp = Datapath(self.tun.fd, self.ctrl_tx.fileno(), listen_fd,
                           scheduler.hold_time(cfg.hold_time, [], cfg.max_hold),
                           self._alive_window())
        if self.server:
            if len(cfg.peers) > MAX_PEERS:
                raise RuntimeError(f"at most {MAX_PEERS} [peer] sections are supported")
            for i, pc in enumerate(cfg.peers):
                peer = self.peers[i] = Peer(i, pc.name, pc.key or NO_KEY, pc.allowed)
                peer.local_index = self._new_index()
                self.dp.add_peer(i, pc.allowed)
                self.dp.set_sched_mode(i, cfg.scheduler)
                self.responders[i] = handshake.Responder({pc.name: peer.psk}, self.cipher)
        else:
            peer = self.peers[0] = Peer(0, "server", cfg.key_bytes or NO_KEY)
            self.dp.add_peer(0, ())
            self.dp.set_sched_mode(0, cfg.scheduler)
            self.nl = netlink.Netlink()
            for i, pc in enumerate(cfg.paths):
                fam = netlink.AF_INET6 if pc.peer.host.version == 6 else netlink.AF_INET
                p = peer.paths[i] = Path(
                    index=i, name=pc.name, weight=pc.weight, priority=pc.priority,
                    health=PathHealth(self.hcfg, since=time.monotonic()),
                    interface=pc.interface,
                    local=str(pc.local) if pc.local else None,
                    peer=(str(pc.peer.host), pc.peer.port),
                    routes=netlink.PathRoutes(
                        table=pc.table or TABLE_BASE + i, interface=pc.interface,
                        local=str(pc.local) if pc.local else None, family=fam,
                        gateway=str(pc.gateway) if pc.gateway else None))
                if pc.rate_bps:
                    self.dp.set_rate(0, i, pc.rate_bps)
                    p.capacity = CapacityEstimator(pc.rate_bps, ceiling_bps=pc.rate_bps)
                self.nl.run(netlink.learn_routes, p.routes)
                self.nl.run(netlink.install, p.routes)
                self._open_path_socket(p)
        if cfg.tcp.proxy:
            self._open_tcp_proxy()
        self.dp.start()

    def _open_tcp_proxy(self) -> None:
        """TCP over MPTCP: the client intercepts LAN TCP (nftables) and opens
        one MPTCP connection per LAN connection, one subflow per WAN path;
        the server accepts them (mpt/tcpproxy.py)."""
        cfg = self.cfg
        key = cfg.key_bytes
        if self.nl is None:
            self.nl = netlink.Netlink()
        self.nl.run(mptcp.set_limits, MPTCP_SUBFLOWS, MPTCP_SUBFLOWS)
        if self.server:
            host = str(cfg.listen.host) if cfg.listen.host else "::"
            if ":" not in host:
                host = f"::ffff:{host}"
            self.proxy = tcpproxy.ServerProxy(key, cfg.tcp.port, host, cfg.tcp.encrypt)
        else:
            server_host = (cfg.peer or cfg.paths[0].peer).host
            self.proxy = tcpproxy.ClientProxy(key, cfg.tcp.port, (str(server_host), cfg.tcp.port),
                                              cfg.tcp.encrypt)
            nft.install(cfg.name, cfg.tcp.port, cfg.tcp.intercept, cfg.tcp.exclude)
            self.nft_installed = True

    def _alive_window(self) -> float:
        """How long the receiver keeps counting a silent path as live."""
        return self.cfg.dead_after * self.cfg.idle_probe_interval

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
        # learn which of our addresses each client path sends to, so replies
        # leave from it (mpt_pktinfo.h)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if s.family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        _tune(s)
        self.listen_sock = s

    def _open_path_socket(self, p: Path) -> bool:
        """(Re)open a client path's socket.  The datapath moves to the new fd
        before the old one is closed.  On failure the path stays out and the
        next tick or link event tries again."""
        fam = socket.AF_INET6 if ":" in p.peer[0] else socket.AF_INET
        s = None
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            if p.interface:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, p.interface.encode())
            s.bind((p.local or "", 0))
        except OSError as e:
            if s is not None:
                s.close()
            msg = f"path {p.name}: cannot bind to {p.interface or p.local}: {e.strerror}"
            if msg != p.last_error:
                log.warning("%s; retrying", msg)
                p.last_error = msg
            return False
        _tune(s)
        old, p.sock, p.last_error = p.sock, s, None
        p.cookie = b""        # it was for the old socket's address
        self.dp.set_path(0, p.index, s.fileno(), p.peer, p.weight, False)
        if old is not None:
            self.dp.sync()
            old.close()
        peer = self.peers[0]
        peer.table = []   # force a push of the full table
        self._push_table(peer)
        return True

    # -- policy ----------------------------------------------------------------

    def _push_table(self, peer: Peer) -> None:
        table = scheduler.path_table(peer.paths.values())
        if table != peer.table:
            now = time.monotonic()
            for e in table:
                p = peer.paths[e.index]
                if e.active and not self._active(peer, e.index):
                    p.stall.restart(now)
                if self.server:
                    fd, addr = self.listen_sock.fileno(), None
                else:
                    fd, addr = (p.sock.fileno() if p.sock else -1), p.peer
                self.dp.set_path(peer.index, e.index, fd, addr, e.weight, e.active)
            peer.table = table
        # every path's last known RTT: a path that just failed may still
        # have packets in flight, and the hold time must not jump then
        rtts = [p.health.rtt.srtt for p in peer.paths.values() if p.health.rtt.srtt is not None]
        jitter = max((p.health.rtt.rttvar or 0.0 for e in peer.table if e.active
                      for p in [peer.paths[e.index]]), default=0.0)
        hold = scheduler.hold_time(self.cfg.hold_time, rtts, self.cfg.max_hold, jitter)
        if abs(hold - peer.hold) > 0.001:
            peer.hold = hold
            self.dp.set_hold(peer.index, hold, self._alive_window())

    @staticmethod
    def _active(peer: Peer, index: int) -> bool:
        """Scheduled to carry data (both sides compute the same table)."""
        return any(e.index == index and e.active for e in peer.table)

    def _share(self, peer: Peer, p: Path) -> float:
        """p's part of the data over the other scheduled paths' part, as the
        stall detector should expect it.  `weighted`: by the weights (both
        sides know them: the client announces them).  `auto`: the sender
        fills the lowest-delay tier first, so only a path of that tier must
        carry data whenever others do, in the part it has been getting; a
        spill path may go quiet any time (its probes still time out)."""
        others = [peer.paths[e.index] for e in peer.table if e.active and e.index != p.index]
        if self.cfg.scheduler == "auto":
            mine = p.health.rtt.srtt
            fastest = min((q.health.rtt.srtt for q in others if q.health.rtt.srtt is not None),
                          default=None)
            if mine is None or (fastest is not None and mine > fastest + 2 * SAME_TIER_DELAY):
                return 0.0
            return p.stall.seen_share()
        weight = sum(q.weight for q in others)
        return p.weight / weight if weight > 0 else 0.0

    @staticmethod
    def _delay_spread(peer: Peer, p: Path) -> tuple[float, float]:
        """(lag, lead): how much later p's data may arrive than the fastest
        other scheduled path's, and how much earlier than the slowest's.
        From RTTs (one-way delays need not be symmetric, so the whole RTT
        difference), each plus twice the largest RTT variation (jitter)."""
        others = [peer.paths[e.index].health.rtt for e in peer.table
                  if e.active and e.index != p.index]
        mine = p.health.rtt
        known = [r.srtt for r in others if r.srtt is not None]
        if mine.srtt is None or not known:
            return 0.0, 0.0
        jitter = 2 * max(r.rttvar or 0.0 for r in others + [mine])
        return (max(0.0, mine.srtt - min(known)) + jitter,
                max(0.0, max(known) - mine.srtt) + jitter)

    def _usable_mask(self) -> int:
        return sum(1 << p.index for p in self.paths.values() if p.usable)

    def _state_changed(self, p: Path, new: State, why: str) -> None:
        log.info("path %s %s (%s)", p.name, new.value, why)
        self._sync_endpoint(p)
        peer = self.peers[p.peer_index]
        self._push_table(peer)
        if not self.server:
            # tell the server at once, on every path that works
            now = time.monotonic()
            for q in peer.paths.values():
                if q.usable or q is p:
                    self._probe(q, now)

    # -- handshakes ------------------------------------------------------------

    def _send_handshake(self, p: Path, body: bytes) -> None:
        pkt = wire.handshake_header(p.index) + body
        try:
            if self.server:
                self.listen_sock.sendmsg([pkt], _pktinfo(p.reply_from), 0, p.reply_to)
            elif p.sock is not None:
                p.sock.sendto(pkt, p.peer)
        except OSError as e:
            log.debug("path %s: handshake not sent: %s", p.name, e.strerror)

    def _handshake_tick(self, now: float) -> None:
        """Client: start a session, rekey it in time, start over when the
        server has gone silent (it restarted, or lost our session)."""
        peer = self.peers[0]
        dead_after = max(0.5, 2 * self.cfg.idle_probe_interval)
        dead = peer.keys is None or (now - max(peer.heard, peer.keyed_at) > dead_after)
        rekey = peer.keys is not None and (
            now - peer.keyed_at >= self.cfg.rekey_interval
            or peer.packets_sent - peer.tx_at_key >= handshake.REKEY_AFTER_PACKETS)
        if peer.initiator is not None and peer.rekeying and dead:
            peer.initiator = None      # a rekey cannot help a session the server lost
        if peer.initiator is None and (dead or rekey):
            index = peer.local_index if not dead else self._new_index()
            peer.initiator = handshake.Initiator(peer.psk, index, self.cipher)
            peer.rekeying, peer.init_started, peer.init_sent = not dead, now, -math.inf
        elif (peer.initiator is not None and not peer.rekeying
              and now - peer.init_started > HANDSHAKE_RESTART):
            peer.initiator.restart()   # a fresh attempt: nothing to keep consistent
            peer.init_started, peer.init_sent = now, -math.inf
        nonce = peer.initiator.nonce if peer.initiator is not None else None
        if nonce != peer.nonce_pushed:     # the datapath drops cookie replies to other inits
            self.dp.set_init_nonce(nonce)
            peer.nonce_pushed = nonce
        if peer.initiator is not None and now - peer.init_sent >= handshake.HANDSHAKE_RETRY_S:
            peer.init_sent = now
            for p in peer.paths.values():
                if p.health.link_ok:
                    self._send_init(peer, p, now)

    def _send_init(self, peer: Peer, p: Path, now: float) -> None:
        cookie = p.cookie if now - p.cookie_at < handshake.COOKIE_USE_S else b""
        self._send_handshake(p, peer.initiator.init_message() + cookie)

    def _on_handshake(self, fd: int, pkt: bytes, src, reply_to, raw_addr, local) -> None:
        body = pkt[wire.HDR_LEN:]
        try:
            kind = handshake.message_kind(body)
            if self.server and kind == "init":
                init, _ = handshake.split_init(body)   # the datapath checked the cookie
                self._server_handshake(init, src, reply_to, raw_addr, local,
                                       wire.parse_header(pkt)[2])
            elif not self.server and kind == "response":
                self._client_handshake(fd, body)
            elif not self.server and kind == "cookie":
                self._client_cookie(fd, body)
            else:
                raise handshake.HandshakeError(f"unexpected handshake {kind}")
        except handshake.HandshakeError as e:
            self._handshake_failed(src, str(e))

    def _handshake_failed(self, src, why: str) -> None:
        """Count, and log at most every HANDSHAKE_LOG_EVERY: a flood of
        forged handshakes must not become a flood of log lines."""
        self.bad_handshakes += 1
        now = time.monotonic()
        if now - self.last_handshake_log >= HANDSHAKE_LOG_EVERY:
            more = self.bad_handshakes - self.bad_handshakes_logged - 1
            log.warning("handshake from %s:%d refused: %s%s", *(src or ("?", 0)), why,
                        f" (and {more} more refused since the last report)" if more else "")
            self.last_handshake_log = now
            self.bad_handshakes_logged = self.bad_handshakes

    def _client_handshake(self, fd: int, body: bytes) -> None:
        peer = self.peers[0]
        if peer.initiator is None:
            return   # a duplicate of a response already used
        keys = peer.initiator.receive_response(body)
        now = time.monotonic()
        if peer.rekeying:
            peer.phase ^= 1
            self.dp.set_keys(0, peer.phase, keys.tx_data, keys.rx_data, True)
            log.info("session rekeyed (key phase %d)", peer.phase)
        else:
            self.dp.set_session(0, keys.local_index, keys.remote_index, keys.cipher)
            self.dp.set_keys(0, 0, keys.tx_data, keys.rx_data, True)
            peer.phase, peer.local_index, peer.remote_index = 0, keys.local_index, keys.remote_index
            log.info("session %d established with the server (%s)", keys.local_index,
                     handshake.CIPHER_NAMES[keys.cipher])
        peer.keys, peer.keyed_at, peer.initiator = keys, now, None
        peer.tx_at_key = peer.packets_sent
        for p in peer.paths.values():   # the server learns our paths from probes
            if p.health.link_ok:
                self._probe(p, now)

    def _client_cookie(self, fd: int, body: bytes) -> None:
        """The server is under load and wants our inits on this path to
        prove that we receive at its address (handshake.py: cookies)."""
        peer = self.peers[0]
        if peer.initiator is None:
            return
        cookie = peer.initiator.receive_cookie(body)
        p = next((q for q in peer.paths.values()
                  if q.sock is not None and q.sock.fileno() == fd), None)
        if p is None:
            return
        now = time.monotonic()
        if now - p.cookie_at >= handshake.COOKIE_USE_S:
            log.info("path %s: the server is refusing handshakes under load; "
                     "retrying with its cookie", p.name)
        fresh = cookie != p.cookie
        p.cookie, p.cookie_at = cookie, now
        self.cookies_received += 1
        if fresh:        # at once, not at the next retry (one resend per new cookie)
            self._send_init(peer, p, now)

    def _server_handshake(self, body: bytes, src, reply_to, raw_addr, local, idx: int) -> None:
        live = False
        for i, responder in self.responders.items():
            peer = self.peers[i]
            last = self.answered.get(i)
            if last is not None and last[0] == body:
                response = last[1]        # a resent init: same answer, nothing else
                break
            sender = int.from_bytes(body[6:8], "big")   # checked by the MAC below
            if self._session_live(peer, time.monotonic()) and sender != peer.remote_index:
                # A new session while the current one is alive: a replay of
                # an old init (it passes the MAC; the nonce cache does not
                # outlive a restart) must not knock out the real session.  A
                # client that really restarted goes quiet first.  Checked
                # before the responder sees it, so its nonce stays usable.
                live = True
                continue
            try:
                response, keys = responder.receive_init(body, peer.local_index)
            except handshake.CipherMismatch as e:
                self._reply_handshake(idx, raw_addr, reply_to, local, e.response)
                raise
            except handshake.HandshakeError as e:
                if "no configured peer key" in str(e):
                    continue
                raise
            self.answered[i] = (body, response)
            if peer.keys is not None and keys.remote_index == peer.remote_index:
                # a rekey: new keys in the phase we do not send with, so the
                # client's current keys stay intact even if an earlier init
                # (abandoned, or replayed once its nonce left the cache)
                # already filled the other phase; we send with them once the
                # client does (it has them when it sends with them)
                peer.phase = self.dp.tx_phase(i) ^ 1
                self.dp.set_keys(i, peer.phase, keys.tx_data, keys.rx_data, False)
                log.info("peer %s: session rekeyed (key phase %d)", peer.name, peer.phase)
            else:
                self.dp.set_session(i, peer.local_index, keys.remote_index, keys.cipher)
                self.dp.set_keys(i, 0, keys.tx_data, keys.rx_data, True)
                peer.phase, peer.remote_index = 0, keys.remote_index
                log.info("peer %s: session established from %s:%d (%s)", peer.name, *src,
                         handshake.CIPHER_NAMES[keys.cipher])
            peer.keys, peer.keyed_at = keys, time.monotonic()
            break
        else:
            raise handshake.HandshakeError(
                "a new session while the current one is live (a replayed init?)" if live
                else "no configured peer key verifies it")
        self._reply_handshake(idx, raw_addr, reply_to, local, response)

    def _session_live(self, peer: Peer, now: float) -> bool:
        """Authenticated packets (data or control) arrived from the peer
        within SESSION_LIVE."""
        return peer.keys is not None and now - max(peer.heard, peer.data_heard) < SESSION_LIVE

    def _reply_handshake(self, idx: int, raw_addr, reply_to, local, response: bytes) -> None:
        pkt = wire.handshake_header(idx) + response
        try:
            self.listen_sock.sendmsg([pkt], _pktinfo(local), 0, reply_to)
        except OSError as e:
            log.debug("handshake response not sent: %s", e.strerror)

    # -- control packets ---------------------------------------------------------

    def _send(self, p: Path, kind: str, **fields) -> None:
        c = self.dp.path_counters(p.peer_index, p.index)
        body = wire.build_control(kind=kind, weight=p.weight, priority=p.priority,
                                  sent_ns=time.monotonic_ns(),
                                  tx_packets=c["tx_packets"], rx_packets=c["rx_packets"],
                                  tx_bytes=c["tx_bytes"], rx_bytes=c["rx_bytes"],
                                  name=p.name, **fields)
        if not self.dp.send_control(p.peer_index, p.index, body):
            log.debug("path %s: %s not sent", p.name, kind)

    def _probe(self, p: Path, now: float) -> None:
        p.last_probe = now
        p.health.on_probe_sent()
        srtt = p.health.rtt.srtt
        # the longest gap between two probes: the server's silence bound
        self._send(p, "probe", interval_ms=min(65535, int(self.cfg.idle_probe_interval * 1000)),
                   usable=self._usable_mask(),
                   rtt_us=min(2**32 - 1, int(srtt * 1e6)) if srtt else 0)

    def _report_stall(self, peer: Peer, p: Path) -> None:
        """Tell the peer its data stopped arriving on p, over the other paths."""
        for q in peer.paths.values():
            if q is not p and (q.usable if not self.server else q.client_usable):
                self._send(q, "stall", about=p.index)

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
            fd, peer_index, alen, raw, local_family, local = wire.CTRL_META.unpack_from(data)
            src = unpack_sockaddr(raw[:alen])
            reply_to = socket_address(raw[:alen])
            pkt = data[meta_len:]
            if src is None:
                self.bad_control += 1
                continue
            if peer_index < 0:
                self._on_handshake(fd, pkt, src, reply_to, raw[:alen], (local_family, local))
                continue
            peer = self.peers.get(peer_index)
            try:
                _, _, idx, _, _ = wire.parse_header(pkt)
                msg = wire.parse_control(pkt)
            except Exception:  # construct raises many kinds on garbage
                self.bad_control += 1
                continue
            if peer is None or idx >= MAX_PATHS:
                self.bad_control += 1
                continue
            peer.heard = time.monotonic()
            if self.server:
                self._server_control(peer, idx, src, reply_to, raw[:alen],
                                     (local_family, local), msg)
            else:
                self._client_control(idx, fd, msg)

    def _server_control(self, peer: Peer, idx: int, src, reply_to, raw_addr: bytes, local,
                        msg) -> None:
        now = time.monotonic()
        p = peer.paths.get(idx)
        if msg.kind == "stall":
            q = peer.paths.get(msg.about)
            if q is not None and q.client_usable:
                q.client_usable = False     # until the client's next mask says otherwise
                self._server_tick(peer, q, now)
            return
        if msg.kind != "probe" or not (0 < msg.weight <= MAX_WEIGHT and math.isfinite(msg.weight)):
            self.bad_control += 1
            return
        msg.name = _printable(msg.name)
        if p is None:
            p = peer.paths[idx] = Path(index=idx, name=msg.name, weight=msg.weight,
                                       priority=msg.priority, peer_index=peer.index,
                                       health=PathHealth(self.hcfg, since=now))
            log.info("peer %s: path %s (%d) learned from %s:%d", peer.name, msg.name, idx, *src)
        elif p.peer is not None and p.peer != src:
            log.info("peer %s: path %s moved %s:%d -> %s:%d", peer.name, p.name, *p.peer, *src)
        if p.peer != src or p.reply_from != local:   # new path, or the client moved (DHCP, NAT)
            self.dp.set_peer(peer.index, idx, self.listen_sock.fileno(), raw_addr, local)
            p.reply_from = local
        p.name, p.weight, p.priority, p.peer = msg.name, msg.weight, msg.priority, src
        p.reply_to = reply_to
        p.heard, p.interval = now, max(0.01, msg.interval_ms / 1000)
        p.peer_tx, p.peer_rx = msg.tx_packets, msg.rx_packets
        if msg.rtt_us:
            p.health.rtt.srtt = msg.rtt_us / 1e6
        self._measure(peer, p, now, msg)
        for q in peer.paths.values():
            q.client_usable = bool(msg.usable >> q.index & 1)
            self._server_tick(peer, q, now)
        self._send(p, "reply", echo_ns=msg.sent_ns)

    def _client_control(self, idx: int, fd: int, msg) -> None:
        p = self.paths.get(idx)
        if p is None or p.sock is None or p.sock.fileno() != fd:
            self.bad_control += 1
            return
        now = time.monotonic()
        if msg.kind == "stall":
            q = self.paths.get(msg.about)
            if q is not None:
                new = q.health.on_stall(now)
                if new:
                    self._state_changed(q, new, "the server stopped receiving on it")
            return
        if msg.kind != "reply":
            self.bad_control += 1
            return
        rtt = (time.monotonic_ns() - msg.echo_ns) / 1e9
        p.peer_tx, p.peer_rx = msg.tx_packets, msg.rx_packets
        new = p.health.on_reply(now, sent_at=msg.echo_ns / 1e9, rtt=rtt)
        if new:
            self._state_changed(p, new, f"rtt {rtt * 1e3:.1f} ms")
        self._measure(self.peers[0], p, now, msg)

    def _measure(self, peer: Peer, p: Path, now: float, msg) -> None:
        """The peer's counters for p arrived (in a probe or reply): update
        what p can carry in our direction; `auto` schedules by it and by
        p's delay (half its RTT)."""
        srtt = p.health.rtt.srtt
        p.capacity.update(now, p.tx_bytes, msg.rx_bytes, p.health.loss_out.loss, srtt,
                          reported_at=msg.sent_ns / 1e9)
        if self.cfg.scheduler == "auto":
            self.dp.set_measure(peer.index, p.index, p.capacity.capacity_bps,
                                srtt / 2 if srtt else 0.0)
            # overflow finds what the paths carry while an estimate is still
            # growing from nothing; after that, traffic beyond the estimates
            # waits for room and is dropped (it would only fill the links'
            # queues: delay and loss for every flow)
            growing = any(q.capacity.phase is Phase.STARTUP for q in peer.paths.values()
                          if self._active(peer, q.index))
            if growing != peer.overflow:
                peer.overflow = growing
                self.dp.set_overflow(peer.index, growing)

    # -- links -------------------------------------------------------------------

    def _on_link_change(self, name: str) -> None:
        link = self.watcher.links[name]
        now = time.monotonic()
        for p in self.paths.values():
            if p.interface != name:
                continue
            ok = link.usable(p.routes.family, p.local)
            was = p.health.link_ok
            new = p.health.on_link(now, ok)
            source = link.address(p.routes.family) if ok else None
            if self.proxy is not None and source != p.routes.source:
                self._move_subflow_source(p, source)
            if ok and not was:
                # the link is back (maybe with a new address, maybe a new device,
                # maybe a new gateway): learn the routes again and install them
                asyncio.get_running_loop().create_task(self.nl.call(_relearn, p.routes))
                self._open_path_socket(p)
                self._probe(p, now)
            if new:
                self._state_changed(p, new, "link up" if ok else "link down or address gone")

    def _move_subflow_source(self, p: Path, source: str | None) -> None:
        """Keep the `from ADDR` rule of the path on its current address (none
        while the link is down), and the MPTCP endpoint with it."""
        old = netlink.PathRoutes(**{**p.routes.__dict__})
        p.routes.source = source

        def apply(_ipr):
            netlink.remove(_ipr, old)
            netlink.install(_ipr, p.routes)

        asyncio.get_running_loop().create_task(self.nl.call(apply))
        self._sync_endpoint(p)

    def _sync_endpoint(self, p: Path) -> None:
        """The path's MPTCP endpoint (subflows of the TCP proxy's connections)
        exists while the path is up, on its current address.  Not before: a
        link that comes back is given the endpoint only once the tunnel's
        probes show the path works and the hold-down is over.  Had the old
        address the connection's first subflow, the new subflow joins with
        the same address id (0), and the peer, still to process the RM_ADDR
        that the endpoint's removal sent, closed the new subflow with the old
        one (the kernel then opens none again)."""
        if self.proxy is None or self.server:
            return
        up = p.health.state in (State.UP, State.SUSPECT)
        source = p.routes.source if up else None
        if source == p.endpoint_source:
            return
        p.endpoint_source = source
        p.endpoint_generation += 1
        generation = p.endpoint_generation

        def apply(_ipr):
            mptcp.set_endpoint(_ipr, p.index, source, p.priority > 0, generation)

        asyncio.get_running_loop().create_task(self.nl.call(apply))

    # -- timers ------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every WATCH_TICK: handshakes due; counters → in-use, data
        arrivals, stalls; path state machines; probes due."""
        while True:
            if self.dp.failed():
                raise RuntimeError(f"datapath stopped: {os.strerror(self.dp.failed())}")
            now = time.monotonic()
            if not self.server:
                self._handshake_tick(now)
            for peer in self.peers.values():
                self._watch_peer(peer, now)
            await asyncio.sleep(WATCH_TICK)

    def _watch_peer(self, peer: Peer, now: float) -> None:
        counters = self.dp.counters(peer.index)["path"]
        total = sum(counters[p.index]["rx_packets"] for p in peer.paths.values())
        peer.packets_sent = sum(c["tx_packets"] + c["ctrl_tx"] for c in counters)
        for p in list(peer.paths.values()):
            c = counters[p.index]
            p.tx_bytes, p.rx_bytes = c["tx_bytes"], c["rx_bytes"]
            if c["tx_packets"] != p.last_tx:
                p.last_tx, p.last_tx_change = c["tx_packets"], now
            if c["rx_packets"] != p.last_rx:
                p.last_rx = c["rx_packets"]
                p.health.on_data(now)
                p.heard = peer.data_heard = now
            p.stall.update(now, p.last_rx, total)
        for p in list(peer.paths.values()):
            # a path the peer schedules no data on (a standby backup) may go quiet
            if self._active(peer, p.index) and p.stall.stalled(
                    now, total, self._share(peer, p), *self._delay_spread(peer, p)):
                self._on_stall_detected(peer, p, now)
            if self.server:
                self._server_tick(peer, p, now)
            else:
                self._client_tick(p, now)

    def _on_stall_detected(self, peer: Peer, p: Path, now: float) -> None:
        log.info("path %s: data stopped arriving while other paths deliver", p.name)
        self._report_stall(peer, p)
        if not self.server:
            new = p.health.on_stall(now)
            if new:
                self._state_changed(p, new, "no data from the server on it")

    def _client_tick(self, p: Path, now: float) -> None:
        h = p.health
        h.in_use = now - p.last_tx_change < IN_USE_WINDOW
        if p.sock is None and h.link_ok and not self._open_path_socket(p):
            return
        new = h.tick(now)
        if new:
            self._state_changed(p, new, f"silent for {h.dead_time():.2f} s"
                                if new is State.DOWN else "hold-down over")
        if h.probe_due(now, p.last_probe) and self.peers[0].keys is not None:
            self._probe(p, now)
        h.loss_out.sample(now, p.last_tx, p.peer_rx)
        h.loss_in.sample(now, p.peer_tx, p.last_rx)

    def _server_tick(self, peer: Peer, p: Path, now: float) -> None:
        """The server follows the client: a path carries return traffic while
        the client says it is usable and it is not silent."""
        fresh = now - p.heard <= self.cfg.dead_after * p.interval
        want = State.UP if fresh and p.client_usable else State.DOWN
        if p.health.state is not want:
            p.health.state, p.health.since = want, now
            self._state_changed(p, want, "client says so" if fresh else "silent")
        p.health.loss_out.sample(now, p.last_tx, p.peer_rx)
        p.health.loss_in.sample(now, p.peer_tx, p.last_rx)

    # -- status and commands -------------------------------------------------------

    def _path_status(self, peer: Peer, p: Path, pc: dict, total_tx: int) -> dict:
        h = p.health
        local = None
        sock = p.sock if not self.server else self.listen_sock
        if sock is not None:
            host, port = sock.getsockname()[:2]
            local = f"{host}:{port}"
        addr = self.dp.peer_address(peer.index, p.index) if self.server else p.peer
        srtt = h.rtt.srtt
        return {
            "name": p.name, "index": p.index, "peer": peer.name, "device": p.interface,
            "local": local, "remote": f"{addr[0]}:{addr[1]}" if addr else None,
            "state": h.state.value,
            "active": self._active(peer, p.index),
            "weight": p.weight, "priority": p.priority,
            "rtt_ms": round(srtt * 1e3, 3) if srtt else None,
            "rttvar_ms": round(h.rtt.rttvar * 1e3, 3) if h.rtt.rttvar else None,
            "loss_out": round(h.loss_out.loss, 4) if h.loss_out.loss is not None else None,
            "loss_in": round(h.loss_in.loss, 4) if h.loss_in.loss is not None else None,
            "share": round(pc["tx_bytes"] / total_tx, 4),
            "capacity_mbps": round(p.capacity.capacity_bps / 1e6, 3),
            "delivery_mbps": round(p.capacity.delivery_bps / 1e6, 3),
            "capacity_phase": p.capacity.phase.value,
            "flaps": h.flaps,
            **pc,
            "error": p.last_error,
        }

    def status(self) -> dict:
        glob = self.dp.counters(-1)
        del glob["path"]
        paths, peers = [], []
        for peer in self.peers.values():
            c = self.dp.counters(peer.index)
            total_tx = sum(c["path"][p.index]["tx_bytes"] for p in peer.paths.values()) or 1
            for p in sorted(peer.paths.values(), key=lambda p: p.index):
                paths.append(self._path_status(peer, p, c["path"][p.index], total_tx))
            for k, v in c.items():
                if k != "path":
                    glob[k] += v
            peers.append({"name": peer.name, "session": peer.local_index,
                          "established": peer.keys is not None,
                          "key_age_s": round(time.monotonic() - peer.keyed_at, 3)
                          if peer.keys else None,
                          "key_phase": peer.phase,
                          "allowed": [str(n) for n in peer.allowed],
                          "hold_ms": round(peer.hold * 1e3, 3),
                          "counters": {k: v for k, v in c.items() if k != "path"}})
        glob["drop_bad_control"] = self.bad_control
        glob["handshakes_refused"] = self.bad_handshakes
        glob["handshake_cookies_received"] = self.cookies_received
        return {"tunnel": self.cfg.name, "role": self.cfg.role,
                "cipher": handshake.CIPHER_NAMES[self.cipher],
                "session": self.peers[0].local_index if not self.server else None,
                "mtu": self.mtu,
                "hold_ms": round(max(p.hold for p in self.peers.values()) * 1e3, 3),
                "uptime": round(time.monotonic() - self.started, 3),
                "peers": peers, "paths": paths, "counters": glob,
                "tcp": self.proxy.status() if self.proxy else None}

    def _handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "path":
            return self._admin(req.get("name"), req.get("state"))
        raise ValueError(f"unknown command {cmd!r}")

    def _admin(self, name, state) -> dict:
        if self.server:
            raise ValueError("paths are taken up and down on the client")
        if state not in ("up", "down"):
            raise ValueError(f"state must be up or down, not {state!r}")
        for p in self.paths.values():
            if p.name == name:
                new = p.health.on_admin(time.monotonic(), state == "up")
                if new:
                    self._state_changed(p, new, "by hand")
                return {"path": name, "state": p.health.state.value}
        raise ValueError(f"no path named {name!r}")

    # -- run ---------------------------------------------------------------------

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
            if not self.server:
                names = {p.interface for p in self.paths.values() if p.interface}
                self.watcher = netlink.LinkWatcher(names, self._on_link_change,
                                                   lambda: self.nl.call(netlink.dump))
                self.watcher.start(loop, await self.nl.call(netlink.dump))
                for name in names:
                    self._on_link_change(name)
            if self.proxy is not None:
                self.proxy.attach(loop)
            server = await control.serve(self.cfg.control, self._handle)
            tasks.append(asyncio.create_task(self._watch()))
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
            if self.watcher is not None:
                self.watcher.close(loop)
            if self.proxy is not None:
                self.proxy.close(loop)
            if self.ctrl_rx is not None:
                loop.remove_reader(self.ctrl_rx.fileno())

    def close(self) -> None:
        for installed, remove in ((self.nft_installed, nft.remove),
                                  (self.mss_clamped, nft.remove_mss_clamp)):
            if installed:
                try:
                    remove(self.cfg.name)
                except nft.NftError as e:
                    log.warning("%s", e)
        self.nft_installed = self.mss_clamped = False
        if self.dp is not None:
            self.dp.close()
            self.dp = None
        if self.nl is not None:
            for p in self._all_paths():
                if p.routes is not None:
                    self.nl.run(netlink.remove, p.routes)
            if self.proxy is not None and not self.server:
                self.nl.run(mptcp.remove_endpoints, list(self.paths))
            self.nl.close()
            self.nl = None
        for p in self._all_paths():
            if p.sock is not None:
                p.sock.close()
        for s in (self.listen_sock, self.ctrl_rx, self.ctrl_tx):
            if s is not None:
                s.close()
        if self.tun is not None:
            self.tun.close()  # the device disappears with its fd
            self.tun = None
