"""The namespace lab itself: topology, failures, shaping, traffic tools.

Reference figure (not asserted here, too slow): iperf3, one TCP flow over one
isp shaped to 100 Mbit/s (tbf rate 100mbit burst 50000 latency 20ms): 95.5–95.6
Mbit/s goodput in each direction, i.e. the full rate less Ethernet/IP/TCP
header overhead (1448/1514 = 95.6 %); 47.8 at 50, 19.1 at 20, 9.6 at 10 Mbit/s.
"""

from __future__ import annotations

import configparser
import json
import subprocess

import pytest

from mpt.lab import traffic as tr
from mpt.lab.topology import Lab, cleanup_stale, _netns_list

e2e = pytest.mark.e2e


def routes(lab: Lab, ns: str, v6: bool = False) -> list[dict]:
    argv = ["ip", "-n", ns, "-j"] + (["-6"] if v6 else ["-4"]) + ["route"]
    return json.loads(subprocess.run(argv, capture_output=True, text=True,
                                     check=True).stdout)


def server_routes(lab: Lab, v6: bool = False) -> dict[str, int]:
    """rtrA's routes to the server prefix: {dev: metric}."""
    dst = "2001:2:0:10::/64" if v6 else "198.18.10.0/24"
    return {r["dev"]: r.get("metric", 0) for r in routes(lab, lab.rtrA, v6)
            if r["dst"] == dst}


@e2e
def test_each_path_reaches_server(lab):
    assert server_routes(lab) == {"wan1": 1, "wan2": 2}
    assert server_routes(lab, v6=True) == {"wan1": 1, "wan2": 2}
    for k in (1, 2):
        for v6 in (False, True):
            before = [lab.isp_bytes(j) for j in (1, 2)]
            assert lab.ping(lab.rtrA, lab.server_addr(v6), dev=f"wan{k}",
                            size=3000), (k, v6)
            after = [lab.isp_bytes(j) for j in (1, 2)]
            # the 3000-byte echo crossed isp k both ways, the other isp not
            # (which may only see a few small MLD reports of its own)
            crossed = [after[j]["up"] - before[j]["up"] > 3000 and
                       after[j]["down"] - before[j]["down"] > 3000 for j in (0, 1)]
            assert crossed == [k == 1, k == 2], (k, v6, before, after)


@e2e
def test_lan_a_cannot_reach_lan_b_without_tunnel(lab):
    # lanA works (its router answers) ...
    assert lab.ping(lab.lanA, "198.18.100.1")
    assert lab.ping(lab.lanA, "2001:2:0:100::1")
    assert lab.ping(lab.lanB, "198.18.200.1")
    # ... but rtrA has no route to lanB and no default route
    for v6 in (False, True):
        assert not any(r["dst"] == "default" for r in routes(lab, lab.rtrA, v6))
        assert not lab.ping(lab.lanA, lab.lan_b_addr(v6), timeout=0.5)


@e2e
def test_link_down_and_up(lab):
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan2")
    lab.link_down(2)
    assert lab.operstate(2) == "DOWN"
    assert "wan2" not in server_routes(lab)          # the kernel removed it
    assert not lab.ping(lab.rtrA, lab.server_addr(), dev="wan2", timeout=0.5)
    assert not lab.ping(lab.rtrA, lab.server_addr(True), dev="wan2", timeout=0.5)
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan1")   # the other path lives
    lab.link_up(2)
    assert lab.operstate(2) == "UP"
    assert server_routes(lab) == {"wan1": 1, "wan2": 2}
    assert server_routes(lab, v6=True) == {"wan1": 1, "wan2": 2}
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan2")
    assert lab.ping(lab.rtrA, lab.server_addr(True), dev="wan2")


@e2e
def test_blackhole_is_silent(lab):
    lab.blackhole(1)
    assert lab.operstate(1) == "UP"                   # no carrier event
    assert "wan1" in server_routes(lab)
    assert not lab.ping(lab.rtrA, lab.server_addr(), dev="wan1", timeout=0.5)
    assert not lab.ping(lab.rtrA, lab.server_addr(True), dev="wan1", timeout=0.5)
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan2")
    lab.blackhole(1, on=True)                         # idempotent
    lab.blackhole(1, on=False)
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan1")
    lab.blackhole(1, on=False)                        # idempotent


