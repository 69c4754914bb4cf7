"""Session handshake: fresh keys for every session, authenticated by the
pre-shared key (sans-I/O; the daemon moves the bytes).

Two messages, carried as HANDSHAKE packets in cleartext:

    init      client -> server   magic "MPTH" · version · kind 1 · sender index ·
                                 cipher · nonce (16) · ephemeral X25519 key (32) · mac (16)
    response  server -> client   magic "MPTH" · version · kind 2 · sender index ·
                                 the initiator's index · cipher · nonce · ephemeral · mac

From each pre-shared key (PSK) HKDF derives a MAC key and a KDF salt.
init.mac = HMAC-SHA256(mac key, init without its mac)[:16];
response.mac = HMAC-SHA256(mac key, SHA-256(init) · response without its mac)[:16],
so a response answers exactly one init.  Session keys = HKDF-SHA256(the X25519
result, salt = the PSK-derived salt, info = label · SHA-256(init · response)),
64 bytes: the key for c->s, then the one for s->c (data and control packets
alike: the datapath seals both with the same keys and sequence).

What it guarantees:
* Authentication: only a holder of the PSK can produce either message; the
  server learns which peer is talking by trying each configured key.
* Forward secrecy: the keys come from ephemeral X25519 keys that are thrown
  away (the initiator's once the response is accepted, the responder's at
  once), so a PSK stolen later does not open recorded sessions.  The keys
  also depend on the PSK: breaking X25519 alone is not enough either.
* No nonce reuse: every session has keys of its own, so the AEAD sequence
  numbers may restart at 0 in each session (and after a restart of the daemon).
* Replays: the responder remembers the nonces of the last REPLAY_CACHE inits
  it accepted and refuses them again, a resent init included (the daemon
  answers a resent init itself, with the response it already sent).  An init
  replayed after its nonce has left the cache, or after a restart of the
  daemon, is answered but can never complete, since the replayer lacks the
  client's ephemeral private key: nothing authenticated under its keys will
  ever arrive.  The responder keeps no state per answered session; what to do
  with the keys is the daemon's decision (it refuses a new session while the
  current one is live, and sends with the keys of a rekey only once the client
  does).

Under load, return routability (csrc/mpt_cookie.h): when forged inits use
up the server's handshake rate limit, the server's datapath answers an init it
has no room for with a cookie reply (a third message, unauthenticated:

    cookie    server -> client   magic "MPTH" · version · kind 3 · the init's nonce ·
                                 cookie (16)

a keyed hash of the init's source address and port).  The initiator takes it
only if it echoes the nonce of its current init, and appends the cookie to
the inits it sends on that path from then on (for COOKIE_USE_S); the server
lets such inits in under limits of their own.  The cookie is outside the init's
MAC and the transcript: the responder strips it first (split_init).  A forged
cookie reply can at worst make the initiator send a cookie that does not
verify, which the server treats as no cookie.

Not bound: the packet header.  The initiator resends the same init (every
HANDSHAKE_RETRY_S) on whichever path works, under headers that differ, and
the answer must not depend on that.  Nothing trusted is taken from a
handshake packet's header: the indexes and the cipher travel in the MAC'd
body, and the addresses of the paths are learnt only from packets
authenticated under the new keys.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from construct import Bytes, Const, ConstructError, Int8ub, Int16ub, Struct
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CIPHER_NAMES = {0: "none", 1: "aes-256-gcm", 2: "chacha20-poly1305"}

REKEY_AFTER_PACKETS = 1 << 30    # the initiator rekeys after this many packets under one key
HANDSHAKE_RETRY_S = 0.25         # the initiator resends an unanswered init this often

REPLAY_CACHE = 4096              # init nonces the responder remembers
COOKIE_USE_S = 100.0             # a cookie is appended this long (the server keeps a
                                 # cookie valid for >= 120 s: csrc/mpt_cookie.h)

MAGIC = b"MPTH"
VERSION = 1
KIND_INIT, KIND_RESPONSE, KIND_COOKIE = 1, 2, 3
MAC_LEN = 16
COOKIE_LEN = 16
NONCE_LEN = 16
KEY_LEN = 32

_PSK_INFO = b"mpt handshake v1 psk"
_SESSION_INFO = b"mpt handshake v1 session"

# The message without its trailing mac (which is what the mac covers).
_INIT = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int8ub),
    "kind" / Const(KIND_INIT, Int8ub),
    "sender" / Int16ub,
    "cipher" / Int8ub,
    "nonce" / Bytes(16),
    "ephemeral" / Bytes(32),
)
_RESPONSE = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int8ub),
    "kind" / Const(KIND_RESPONSE, Int8ub),
    "sender" / Int16ub,
    "receiver" / Int16ub,     # the initiator's index, echoed
    "cipher" / Int8ub,
    "nonce" / Bytes(16),
    "ephemeral" / Bytes(32),
)
_COOKIE_REPLY = Struct(
    "magic" / Const(MAGIC),
    "version" / Const(VERSION, Int8ub),
    "kind" / Const(KIND_COOKIE, Int8ub),
    "nonce" / Bytes(NONCE_LEN),          # the init's, echoed
    "cookie" / Bytes(COOKIE_LEN),
)
INIT_LEN = _INIT.sizeof() + MAC_LEN
RESPONSE_LEN = _RESPONSE.sizeof() + MAC_LEN
COOKIE_REPLY_LEN = _COOKIE_REPLY.sizeof()


class HandshakeError(ValueError):
    """A handshake message that cannot be accepted; one line, no secrets."""


@dataclass(frozen=True)
class SessionKeys:
    cipher: int
    local_index: int       # our index: the peer puts it in the header of what it sends us
    remote_index: int      # the peer's index: we put it in the header of what we send
    tx_data: bytes = field(repr=False)   # seals what we send (data and control packets)
    rx_data: bytes = field(repr=False)   # opens what the peer sends


def message_kind(body: bytes) -> str:
    """The kind of a handshake body, "init" (with or without a cookie),
    "response" or "cookie", from its magic, version, kind and length (nothing
    is verified); HandshakeError if none."""
    head = bytes(body[:len(MAGIC) + 2])
    if head == MAGIC + bytes([VERSION, KIND_INIT]) and len(body) in (INIT_LEN,
                                                                     INIT_LEN + COOKIE_LEN):
        return "init"
    if head == MAGIC + bytes([VERSION, KIND_RESPONSE]) and len(body) == RESPONSE_LEN:
        return "response"
    if head == MAGIC + bytes([VERSION, KIND_COOKIE]) and len(body) == COOKIE_REPLY_LEN:
        return "cookie"
    raise HandshakeError(f"not an mpt handshake message ({len(body)} bytes)")


def split_init(body: bytes) -> tuple[bytes, bytes | None]:
    """(the init itself, the cookie it carries or None) of an init body."""
    body = bytes(body)
    if len(body) == INIT_LEN + COOKIE_LEN:
        return body[:INIT_LEN], body[INIT_LEN:]
    return body, None


def _parse(layout: Struct, body: bytes, what: str):
    """(fields, signed part, mac) of a message of the given layout."""
    body = bytes(body)
    if len(body) != layout.sizeof() + MAC_LEN:
        raise HandshakeError(f"handshake {what}: wrong length ({len(body)} bytes)")
    try:
        msg = layout.parse(body[:-MAC_LEN])
    except ConstructError:
        raise HandshakeError(f"handshake {what}: not an mpt handshake {what}") from None
    if msg.sender == 0:
        raise HandshakeError(f"handshake {what}: session index 0")
    return msg, body[:-MAC_LEN], body[-MAC_LEN:]


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:MAC_LEN]


def _psk_keys(psk: bytes) -> tuple[bytes, bytes]:
    """(MAC key, KDF salt) from a pre-shared key."""
    if len(psk) != KEY_LEN:
        raise ValueError(f"pre-shared key must be {KEY_LEN} bytes")
    okm = HKDF(hashes.SHA256(), 2 * KEY_LEN, salt=None, info=_PSK_INFO).derive(psk)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:   # a low-order point: the result would be all zeros
        raise HandshakeError("handshake: unusable ephemeral key") from None


def _session(dh: bytes, salt: bytes, init: bytes, response: bytes) -> tuple[bytes, bytes]:
    """(key c->s, key s->c)."""
    transcript = hashlib.sha256(init + response).digest()
    okm = HKDF(hashes.SHA256(), 2 * KEY_LEN, salt=salt,
               info=_SESSION_INFO + transcript).derive(dh)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _check_index(index: int) -> int:
    if not 0 < index <= 0xFFFF:
        raise ValueError(f"session index must be 1..65535, not {index}")
    return index


def _check_cipher(cipher: int) -> int:
    if cipher not in CIPHER_NAMES:
        raise ValueError(f"unknown cipher {cipher}")
    return cipher


def _cipher_name(cipher: int) -> str:
    return CIPHER_NAMES.get(cipher, f"unknown cipher {cipher}")


def _cipher_mismatch(ours: int, theirs: int) -> HandshakeError:
    return HandshakeError(f"cipher mismatch: this side is configured for {_cipher_name(ours)}, "
                          f"the peer for {_cipher_name(theirs)}")


class CipherMismatch(HandshakeError):
    """The init is genuine but asks for another cipher.  `response` is an
    authenticated response carrying our cipher (and no usable key): send it so
    the initiator reports the mismatch too instead of timing out."""

    def __init__(self, error: HandshakeError, response: bytes):
        super().__init__(str(error))
        self.response = response


class Initiator:
    """The client's side of one handshake attempt."""

    def __init__(self, psk: bytes, local_index: int, cipher: int):
        self._mac_key, self._salt = _psk_keys(psk)
        self.local_index = _check_index(local_index)
        self.cipher = _check_cipher(cipher)
        self.restart()

    def restart(self) -> None:
        """A new attempt: new ephemeral key and nonce, the same index.  The
        previous init can no longer complete."""
        self._ephemeral: X25519PrivateKey | None = X25519PrivateKey.generate()
        signed = _INIT.build(dict(sender=self.local_index, cipher=self.cipher,
                                  nonce=os.urandom(16),
                                  ephemeral=self._ephemeral.public_key().public_bytes_raw()))
        self._init = signed + _mac(self._mac_key, signed)
        self._done: tuple[bytes, SessionKeys] | None = None

    @property
    def nonce(self) -> bytes:
        """The current init's nonce (a cookie reply echoes it)."""
        return _INIT.parse(self._init[:-MAC_LEN]).nonce

    def init_message(self) -> bytes:
        """The init body: the same bytes until restart(), so resending it is safe."""
        return self._init

    def receive_cookie(self, body: bytes) -> bytes:
        """The cookie of a cookie reply to our current init."""
        if len(body) != COOKIE_REPLY_LEN:
            raise HandshakeError(f"handshake cookie: wrong length ({len(body)} bytes)")
        try:
            msg = _COOKIE_REPLY.parse(bytes(body))
        except ConstructError:
            raise HandshakeError("handshake cookie: not an mpt cookie reply") from None
        if not hmac.compare_digest(msg.nonce, self.nonce):
            raise HandshakeError("handshake cookie: does not answer our current init")
        return msg.cookie

    def receive_response(self, body: bytes) -> SessionKeys:
        """The keys, once the response to our current init verifies.  A
        duplicate of the accepted response gives the same keys again."""
        body = bytes(body)
        if self._done is not None:
            if hmac.compare_digest(body, self._done[0]):
                return self._done[1]
            raise HandshakeError("handshake response: this handshake is already complete")
        msg, signed, mac = _parse(_RESPONSE, body, "response")
        init_hash = hashlib.sha256(self._init).digest()
        if not hmac.compare_digest(mac, _mac(self._mac_key, init_hash, signed)):
            raise HandshakeError("handshake response does not verify with the tunnel key "
                                 "(or does not answer our current init)")
        if msg.receiver != self.local_index:
            raise HandshakeError("handshake response: echoes another session index")
        if msg.cipher != self.cipher:
            raise _cipher_mismatch(self.cipher, msg.cipher)
        c2s, s2c = _session(_dh(self._ephemeral, msg.ephemeral), self._salt, self._init, body)
        result = SessionKeys(self.cipher, self.local_index, msg.sender, tx_data=c2s, rx_data=s2c)
        self._ephemeral = None     # forward secrecy: nothing left to recompute the keys
        self._done = (body, result)
        return result


