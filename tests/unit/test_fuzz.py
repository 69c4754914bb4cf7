"""The receive path in C (csrc/mpt_receive.c: header, session, replay window,
AEAD, inner checks, allowed sources, reorder) fuzzed with libFuzzer under
AddressSanitizer and UndefinedBehaviorSanitizer, through the harness
csrc/fuzz/fuzz_decap.c (its input format is described there).

The seed corpus is built here with `cryptography` (sealed packets of every
kind the harness's peers accept), and each seed is first run on its own to
prove the harness reaches what it claims: authenticated packets of each
cipher delivered in order, losses given up, forgeries and replays dropped,
control packets, handshakes and the key switch.  Then a short fuzzing run;
docs/FUZZING.md has a long run's figures.  Needs clang (scripts/install.sh
installs it); without it these tests fail, they do not skip."""
import ast
import os
import pathlib
import re
import shutil
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpt import wire

ROOT = pathlib.Path(__file__).resolve().parents[2]
HARNESS = ROOT / "csrc" / "fuzz" / "fuzz_decap.c"
SHORT_RUN_S = 20
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error",
                     "deadly signal", "check failed")

# The harness's fixed world (fuzz_decap.c): datapath 0 is the server, 1 the client.
SERVER, CLIENT = 0, 1
AES_PEER, CHACHA_PEER, PREFIX_PEER, ANY_PEER = 0, 1, 2, 3
SESSION = {(SERVER, AES_PEER): 0x1234, (SERVER, CHACHA_PEER): 0x2345,
           (SERVER, PREFIX_PEER): 0x3456, (SERVER, ANY_PEER): 0x4567, (CLIENT, 0): 0x0101}
UNKEYED_SESSION = 0x5678
# Record flags: source address (bits 1-2), socket B (bit 3), truncated, sealed by the harness.
SRC_V4, SRC_V6, SRC_V4_OTHER_PORT, SRC_OTHER_HOST = 0, 2, 4, 6
SOCKET_B, TRUNC, SEAL_HERE = 8, 0x10, 0x20
# Settings byte: hold 50 ms, alive 1 s.
SETTINGS = bytes([2 | 2 << 2])


def ms(n: int) -> int:
    """The time byte for about n ms (units of 1.024 ms)."""
    assert 0 <= n <= 63
    return 0x80 | n


def far_key(dp: int, peer: int, phase: int) -> bytes:
    return bytes([0xA0 + 8 * dp + 2 * peer + phase]) * 32


def ipv4(ident: int, src=(198, 18, 100, 2), size=60) -> bytes:
    body = struct.pack("!Q", ident) + bytes(size - 36)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(body), 0, 0, 64, 17, 0,
                      bytes(src), bytes((198, 18, 200, 2)))
    return hdr + struct.pack("!HHHH", 1, 2, 8 + len(body), 0) + body


def ipv6(ident: int, src=b"\x20\x01\x00\x02" + bytes(11) + b"\x01", size=80) -> bytes:
    body = struct.pack("!Q", ident) + bytes(size - 56)
    return struct.pack("!IHBB16s16s", 0x60000000, size - 40, 17, 64, src, bytes(16)) \
        + struct.pack("!HHHH", 1, 2, 8 + len(body), 0) + body


def header(session, seq, typ=wire.TYPE_DATA, path=0, bucket=0, flow_seq=0, phase=0) -> bytes:
    return wire.HEADER.pack((wire.VERSION << 4) | typ, (phase << 7) | path, session, bucket,
                            flow_seq, seq)


def seal(peer, payload, seq, dp=SERVER, key=None, **hdr) -> bytes:
    """A datagram as peer's far end sends it (cryptography's AEAD, not the C one)."""
    h = header(SESSION[(dp, peer)], seq, **hdr)
    if dp == CLIENT or peer in (PREFIX_PEER, ANY_PEER):
        return h + payload
    aead = AESGCM if peer == AES_PEER else ChaCha20Poly1305
    key = key or far_key(dp, peer, hdr.get("phase", 0))
    return h + aead(key).encrypt(bytes(4) + struct.pack("!Q", seq), payload, h)


def record(datagram: bytes, flags=0, t=0) -> bytes:
    return bytes([flags, t]) + struct.pack("!H", len(datagram)) + datagram