@e2e
def test_udp_stream_complete_and_isp_bytes_up(lab):
    before = [lab.isp_bytes(k) for k in (1, 2)]
    rx = tr.start_udp_receiver(lab, lab.rtrB, lab.server_addr(), 5001, idle=1.0)
    sent = tr.run_udp_send(lab, lab.rtrA, lab.server_addr(), 5001,
                           rate_mbit=50, duration=2)
    res = rx.result(10)
    assert sent["sent"] >= 9000 and sent["send_errors"] == 0
    assert res["end_seen"] and res["sent"] == sent["sent"]
    assert res["received"] == res["unique"] == sent["sent"]
    assert res["lost"] == 0 and res["duplicates"] == 0
    assert res["in_order"] and res["out_of_order"] == 0
    assert res["longest_gap_ms"] < 200
    assert sum(res["bins"]) == res["bytes"] == sent["sent"] * 1200
    assert 1.7 < res["last_arrival"] - res["first_arrival"] < 2.5
    assert res["one_way_delay_ms"]["median"] < 20
    after = [lab.isp_bytes(k) for k in (1, 2)]
    up1 = after[0]["up"] - before[0]["up"]
    down1 = after[0]["down"] - before[0]["down"]
    assert up1 >= sent["sent"] * 1200                  # metric 1: all on path 1
    assert down1 < up1 / 100                           # nothing came back
    assert after[1]["up"] - before[1]["up"] < up1 / 100


@e2e
def test_udp_v6_and_isp_bytes_down(lab):
    # B→A over path 2: rtrB sends to rtrA's wan2 address (route via isp2).
    before = lab.isp_bytes(2)
    rx = tr.start_udp_receiver(lab, lab.rtrA, lab.wan_addr(2, v6=True), 5002, idle=1.0)
    sent = tr.run_udp_send(lab, lab.rtrB, lab.wan_addr(2, v6=True), 5002,
                           rate_mbit=20, count=2000)
    res = rx.result(10)
    assert res["unique"] == res["sent"] == 2000 and res["in_order"]
    after = lab.isp_bytes(2)
    down = after["down"] - before["down"]
    assert down >= 2000 * 1200
    assert after["up"] - before["up"] < down / 100
    assert sent["sent"] == 2000


@e2e
def test_set_rate_shapes(lab):
    lab.set_rate(1, 20, "up")
    qd = lab.run(lab.isp[0], "tc", "qdisc", "show", "dev", "b").stdout
    assert "tbf" in qd and "20Mbit" in qd
    assert "100Mbit" in lab.run(lab.isp[0], "tc", "qdisc", "show", "dev", "a").stdout
    rx = tr.start_udp_receiver(lab, lab.rtrB, lab.server_addr(), 5003, idle=1.0)
    tr.run_udp_send(lab, lab.rtrA, lab.server_addr(), 5003, rate_mbit=40, duration=1.6)
    res = rx.result(10)
    # full middle bins: 20 Mbit/s on the wire, 1200 of 1242 bytes are payload
    expect = 20e6 / 8 * res["bin_s"] * 1200 / 1242
    for b in res["bins"][1:3]:
        assert 0.85 * expect < b < 1.05 * expect, (res["bins"], expect)
    assert res["lost"] > 0.3 * res["sent"]
    lab.set_rate(1, None)
    assert "tbf" not in lab.run(lab.isp[0], "tc", "qdisc", "show").stdout
    lab.set_rate(1, None)                             # already unshaped: no error


@e2e
def test_tcp_tools_transfer_and_verify(lab):
    for v6, port in ((False, 5004), (True, 5005)):
        sink = tr.start_tcp_sink(lab, lab.rtrB, lab.server_addr(v6), port)
        res = tr.run_tcp_send(lab, lab.rtrA, lab.server_addr(v6), port, 4_000_000)
        got = sink.result(10)
        assert res["ok"] is True and res["bytes"] == 4_000_000
        assert got["bytes"] == 4_000_000 and got["sha256"] == res["sink"]["sha256"]


@e2e
def test_change_wan_address(lab):
    lab.change_wan_address(2, 7)
    assert lab.wan_addr(2) == "198.18.2.7"
    addrs = lab.run(lab.rtrA, "ip", "-4", "-br", "addr", "show", "dev", "wan2").stdout
    assert "198.18.2.7/24" in addrs and "198.18.2.1/" not in addrs
    assert server_routes(lab) == {"wan1": 1, "wan2": 2}
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan2")
    lab.link_down(2)
    lab.link_up(2)                                    # keeps the new lease
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan2")


@e2e
def test_single_path_unshaped_per_path_rates(make_lab):
    one = make_lab(paths=1, rate_mbit=None)
    assert len(one.isp) == 1
    assert "tbf" not in one.run(one.isp[0], "tc", "qdisc", "show").stdout
    assert one.ping(one.rtrA, one.server_addr(), dev="wan1")
    three = make_lab(paths=3, rate_mbit=[10, 20, 30])
    for k, r in ((1, 10), (2, 20), (3, 30)):
        assert f"{r}Mbit" in three.run(three.isp[k - 1], "tc", "qdisc", "show",
                                       "dev", "a").stdout
    assert three.ping(three.rtrA, three.server_addr(True), dev="wan3")


