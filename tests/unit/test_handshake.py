"""Tests for mpt.handshake: the PSK-authenticated X25519 session handshake."""

import os
import random

import pytest

from mpt import handshake as hs
from mpt.cipher import NAMES
from mpt.handshake import (CipherMismatch, HandshakeError, Initiator, Responder, SessionKeys,
                           message_kind, split_init)

PSK = bytes(range(32))
OTHER = bytes(range(1, 33))
AES, CHACHA, NONE = NAMES["aes-256-gcm"], NAMES["chacha20-poly1305"], NAMES["none"]


def handshake(psk=PSK, peers=None, cipher=AES, client_index=7, server_index=9):
    ini = Initiator(psk, client_index, cipher)
    resp = Responder(peers or {"a": psk}, cipher)
    response, skeys = resp.receive_init(ini.init_message(), server_index)
    return ini, resp, response, ini.receive_response(response), skeys


def key_fields(k: SessionKeys):
    return (k.tx_data, k.rx_data)


def assert_mirrored(c: SessionKeys, s: SessionKeys):
    assert (c.tx_data, c.rx_data) == (s.rx_data, s.tx_data)
    assert (c.local_index, c.remote_index) == (s.remote_index, s.local_index)
    assert len(set(key_fields(c))) == 2 and all(len(k) == 32 for k in key_fields(c))


@pytest.mark.parametrize("cipher", [NONE, AES, CHACHA])
def test_full_handshake_gives_mirrored_keys(cipher):
    psk = bytes(32) if cipher == NONE else PSK     # cipher none: the daemon's all-zero key
    ini, resp, response, ckeys, skeys = handshake(psk=psk, cipher=cipher)
    assert_mirrored(ckeys, skeys)
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
    assert len(seen) == 3 * 2 * 2


def test_keys_are_not_printed():
    _, _, _, ckeys, _ = handshake()
    assert ckeys.tx_data.hex() not in repr(ckeys) and "tx_data" not in repr(ckeys)


def test_init_message_is_stable_until_restart():
    ini = Initiator(PSK, 3, AES)
    first = ini.init_message()
    assert ini.init_message() == first
    ini.restart()
    assert ini.init_message() != first
    assert Responder({"a": PSK}, AES).receive_init(ini.init_message(), 1)[1].remote_index == 3


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


def test_multi_peer_responder_answers_each_peer_under_its_own_key():
    peers = {f"site{i}": bytes([i]) * 32 for i in range(40)}
    resp = Responder(peers, CHACHA)
    for n, psk in enumerate(peers.values(), start=1):
        ini = Initiator(psk, 5, CHACHA)
        response, skeys = resp.receive_init(ini.init_message(), n)
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
        shaped = {n == hs.INIT_LEN: "init", n == hs.INIT_LEN + hs.COOKIE_LEN: "init",
                  n == hs.RESPONSE_LEN: "response", n == hs.COOKIE_REPLY_LEN: "cookie"}.get(True)
        kind_byte = {"init": 1, "response": 2, "cookie": 3}.get(shaped)
        for body in (bytes(n), b"\xff" * n, rng.randbytes(n),
                     (b"MPTH\x01\x01" + rng.randbytes(n))[:n],
                     (b"MPTH\x01\x02" + rng.randbytes(n))[:n],
                     (b"MPTH\x01\x03" + rng.randbytes(n))[:n]):
            with pytest.raises(HandshakeError):
                resp.receive_init(body, 1)
            with pytest.raises(HandshakeError):
                ini.receive_response(body)
            with pytest.raises(HandshakeError):      # no nonce of ours: random bytes
                ini.receive_cookie(body)
            if shaped and body[:6] == b"MPTH\x01" + bytes([kind_byte]):
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


def cookie_reply(init: bytes, cookie: bytes) -> bytes:
    """What the server's datapath sends (csrc/mpt_cookie.c)."""
    return b"MPTH\x01\x03" + init[9:25] + cookie