class Responder:
    """The server's side: answers inits from any configured peer.  Its only
    state is the replay cache of init nonces."""

    def __init__(self, peers: dict[str, bytes], cipher: int):
        self.cipher = _check_cipher(cipher)
        self._peers = {name: _psk_keys(psk) for name, psk in peers.items()}
        if len({mac_key for mac_key, _ in self._peers.values()}) != len(self._peers):
            raise ValueError("two peers share a pre-shared key: they could not be told apart")
        self._seen: OrderedDict[bytes, None] = OrderedDict()   # init nonces, oldest first

    def receive_init(self, body: bytes, local_index: int) -> tuple[bytes, SessionKeys]:
        """(response body, keys) for a new session in which the peer will
        put local_index in its headers.  A repeat of an init accepted before
        (resent or replayed: its nonce is still in the cache), a wrong key, or
        anything malformed raises HandshakeError; CipherMismatch carries a
        response worth sending (and its nonce is not remembered)."""
        _check_index(local_index)
        msg, signed, mac = _parse(_INIT, body, "init")
        body = bytes(body)
        peer = next((name for name, (mac_key, _) in self._peers.items()
                     if hmac.compare_digest(mac, _mac(mac_key, signed))), None)
        if peer is None:
            raise HandshakeError("handshake init: no configured peer key verifies it")
        mac_key, salt = self._peers[peer]
        if msg.nonce in self._seen:
            raise HandshakeError(f"handshake init from {peer}: replayed")
        if msg.cipher != self.cipher:
            raise CipherMismatch(_cipher_mismatch(self.cipher, msg.cipher),
                                 self._response(mac_key, body, msg.sender, local_index,
                                                bytes(32)))
        self._remember(msg.nonce)
        ephemeral = X25519PrivateKey.generate()
        response = self._response(mac_key, body, msg.sender, local_index,
                                  ephemeral.public_key().public_bytes_raw())
        c2s, s2c = _session(_dh(ephemeral, msg.ephemeral), salt, body, response)
        return response, SessionKeys(self.cipher, local_index, msg.sender,
                                     tx_data=s2c, rx_data=c2s)

    def _response(self, mac_key: bytes, init: bytes, receiver: int, local_index: int,
                  ephemeral: bytes) -> bytes:
        signed = _RESPONSE.build(dict(sender=local_index, receiver=receiver,
                                      cipher=self.cipher, nonce=os.urandom(16),
                                      ephemeral=ephemeral))
        return signed + _mac(mac_key, hashlib.sha256(init).digest(), signed)

    def _remember(self, nonce: bytes) -> None:
        self._seen[nonce] = None
        while len(self._seen) > REPLAY_CACHE:
            self._seen.popitem(last=False)
