"""Per-packet AEAD in C (csrc/mpt_aead.c), through cffi, against the
`cryptography` package; and the cipher names of mpt/cipher.py."""
import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpt import cipher
from mpt._datapath import ffi, lib

TAG = lib.MPT_TAG_LEN
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
REFERENCE = {lib.MPT_CIPHER_AES256GCM: AESGCM,
             lib.MPT_CIPHER_CHACHA20POLY1305: ChaCha20Poly1305}
CIPHERS = sorted(REFERENCE)
SEQS = [0, 1, 255, 256, 2**32 - 1, 2**32, 0x0102030405060708, 2**63, 2**64 - 1]


class Aead:
    def __init__(self, cipher_id=None, key=KEY):
        self.a = ffi.gc(lib.mpt_aead_new(), lib.mpt_aead_free)
        assert self.a != ffi.NULL
        if cipher_id is not None:
            assert self.set_key(cipher_id, key) == 0

    def set_key(self, cipher_id, key):
        return lib.mpt_aead_set_key(self.a, cipher_id, ffi.NULL if key is None else key)

    def seal(self, seq, aad, plaintext, expect_ok=True):
        """The sealed packet (ciphertext || tag); None if seal failed."""
        buf = bytearray(plaintext) + bytearray(b"\xee" * TAG)
        rc = lib.mpt_aead_seal(self.a, seq, ffi.from_buffer("uint8_t[]", aad), len(aad),
                               ffi.from_buffer("uint8_t[]", buf), len(plaintext))
        assert rc in (0, -1)
        return bytes(buf) if rc == 0 else None

    def open(self, seq, aad, packet):
        """The plaintext, or None if open failed."""
        buf = bytearray(packet)
        n = lib.mpt_aead_open(self.a, seq, ffi.from_buffer("uint8_t[]", aad), len(aad),
                              ffi.from_buffer("uint8_t[]", buf), len(packet))
        if n == -1:
            return None
        assert 0 <= n <= len(packet)
        return bytes(buf[:n])


def nonce(seq):
    return bytes(4) + seq.to_bytes(8, "big")


def payload(n, salt=0):
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


@pytest.mark.parametrize("cid", CIPHERS)
def test_seal_matches_reference_for_every_length(cid):
    a, ref = Aead(cid), REFERENCE[cid](KEY)
    for n in range(0, 2049):
        seq, aad = SEQS[n % len(SEQS)] ^ n, payload(n % 37, salt=1)
        pt = payload(n)
        sealed = a.seal(seq, aad, pt)
        assert sealed is not None
        assert len(sealed) == n + TAG
        assert sealed == ref.encrypt(nonce(seq), pt, aad), n
        assert ref.decrypt(nonce(seq), sealed, aad) == pt


@pytest.mark.parametrize("cid", CIPHERS)
def test_open_accepts_reference_packets_for_every_length(cid):
    a, ref = Aead(cid), REFERENCE[cid](KEY)
    for n in range(0, 2049):
        seq, aad = SEQS[(n + 3) % len(SEQS)] ^ (n << 20), payload(n % 29, salt=2)
        pt = os.urandom(n)
        assert a.open(seq, aad, ref.encrypt(nonce(seq), pt, aad)) == pt, n


@pytest.mark.parametrize("cid", CIPHERS)
@pytest.mark.parametrize("seq", SEQS)
def test_nonce_is_zero_prefix_and_big_endian_seq(cid, seq):
    a, ref = Aead(cid), REFERENCE[cid](KEY)
    assert a.seal(seq, b"hdr", b"x" * 100) == ref.encrypt(nonce(seq), b"x" * 100, b"hdr")


@pytest.mark.parametrize("cid", CIPHERS)
def test_one_struct_seals_and_opens_interleaved(cid):
    # separate contexts per direction: opening between seals disturbs nothing
    tx, rx = Aead(cid), Aead(cid)
    mine = [tx.seal(s, b"a", payload(300, s)) for s in range(4)]
    theirs = [rx.seal(s + 100, b"b", payload(200, s)) for s in range(4)]
    for s in range(4):
        assert tx.open(s + 100, b"b", theirs[s]) == payload(200, s)
        assert tx.seal(s + 10, b"a", payload(50)) == REFERENCE[cid](KEY).encrypt(
            nonce(s + 10), payload(50), b"a")
        assert rx.open(s, b"a", mine[s]) == payload(300, s)


