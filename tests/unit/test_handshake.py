"""Tests for mpt.handshake: the PSK-authenticated X25519 session handshake."""

import os
import random

import pytest

from mpt import handshake as hs
from mpt.handshake import (CipherMismatch, HandshakeError, Initiator, Responder, SessionKeys,
                           message_kind)

PSK = bytes(range(32))
OTHER = bytes(range(1, 33))
AES, CHACHA, NONE = hs.CIPHER_AES_256_GCM, hs.CIPHER_CHACHA20_POLY1305, hs.CIPHER_NONE


def handshake(psk=PSK, peers=None, cipher=AES, client_index=7, server_index=9):
    ini = Initiator(psk, client_index, cipher)
    resp = Responder(peers or {"a": psk}, cipher)
    response, skeys = resp.receive_init(ini.init_message(), server_index)
    return ini, resp, response, ini.receive_response(response), skeys


def key_fields(k: SessionKeys):
    return (k.tx_data, k.rx_data, k.tx_ctrl, k.rx_ctrl)


def assert_mirrored(c: SessionKeys, s: SessionKeys):
    assert (c.tx_data, c.rx_data, c.tx_ctrl, c.rx_ctrl) == (s.rx_data, s.tx_data,
                                                            s.rx_ctrl, s.tx_ctrl)
    assert (c.local_index, c.remote_index) == (s.remote_index, s.local_index)
    assert len(set(key_fields(c))) == 4 and all(len(k) == 32 for k in key_fields(c))


@pytest.mark.parametrize("cipher", [NONE, AES, CHACHA])
def test_full_handshake_gives_mirrored_keys(cipher):
    psk = bytes(32) if cipher == NONE else PSK     # cipher none: the daemon's all-zero key
    ini, resp, response, ckeys, skeys = handshake(psk=psk, cipher=cipher)
    assert_mirrored(ckeys, skeys)
    assert (ckeys.peer, skeys.peer) == ("server", "a")
    assert (ckeys.local_index, skeys.local_index) == (7, 9)
    assert ckeys.cipher == skeys.cipher == cipher
    assert message_kind(ini.init_message()) == "init"
    assert message_kind(response) == "response"
    assert len(ini.init_message()) == hs.INIT_LEN and len(response) == hs.RESPONSE_LEN


def test_keys_are_fresh_per_session_and_per_restart():
    seen = set()
    for _ in range(3):
        ini, resp, _, ckeys, _ = handshake()
        seen.update(key_fields(ckeys))
        ini.restart()
        again = ini.receive_response(resp.receive_init(ini.init_message(), 10)[0])
        seen.update(key_fields(again))
    assert len(seen) == 3 * 2 * 4


def test_keys_are_not_printed():
    _, _, _, ckeys, _ = handshake()
    assert ckeys.tx_data.hex() not in repr(ckeys) and "tx_data" not in repr(ckeys)


def test_init_message_is_stable_until_restart():
    ini = Initiator(PSK, 3, AES)
    first = ini.init_message()
    assert ini.init_message() == first
    ini.restart(local_index=4)
    assert ini.init_message() != first
    assert Responder({"a": PSK}, AES).receive_init(ini.init_message(), 1)[1].remote_index == 4


def test_wrong_psk_is_refused_without_naming_secrets():
    ini = Initiator(OTHER, 7, AES)
    with pytest.raises(HandshakeError) as e:
        Responder({"a": PSK, "b": bytes(32)}, AES).receive_init(ini.init_message(), 1)
    msg = str(e.value)
    assert "no configured peer key verifies it" in msg and "\n" not in msg
    assert PSK.hex() not in msg and OTHER.hex() not in msg


def test_response_under_another_key_is_refused():
    ini = Initiator(PSK, 7, AES)
    response, _ = Responder({"x": OTHER}, AES).receive_init(Initiator(OTHER, 7, AES).init_message(), 1)
    with pytest.raises(HandshakeError, match="does not verify"):
        ini.receive_response(response)


def test_multi_peer_responder_names_the_right_peer():
    peers = {f"site{i}": bytes([i]) * 32 for i in range(40)}
    resp = Responder(peers, CHACHA)
    for n, (name, psk) in enumerate(peers.items(), start=1):
        ini = Initiator(psk, 5, CHACHA)
        response, skeys = resp.receive_init(ini.init_message(), n)
        assert skeys.peer == name
        assert_mirrored(ini.receive_response(response), skeys)