def seeds() -> dict:
    """name -> (records, what the harness must report for them alone)."""
    out = {}
    out["aes_in_order"] = (
        [record(seal(AES_PEER, ipv4(i), i, bucket=3, flow_seq=i)) for i in range(8)],
        dict(delivered_aes=8))

    # 1 arrives after 2 and 3 (other path); 4 is lost, 5 waits out the hold time
    out["aes_reorder_and_loss"] = ([
        record(seal(AES_PEER, ipv4(0), 0, flow_seq=0)),
        record(seal(AES_PEER, ipv4(2), 2, flow_seq=2, path=1), SRC_V6),
        record(seal(AES_PEER, ipv4(3), 3, flow_seq=3, path=1), SRC_V6),
        record(seal(AES_PEER, ipv4(1), 1, flow_seq=1)),
        record(seal(AES_PEER, ipv4(5), 5, flow_seq=5)),
        record(b"", t=ms(60)),              # nothing but time passing
    ], dict(delivered_aes=5))

    good = seal(AES_PEER, ipv4(0), 0)
    tampered = bytearray(seal(AES_PEER, ipv4(1), 1, flow_seq=1))
    tampered[40] ^= 1
    out["aes_replay_forgery_rekey"] = ([
        record(good), record(good),                                           # replayed
        record(seal(AES_PEER, ipv4(1), 1, flow_seq=1, key=bytes(32))),        # wrong key
        record(bytes(tampered)),
        record(seal(AES_PEER, ipv4(1), 1, flow_seq=1)),
        record(seal(AES_PEER, ipv4(2), 2, flow_seq=2, phase=1)),              # new key phase
        record(seal(AES_PEER, ipv4(3), 3, flow_seq=3)),                       # old one still opens
        record(header(UNKEYED_SESSION, 4) + ipv4(4)),                         # no session
    ], dict(delivered_aes=4, key_switches=1, drop_auth=2))

    out["aes_control"] = ([
        record(seal(AES_PEER, b"probe body", 0, typ=wire.TYPE_CONTROL, path=2)),
        record(seal(AES_PEER, ipv4(1), 1, flow_seq=0, path=2)),
    ], dict(delivered_aes=1, control=1))

    v6src = b"\x20\x01\x0d\xb8" + bytes(12)
    out["chacha_ipv6"] = (
        [record(seal(CHACHA_PEER, ipv6(i, src=v6src), i, bucket=7, flow_seq=i), t=1)
         for i in range(4)], dict(delivered_chacha=4))

    sources = [((198, 18, 103, 5), True), ((198, 18, 104, 200), True),
               ((198, 18, 104, 5), False), ((198, 18, 105, 1), False)]
    recs = [record(seal(PREFIX_PEER, ipv4(i, src=s), i, bucket=i)) for i, (s, _) in
            enumerate(sources)]
    v6 = [(b"\x20\x01\x00\x02\x00\x00\x01\x0f" + bytes(7) + b"\x01", True),
          (b"\x20\x01\x00\x02\x00\x00\x01\x10" + bytes(7) + b"\x01", False)]
    recs += [record(seal(PREFIX_PEER, ipv6(i, src=s), 10 + i, bucket=10 + i)) for i, (s, _) in
             enumerate(v6)]
    out["none_allowed_prefixes"] = (recs, dict(delivered_none=3))

    out["none_malformed"] = ([
        record(seal(ANY_PEER, ipv4(0), 0)),
        record(seal(ANY_PEER, ipv4(1)[:-1], 1, flow_seq=1)),            # IP length mismatch
        record(seal(ANY_PEER, ipv4(1), 2, flow_seq=1, bucket=64)),      # no such bucket
        record(seal(ANY_PEER, ipv4(1), 3, flow_seq=1)),
        record(seal(ANY_PEER, ipv4(1), 3, flow_seq=1)),                 # replayed
        record(seal(ANY_PEER, ipv4(2), 4, flow_seq=40000)),             # far ahead: a jump
        record(seal(ANY_PEER, ipv4(3), 5, flow_seq=40001), TRUNC),      # truncated
        record(seal(ANY_PEER, b"\x55" + ipv4(3)[1:], 6, flow_seq=40001)),  # not IP
        record(seal(ANY_PEER, ipv4(3), 7, flow_seq=40001)[:15]),        # short header
        record(bytes([0x12]) + seal(ANY_PEER, ipv4(3), 8, flow_seq=40001)[1:]),  # version 1
        record(bytes(3000)),                                            # larger than any buffer
        record(seal(ANY_PEER, ipv4(3), 9, flow_seq=40001, phase=1)),    # no key in phase 1
        record(seal(ANY_PEER, ipv4(3, size=2060), 10, flow_seq=40001)),  # larger than a slot
    ], dict(delivered_any=3, drop_auth=1, too_big=1))

    hs = header(0, 0, typ=wire.TYPE_HANDSHAKE) + bytes(64)
    out["handshake_rate"] = (
        [record(hs) for _ in range(12)]                                 # burst of 10 per source
        + [record(hs, SRC_V6), record(hs, SRC_OTHER_HOST)]
        + [record(hs, t=ms(63)) for _ in range(2)],                    # 63 ms: ~0.6 tokens
        dict(handshake=13))

    def client(seq, path, flags, **kw):
        return record(seal(0, ipv4(seq, src=(10, 0, 0, 1)), seq, dp=CLIENT, path=path,
                           bucket=seq, **kw), CLIENT | flags)
    out["client_paths"] = ([
        client(0, 0, SRC_V4),                          # path 0: server's v4 address, socket A
        client(1, 1, SRC_V6 | SOCKET_B),               # path 1: v6 address, socket B
        client(2, 2, SRC_OTHER_HOST),                  # path 2: another server address
        client(3, 0, SRC_V4_OTHER_PORT),               # wrong port
        client(4, 0, SRC_V4 | SOCKET_B),               # wrong socket
        client(5, 5, SRC_V4),                          # no such path
    ], dict(delivered_client=3))

    # the harness seals: the fuzzer's own plaintext gets past the AEAD
    out["sealed_by_harness"] = (
        [record(header(0x1234, i, flow_seq=i) + ipv4(i), SEAL_HERE) for i in range(3)],
        dict(delivered_aes=3, sealed_here=3))
    return out


