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


PATH_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "tx_errors", "ctrl_rx",
                 "addr_changes", "rx_path_seq")
GLOBAL_COUNTERS = tuple(
    name for name, _ in ffi.typeof("struct mpt_counters").fields if name != "path")


class Datapath:
    def __init__(self, tun_fd: int, ctrl_fd: int, listen_fd: int, session: int,
                 hold: float, alive: float):
        """listen_fd >= 0 for the server, -1 for the client."""
        self._dp = lib.mpt_dp_new(tun_fd, ctrl_fd, listen_fd, session,
                                  int(hold * 1e6), max(1, int(alive * 1e3)))
        if self._dp == ffi.NULL:
            raise MemoryError("cannot allocate the datapath")
        self._snap = ffi.new("struct mpt_counters *")

    def start(self) -> None:
        if lib.mpt_dp_start(self._dp) != 0:
            raise RuntimeError("cannot start the datapath thread")

    def close(self) -> None:
        if self._dp is not None:
            lib.mpt_dp_free(self._dp)  # stops and joins the thread
            self._dp = None

    def set_hold(self, hold: float, alive: float) -> None:
        lib.mpt_dp_set_hold(self._dp, int(hold * 1e6), max(1, int(alive * 1e3)))

    def set_path(self, idx: int, fd: int, peer: tuple[str, int] | None, weight: float,
                 active: bool) -> None:
        raw = pack_sockaddr(*peer) if peer else b""
        if lib.mpt_dp_set_path(self._dp, idx, fd, raw, len(raw), float(weight), int(active)):
            raise ValueError(f"bad path index {idx}")

    def set_peer(self, idx: int, fd: int, raw_sockaddr: bytes, local: tuple[int, bytes]) -> None:
        """Path idx's client address (raw sockaddr) and the local address
        (family 0/4/6, 16 bytes) that replies must leave from."""
        family, addr = local
        if lib.mpt_dp_set_peer(self._dp, idx, fd, raw_sockaddr, len(raw_sockaddr), family,
                               addr.ljust(16, b"\0")):
            raise ValueError(f"bad path index {idx} or address")

    def failed(self) -> int:
        """0 while the datapath thread runs, else the errno that stopped it."""
        return lib.mpt_dp_failed(self._dp)

    def peer(self, idx: int) -> tuple[str, int] | None:
        buf = ffi.new("uint8_t[]", lib.MPT_SOCKADDR_MAX)
        n = lib.mpt_dp_get_peer(self._dp, idx, buf)
        return unpack_sockaddr(bytes(ffi.buffer(buf, n))) if n else None

    def sync(self) -> None:
        lib.mpt_dp_sync(self._dp)

    def counters(self) -> dict:
        lib.mpt_dp_copy_counters(self._dp, self._snap)
        c = self._snap
        out = {name: getattr(c, name) for name in GLOBAL_COUNTERS}
        out["path"] = [{k: getattr(c.path[i], k) for k in PATH_COUNTERS}
                       for i in range(MAX_PATHS)]
        return out

    def path_counters(self, idx: int) -> dict:
        """One path's counters (a probe carries them) without the rest."""
        lib.mpt_dp_copy_counters(self._dp, self._snap)
        return {k: getattr(self._snap.path[idx], k) for k in PATH_COUNTERS}
