"""Wire formats.

The 16-byte header is parsed and written in C (csrc/mpt_wire.h), which
also seals and opens control packets; Python builds only the header of the
handshake packets it sends.  Control message bodies are defined with construct: they are a
few per path per second, so readability wins over speed here.
"""
from __future__ import annotations

import struct

from construct import (Const, Enum, Float32b, Int8ub, Int16ub, Int32ub, Int64ub, PascalString,
                       Struct)

VERSION = 2
TYPE_DATA = 0
TYPE_CONTROL = 1
TYPE_HANDSHAKE = 2
HDR_LEN = 16
TAG_LEN = 16      # AEAD tag after the payload (none with cipher = none)
TAG_RESERVE = 16  # room the MTU keeps for it

# version/type, phase/path, session, flow bucket, flow seq, seq
HEADER = struct.Struct("!BBHHHQ")
assert HEADER.size == HDR_LEN

# What the C side puts before a control or handshake packet on the
# socketpair (struct mpt_ctrl_meta): fd, peer (-1 for a handshake), address
# length, address bytes, and the local address it was sent to (family
# 0/4/6, 16 bytes).
CTRL_META = struct.Struct("=iiI28sI16s")


def handshake_header(path: int) -> bytes:
    """Handshake packets go in the clear (the PSK authenticates them); the
    receiver has no session index for us yet."""
    return HEADER.pack((VERSION << 4) | TYPE_HANDSHAKE, path & 0x0F, 0, 0, 0, 0)


def parse_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(version, type, path, session, seq); ValueError if short."""
    if len(data) < HDR_LEN:
        raise ValueError("short header")
    vt, pp, session, _bucket, _fseq, seq = HEADER.unpack_from(data)
    return vt >> 4, vt & 0x0F, pp & 0x0F, session, seq


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
    "tx_bytes" / Int64ub,     # ... and their bytes: the delivery rate, for `auto`
    "rx_bytes" / Int64ub,
    "name" / PascalString(Int8ub, "utf8"),
)

DEFAULTS = dict(weight=1.0, priority=0, about=0, interval_ms=0, usable=0, rtt_us=0, sent_ns=0,
                echo_ns=0, tx_packets=0, rx_packets=0, tx_bytes=0, rx_bytes=0, name="")


def build_control(**fields) -> bytes:
    """A control message body; the datapath adds the header and seals it."""
    return Control.build({**DEFAULTS, **fields})


def parse_control(data: bytes):
    """The control message after the header; construct raises on garbage."""
    return Control.parse(data[HDR_LEN:])
