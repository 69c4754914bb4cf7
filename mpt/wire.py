"""Wire formats.

The 16-byte data-plane header is parsed in C (csrc/mpt_wire.h); Python
builds it only for the few control packets it sends, with a precompiled
struct.  Control message bodies are defined with construct: they are a
few per path per second, so readability wins over speed here.
"""
from __future__ import annotations

import struct

from construct import (Const, Enum, Float32b, Int8ub, Int16ub, Int32ub, Int64ub, PascalString,
                       Struct)

VERSION = 1
TYPE_DATA = 0
TYPE_CONTROL = 1
HDR_LEN = 16
TAG_RESERVE = 16  # room kept for the authentication tag of a later version

# version/type, path index, session, per-path seq, tunnel seq
HEADER = struct.Struct("!BBHIQ")
assert HEADER.size == HDR_LEN

# What the C side puts before a control packet on the socketpair
# (struct mpt_ctrl_meta): fd, address length, address bytes, and the local
# address it was sent to (family 0/4/6, 16 bytes).
CTRL_META = struct.Struct("=iI28sI16s")


def control_header(path: int, session: int) -> bytes:
    return HEADER.pack((VERSION << 4) | TYPE_CONTROL, path, session, 0, 0)


def parse_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(version, type, path, session, path_seq, seq); ValueError if short."""
    if len(data) < HDR_LEN:
        raise ValueError("short header")
    vt, path, session, path_seq, seq = HEADER.unpack_from(data)
    return vt >> 4, vt & 0x0F, path, session, path_seq, seq


MessageKind = Enum(Int8ub, probe=1, reply=2, stall=3)

# probe: the client sends one on each path every probe interval; it announces
#        the path's name, weight and priority, its probe interval, and which
#        of its paths may carry data (`usable`, a bit per path index), so the
#        server schedules return traffic the same way.
# reply: the server's answer on the same path, echoing `sent_ns`.
# stall: either side, as a receiver, reports that data stopped arriving on
#        path `about`; sent on the other paths.
# Both probes and replies carry the sender's data counters for that path
# (loss in each direction).  The server learns each path's RTT from the
# client's probes: it sizes the server's reorder hold time.
Control = Struct(
    "kind" / MessageKind,
    "magic" / Const(b"MPT"),
    "weight" / Float32b,
    "priority" / Int8ub,
    "about" / Int8ub,         # stall: the path index concerned
    "interval_ms" / Int16ub,  # probe: the longest interval between the client's probes
    "usable" / Int16ub,       # probe: bit i set = path i may carry data
    "rtt_us" / Int32ub,       # probe: the client's smoothed RTT of this path (0: unknown)
    "sent_ns" / Int64ub,      # sender's monotonic clock
    "echo_ns" / Int64ub,      # reply: the sent_ns being answered
    "tx_packets" / Int64ub,   # data packets the sender sent on this path so far
    "rx_packets" / Int64ub,   # data packets the sender received on this path so far
    "name" / PascalString(Int8ub, "utf8"),
)

DEFAULTS = dict(weight=1.0, priority=0, about=0, interval_ms=0, usable=0, rtt_us=0, sent_ns=0,
                echo_ns=0, tx_packets=0, rx_packets=0, name="")


def build_control(path: int, session: int, **fields) -> bytes:
    return control_header(path, session) + Control.build({**DEFAULTS, **fields})


def parse_control(data: bytes):
    """The control message after the header; construct raises on garbage."""
    return Control.parse(data[HDR_LEN:])
