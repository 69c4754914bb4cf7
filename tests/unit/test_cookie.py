"""Handshake cookies (csrc/mpt_cookie.c) through cffi, and the server
datapath under a flood of inits on real loopback sockets: an init it has no
room for gets a cookie, and an init that comes back with its cookie gets in
while forged sources keep the shared limit used up.  The far ends are played
by the test; no root needed (the sanitizer test runs this file again under
AddressSanitizer)."""
import os
import select
import socket
import time

import pytest

from mpt import handshake as hs
from mpt import wire
from mpt._datapath import ffi, lib
from mpt.datapath import Datapath, pack_sockaddr

S = 1_000_000_000
KEY = bytes(range(16))
MSG = bytes(range(64))


def siphash(data: bytes, out_len: int) -> bytes:
    out = ffi.new("uint8_t[16]")
    lib.mpt_siphash(KEY, data, len(data), out, out_len)
    return bytes(out)[:out_len]


def test_siphash_matches_the_reference_vectors():
    # SipHash-2-4 reference implementation (vectors.h), key 00..0f, message 00..len-1
    assert siphash(b"", 8).hex() == "310e0edd47db6f72"
    assert siphash(MSG[:15], 8).hex() == "e545be4961ca29a1"     # the paper's example
    assert siphash(b"", 16).hex() == "a3817f04ba25a8e66df67214c7550293"
    assert siphash(MSG[:63], 16).hex() == "5150d1772f50834a503e069a973fbd7c"


def test_layout_constants_match_the_python_side():
    assert lib.MPT_HS_INIT_LEN == hs.INIT_LEN
    assert lib.MPT_HS_COOKIE_REPLY_LEN == hs.COOKIE_REPLY_LEN
    assert lib.MPT_COOKIE_LEN == hs.COOKIE_LEN
    assert lib.MPT_HS_NONCE_LEN == hs.NONCE_LEN
    assert hs.COOKIE_USE_S < lib.MPT_COOKIE_ROTATE_S    # never sent once it may be stale


class Jar:
    def __init__(self, now: int = S):
        self.j = ffi.new("struct mpt_cookie_jar *")
        assert lib.mpt_cookie_init(self.j, now) == 0

    def make(self, addr: bytes, now: int) -> bytes:
        out = ffi.new("uint8_t[16]")
        assert lib.mpt_cookie_make(self.j, addr, len(addr), now, out) == 0
        return bytes(out)

    def check(self, addr: bytes, now: int, cookie: bytes) -> bool:
        return lib.mpt_cookie_check(self.j, addr, len(addr), now, cookie) == 1


def test_a_cookie_is_bound_to_address_and_port():
    jar = Jar()
    a = pack_sockaddr("198.18.0.1", 4000)
    cookie = jar.make(a, S)
    assert jar.check(a, S, cookie)
    for other in (pack_sockaddr("198.18.0.2", 4000), pack_sockaddr("198.18.0.1", 4001),
                  pack_sockaddr("2001:2::1", 4000), pack_sockaddr("::ffff:198.18.0.1", 4000)):
        assert not jar.check(other, S, cookie)
        assert jar.make(other, S) != cookie
    flipped = bytes([cookie[0] ^ 1]) + cookie[1:]
    assert not jar.check(a, S, flipped)
    assert Jar().make(a, S) != cookie            # another server: another secret
    v6 = pack_sockaddr("2001:2::1", 4000)
    assert jar.check(v6, S, jar.make(v6, S))


def test_a_cookie_lasts_one_rotation_then_expires():
    jar, a = Jar(), pack_sockaddr("198.18.0.1", 4000)
    rotate = lib.MPT_COOKIE_ROTATE_S * S
    cookie = jar.make(a, S)
    assert jar.check(a, S + rotate - 1, cookie)
    assert jar.check(a, S + rotate, cookie)          # rotated: still the previous secret
    assert jar.make(a, S + rotate) != cookie
    assert not jar.check(a, S + 2 * rotate, cookie)  # rotated again: gone
    quiet = Jar()
    cookie = quiet.make(a, S)
    assert not quiet.check(a, S + 2 * rotate, cookie)   # a long quiet spell: both secrets new


