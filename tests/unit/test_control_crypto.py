"""Tests for mpt.control_crypto: AEAD for control packets and its replay window."""

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpt.control_crypto import REPLAY_WINDOW, ControlChannel, ControlError, ReplayWindow
from mpt.wire import HDR_LEN

K1, K2 = bytes(range(32)), bytes(range(100, 132))


def header(seq: int) -> bytes:
    return struct.pack("!BBHIQ", 0x22, 3, 9, 0, seq)


def pair(cipher=1):
    return ControlChannel(cipher, K1, K2), ControlChannel(cipher, K2, K1)


def sealed(ch, n):
    return [ch.seal(header, b"probe %d" % i) for i in range(n)]


@pytest.mark.parametrize("cipher", [0, 1, 2])
def test_round_trip_from_seq_zero(cipher):
    a, b = pair(cipher)
    for seq, pkt in enumerate(sealed(a, 5)):
        assert pkt[:HDR_LEN] == header(seq)
        assert b.open(pkt, seq) == b"probe %d" % seq
    assert a.next_seq == 5
    assert b.open(a.seal(header, b""), 5) == b""


def test_interop_with_an_independent_aead_call():
    for cipher, aead in ((1, AESGCM), (0, ChaCha20Poly1305), (2, ChaCha20Poly1305)):
        ch = ControlChannel(cipher, tx_key=K1, rx_key=K2)
        seq = 0x0102030405060708
        hdr = header(seq)
        pkt = hdr + aead(K2).encrypt(b"\0\0\0\0" + seq.to_bytes(8, "big"), b"hello", hdr)
        assert ch.open(pkt, seq) == b"hello"
        out = ch.seal(header, b"world")
        assert aead(K1).decrypt(bytes(12), out[HDR_LEN:], out[:HDR_LEN]) == b"world"


def test_ciphers_do_not_open_each_other():
    a, _ = pair(1)
    _, b = pair(2)
    with pytest.raises(ControlError, match="authentication"):
        b.open(a.seal(header, b"x"), 0)


def test_every_flipped_byte_is_refused_and_does_not_move_the_window():
    a, b = pair()
    pkt = a.seal(header, b"some control message")
    for i in range(len(pkt)):
        bad = bytearray(pkt)
        bad[i] ^= 0x01
        with pytest.raises(ControlError):
            b.open(bytes(bad), 0)
    assert b.window.top is None
    assert b.open(pkt, 0) == b"some control message"


def test_wrong_seq_is_refused():
    a, b = pair()
    pkt = a.seal(header, b"x")
    with pytest.raises(ControlError):
        b.open(pkt, 1)
    for seq in (-1, 1 << 64):
        with pytest.raises(ControlError):
            b.open(pkt, seq)


def test_truncated_is_refused():
    a, b = pair()
    pkt = a.seal(header, b"abc")
    for cut in range(len(pkt)):
        with pytest.raises(ControlError):
            b.open(pkt[:cut], 0)


def test_replay_is_refused():
    a, b = pair()
    pkts = sealed(a, 3)
    for seq, pkt in enumerate(pkts):
        b.open(pkt, seq)
    for seq, pkt in enumerate(pkts):
        with pytest.raises(ControlError, match="replayed"):
            b.open(pkt, seq)


def test_late_within_window_accepted_once_too_old_refused():
    a, b = pair()
    pkts = sealed(a, REPLAY_WINDOW + 2)
    b.open(pkts[REPLAY_WINDOW], REPLAY_WINDOW)               # newest first
    b.open(pkts[1], 1)                                       # oldest still inside
    with pytest.raises(ControlError, match="replayed"):
        b.open(pkts[1], 1)
    with pytest.raises(ControlError, match="too old"):
        b.open(pkts[0], 0)
    b.open(pkts[REPLAY_WINDOW + 1], REPLAY_WINDOW + 1)       # slides: 1 now too old
    with pytest.raises(ControlError, match="too old"):
        b.open(pkts[1], 1)
    b.open(pkts[2], 2)


def test_window_edges_and_huge_jumps():
    w = ReplayWindow()
    w.check(0)
    w.mark(0)
    w.mark(5)
    for seq in (0, 5):
        with pytest.raises(ControlError):
            w.check(seq)
    for seq in (1, 4, 6):
        w.check(seq)
    w.mark(5 + REPLAY_WINDOW - 1)
    with pytest.raises(ControlError, match="replayed"):
        w.check(5)                                           # oldest slot, still remembered
    w.mark(1 << 63)                                          # huge jump clears everything
    w.check((1 << 63) - REPLAY_WINDOW + 1)
    with pytest.raises(ControlError, match="too old"):
        w.check((1 << 63) - REPLAY_WINDOW)
    w.mark((1 << 64) - 1)
    with pytest.raises(ControlError, match="replayed"):
        w.check((1 << 64) - 1)


def test_window_remembers_exactly_the_last_1024():
    w = ReplayWindow()
    for seq in range(0, 3000, 2):                            # every even seq
        w.check(seq)
        w.mark(seq)
    top = 2998
    for seq in range(top - REPLAY_WINDOW + 1, top + 1):
        if seq % 2:
            w.check(seq)
        else:
            with pytest.raises(ControlError, match="replayed"):
                w.check(seq)
    with pytest.raises(ControlError, match="too old"):
        w.check(top - REPLAY_WINDOW)


def test_seal_checks_header_length_and_seq_exhaustion():
    a, _ = pair()
    with pytest.raises(ValueError):
        a.seal(lambda seq: b"short", b"x")
    assert a.next_seq == 0                                   # nothing was used up
    a.next_seq = (1 << 64) - 1
    assert a.seal(header, b"x")[8:16] == b"\xff" * 8
    with pytest.raises(ControlError, match="rekey"):
        a.seal(header, b"x")


def test_bad_keys_or_cipher():
    with pytest.raises(ValueError):
        ControlChannel(1, K1[:16], K2)
    with pytest.raises(ValueError):
        ControlChannel(3, K1, K2)
