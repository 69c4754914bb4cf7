"""AEAD protection of CONTROL packets (probes, replies, stall reports).

    packet = header (16 bytes, the associated data) · ciphertext · tag (16)
    nonce  = 4 zero bytes · be64(seq)        (the seq carried in the header)

Each direction of each session has its own control key (mpt.handshake), so a
seq is never used twice under one key: the sender counts from 0.  The
receiver keeps a sliding window of the last REPLAY_WINDOW seqs, like the C
datapath does for data, and updates it only after the tag verified: a forged
packet cannot move the window.  Cipher 1 (aes-256-gcm) uses AES-GCM; 0 (none)
and 2 use ChaCha20-Poly1305: control traffic is protected even when data is
not, and with the cipher (none) that suits routers without AES instructions.
"""
from __future__ import annotations

import struct
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .wire import HDR_LEN

TAG_LEN = 16
KEY_LEN = 32
REPLAY_WINDOW = 1024
SEQ_LIMIT = 1 << 64          # seqs are u64; the session is rekeyed long before
_NONCE = struct.Struct("!4xQ")


class ControlError(ValueError):
    """A control packet that must be dropped (forged, truncated, replayed, too old)."""


def nonce(seq: int) -> bytes:
    return _NONCE.pack(seq)


class ReplayWindow:
    """Which of the last REPLAY_WINDOW seqs were seen: `top` is the highest
    accepted, bit i of `_bits` stands for top - i."""

    def __init__(self) -> None:
        self.top: int | None = None
        self._bits = 0

    def check(self, seq: int) -> None:
        """ControlError if seq was seen or is too old to tell."""
        if self.top is None or seq > self.top:
            return
        age = self.top - seq
        if age >= REPLAY_WINDOW:
            raise ControlError(f"control seq {seq} too old (newest {self.top})")
        if self._bits >> age & 1:
            raise ControlError(f"control seq {seq} replayed")

    def mark(self, seq: int) -> None:
        """Record seq as seen (after check() and authentication)."""
        if self.top is None:
            self.top, self._bits = seq, 1
        elif seq > self.top:
            shift = seq - self.top
            self._bits = (self._bits << shift | 1) & ((1 << REPLAY_WINDOW) - 1) \
                if shift < REPLAY_WINDOW else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)


class ControlChannel:
    """Seals our control packets and opens the peer's, for one session."""

    def __init__(self, cipher: int, tx_key: bytes, rx_key: bytes):
        if cipher not in (0, 1, 2):
            raise ValueError(f"unknown cipher {cipher}")
        if len(tx_key) != KEY_LEN or len(rx_key) != KEY_LEN:
            raise ValueError(f"control keys must be {KEY_LEN} bytes")
        aead = AESGCM if cipher == 1 else ChaCha20Poly1305
        self._tx, self._rx = aead(tx_key), aead(rx_key)
        self.next_seq = 0            # the seq the next sealed packet gets
        self.window = ReplayWindow()

    def seal(self, header_for_seq: Callable[[int], bytes], body: bytes) -> bytes:
        """header · ciphertext · tag, for the next seq; header_for_seq(seq)
        builds the header that carries it."""
        seq = self.next_seq
        if seq >= SEQ_LIMIT:
            raise ControlError("control seqs exhausted: rekey first")
        header = header_for_seq(seq)
        if len(header) != HDR_LEN:
            raise ValueError(f"header must be {HDR_LEN} bytes, not {len(header)}")
        self.next_seq = seq + 1
        return header + self._tx.encrypt(nonce(seq), body, header)

    def open(self, packet: bytes, seq: int) -> bytes:
        """The body of a packet whose header carries seq; ControlError if it
        is truncated, fails authentication, or is a replay or too old."""
        if len(packet) < HDR_LEN + TAG_LEN:
            raise ControlError(f"control packet truncated ({len(packet)} bytes)")
        if not 0 <= seq < SEQ_LIMIT:
            raise ControlError(f"control seq {seq} out of range")
        self.window.check(seq)
        header = bytes(packet[:HDR_LEN])
        try:
            body = self._rx.decrypt(nonce(seq), bytes(packet[HDR_LEN:]), header)
        except InvalidTag:
            raise ControlError("control packet fails authentication") from None
        self.window.mark(seq)
        return body