def test_a_jar_without_secrets_makes_and_accepts_no_cookie():
    j, out = ffi.new("struct mpt_cookie_jar *"), ffi.new("uint8_t[16]")   # init failed
    a = pack_sockaddr("198.18.0.1", 4000)
    assert lib.mpt_cookie_make(j, a, len(a), S, out) == -1
    assert lib.mpt_cookie_check(j, a, len(a), S, bytes(16)) == 0


def test_source_slots_group_by_address_and_ipv6_slash_64_under_a_key():
    jar, other = Jar(), Jar()
    slot = lambda j, host, port=1: lib.mpt_cookie_source_slot(   # noqa: E731
        j.j, pack_sockaddr(host, port), len(pack_sockaddr(host, port)), 256)
    assert slot(jar, "198.18.0.1", 1) == slot(jar, "198.18.0.1", 2)       # the port left out
    assert slot(jar, "198.18.0.1") == slot(jar, "::ffff:198.18.0.1")      # dual-stack socket
    assert slot(jar, "2001:2::1") == slot(jar, "2001:2::ffff:1234")       # one /64
    hosts = [f"198.18.0.{k}" for k in range(1, 65)]
    spread = {slot(jar, h) for h in hosts}
    assert len(spread) > 40                      # 64 addresses over 256 slots
    assert [slot(jar, h) for h in hosts] != [slot(other, h) for h in hosts]   # keyed
    assert len({slot(jar, f"2001:2:0:{k:x}::1") for k in range(64)}) > 40


def test_addresses_that_are_not_ip_get_no_cookie():
    jar, out = Jar(), ffi.new("uint8_t[16]")
    for raw in (b"", b"\x02", pack_sockaddr("198.18.0.1", 1)[:15],
                (socket.AF_UNIX).to_bytes(2, "little") + bytes(30)):
        assert lib.mpt_cookie_make(jar.j, raw, len(raw), S, out) == -1
        assert lib.mpt_cookie_check(jar.j, raw, len(raw), S, bytes(16)) == 0


def test_only_inits_are_recognised_and_answered():
    init = hs.Initiator(bytes(32), 7, 1).init_message()
    jar, out = Jar(), ffi.new("uint8_t[38]")
    a = pack_sockaddr("198.18.0.1", 4000)
    assert lib.mpt_hs_kind(init, len(init)) == lib.MPT_HS_INIT
    assert lib.mpt_hs_kind(init + bytes(16), len(init) + 16) == lib.MPT_HS_INIT_COOKIE
    for bad in (init[:-1], init + bytes(1), init + bytes(17), b"MPTH\x01\x02" + init[6:],
                b"MPTH\x02\x01" + init[6:], b"XPTH" + init[4:]):
        assert lib.mpt_hs_kind(bad, len(bad)) == lib.MPT_HS_NOT_INIT
        assert lib.mpt_cookie_reply(jar.j, a, len(a), S, bad, len(bad), out) == -1
    assert lib.mpt_cookie_reply(jar.j, a, len(a), S, init, len(init), out) == 0
    reply = bytes(out)
    assert hs.message_kind(reply) == "cookie"
    assert lib.mpt_hs_kind(reply, len(reply)) == lib.MPT_HS_COOKIE_REPLY
    assert lib.mpt_cookie_reply(jar.j, a, len(a), S, reply, len(reply), out) == -1
    for bad in (reply[:-1], reply + b"\0", b"MPTH\x01\x04" + reply[6:]):
        assert lib.mpt_hs_kind(bad, len(bad)) == lib.MPT_HS_NOT_INIT
    assert reply[6:22] == init[9:25]                  # the init's nonce, echoed
    assert jar.check(a, S, reply[22:])


# --------------------------------------------------------- the server datapath