def harness_sources() -> list:
    """The datapath's sources as the extension builds them, but mpt_receive.c,
    which the harness includes."""
    tree = ast.parse((ROOT / "mpt" / "_build_datapath.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SOURCES":
            return [str(ROOT / "csrc" / s) for s in ast.literal_eval(node.value)
                    if s != "mpt_receive.c"]
    raise AssertionError("no SOURCES in mpt/_build_datapath.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The harness binary, or None without clang (the tests then fail)."""
    clang = shutil.which("clang")
    if clang is None:
        return None
    out = tmp_path_factory.mktemp("fuzz") / "fuzz_decap"
    r = subprocess.run([clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined",
                        "-fno-sanitize-recover=undefined", "-Wall", "-Wextra", "-Werror",
                        f"-I{ROOT / 'csrc'}", str(HARNESS), *harness_sources(), "-lcrypto",
                        "-pthread", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-5000:]
    return out


def need(built):
    """Fails the test itself (not its setup) without clang."""
    if built is None:
        pytest.fail("clang is not installed (scripts/install.sh installs it): "
                    "the fuzz harness cannot be built")
    return built


def run(args, timeout, **env):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, ASAN_OPTIONS="abort_on_error=0", **env))
    out = r.stdout + r.stderr
    for report in SANITIZER_REPORTS:
        assert report not in out, out[-8000:]
    assert r.returncode == 0, out[-8000:]
    return out


# What the harness counts (MPT_FUZZ_STATS=1), summed over the inputs it ran.
STATS = ("inputs", "records", "sealed_here", "delivered_aes", "delivered_chacha",
         "delivered_none", "delivered_any", "delivered_client", "control", "handshake",
         "key_switches", "drop_auth", "too_big")


@pytest.mark.parametrize("name", sorted(seeds()))
def test_seed_reaches_what_it_should(built, tmp_path, name):
    fuzzer = need(built)
    records, expect = seeds()[name]
    f = tmp_path / name
    f.write_bytes(SETTINGS + b"".join(records))
    out = run([str(fuzzer), str(f)], 60, MPT_FUZZ_STATS="1")
    m = re.search(r"mpt-fuzz-stats: (.*)", out)
    assert m, out[-3000:]
    got = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
    assert set(got) == set(STATS), m.group(0)
    # libFuzzer runs an input a second time when it looks for leaks
    n = got.pop("inputs")
    assert n in (1, 2) and all(v % n == 0 for v in got.values()), m.group(0)
    want = dict.fromkeys(got, 0)
    want.update(expect, records=len(records))
    assert {k: v // n for k, v in got.items()} == want


def test_short_fuzz_run_finds_nothing(built, tmp_path):
    fuzzer = need(built)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, (records, _) in seeds().items():
        (corpus / name).write_bytes(SETTINGS + b"".join(records))
    out = run([str(fuzzer), f"-max_total_time={SHORT_RUN_S}", "-rss_limit_mb=2048",
               "-max_len=8192", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/",
               str(corpus)], SHORT_RUN_S + 120)
    runs = re.search(r"stat::number_of_executed_(?:runs|units):\s*(\d+)", out)
    assert runs, out[-3000:]
    assert int(runs.group(1)) >= 5000, out[-3000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))