@pytest.mark.parametrize("cid", CIPHERS)
def test_tampering_any_byte_fails(cid):
    a = Aead(cid)
    aad, pt, seq = payload(16, 5), payload(64, 9), 77
    sealed = a.seal(seq, aad, pt)
    assert a.open(seq, aad, sealed) == pt
    for i in range(len(aad)):
        for bit in (0x01, 0x80):
            bad = bytearray(aad)
            bad[i] ^= bit
            assert a.open(seq, bytes(bad), sealed) is None, ("aad", i)
    for i in range(len(sealed)):  # ciphertext, then the tag
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            assert a.open(seq, aad, bytes(bad)) is None, ("packet", i)
    assert a.open(seq, aad + b"\0", sealed) is None        # aad longer
    assert a.open(seq, aad[:-1], sealed) is None           # aad shorter
    assert a.open(seq, aad, sealed[:-1]) is None           # tag cut short
    assert a.open(seq, aad, sealed + b"\0") is None        # trailing byte
    assert a.open(seq, aad, sealed) == pt                  # the original still opens


@pytest.mark.parametrize("cid", CIPHERS)
def test_empty_packet_is_still_authenticated(cid):
    a = Aead(cid)
    sealed = a.seal(5, b"", b"")
    assert len(sealed) == TAG
    assert a.open(5, b"", sealed) == b""
    assert a.open(6, b"", sealed) is None
    assert a.open(5, b"", bytes(TAG)) is None


@pytest.mark.parametrize("cid", CIPHERS)
def test_wrong_seq_key_or_cipher_fails(cid):
    a = Aead(cid)
    sealed = a.seal(1000, b"hdr", b"secret" * 10)
    for seq in (999, 1001, 1000 + 2**32, 1000 + 2**63, 1000 ^ 2**40):
        assert a.open(seq, b"hdr", sealed) is None, seq
    assert Aead(cid, OTHER_KEY).open(1000, b"hdr", sealed) is None
    other = CIPHERS[1 - CIPHERS.index(cid)]
    assert Aead(other).open(1000, b"hdr", sealed) is None


@pytest.mark.parametrize("cid", CIPHERS)
def test_shorter_than_a_tag_fails(cid):
    a = Aead(cid)
    for n in range(TAG):
        assert a.open(0, b"", bytes(n)) is None
    assert lib.mpt_aead_open(a.a, 0, ffi.NULL, 0, ffi.NULL, 0) == -1


def test_none_is_identity_without_tag():
    a = Aead(lib.MPT_CIPHER_NONE, key=None)
    assert lib.mpt_aead_cipher(a.a) == lib.MPT_CIPHER_NONE
    for n in (0, 1, 15, 16, 17, 1400):
        pt = payload(n)
        sealed = a.seal(n, b"aad", pt)
        assert sealed == pt + b"\xee" * TAG   # nothing written past len
        assert a.open(n, b"aad", pt) == pt     # returns len unchanged, even < 16
        assert a.open(n + 1, b"other", pt) == pt


def test_rekey_replaces_the_key_and_cipher():
    aes, chacha = lib.MPT_CIPHER_AES256GCM, lib.MPT_CIPHER_CHACHA20POLY1305
    a = Aead(aes)
    old = a.seal(1, b"h", b"data")
    assert a.set_key(aes, OTHER_KEY) == 0
    assert a.open(1, b"h", old) is None
    assert a.seal(1, b"h", b"data") == AESGCM(OTHER_KEY).encrypt(nonce(1), b"data", b"h")
    assert a.set_key(chacha, KEY) == 0
    assert lib.mpt_aead_cipher(a.a) == chacha
    assert a.seal(2, b"h", b"data") == ChaCha20Poly1305(KEY).encrypt(nonce(2), b"data", b"h")
    assert a.open(2, b"h", ChaCha20Poly1305(KEY).encrypt(nonce(2), b"x", b"h")) == b"x"
    assert a.set_key(lib.MPT_CIPHER_NONE, ffi.NULL) == 0
    assert a.seal(3, b"h", b"data") == b"data" + b"\xee" * TAG
    assert a.set_key(aes, KEY) == 0
    assert a.open(1, b"h", old) == b"data"


def test_without_a_key_nothing_passes():
    a = Aead()
    assert lib.mpt_aead_cipher(a.a) == -1
    assert a.seal(0, b"", b"abc") is None
    assert a.open(0, b"", bytes(40)) is None