def test_peers_sharing_a_key_are_refused():
    with pytest.raises(ValueError, match="share"):
        Responder({"a": PSK, "b": PSK}, AES)


def test_every_flipped_bit_of_init_or_response_is_refused():
    ini = Initiator(PSK, 7, AES)
    init = ini.init_message()
    for i in range(len(init)):
        for bit in (0x01, 0x80):
            bad = bytearray(init)
            bad[i] ^= bit
            with pytest.raises(HandshakeError):
                Responder({"a": PSK}, AES).receive_init(bytes(bad), 1)
    response, _ = Responder({"a": PSK}, AES).receive_init(init, 1)
    for i in range(len(response)):
        for bit in (0x01, 0x80):
            bad = bytearray(response)
            bad[i] ^= bit
            with pytest.raises(HandshakeError):
                ini.receive_response(bytes(bad))
    ini.receive_response(response)   # the untouched one still completes


def test_truncated_and_extended_messages_are_refused():
    ini = Initiator(PSK, 7, AES)
    init = ini.init_message()
    response, _ = Responder({"a": PSK}, AES).receive_init(init, 1)
    for cut in range(len(init)):
        with pytest.raises(HandshakeError):
            Responder({"a": PSK}, AES).receive_init(init[:cut], 1)
    for cut in range(len(response)):
        with pytest.raises(HandshakeError):
            ini.receive_response(response[:cut])
    with pytest.raises(HandshakeError):
        Responder({"a": PSK}, AES).receive_init(init + b"\0", 1)
    with pytest.raises(HandshakeError):
        ini.receive_response(response + b"\0")


def test_garbage_of_every_length_raises_handshake_error_only():
    rng = random.Random(1)
    resp, ini = Responder({"a": PSK}, AES), Initiator(PSK, 7, AES)
    for n in range(201):
        shaped = {n == hs.INIT_LEN: "init", n == hs.RESPONSE_LEN: "response"}.get(True)
        for body in (bytes(n), b"\xff" * n, rng.randbytes(n),
                     (b"MPTH\x01\x01" + rng.randbytes(n))[:n],
                     (b"MPTH\x01\x02" + rng.randbytes(n))[:n]):
            with pytest.raises(HandshakeError):
                resp.receive_init(body, 1)
            with pytest.raises(HandshakeError):
                ini.receive_response(body)
            if shaped and body[:6] == b"MPTH\x01" + bytes([1 if shaped == "init" else 2]):
                assert message_kind(body) == shaped      # kind only; the MAC is checked later
            else:
                with pytest.raises(HandshakeError):
                    message_kind(body)


def test_a_response_is_not_taken_as_an_init_nor_the_reverse():
    ini = Initiator(PSK, 7, AES)
    response, _ = Responder({"a": PSK}, AES).receive_init(ini.init_message(), 1)
    with pytest.raises(HandshakeError):
        Responder({"a": PSK}, AES).receive_init(response, 1)
    with pytest.raises(HandshakeError):
        ini.receive_response(ini.init_message())


def test_cipher_mismatch_is_reported_on_both_sides():
    ini, resp = Initiator(PSK, 7, AES), Responder({"a": PSK}, CHACHA)
    with pytest.raises(CipherMismatch) as e:
        resp.receive_init(ini.init_message(), 1)
    assert str(e.value) == ("cipher mismatch: this side is configured for chacha20-poly1305, "
                            "the peer for aes-256-gcm")
    assert resp.pending(1) is None
    with pytest.raises(HandshakeError, match="configured for aes-256-gcm, the peer for "
                                             "chacha20-poly1305"):
        ini.receive_response(e.value.response)


def test_retransmitted_init_gets_the_same_answer_and_no_second_session():
    ini, resp = Initiator(PSK, 7, AES), Responder({"a": PSK}, AES)
    first = resp.receive_init(ini.init_message(), 1)
    again = resp.receive_init(ini.init_message(), 2)
    assert again == first and again[1].local_index == 1
    assert resp.pending(2) is None
    assert ini.receive_response(first[0]) == ini.receive_response(again[0])


def test_replayed_init_is_refused_once_its_session_is_confirmed():
    ini, resp = Initiator(PSK, 7, AES), Responder({"a": PSK}, AES)
    init = ini.init_message()
    resp.receive_init(init, 1)
    resp.confirm(1)
    with pytest.raises(HandshakeError, match="replayed"):
        resp.receive_init(init, 2)