def drain(sock) -> list[bytes]:
    """What a non-blocking socket holds now (loopback delivers within sendmsg:
    a reply the datapath sent before counting is already here)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def recv_n(sock, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        assert select.select([sock], [], [], 5)[0], f"{len(out)} of {n} messages came"
        out.append(sock.recv(65536))
    return out


FLOODERS = 150          # forged sources, one loopback address each
HS_BURST_ALL, HS_RATE_ALL = 100, 500        # csrc/mpt_receive.c: the shared limit


def pairs():
    tun_dp, tun_test = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctrl_dp, ctrl_py = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (ctrl_dp, ctrl_py):
        sock.setblocking(False)
    return [tun_dp, tun_test, ctrl_dp, ctrl_py]


@pytest.fixture
def server():
    socks = pairs()
    tun_dp, _, ctrl_dp, ctrl_py = socks
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.bind(("127.0.0.1", 0))
    listen.setblocking(False)
    t0 = time.monotonic()        # the shared bucket is full from here on
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), listen.fileno(), 0.05, 1.0)
    dp.add_peer(0)
    dp.start()
    flooders = []
    for k in range(FLOODERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.2.{1 + k}", 0))
        flooders.append(s)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.1.1", 0))
    client.setblocking(False)
    yield dict(dp=dp, ctrl=ctrl_py, to=listen.getsockname(), flooders=flooders, client=client,
               t0=t0)
    dp.close()
    for s in socks + [listen, client] + flooders:
        s.close()


def an_init() -> bytes:
    """An init body with a fresh nonce (the datapath verifies no MAC)."""
    return b"MPTH\x01\x01" + bytes(3) + os.urandom(16) + os.urandom(48)


def handled(dp) -> int:
    c = dp.counters()
    return c["handshake_rx"] + c["drop_handshake_rate"]


def wait_handled(dp, n: int) -> None:
    deadline = time.monotonic() + 10
    while handled(dp) < n:      # no event to wait on: poll the counters
        assert time.monotonic() < deadline, "the datapath did not handle the flood"
        time.sleep(0.002)


def flood_around(env, pkt: bytes, rounds: int = 3) -> list[bytes]:
    """Every forged source sends `rounds` inits, the client's packet right
    after those of the middle round (the shared limit is used up when it
    arrives); the handshake bodies the datapath passed to Python.  Round by
    round, reading what it passed each time, so no socket buffer overflows."""
    hdr, dp, got = wire.handshake_header(0), env["dp"], []
    for r in range(rounds):
        total, passed = handled(dp), dp.counters()["handshake_rx"]
        for s in env["flooders"]:
            s.sendto(hdr + an_init(), env["to"])
        total += len(env["flooders"])
        if r == rounds // 2:
            env["client"].sendto(hdr + pkt, env["to"])
            total += 1
        wait_handled(dp, total)
        passed = dp.counters()["handshake_rx"] - passed     # each counted, then written
        got += [m[wire.CTRL_META.size + wire.HDR_LEN:] for m in recv_n(env["ctrl"], passed)]
    assert drain(env["ctrl"]) == [] and dp.counters()["drop_ctrl_queue"] == 0
    return got


def shared_limit_held(env, with_cookie: int = 0) -> None:
    """What reached Python without a cookie is within the shared bucket's
    burst and its rate since the datapath started."""
    c = env["dp"].counters()
    budget = HS_BURST_ALL + HS_RATE_ALL * (time.monotonic() - env["t0"])
    assert c["handshake_rx"] - with_cookie <= budget, (c["handshake_rx"], budget)
    assert c["drop_handshake_rate"] > c["handshake_rx"]     # it was a flood


def get_cookie(env) -> tuple[bytes, list[bytes], list[bytes]]:
    """An init of the client's refused in the flood, and the cookie it got
    back: (cookie, the init, what reached Python).  A token may come free
    just as the client's init arrives: then it is in, and we try again."""
    for _ in range(5):
        init = an_init()
        got = flood_around(env, init)
        replies = drain(env["client"])
        if init not in got:
            assert len(replies) == 1, "a refused init gets one cookie reply"
            reply = replies[0]
            assert reply[:wire.HDR_LEN] == wire.handshake_header(0)
            assert len(reply) < wire.HDR_LEN + len(init)     # no amplifier
            body = reply[wire.HDR_LEN:]
            assert hs.message_kind(body) == "cookie" and body[6:22] == init[9:25]
            return body[22:], init, got
        assert replies == [], "an init let in gets no cookie"
    raise AssertionError("the client's init was let in through 5 floods")


