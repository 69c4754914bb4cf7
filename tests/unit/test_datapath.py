"""The whole C datapath thread, through cffi, on real sockets: loopback UDP
for the paths and a SOCK_SEQPACKET pair standing in for the TUN device
(it keeps packet boundaries, like TUN).  The far end is played by the test
with its own header packing and `cryptography`'s AEAD, an implementation
independent of the C one.  No root needed; the sanitizer test runs this
file again under AddressSanitizer."""
import ipaddress
import os
import random
import select
import socket
import struct
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpt import wire
from mpt.datapath import Datapath, socket_address, unpack_sockaddr

AES, CHACHA, NONE = 1, 2, 0
LOCAL, REMOTE = 0x1234, 0x4321        # the datapath's session index, the far end's


def ipv4_packet(ident: int, size: int = 100, src=(198, 18, 100, 2), dst=(198, 18, 200, 2),
                sport=1) -> bytes:
    payload = struct.pack("!Q", ident) + bytes(size - 28)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                      bytes(src), bytes(dst))
    return hdr + struct.pack("!HHHH", sport, 2, 8 + len(payload), 0) + payload


def ipv6_packet(size: int = 80) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, size - 40, 17, 64, bytes(16), bytes(16)) \
        + bytes(size - 40)


def ident(pkt: bytes) -> int:
    return struct.unpack_from("!Q", pkt, 28)[0]


class FarEnd:
    """Seals and opens packets as the datapath's peer does."""

    def __init__(self, cipher=AES, tx_key=None, rx_key=None, session=LOCAL):
        self.cipher, self.session = cipher, session
        self.tx_key = tx_key or os.urandom(32)   # what the datapath opens with
        self.rx_key = rx_key or os.urandom(32)   # what it seals with
        self.seq = 0

    def _aead(self, key):
        return AESGCM(key) if self.cipher == AES else ChaCha20Poly1305(key)

    def header(self, seq, typ=wire.TYPE_DATA, path=0, bucket=0, flow_seq=None, phase=0,
               session=None):
        return wire.HEADER.pack((wire.VERSION << 4) | typ, (phase << 7) | path,
                                self.session if session is None else session, bucket,
                                seq & 0xFFFF if flow_seq is None else flow_seq, seq)

    def seal(self, payload: bytes, seq=None, key=None, **hdr) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        h = self.header(seq, **hdr)
        if self.cipher == NONE:
            return h + payload
        nonce = bytes(4) + struct.pack("!Q", seq)
        return h + self._aead(key or self.tx_key).encrypt(nonce, payload, h)

    def open(self, pkt: bytes, key=None) -> bytes:
        h, body = pkt[:wire.HDR_LEN], pkt[wire.HDR_LEN:]
        if self.cipher == NONE:
            return body
        seq = struct.unpack_from("!Q", h, 8)[0]
        return self._aead(key or self.rx_key).decrypt(bytes(4) + struct.pack("!Q", seq), body, h)