@e2e
def test_close_removes_everything_even_when_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(paths=2) as lab:
            names = lab.namespaces
            rx = tr.start_udp_receiver(lab, lab.rtrB, lab.server_addr(), 5006,
                                       max_time=60)
            # a process not started through the lab, found by `ip netns pids`
            stray = subprocess.Popen(["ip", "netns", "exec", lab.isp[0],
                                      "sleep", "60"])
            assert set(names) <= set(_netns_list())
            raise RuntimeError("boom")
    try:
        assert not set(names) & set(_netns_list())
        assert rx.proc.poll() is not None
        assert stray.wait(timeout=5) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
    lab.close()                                       # idempotent
    with pytest.raises(Exception):
        lab.popen(lab.rtrA, ["true"])


@e2e
def test_cleanup_stale_removes_only_dead_runs():
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    dead = Lab(paths=1, rate_mbit=None, prefix=f"m{pid_max + 1}beef")
    live = Lab(paths=1, rate_mbit=None)
    try:
        removed = cleanup_stale()
        assert set(dead.namespaces) <= set(removed)
        assert not set(live.namespaces) & set(removed)
        assert set(live.namespaces) <= set(_netns_list())
        assert not set(dead.namespaces) & set(_netns_list())
    finally:
        dead.close()
        live.close()


# ---------------------------------------------------------- no root needed
class TestPure:
    """Pure checks (configs, receiver statistics): no namespaces, no root."""

    def test_confs_shape_and_overrides(self):
        lab = Lab.__new__(Lab)            # no namespaces needed for the text
        lab.paths, lab.prefix = 2, "mtest"
        c = configparser.ConfigParser(inline_comment_prefixes=(";",))
        c.read_string(lab.client_conf(weights=[3, 1], mtu=1400, control=None))
        assert c.sections() == ["tunnel", "path wan1", "path wan2"]
        t = c["tunnel"]
        assert t["role"] == "client" and t["peer"] == "198.18.10.2:4700"
        assert t["address"] == "198.19.0.1/30, 2001:2:0:77::1/64"
        assert t["routes"] == "198.18.200.0/24, 2001:2:0:200::/64"
        assert t["mtu"] == "1400" and "control" not in t
        assert c["path wan1"]["weight"] == "3" and c["path wan2"]["weight"] == "1"
        assert c["path wan2"]["interface"] == "wan2"
        s = configparser.ConfigParser()
        s.read_string(lab.server_conf())
        assert s.sections() == ["tunnel"]
        assert s["tunnel"]["listen"] == "4700" and s["tunnel"]["role"] == "server"
        assert s["tunnel"]["control"] == "/run/mpt/mtest-server.sock"
        assert s["tunnel"]["routes"] == "198.18.100.0/24, 2001:2:0:100::/64"

    def test_confs_parse_with_project_parser(self, tmp_path):
        from mpt import config
        from mpt.lab.tunnel import write_key
        lab = Lab.__new__(Lab)
        lab.paths, lab.prefix = 2, "mtest"
        key = write_key(str(tmp_path / "tunnel.key"))
        cc = config.parse(lab.client_conf(key=key), "client.conf")
        sc = config.parse(lab.server_conf(key=key), "server.conf")
        assert len(cc.paths) == 2 and sc.role == "server"

    def test_udp_stats(self):
        ms = 1_000_000
        seqs = [0, 1, 3, 2, 3, 5]
        arr = [0, 1 * ms, 2 * ms, 3 * ms, 4 * ms, 600 * ms]
        st = tr.udp_stats(seqs, arr, [a - 5 * ms for a in arr], [100] * 6,
                          sent=7, bin_s=0.5)
        assert st["received"] == 6 and st["unique"] == 5 and st["duplicates"] == 1
        assert st["lost"] == 2 and st["lost_ranges"] == [[4, 4], [6, 6]]
        assert st["out_of_order"] == 1 and st["in_order"] is False
        assert st["longest_gap_ms"] == 596
        assert st["bins"] == [500, 100]
        assert st["one_way_delay_ms"]["median"] == 5
        ok = tr.udp_stats([0, 1, 1, 2], [0, 1, 2, 3], [0] * 4, [10] * 4, None)
        assert ok["in_order"] is True and ok["out_of_order"] == 0
        assert ok["lost"] is None and ok["duplicates"] == 1
