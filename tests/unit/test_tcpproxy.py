"""The TCP proxy's request authentication (sans-I/O) and the nftables ruleset text."""
import ipaddress

import pytest

from mpt import nft, tcpproxy
from mpt.tcpproxy import BadRequest, ReplayGuard, build_request, parse_request

KEY = bytes(range(32))


def test_request_roundtrip_v4_and_v6():
    for host in ("198.18.200.2", "2001:2:0:200::2"):
        for encrypt in (False, True):
            req = build_request(KEY, host, 443, encrypt=encrypt, now=1000.0, nonce=bytes(16))
            assert len(req) == tcpproxy.REQUEST_LEN
            r = parse_request(KEY, req, ReplayGuard(), now=1001.0)
            assert (r.host, r.port, r.encrypt, r.nonce) == (host, 443, encrypt, bytes(16))


@pytest.mark.parametrize("mangle", [
    lambda r: r[:-1],                                  # short
    lambda r: r + b"x",                                # long
    lambda r: bytes([r[0] ^ 1]) + r[1:],               # magic (and tag) wrong
    lambda r: r[:30] + bytes([r[30] ^ 0x80]) + r[31:],  # destination changed
    lambda r: r[:5] + b"\x01" + r[6:],                 # encryption flag flipped
    lambda r: r[:-1] + bytes([r[-1] ^ 1]),             # tag changed
    lambda r: bytes(len(r)),                           # zeros
])
def test_tampered_requests_are_refused(mangle):
    req = build_request(KEY, "198.18.200.2", 80, now=1000.0)
    with pytest.raises(BadRequest):
        parse_request(KEY, mangle(req), ReplayGuard(), now=1000.0)


def test_wrong_key_is_refused():
    req = build_request(bytes(32), "198.18.200.2", 80, now=1000.0)
    with pytest.raises(BadRequest, match="authentication"):
        parse_request(KEY, req, ReplayGuard(), now=1000.0)


def test_replay_is_refused_and_old_requests_expire():
    guard = ReplayGuard()
    req = build_request(KEY, "198.18.200.2", 80, now=1000.0)
    parse_request(KEY, req, guard, now=1000.0)
    with pytest.raises(BadRequest, match="replayed"):
        parse_request(KEY, req, guard, now=1001.0)
    old = build_request(KEY, "198.18.200.2", 80, now=1000.0)
    with pytest.raises(BadRequest, match="old"):
        parse_request(KEY, old, ReplayGuard(), now=1000.0 + tcpproxy.MAX_AGE + 1)


def test_replay_guard_is_bounded():
    guard = ReplayGuard()
    for i in range(10000):
        assert guard.check(i.to_bytes(16, "big"), now=float(i))
    assert len(guard.seen) <= 4096 + 2 * int(tcpproxy.MAX_AGE) + 2


def test_ruleset_redirects_lan_tcp_except_lan_local_and_excluded():
    nets = [ipaddress.ip_network(n) for n in ("198.18.100.0/24", "2001:2:0:100::/64")]
    text = nft.ruleset("mpt0", 4701, nets, [ipaddress.ip_network("198.18.50.0/24")])
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[:2] == ["add table inet mpt_tcp_mpt0", "delete table inet mpt_tcp_mpt0"]
    body = lines[lines.index("type nat hook prerouting priority dstnat; policy accept;") + 1:]
    assert body[:5] == [
        "fib daddr type local return",
        "ip daddr { 198.18.100.0/24, 198.18.50.0/24 } return",
        "ip6 daddr { 2001:2:0:100::/64 } return",
        "ip saddr { 198.18.100.0/24 } meta l4proto tcp redirect to :4701",
        "ip6 saddr { 2001:2:0:100::/64 } meta l4proto tcp redirect to :4701",
    ]


def test_encrypted_relay_roundtrip_hides_payload_and_refuses_forgery():
    """Plaintext → sealed frames over a socketpair → plaintext, through the
    relay's own pumps; a flipped bit in a frame resets the connection."""
    import socket
    import threading
    c2s, s2c = tcpproxy.payload_keys(KEY, bytes(16))
    assert c2s != s2c and len(c2s) == 32
    lan_app, lan = socket.socketpair()
    up_client, up_server = socket.socketpair()     # the "MPTCP" leg between routers
    out, dest_app = socket.socketpair()
    stats = tcpproxy.Stats()
    info = {"bytes_out": 0, "bytes_in": 0}

    def client_side():
        tcpproxy.relay(lan, up_client, stats, info,
                       ("seal", tcpproxy.Sealer(c2s)), ("open", tcpproxy.Sealer(s2c)))

    def server_side():
        tcpproxy.relay(up_server, out, tcpproxy.Stats(), dict(info),
                       ("open", tcpproxy.Sealer(c2s)), ("seal", tcpproxy.Sealer(s2c)))

    secret = b"attack at dawn " * 5000
    frame = tcpproxy.Sealer(c2s).seal(secret[:tcpproxy.FRAME])
    assert b"attack at dawn" not in frame              # what the WAN would see
    threads = [threading.Thread(target=client_side), threading.Thread(target=server_side)]
    for t in threads:
        t.start()
    lan_app.sendall(secret)
    lan_app.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := dest_app.recv(65536):
        got += chunk
    assert got == secret                               # and EOF passed on as EOF
    dest_app.sendall(b"reply")
    dest_app.close()
    back = b""
    while chunk := lan_app.recv(65536):
        back += chunk
    assert back == b"reply"
    for t in threads:
        t.join(5)
    assert info["bytes_out"] == len(secret) and info["bytes_in"] == 5
    lan_app.close()


def test_forged_frame_is_refused():
    from cryptography.exceptions import InvalidTag
    c2s, _ = tcpproxy.payload_keys(KEY, bytes(16))
    frame = tcpproxy.Sealer(c2s).seal(b"hello")
    forged = frame[:5] + bytes([frame[5] ^ 1]) + frame[6:]
    with pytest.raises(InvalidTag):
        tcpproxy.Sealer(c2s).open(forged[:2], forged[2:])
    with pytest.raises(InvalidTag):                    # replay out of order
        s = tcpproxy.Sealer(c2s)
        s.open(frame[:2], frame[2:])
        s.open(frame[:2], frame[2:])
