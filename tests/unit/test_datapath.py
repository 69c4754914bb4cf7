"""The whole C datapath thread, through cffi, on real sockets: loopback UDP
for the path and a SOCK_SEQPACKET pair standing in for the TUN device
(it keeps packet boundaries, like TUN).  No root needed; the sanitizer test
runs this file again under AddressSanitizer."""
import os
import random
import select
import socket
import struct

import pytest

from mpt import wire
from mpt.datapath import Datapath, socket_address, unpack_sockaddr


def ipv4_packet(ident: int, size: int = 100) -> bytes:
    payload = struct.pack("!Q", ident) + bytes(size - 28)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                      bytes([198, 18, 100, 2]), bytes([198, 18, 200, 2]))
    return hdr + struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload


def ipv6_packet(size: int = 80) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, size - 40, 17, 64, bytes(16), bytes(16)) \
        + bytes(size - 40)


def data(seq: int, inner: bytes, path: int = 0, session: int = 7) -> bytes:
    return wire.HEADER.pack((wire.VERSION << 4) | wire.TYPE_DATA, path, session, seq, seq) + inner


def wait_until(pred, timeout=5.0):
    """Poll a condition on the datapath's counters (no event to wait on)."""
    import time
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


@pytest.fixture
def client():
    """A client datapath with one path: its socket, the peer socket acting
    as the server, the fake TUN and the control pair."""
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    path, server = udp(blocking=False), udp()
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), -1, 0x1234, 0.05, 1.0)
    dp.set_path(0, path.fileno(), server.getsockname(), 1.0, True)
    dp.start()
    env = dict(dp=dp, tun=tun_test, ctrl=ctrl_py, path=path, server=server)
    yield env
    dp.close()
    for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, path, server):
        s.close()


def test_tun_packet_is_encapsulated_with_header(client):
    inner = ipv4_packet(1)
    client["tun"].send(inner)
    pkt, _ = client["server"].recvfrom(4096)
    version, typ, path, session, path_seq, seq = wire.parse_header(pkt)
    assert (version, typ, path, session) == (1, wire.TYPE_DATA, 0, 0x1234)
    assert (path_seq, seq) == (0, 0)
    assert pkt[wire.HDR_LEN:] == inner
    client["tun"].send(inner)
    pkt, _ = client["server"].recvfrom(4096)
    assert wire.parse_header(pkt)[4:] == (1, 1)
    c = client["dp"].counters()
    assert c["path"][0]["tx_packets"] == 2 and c["tun_rx_packets"] == 2


def test_valid_data_reaches_tun_in_order(client):
    to = client["path"].getsockname()
    for seq in range(20):
        client["server"].sendto(data(seq, ipv4_packet(seq)), to)
    got = recv_all(client["tun"])
    assert [struct.unpack_from("!Q", p, 28)[0] for p in got] == list(range(20))
    client["server"].sendto(data(20, ipv6_packet()), to)
    assert recv_all(client["tun"]) == [ipv6_packet()]


def test_forged_and_malformed_packets_never_reach_tun(client):
    rng = random.Random(1)
    to = client["path"].getsockname()
    good = ipv4_packet(99)
    bad = [
        b"",
        b"\x10",
        data(0, good)[:15],                                   # short header
        bytes([0x20]) + data(0, good)[1:],                    # version 2
        bytes([0x15]) + data(0, good)[1:],                    # unknown type
        data(0, good, path=3),                                # not our path index
        data(0, good[:-1]),                                   # IP length mismatch
        data(0, good + b"x"),                                 # trailing byte
        data(0, b"\x45" + bytes(10)),                         # truncated IPv4
        data(0, ipv6_packet()[:-1]),                          # IPv6 length mismatch
        data(0, b"\x75" + bytes(60)),                         # IP version 7
        data(0, bytes(3000)),                                 # larger than any slot
    ] + [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(300)]
    def handled():
        c = client["dp"].counters()
        # every bad datagram is counted as a drop, or (random bytes that happen
        # to look like a control header) handed to Python, which parses it
        return sum(v for k, v in c.items() if k.startswith("drop_")) + c["path"][0]["ctrl_rx"]

    for i in range(0, len(bad), 50):   # in chunks: the socket buffer is small
        for b in bad[i:i + 50]:
            client["server"].sendto(b, to)
        wait_until(lambda: handled() == min(i + 50, len(bad)))
    client["server"].sendto(data(0, good), to)   # a marker: must be the only thing out
    assert recv_all(client["tun"]) == [good]
    c = client["dp"].counters()
    assert handled() == len(bad)
    assert c["drop_malformed"] >= 3 and c["drop_bad_inner"] >= 5 and c["drop_bad_path"] >= 1


