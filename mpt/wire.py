"""Wire formats.

The 16-byte data-plane header is parsed in C (csrc/mpt_wire.h); Python
builds it only for the few control packets it sends, with a precompiled
struct.  Control message bodies are defined with construct: they are a
few per path per second, so readability wins over speed here.
"""
from __future__ import annotations

import struct

from construct import Const, Enum, Float32b, Int8ub, Int64ub, PascalString, Struct

VERSION = 1
TYPE_DATA = 0
TYPE_CONTROL = 1
HDR_LEN = 16
TAG_RESERVE = 16  # room kept for the authentication tag of a later version

# version/type, path index, session, per-path seq, tunnel seq
HEADER = struct.Struct("!BBHIQ")
assert HEADER.size == HDR_LEN

# What the C side puts before a control packet on the socketpair
# (struct mpt_ctrl_meta): fd, address length, address bytes.
CTRL_META = struct.Struct("=iI28s")


def control_header(path: int, session: int) -> bytes:
    return HEADER.pack((VERSION << 4) | TYPE_CONTROL, path, session, 0, 0)


def parse_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(version, type, path, session, path_seq, seq); ValueError if short."""
    if len(data) < HDR_LEN:
        raise ValueError("short header")
    vt, path, session, path_seq, seq = HEADER.unpack_from(data)
    return vt >> 4, vt & 0x0F, path, session, path_seq, seq


MessageKind = Enum(Int8ub, hello=1, hello_ack=2)

# A hello goes out on every path each keepalive interval; the other side
# answers with a hello_ack echoing `sent_ns`.  The client announces each
# path's name and weight so the server schedules return traffic the same way.
Hello = Struct(
    "kind" / MessageKind,
    "magic" / Const(b"MPT"),
    "weight" / Float32b,
    "sent_ns" / Int64ub,    # sender's monotonic clock
    "echo_ns" / Int64ub,    # hello_ack: the sent_ns being answered
    "tx_packets" / Int64ub, # data packets the sender sent on this path so far
    "rx_packets" / Int64ub, # data packets the sender received on this path so far
    "name" / PascalString(Int8ub, "utf8"),
)


def build_control(path: int, session: int, **fields) -> bytes:
    return control_header(path, session) + Hello.build(fields)


def parse_control(data: bytes):
    """The control message after the header; construct raises on garbage."""
    return Hello.parse(data[HDR_LEN:])