def wait_until(pred, timeout=5.0):
    """Poll a condition on the datapath's counters (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def recv_all(sock, timeout=0.5):
    out = []
    while select.select([sock], [], [], timeout)[0]:
        out.append(sock.recv(65536))
        timeout = 0.1
    return out


def pairs():
    """(datapath's end, test's end) of the fake TUN and of the control channel."""
    tun_dp, tun_test = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl_dp, ctrl_py = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun_dp.setblocking(False)
    ctrl_dp.setblocking(False)
    return tun_dp, tun_test, ctrl_dp, ctrl_py


def udp(blocking=True):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(blocking)
    return s


def drops(c: dict) -> int:
    return sum(v for k, v in c.items() if k.startswith("drop_"))


@pytest.fixture(params=[AES, CHACHA])
def client(request):
    """A client datapath with one path and a session: its socket, the peer
    socket acting as the server, the fake TUN and the control pair."""
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    path, server = udp(blocking=False), udp()
    far = FarEnd(request.param)
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), -1, 0.05, 1.0)
    dp.add_peer(0)
    dp.set_session(0, LOCAL, REMOTE, far.cipher)
    dp.set_keys(0, 0, far.rx_key, far.tx_key, True)
    dp.set_path(0, 0, path.fileno(), server.getsockname(), 1.0, True)
    dp.start()
    env = dict(dp=dp, tun=tun_test, ctrl=ctrl_py, path=path, server=server, far=far,
               to=path.getsockname())
    yield env
    dp.close()
    for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, path, server):
        s.close()


def test_tun_packet_is_sealed_with_header(client):
    far, inner = client["far"], ipv4_packet(1)
    client["tun"].send(inner)
    pkt, _ = client["server"].recvfrom(4096)
    vt, pp, session, bucket, flow_seq, seq = wire.HEADER.unpack_from(pkt)
    assert (vt >> 4, vt & 15, pp, session) == (2, wire.TYPE_DATA, 0, REMOTE)
    assert (flow_seq, seq) == (0, 0)
    assert inner not in pkt, "the payload travels encrypted"
    assert len(pkt) == wire.HDR_LEN + len(inner) + wire.TAG_LEN
    assert far.open(pkt) == inner
    client["tun"].send(ipv4_packet(2))                 # same flow: next flow_seq
    client["tun"].send(ipv4_packet(3, sport=999))      # another flow
    p2, p3 = client["server"].recvfrom(4096)[0], client["server"].recvfrom(4096)[0]
    assert wire.HEADER.unpack_from(p2)[3:] == (bucket, 1, 1)
    assert wire.HEADER.unpack_from(p3)[5] == 2
    assert ident(far.open(p3)) == 3
    # counted just after sendmmsg returns: maybe after the server got them
    wait_until(lambda: client["dp"].counters(0)["path"][0]["tx_packets"] == 3)
    assert client["dp"].counters()["tun_rx_packets"] == 3


def test_sealed_data_reaches_tun_in_order(client):
    far = client["far"]
    for i in range(20):
        client["server"].sendto(far.seal(ipv4_packet(i)), client["to"])
    assert [ident(p) for p in recv_all(client["tun"])] == list(range(20))
    client["server"].sendto(far.seal(ipv6_packet(), bucket=5, flow_seq=0), client["to"])
    assert recv_all(client["tun"]) == [ipv6_packet()]


def test_forged_replayed_and_malformed_packets_never_reach_tun(client):
    rng = random.Random(1)
    far, good = client["far"], ipv4_packet(99)
    valid = far.seal(good, seq=500)
    tampered = bytearray(far.seal(good, seq=501))
    tampered[30] ^= 1
    bad = [
        b"",
        b"\x20",
        valid[:15],                                             # short header
        bytes([0x10]) + valid[1:],                              # version 1
        bytes([0x25]) + valid[1:],                              # unknown type
        valid[:1] + bytes([0x10]) + valid[2:],                  # reserved bits
        far.seal(good, seq=502, session=0x9999),                # nobody's session
        far.seal(good, seq=503, key=os.urandom(32)),            # wrong key
        bytes(tampered),                                        # flipped ciphertext bit
        valid[:16] + valid[20:],                                # truncated
        far.seal(good, seq=504, phase=1),                       # no key in phase 1
        far.seal(good, seq=505, path=3),                        # not our path index
        far.seal(good[:-1], seq=506),                           # IP length mismatch
        far.seal(b"\x75" + bytes(60), seq=507),                 # IP version 7
        far.seal(good, seq=508, bucket=4000),                   # no such flow bucket
        bytes(3000),                                            # larger than any slot
    ] + [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(300)]

    def handled():
        return drops(client["dp"].counters()) + drops(client["dp"].counters(0))

    for i in range(0, len(bad), 50):   # in chunks: the socket buffer is small
        for b in bad[i:i + 50]:
            client["server"].sendto(b, client["to"])
        wait_until(lambda: handled() == min(i + 50, len(bad)))
    client["server"].sendto(valid, client["to"])       # the one good packet ...
    client["server"].sendto(valid, client["to"])       # ... replayed
    assert [ident(p) for p in recv_all(client["tun"])] == [99]
    assert recv_all(client["ctrl"], 0.05) == []
    g, c = client["dp"].counters(), client["dp"].counters(0)
    assert g["drop_malformed"] >= 3 and g["drop_version"] >= 2
    assert g["drop_unknown_session"] >= 1
    assert c["drop_auth"] >= 4 and c["drop_replay"] == 1
    assert c["drop_bad_inner"] >= 3 and c["drop_bad_path"] == 1


def test_client_accepts_data_only_from_the_server_address(client):
    stranger = udp()
    try:
        stranger.sendto(client["far"].seal(ipv4_packet(1)), client["to"])
        wait_until(lambda: client["dp"].counters(0)["drop_bad_path"] == 1)
        client["server"].sendto(client["far"].seal(ipv4_packet(2)), client["to"])
        assert [ident(p) for p in recv_all(client["tun"])] == [2]
    finally:
        stranger.close()


def test_control_goes_to_python_decrypted_and_comes_back_sealed(client):
    far = client["far"]
    body = wire.build_control(kind="reply", sent_ns=1, echo_ns=2, name="wan1")
    client["server"].sendto(far.seal(body, typ=wire.TYPE_CONTROL), client["to"])
    client["server"].sendto(far.seal(body, typ=wire.TYPE_CONTROL, key=os.urandom(32)),
                            client["to"])   # forged: never reaches Python
    (msg,) = recv_all(client["ctrl"])
    fd, peer, alen, raw, _, _ = wire.CTRL_META.unpack_from(msg)
    assert (fd, peer) == (client["path"].fileno(), 0)
    assert unpack_sockaddr(raw[:alen]) == client["server"].getsockname()
    assert wire.parse_control(msg[wire.CTRL_META.size:]).name == "wan1"
    assert recv_all(client["tun"], 0.1) == []
    assert client["dp"].send_control(0, 0, b"hello")
    pkt = client["server"].recvfrom(4096)[0]
    assert wire.parse_header(pkt)[1] == wire.TYPE_CONTROL
    assert far.open(pkt) == b"hello"


def test_handshake_packets_reach_python_at_a_bounded_rate(client):
    hs = wire.handshake_header(0) + b"x" * 73
    for _ in range(200):
        client["server"].sendto(hs, client["to"])
    wait_until(lambda: sum(client["dp"].counters()[k] for k in
                           ("handshake_rx", "drop_handshake_rate")) == 200)
    got = recv_all(client["ctrl"])
    assert 1 <= len(got) <= 20       # the per-source burst, not 200
    assert wire.CTRL_META.unpack_from(got[0])[1] == -1     # no peer: unauthenticated
    assert got[0][wire.CTRL_META.size:] == hs


def test_rekey_switches_sending_when_the_peer_uses_the_new_keys(client):
    far, dp = client["far"], client["dp"]
    new = FarEnd(far.cipher)
    assert dp.tx_phase(0) == 0
    dp.set_keys(0, 1, new.rx_key, new.tx_key, False)
    assert dp.tx_phase(0) == 0          # until the peer sends with phase 1
    client["tun"].send(ipv4_packet(1))
    pkt = client["server"].recvfrom(4096)[0]
    assert pkt[1] >> 7 == 0 and far.open(pkt) == ipv4_packet(1)   # still the old keys
    # old-phase packets in flight are still accepted; then the peer switches
    client["server"].sendto(far.seal(ipv4_packet(10), seq=0), client["to"])
    client["server"].sendto(new.seal(ipv4_packet(11), seq=1, phase=1), client["to"])
    assert [ident(p) for p in recv_all(client["tun"])] == [10, 11]
    client["tun"].send(ipv4_packet(2))
    pkt = client["server"].recvfrom(4096)[0]
    assert pkt[1] >> 7 == 1 and new.open(pkt) == ipv4_packet(2)
    assert dp.counters(0)["key_switches"] == 1 and dp.tx_phase(0) == 1
    assert dp.tx_phase(5) == -1         # no such peer


def test_new_session_starts_sequences_over(client):
    far, dp = client["far"], client["dp"]
    for i in range(1000, 1005):
        client["server"].sendto(far.seal(ipv4_packet(i), seq=i), client["to"])
    assert len(recv_all(client["tun"])) == 5
    fresh = FarEnd(far.cipher, session=0x777)
    dp.set_session(0, 0x777, REMOTE, fresh.cipher)
    dp.set_keys(0, 0, fresh.rx_key, fresh.tx_key, True)
    client["server"].sendto(far.seal(ipv4_packet(1), seq=2000), client["to"])  # old session
    for i in range(3):      # sequence numbers from 0 again: not late, not replays
        client["server"].sendto(fresh.seal(ipv4_packet(i)), client["to"])
    assert [ident(p) for p in recv_all(client["tun"])] == [0, 1, 2]
    c = dp.counters(0)
    assert c["drop_late"] == c["drop_replay"] == 0 and c["sessions"] == 2
    assert dp.counters()["drop_unknown_session"] == 1


def test_no_session_or_no_active_path_drops_and_counts(client):
    dp = client["dp"]
    dp.set_path(0, 0, client["path"].fileno(), client["server"].getsockname(), 1, False)
    dp.sync()
    client["tun"].send(ipv4_packet(1))
    wait_until(lambda: dp.counters(0)["drop_no_path"] == 1)
    dp.set_session(0, 0x55, REMOTE, AES)     # a session without keys yet
    client["tun"].send(ipv4_packet(2))
    wait_until(lambda: dp.counters(0)["drop_no_session"] == 1)


def test_cipher_none_carries_plain_packets():
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    path, server = udp(blocking=False), udp()
    far = FarEnd(NONE)
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), -1, 0.05, 1.0)
    try:
        dp.add_peer(0)
        dp.set_session(0, LOCAL, REMOTE, NONE)
        dp.set_keys(0, 0, bytes(32), bytes(32), True)
        dp.set_path(0, 0, path.fileno(), server.getsockname(), 1.0, True)
        dp.start()
        tun_test.send(ipv4_packet(1))
        pkt = server.recvfrom(4096)[0]
        assert pkt[wire.HDR_LEN:] == ipv4_packet(1)
        server.sendto(far.seal(ipv4_packet(2)), path.getsockname())
        assert [ident(p) for p in recv_all(tun_test)] == [2]
    finally:
        dp.close()
        for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, path, server):
            s.close()


def test_server_learns_client_address_only_from_authenticated_data():
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    listen, c1, c2 = udp(blocking=False), udp(), udp()
    far = FarEnd(AES)
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), listen.fileno(), 0.05, 1.0)
    dp.add_peer(0)
    dp.set_session(0, LOCAL, REMOTE, AES)
    dp.set_keys(0, 0, far.rx_key, far.tx_key, True)
    dp.start()
    to = listen.getsockname()
    try:
        c2.sendto(far.seal(ipv4_packet(0), path=2, key=os.urandom(32)), to)   # forged
        c2.sendto(far.seal(b"garbage", path=2), to)                          # not IP
        wait_until(lambda: drops(dp.counters(0)) == 2)
        assert dp.peer_address(0, 2) is None
        c1.sendto(far.seal(ipv4_packet(0), path=2), to)
        assert len(recv_all(tun_test)) == 1
        assert dp.peer_address(0, 2) == c1.getsockname()
        dp.set_path(0, 2, listen.fileno(), None, 1.0, True)   # keeps the learned address
        tun_test.send(ipv4_packet(5))
        assert wire.parse_header(c1.recvfrom(4096)[0])[2] == 2
        replay = far.seal(ipv4_packet(1), path=2)
        c1.sendto(replay, to)
        c2.sendto(replay, to)          # a replay from elsewhere moves nothing
        assert len(recv_all(tun_test)) == 1
        assert dp.peer_address(0, 2) == c1.getsockname()
        c2.sendto(far.seal(ipv4_packet(2), path=2), to)       # NAT rebinding
        assert len(recv_all(tun_test)) == 1
        assert dp.peer_address(0, 2) == c2.getsockname()
        assert dp.counters(0)["path"][2]["addr_changes"] == 1
    finally:
        dp.close()
        for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, listen, c1, c2):
            s.close()


def test_server_routes_by_allowed_prefixes_and_checks_sources():
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    listen, ca, cb = udp(blocking=False), udp(), udp()
    ca.settimeout(5)
    cb.settimeout(5)
    a, b = FarEnd(AES, session=0x0A), FarEnd(AES, session=0x0B)
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), listen.fileno(), 0.05, 1.0)
    net = ipaddress.ip_network
    dp.add_peer(0, [net("198.18.100.0/24")])
    dp.add_peer(1, [net("198.18.101.0/24"), net("198.18.101.128/25")])
    for i, far in enumerate((a, b)):
        dp.set_session(i, far.session, 0x100 + i, AES)
        dp.set_keys(i, 0, far.rx_key, far.tx_key, True)
    dp.start()
    to = listen.getsockname()
    try:
        ca.sendto(a.seal(ipv4_packet(1, src=(198, 18, 100, 9))), to)
        cb.sendto(b.seal(ipv4_packet(2, src=(198, 18, 101, 200))), to)
        cb.sendto(b.seal(ipv4_packet(3, src=(198, 18, 100, 9))), to)   # b posing as a's LAN
        assert sorted(ident(p) for p in recv_all(tun_test)) == [1, 2]
        assert dp.counters(1)["drop_source"] == 1
        for i in (0, 1):       # the learned paths carry return traffic once scheduled
            dp.set_path(i, 0, listen.fileno(), None, 1.0, True)
        tun_test.send(ipv4_packet(7, dst=(198, 18, 101, 130)))        # routes to b
        tun_test.send(ipv4_packet(8, dst=(198, 18, 100, 1)))          # routes to a
        tun_test.send(ipv4_packet(9, dst=(198, 18, 102, 1)))          # nobody's
        pb, pa = cb.recvfrom(4096)[0], ca.recvfrom(4096)[0]
        assert ident(b.open(pb)) == 7 and wire.parse_header(pb)[3] == 0x101
        assert ident(a.open(pa)) == 8 and wire.parse_header(pa)[3] == 0x100
        wait_until(lambda: dp.counters()["drop_no_peer"] == 1)
    finally:
        dp.close()
        for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, listen, ca, cb):
            s.close()


def test_socket_address_forms():
    from mpt.datapath import pack_sockaddr
    raw6 = pack_sockaddr("2001:2::1", 4700)
    assert unpack_sockaddr(raw6) == ("2001:2::1", 4700)
    assert socket_address(raw6) == ("2001:2::1", 4700, 0, 0)
    raw4 = pack_sockaddr("198.18.1.1", 5)
    assert unpack_sockaddr(raw4) == socket_address(raw4) == ("198.18.1.1", 5)