@pytest.mark.parametrize("bad", [3, -1, 99])
def test_failed_rekey_leaves_no_key_not_plaintext(bad):
    a = Aead(lib.MPT_CIPHER_AES256GCM)
    assert a.set_key(bad, KEY) == -1
    assert lib.mpt_aead_cipher(a.a) == -1
    assert a.seal(0, b"", b"abc") is None
    assert a.open(0, b"", bytes(40)) is None
    assert a.set_key(lib.MPT_CIPHER_AES256GCM, None) == -1   # a real cipher needs a key
    assert a.seal(0, b"", b"abc") is None
    assert a.set_key(lib.MPT_CIPHER_CHACHA20POLY1305, KEY) == 0
    assert a.seal(0, b"", b"abc") == ChaCha20Poly1305(KEY).encrypt(nonce(0), b"abc", b"")


def test_null_aad_with_a_length_is_refused():
    a = Aead(lib.MPT_CIPHER_AES256GCM)
    buf = ffi.new("uint8_t[]", 64)
    assert lib.mpt_aead_seal(a.a, 0, ffi.NULL, 4, buf, 10) == -1
    assert lib.mpt_aead_seal(a.a, 0, ffi.NULL, 0, buf, 10) == 0
    assert lib.mpt_aead_open(a.a, 0, ffi.NULL, 4, buf, 26) == -1
    assert lib.mpt_aead_open(a.a, 0, ffi.NULL, 0, buf, 26) == 10


def test_free_accepts_null():
    lib.mpt_aead_free(ffi.NULL)


@pytest.mark.parametrize("cid", CIPHERS)
def test_random_packets_round_trip(cid):
    rng = random.Random(cid)
    a = Aead(cid)
    for _ in range(300):
        seq, aad, pt = rng.getrandbits(64), rng.randbytes(rng.randrange(40)), \
            rng.randbytes(rng.randrange(1500))
        assert a.open(seq, aad, a.seal(seq, aad, pt)) == pt


# --- mpt/cipher.py -------------------------------------------------------

def test_names_match_the_c_constants():
    assert cipher.NAMES == {"aes-256-gcm": lib.MPT_CIPHER_AES256GCM,
                            "chacha20-poly1305": lib.MPT_CIPHER_CHACHA20POLY1305,
                            "none": lib.MPT_CIPHER_NONE}


X86_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 pclmulqdq aes avx\n\n"
X86_NO_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 vaes avx aes_like\n\n"
ARM_AES = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
ARM_NO_AES = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n"


@pytest.mark.parametrize("text,expected", [
    (X86_AES, True), (X86_NO_AES, False), (ARM_AES, True), (ARM_NO_AES, False),
    ("", False), ("model name\t: aes cpu\n", False), ("flags aes\n", False),
    ("\x00\xff garbage aes : aes\n", False), (X86_NO_AES + X86_AES, True),
])
def test_cpu_has_aes_reads_flags_and_features(tmp_path, text, expected):
    f = tmp_path / "cpuinfo"
    f.write_bytes(text.encode("latin-1"))
    assert cipher.cpu_has_aes(str(f)) is expected


def test_cpu_has_aes_false_when_unreadable(tmp_path):
    assert cipher.cpu_has_aes(str(tmp_path / "missing")) is False
    assert cipher.cpu_has_aes(str(tmp_path)) is False    # a directory


def test_cpu_has_aes_reads_this_machine():
    with open("/proc/cpuinfo") as f:
        words = {w for line in f if line.split(":")[0].strip() in ("flags", "Features")
                 for w in line.partition(":")[2].split()}
    assert cipher.cpu_has_aes() is ("aes" in words)


@pytest.mark.parametrize("has_aes,expected", [(True, "aes-256-gcm"),
                                              (False, "chacha20-poly1305")])
def test_default_and_auto_follow_the_cpu(monkeypatch, has_aes, expected):
    monkeypatch.setattr(cipher, "cpu_has_aes", lambda: has_aes)
    assert cipher.default_cipher() == expected
    assert cipher.resolve("auto") == expected


def test_resolve_keeps_known_names_and_refuses_others():
    for name in cipher.NAMES:
        assert cipher.resolve(name) == name
    for bad in ("AES-256-GCM", "aes", "", "auto "):
        with pytest.raises(ValueError):
            cipher.resolve(bad)