def test_cookie_reply_to_the_current_init_gives_its_cookie():
    ini = Initiator(PSK, 7, AES)
    cookie = os.urandom(hs.COOKIE_LEN)
    reply = cookie_reply(ini.init_message(), cookie)
    assert len(reply) == hs.COOKIE_REPLY_LEN and message_kind(reply) == "cookie"
    assert ini.receive_cookie(reply) == cookie


def test_cookie_reply_to_another_init_or_malformed_is_refused():
    ini = Initiator(PSK, 7, AES)
    old = ini.init_message()
    ini.restart()                                   # a new nonce
    with pytest.raises(HandshakeError, match="does not answer our current init"):
        ini.receive_cookie(cookie_reply(old, bytes(16)))
    good = cookie_reply(ini.init_message(), bytes(16))
    for bad in (good[:-1], good + b"\0", b"MPTH\x01\x01" + good[6:], b"MPTX" + good[4:]):
        with pytest.raises(HandshakeError):
            ini.receive_cookie(bad)


def test_an_init_carrying_a_cookie_completes_the_same_handshake():
    """The cookie is outside the init's MAC and the transcript: stripped,
    the init verifies and both sides derive the same keys."""
    ini = Initiator(PSK, 7, AES)
    cookie = os.urandom(hs.COOKIE_LEN)
    sent = ini.init_message() + cookie
    assert message_kind(sent) == "init"
    init, got = split_init(sent)
    assert (init, got) == (ini.init_message(), cookie)
    assert split_init(ini.init_message()) == (ini.init_message(), None)
    response, skeys = Responder({"a": PSK}, AES).receive_init(init, 9)
    assert_mirrored(ini.receive_response(response), skeys)
    with pytest.raises(HandshakeError):             # unstripped, it is not an init
        Responder({"a": PSK}, AES).receive_init(sent, 9)


def test_cipher_mismatch_is_reported_on_both_sides():
    ini, resp = Initiator(PSK, 7, AES), Responder({"a": PSK}, CHACHA)
    with pytest.raises(CipherMismatch) as e:
        resp.receive_init(ini.init_message(), 1)
    assert str(e.value) == ("cipher mismatch: this side is configured for chacha20-poly1305, "
                            "the peer for aes-256-gcm")
    with pytest.raises(HandshakeError, match="configured for aes-256-gcm, the peer for "
                                             "chacha20-poly1305"):
        ini.receive_response(e.value.response)
    with pytest.raises(CipherMismatch):    # its nonce was not remembered: not "replayed"
        resp.receive_init(ini.init_message(), 1)


def test_repeated_init_is_refused_as_replayed():
    # (the daemon answers a resent init itself, with the response it sent)
    ini, resp = Initiator(PSK, 7, AES), Responder({"a": PSK}, AES)
    init = ini.init_message()
    resp.receive_init(init, 1)
    for index in (1, 2):
        with pytest.raises(HandshakeError, match="replayed"):
            resp.receive_init(init, index)


def test_replay_cache_is_bounded():
    resp = Responder({"a": PSK}, AES)
    ini = Initiator(PSK, 7, AES)
    old = ini.init_message()
    resp.receive_init(old, 1)
    for _ in range(hs.REPLAY_CACHE):
        ini.restart()
        resp.receive_init(ini.init_message(), 2)
    assert len(resp._seen) == hs.REPLAY_CACHE
    # forgotten: it is answered, but the replayer (no ephemeral private key) cannot use the keys
    assert resp.receive_init(old, 500)[1].local_index == 500


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
    assert hs.REKEY_AFTER_PACKETS == 1 << 30
    assert hs.HANDSHAKE_RETRY_S == 0.25


def test_session_keys_bind_the_transcript_and_the_psk():
    dh, salt = os.urandom(32), hs._psk_keys(PSK)[1]
    base = hs._session(dh, salt, b"init", b"response")
    assert hs._session(dh, salt, b"init", b"response") == base
    assert hs._session(dh, salt, b"init", b"responsf") != base
    assert hs._session(dh, hs._psk_keys(OTHER)[1], b"init", b"response") != base
