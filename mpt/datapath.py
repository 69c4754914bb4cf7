"""Python side of the C datapath: start and stop its thread, push the path
table, read counters.  No data packet ever passes through here."""
from __future__ import annotations

import ipaddress
import socket
import struct

from ._datapath import ffi, lib

MAX_PATHS = lib.MPT_MAX_PATHS

_SIN = struct.Struct("=H")


def pack_sockaddr(host: str, port: int) -> bytes:
    """struct sockaddr_in / sockaddr_in6 bytes, as the kernel expects them."""
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return _SIN.pack(socket.AF_INET) + struct.pack("!H", port) + ip.packed + bytes(8)
    return (_SIN.pack(socket.AF_INET6) + struct.pack("!HI", port, 0) + ip.packed
            + struct.pack("=I", 0))


def socket_address(raw: bytes) -> tuple | None:
    """The address tuple a Python socket of the same family takes in sendto()."""
    if len(raw) < 2:
        return None
    (family,) = _SIN.unpack_from(raw)
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.ip_address(raw[8:24])), struct.unpack_from("!H", raw, 2)[0], 0, 0
    return unpack_sockaddr(raw)


def unpack_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(host, port) for people: IPv4-mapped IPv6 addresses shown as IPv4."""
    if len(raw) < 2:
        return None
    (family,) = _SIN.unpack_from(raw)
    if family == socket.AF_INET and len(raw) >= 16:
        return str(ipaddress.ip_address(raw[4:8])), struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = ipaddress.ip_address(raw[8:24])
        if ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return str(ip), struct.unpack_from("!H", raw, 2)[0]
    return None


PATH_COUNTERS = tuple(name for name, _ in ffi.typeof("struct mpt_path_counters").fields)
GLOBAL_COUNTERS = tuple(
    name for name, _ in ffi.typeof("struct mpt_counters").fields if name != "path")
MAX_PEERS = lib.MPT_MAX_PEERS
MAX_ALLOWED = lib.MPT_MAX_ALLOWED
SCHED_MODES = {"weighted": lib.MPT_SCHED_WEIGHTED, "auto": lib.MPT_SCHED_AUTO}


def _prefixes(allowed) -> tuple:
    """ip_network objects -> struct mpt_prefix array (empty: any address)."""
    arr = ffi.new("struct mpt_prefix[]", max(1, len(allowed)))
    for i, net in enumerate(allowed):
        arr[i].family = net.version
        arr[i].len = net.prefixlen
        ffi.memmove(arr[i].addr, net.network_address.packed, len(net.network_address.packed))
    return arr, len(allowed)


class Datapath:
    def __init__(self, tun_fd: int, ctrl_fd: int, listen_fd: int, hold: float, alive: float):
        """listen_fd >= 0 for the server, -1 for the client."""
        self._dp = lib.mpt_dp_new(tun_fd, ctrl_fd, listen_fd, int(hold * 1e6),
                                  max(1, int(alive * 1e3)))
        if self._dp == ffi.NULL:
            raise MemoryError("cannot create the datapath (out of memory, or the kernel "
                              "gives no random bytes for its handshake cookies)")
        self._snap = ffi.new("struct mpt_counters *")

    def start(self) -> None:
        if lib.mpt_dp_start(self._dp) != 0:
            raise RuntimeError("cannot start the datapath thread")

    def close(self) -> None:
        if self._dp is not None:
            lib.mpt_dp_free(self._dp)  # stops and joins the thread
            self._dp = None

    def add_peer(self, peer: int, allowed=()) -> None:
        """Peer `peer` may use (and is routed) the inner prefixes `allowed`
        (ip_network objects; empty: any address)."""
        if len(allowed) > MAX_ALLOWED:
            raise ValueError(f"at most {MAX_ALLOWED} allowed prefixes per peer")
        arr, n = _prefixes(allowed)
        if lib.mpt_dp_add_peer(self._dp, peer, arr, n):
            raise ValueError(f"cannot add peer {peer}")

    def set_session(self, peer: int, local_index: int, remote_index: int, cipher: int) -> None:
        if lib.mpt_dp_set_session(self._dp, peer, local_index, remote_index, cipher):
            raise ValueError(f"cannot start session {local_index} for peer {peer}")

    def set_keys(self, peer: int, phase: int, tx_key: bytes, rx_key: bytes, tx_now: bool) -> None:
        if lib.mpt_dp_set_keys(self._dp, peer, phase, tx_key, rx_key, int(tx_now)):
            raise ValueError(f"cannot install keys for peer {peer}")

    def tx_phase(self, peer: int) -> int:
        """The key phase (0/1) we send with now; -1 for an unknown peer."""
        return lib.mpt_dp_tx_phase(self._dp, peer)

    def send_control(self, peer: int, idx: int, body: bytes) -> bool:
        """Seal and send a control message on path idx; False if it could
        not go (no session or address yet, or the socket refused)."""
        return lib.mpt_dp_send_control(self._dp, peer, idx, body, len(body)) == 0

    def set_hold(self, peer: int, hold: float, alive: float) -> None:
        lib.mpt_dp_set_hold(self._dp, peer, int(hold * 1e6), max(1, int(alive * 1e3)))

    def set_path(self, peer: int, idx: int, fd: int, addr: tuple[str, int] | None,
                 weight: float, active: bool) -> None:
        raw = pack_sockaddr(*addr) if addr else b""
        if lib.mpt_dp_set_path(self._dp, peer, idx, fd, raw, len(raw), float(weight),
                               int(active)):
            raise ValueError(f"bad path index {idx}")

    def set_peer(self, peer: int, idx: int, fd: int, raw_sockaddr: bytes,
                 local: tuple[int, bytes]) -> None:
        """Path idx's client address (raw sockaddr) and the local address
        (family 0/4/6, 16 bytes) that replies must leave from."""
        family, addr = local
        if lib.mpt_dp_set_peer(self._dp, peer, idx, fd, raw_sockaddr, len(raw_sockaddr), family,
                               addr.ljust(16, b"\0")):
            raise ValueError(f"bad path index {idx} or address")

    def set_sched_mode(self, peer: int, mode: str) -> None:
        lib.mpt_dp_set_sched_mode(self._dp, peer, SCHED_MODES[mode])

    def set_rate(self, peer: int, idx: int, rate_bps: float, burst_bytes: float = 0.0) -> None:
        lib.mpt_dp_set_rate(self._dp, peer, idx, float(rate_bps), float(burst_bytes))

    def set_measure(self, peer: int, idx: int, capacity_bps: float, delay_s: float) -> None:
        lib.mpt_dp_set_measure(self._dp, peer, idx, float(capacity_bps), float(delay_s) * 1e6)

    def set_init_nonce(self, nonce: bytes | None) -> None:
        """Client: the nonce of the init it sends now (None: no handshake
        under way); cookie replies that do not echo it are dropped."""
        lib.mpt_dp_set_init_nonce(self._dp, nonce if nonce is not None else ffi.NULL)

    def set_overflow(self, peer: int, on: bool) -> None:
        """Auto: let traffic beyond the measured capacities overflow onto
        the paths (while estimates are still growing) or not."""
        lib.mpt_dp_set_overflow(self._dp, peer, 1 if on else 0)

    def failed(self) -> int:
        """0 while the datapath thread runs, else the errno that stopped it."""
        return lib.mpt_dp_failed(self._dp)

    def peer_address(self, peer: int, idx: int) -> tuple[str, int] | None:
        buf = ffi.new("uint8_t[]", lib.MPT_SOCKADDR_MAX)
        n = lib.mpt_dp_get_peer(self._dp, peer, idx, buf)
        return unpack_sockaddr(bytes(ffi.buffer(buf, n))) if n else None

    def sync(self) -> None:
        lib.mpt_dp_sync(self._dp)

    def counters(self, peer: int = -1) -> dict:
        """A peer's counters (peer -1: what no peer can be blamed for)."""
        lib.mpt_dp_copy_counters(self._dp, peer, self._snap)
        c = self._snap
        out = {name: getattr(c, name) for name in GLOBAL_COUNTERS}
        out["path"] = [{k: getattr(c.path[i], k) for k in PATH_COUNTERS}
                       for i in range(MAX_PATHS)]
        return out

    def path_counters(self, peer: int, idx: int) -> dict:
        """One path's counters (a probe carries them) without the rest."""
        lib.mpt_dp_copy_counters(self._dp, peer, self._snap)
        return {k: getattr(self._snap.path[idx], k) for k in PATH_COUNTERS}