def test_replay_cache_is_bounded():
    resp = Responder({"a": PSK}, AES)
    ini = Initiator(PSK, 7, AES)
    old = ini.init_message()
    resp.receive_init(old, 1)
    resp.confirm(1)
    for _ in range(hs.REPLAY_CACHE):
        ini.restart()
        resp.receive_init(ini.init_message(), 2)
        resp.confirm(2)
    assert len(resp._seen) == hs.REPLAY_CACHE
    # forgotten: it is answered, but (key confirmation) the replayer cannot use the keys
    assert resp.receive_init(old, 500)[1].local_index == 500


def test_fresh_init_adds_a_pending_session_and_confirming_drops_the_others():
    resp = Responder({"a": PSK, "b": OTHER}, AES)
    a1, a2, b = Initiator(PSK, 7, AES), Initiator(PSK, 8, AES), Initiator(OTHER, 7, AES)
    resp.receive_init(a1.init_message(), 1)
    resp.receive_init(b.init_message(), 2)
    _, k3 = resp.receive_init(a2.init_message(), 3)
    assert resp.pending(1).peer == "a" and resp.pending(3) == k3
    assert resp.confirm(3) == k3
    assert resp.pending(1) is None and resp.pending(3) is None
    assert resp.pending(2).peer == "b"
    with pytest.raises(KeyError):
        resp.confirm(1)


def test_pending_sessions_per_peer_are_bounded_oldest_dropped():
    resp = Responder({"a": PSK}, AES)
    for index in range(1, hs.PENDING_PER_PEER + 2):
        resp.receive_init(Initiator(PSK, 7, AES).init_message(), index)
    assert resp.pending(1) is None
    assert all(resp.pending(i) for i in range(2, hs.PENDING_PER_PEER + 2))


def test_duplicate_response_gives_same_keys_other_response_is_refused():
    ini = Initiator(PSK, 7, AES)
    resp = Responder({"a": PSK}, AES)
    response, _ = resp.receive_init(ini.init_message(), 1)
    keys = ini.receive_response(response)
    assert ini.receive_response(response) == keys
    # a second, valid answer to the same init (a responder that lost its state)
    other, _ = Responder({"a": PSK}, AES).receive_init(ini.init_message(), 1)
    with pytest.raises(HandshakeError, match="already complete"):
        ini.receive_response(other)


def test_response_to_an_earlier_attempt_is_refused_after_restart():
    ini = Initiator(PSK, 7, AES)
    response, _ = Responder({"a": PSK}, AES).receive_init(ini.init_message(), 1)
    ini.restart()
    with pytest.raises(HandshakeError, match="current init"):
        ini.receive_response(response)


def test_bad_arguments_are_programming_errors():
    for index in (0, -1, 65536):
        with pytest.raises(ValueError):
            Initiator(PSK, index, AES)
        with pytest.raises(ValueError):
            Responder({"a": PSK}, AES).receive_init(Initiator(PSK, 1, AES).init_message(), index)
    with pytest.raises(ValueError):
        Initiator(PSK[:31], 1, AES)
    with pytest.raises(ValueError):
        Initiator(PSK, 1, 3)
    resp = Responder({"a": PSK}, AES)
    resp.receive_init(Initiator(PSK, 1, AES).init_message(), 5)
    with pytest.raises(ValueError, match="already pending"):
        resp.receive_init(Initiator(PSK, 1, AES).init_message(), 5)


def test_low_order_ephemeral_key_is_refused():
    # A PSK holder (or a broken peer) sending the zero point must not yield keys.
    ini = Initiator(PSK, 7, AES)
    mac_key, _ = hs._psk_keys(PSK)
    signed = hs._INIT.build(dict(sender=7, cipher=AES, nonce=os.urandom(16),
                                 ephemeral=bytes(32)))
    with pytest.raises(HandshakeError, match="unusable"):
        Responder({"a": PSK}, AES).receive_init(signed + hs._mac(mac_key, signed), 1)
    assert ini.init_message()


def test_constants():
    assert hs.REKEY_AFTER_S == 120.0
    assert hs.REKEY_AFTER_PACKETS == 1 << 30
    assert hs.HANDSHAKE_RETRY_S == 0.25


def test_session_keys_bind_the_transcript_and_the_psk():
    dh, salt = os.urandom(32), hs._psk_keys(PSK)[1]
    base = hs._session(dh, salt, b"init", b"response")
    assert hs._session(dh, salt, b"init", b"response") == base
    assert hs._session(dh, salt, b"init", b"responsf") != base
    assert hs._session(dh, hs._psk_keys(OTHER)[1], b"init", b"response") != base