def test_flooded_server_lets_the_init_with_its_cookie_in(server):
    dp = server["dp"]
    cookie, _, _ = get_cookie(server)
    shared_limit_held(server)
    c = dp.counters()
    assert c["handshake_cookies_sent"] == c["drop_handshake_rate"]     # every refused init
    for k in range(1, 4):     # the same client with the cookie, in the same flood: in
        init = an_init()
        got = flood_around(server, init + cookie)
        assert init + cookie in got                  # as sent: Python strips the cookie
        shared_limit_held(server, with_cookie=k)
        assert drain(server["client"]) == []         # and it is not sent another cookie
    assert dp.counters()["handshake_cookies_valid"] - c["handshake_cookies_valid"] == 3


def test_a_cookie_of_another_address_or_a_made_up_one_does_not_count(server):
    dp = server["dp"]
    cookie, _, _ = get_cookie(server)

    def send(sock, body: bytes) -> int:
        """How many valid cookies the datapath counted for it."""
        before, n = dp.counters()["handshake_cookies_valid"], handled(dp)
        sock.sendto(wire.handshake_header(0) + body, server["to"])
        wait_handled(dp, n + 1)
        return dp.counters()["handshake_cookies_valid"] - before

    assert send(server["flooders"][0], an_init() + cookie) == 0     # another source
    assert send(server["client"], an_init() + os.urandom(16)) == 0   # made up
    assert send(server["client"], an_init() + cookie) == 1           # its own


# --------------------------------------------------------- the client datapath

def test_client_drops_cookie_replies_to_no_init_of_its_own_before_the_limit():
    """A forger who knows the client's address and port can make the server
    send it cookie replies at the full reply rate: they must not use up the
    client's handshake limit for the server's address."""
    socks = pairs()
    tun_dp, _, ctrl_dp, ctrl_py = socks
    path, far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    path.bind(("127.0.0.1", 0))
    far.bind(("127.0.0.1", 0))
    dp = Datapath(tun_dp.fileno(), ctrl_dp.fileno(), -1, 0.05, 1.0)
    try:
        dp.add_peer(0)
        dp.set_path(0, 0, path.fileno(), far.getsockname(), 1.0, True)
        dp.start()
        ini = hs.Initiator(bytes(32), 7, 1)
        ours = b"MPTH\x01\x03" + ini.nonce + os.urandom(16)
        hdr, to = wire.handshake_header(0), path.getsockname()

        def send(bodies) -> None:
            n = sum(dp.counters()[k] for k in ("handshake_rx", "drop_handshake_rate",
                                                 "drop_cookie_unasked"))
            for b in bodies:
                far.sendto(hdr + b, to)
            deadline = time.monotonic() + 5
            while sum(dp.counters()[k] for k in ("handshake_rx", "drop_handshake_rate",
                                                   "drop_cookie_unasked")) < n + len(bodies):
                assert time.monotonic() < deadline
                time.sleep(0.002)

        send([ours])                                  # no handshake under way: unasked
        dp.set_init_nonce(ini.nonce)
        send([b"MPTH\x01\x03" + os.urandom(32) for _ in range(200)])
        c = dp.counters()
        assert (c["drop_cookie_unasked"], c["handshake_rx"], c["drop_handshake_rate"]) == \
            (201, 0, 0)
        send([ours])                                  # the limit is untouched: in
        msg = recv_n(ctrl_py, 1)[0]
        assert msg[wire.CTRL_META.size + wire.HDR_LEN:] == ours
        assert ini.receive_cookie(ours[:]) == ours[22:]
        dp.set_init_nonce(None)
        send([ours])
        assert dp.counters()["drop_cookie_unasked"] == 202
    finally:
        dp.close()
        for s in socks + [path, far]:
            s.close()