def test_client_accepts_data_only_from_the_server_address(client):
    stranger = udp()
    try:
        stranger.sendto(data(0, ipv4_packet(1)), client["path"].getsockname())
        wait_until(lambda: client["dp"].counters()["drop_bad_path"] == 1)
        client["server"].sendto(data(0, ipv4_packet(2)), client["path"].getsockname())
        (pkt,) = recv_all(client["tun"])
        assert struct.unpack_from("!Q", pkt, 28)[0] == 2
    finally:
        stranger.close()


def test_control_packets_go_to_python_with_source(client):
    pkt = wire.build_control(0, 9, kind="reply", sent_ns=1, echo_ns=2, name="wan1")
    client["server"].sendto(pkt, client["path"].getsockname())
    (msg,) = recv_all(client["ctrl"])
    fd, alen, raw, _, _ = wire.CTRL_META.unpack_from(msg)
    assert fd == client["path"].fileno()
    assert unpack_sockaddr(raw[:alen]) == client["server"].getsockname()
    assert wire.parse_control(msg[wire.CTRL_META.size:]).name == "wan1"
    assert recv_all(client["tun"], 0.1) == []


def test_server_learns_and_follows_client_address():
    tun_dp, tun_test, ctrl_dp, ctrl_py = pairs()
    listen, c1, c2 = udp(blocking=False), udp(), udp()
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), listen.fileno(), 1, 0.05, 1.0)
    dp.start()
    try:
        # a control packet teaches nothing (Python checks it first) ...
        c2.sendto(wire.build_control(2, 1, kind="probe", name="x"), listen.getsockname())
        assert len(recv_all(ctrl_py)) == 1 and dp.peer(2) is None
        # ... nor does data whose payload is no IP packet
        c2.sendto(data(0, b"garbage", path=2), listen.getsockname())
        wait_until(lambda: dp.counters()["drop_bad_inner"] == 1)
        assert dp.peer(2) is None
        c1.sendto(data(0, ipv4_packet(0), path=2), listen.getsockname())
        assert len(recv_all(tun_test)) == 1
        assert dp.peer(2) == c1.getsockname()
        dp.set_path(2, listen.fileno(), None, 1.0, True)   # keeps the learned address
        tun_test.send(ipv4_packet(5))
        assert wire.parse_header(c1.recvfrom(4096)[0])[2] == 2
        c2.sendto(data(1, ipv4_packet(1), path=2), listen.getsockname())  # NAT rebinding
        assert len(recv_all(tun_test)) == 1
        assert dp.peer(2) == c2.getsockname()
        assert dp.counters()["path"][2]["addr_changes"] == 1
        tun_test.send(ipv4_packet(6))
        c2.settimeout(2)
        assert wire.parse_header(c2.recvfrom(4096)[0])[2] == 2
    finally:
        dp.close()
        for s in (tun_dp, tun_test, ctrl_dp, ctrl_py, listen, c1, c2):
            s.close()


def test_peer_restart_resets_sequence(client):
    to = client["path"].getsockname()
    for seq in range(1000, 1005):
        client["server"].sendto(data(seq, ipv4_packet(seq), session=1), to)
    for seq in range(0, 3):   # new session starts from 0: must not count as late
        client["server"].sendto(data(seq, ipv4_packet(seq), session=2), to)
    assert len(recv_all(client["tun"])) == 8
    c = client["dp"].counters()
    assert c["session_resets"] == 1 and c["drop_late"] == 0


def test_no_active_path_drops_and_counts(client):
    client["dp"].set_path(0, client["path"].fileno(), client["server"].getsockname(), 1, False)
    client["dp"].sync()
    client["tun"].send(ipv4_packet(1))
    client["server"].settimeout(0.2)
    with pytest.raises(socket.timeout):
        client["server"].recvfrom(4096)
    assert client["dp"].counters()["drop_no_path"] == 1


def test_socket_address_forms():
    from mpt.datapath import pack_sockaddr
    raw6 = pack_sockaddr("2001:2::1", 4700)
    assert unpack_sockaddr(raw6) == ("2001:2::1", 4700)
    assert socket_address(raw6) == ("2001:2::1", 4700, 0, 0)
    raw4 = pack_sockaddr("198.18.1.1", 5)
    assert unpack_sockaddr(raw4) == socket_address(raw4) == ("198.18.1.1", 5)
