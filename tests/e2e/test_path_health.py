"""End-to-end path health: failover, recovery, address changes, backups,
flapping, and per-path routing, with real traffic in the namespace lab."""
import json
import sys
import time

import pytest

from mpt.lab import failover, traffic

pytestmark = pytest.mark.e2e


def wait_for(pred, timeout=5.0, what="condition"):
    """Poll daemon state (status has no push notification) until pred() holds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def states(d):
    return {p["name"]: p["state"] for p in d.status()["paths"]}


def path(d, name):
    return next(p for p in d.status()["paths"] if p["name"] == name)


@pytest.mark.parametrize("mode", ["blackhole", "carrier"])
def test_stream_survives_path_failure_and_path_returns(tunnel, mode):
    t = tunnel()
    sc = failover.Scenario(send_mbit=30, seconds=7, fail_at=2, restore_at=4.5, mode=mode,
                           interval=0.25)
    out = failover.run(t.lab, sc)
    s = out.summary(sc)
    # a handful of datagrams at most are lost (the stream is 30 Mbit/s: ~22000 datagrams)
    assert s["lost"] <= 0.005 * s["sent"], s
    assert s["in_order"] and s["duplicates"] == 0
    assert s["longest_gap_ms"] < 150, s
    # path 1 carried nothing while failed, and carries data again after the restore
    during = [r["paths"][0] for r in out.samples if 2.5 <= r["t"] <= 4.4]
    assert max(during) < 0.5, during
    assert s["path1_carrying_again_after_s"] is not None and \
        s["path1_carrying_again_after_s"] < 1.0, s
    assert states(t.client) == {"wan1": "up", "wan2": "up"}
    assert path(t.client, "wan1")["flaps"] >= 1


def test_restore_with_a_new_address(tunnel):
    t = tunnel()
    lab = t.lab
    lab.link_down(1)
    wait_for(lambda: states(t.client)["wan1"] == "down", what="wan1 down")
    lab.link_up(1, new_host=77)
    wait_for(lambda: states(t.client)["wan1"] == "up", what="wan1 up again")
    wait_for(lambda: path(t.server, "wan1")["remote"].startswith("198.18.1.77:"),
             what="server following the new address")
    before = lab.isp_bytes(1)["up"]
    assert lab.ping(lab.lanA, lab.lan_b_addr(), count=20)
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 9, rate_mbit=10, duration=1)
    assert lab.isp_bytes(1)["up"] - before > 400_000   # half of 1.25 MB went by path 1


def test_server_follows_changed_client_source_address(tunnel):
    t = tunnel()
    lab = t.lab
    lab.change_wan_address(1, 99)          # a new lease while the link stays up
    wait_for(lambda: path(t.server, "wan1")["remote"].startswith("198.18.1.99:"),
             what="server following the new source")
    wait_for(lambda: states(t.client)["wan1"] == "up", what="wan1 up")
    rx = traffic.start_udp_receiver(lab, lab.lanA, lab.lan_a_addr(), 5010)
    before = lab.isp_bytes(1)["down"]
    traffic.run_udp_send(lab, lab.lanB, lab.lan_a_addr(), 5010, rate_mbit=10, duration=1)
    res = rx.result()
    assert res["lost"] == 0
    assert lab.isp_bytes(1)["down"] - before > 400_000, "return traffic uses the new address"


def test_backup_path_takes_over_only_when_the_primary_dies(tunnel):
    t = tunnel(path_keys={2: {"priority": 1}})
    lab = t.lab

    def carried(seconds=1.0):
        before = [lab.isp_bytes(k)["up"] for k in (1, 2)]
        traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 9, rate_mbit=8, duration=seconds)
        return [lab.isp_bytes(k)["up"] - b for k, b in zip((1, 2), before)]

    one, two = carried()
    assert one > 900_000 and two < 20_000, (one, two)    # the backup carries probes only
    st = {p["name"]: p for p in t.client.status()["paths"]}
    assert st["wan2"]["state"] == "up" and not st["wan2"]["active"]
    lab.link_down(1)
    wait_for(lambda: path(t.client, "wan2")["active"], what="backup active")
    one, two = carried()
    assert two > 900_000 and one < 20_000, (one, two)
    lab.link_up(1)
    wait_for(lambda: path(t.client, "wan1")["active"] and not path(t.client, "wan2")["active"],
             what="hand-back to the primary")
    one, two = carried()
    assert one > 900_000 and two < 20_000, (one, two)


def test_twenty_flaps_leave_every_path_up_and_the_daemon_healthy(tunnel):
    t = tunnel()
    lab = t.lab
    for i in range(20):
        k = 1 + i % 2
        lab.link_down(k)
        lab.link_up(k)
    wait_for(lambda: set(states(t.client).values()) == {"up"}, timeout=10,
             what="both paths up after flapping")
    wait_for(lambda: set(states(t.server).values()) == {"up"}, timeout=5,
             what="server sees both paths up")
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), 5011)
    before = [lab.isp_bytes(k)["up"] for k in (1, 2)]
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 5011, rate_mbit=20, duration=1)
    res = rx.result()
    assert res["lost"] == 0 and res["in_order"]
    moved = [lab.isp_bytes(k)["up"] - b for k, b in zip((1, 2), before)]
    assert min(moved) / sum(moved) > 0.4, moved
    assert t.client.proc.poll() is None and t.server.proc.poll() is None


def test_mptctl_takes_a_path_down_and_up_by_hand(tunnel):
    t = tunnel()
    lab = t.lab

    def mptctl(*args):
        return lab.run(lab.rtrA, sys.executable, "-c",
                       "import sys; from mpt.cli import mptctl_main; "
                       "sys.exit(mptctl_main(sys.argv[1:]))", "-s", t.client.control, *args,
                       check=False)

    r = mptctl("path", "wan1", "down")
    assert r.returncode == 0 and "wan1: down" in r.stdout
    # counted by the server: nothing arrives on wan1, not even probes
    # (the isp link's own counters also see the kernel's IPv6 link-local chatter)
    before = {n: path(t.server, n) for n in ("wan1", "wan2")}
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 9, rate_mbit=8, duration=0.5)
    after = {n: path(t.server, n) for n in ("wan1", "wan2")}
    assert after["wan1"]["rx_packets"] == before["wan1"]["rx_packets"]
    assert after["wan1"]["ctrl_rx"] == before["wan1"]["ctrl_rx"]
    assert after["wan2"]["rx_packets"] > before["wan2"]["rx_packets"] + 300
    assert mptctl("path", "wan1", "up").returncode == 0
    wait_for(lambda: states(t.client)["wan1"] == "up", what="wan1 up by hand")
    r = mptctl("path", "nope", "down")
    assert r.returncode == 1 and "no path named 'nope'" in r.stderr
    st = json.loads(mptctl("status", "--json").stdout)
    assert [p["state"] for p in st["paths"]] == ["up", "up"]
    assert all(p["rtt_ms"] is not None for p in st["paths"])


def test_per_path_routing_table_when_main_has_no_route(tunnel):
    """Path 2's packets leave by wan2 through its own table even with no
    route through wan2 in the main table, also after the link comes back."""
    t = tunnel(path_keys={2: {"gateway": "198.18.2.254", "table": 1234}})
    lab = t.lab
    out = lab.run(lab.rtrA, "ip", "route", "show", "table", "1234").stdout
    assert "default via 198.18.2.254 dev wan2" in out
    assert "oif wan2 lookup 1234" in lab.run(lab.rtrA, "ip", "rule").stdout
    lab.run(lab.rtrA, "ip", "route", "del", "198.18.10.0/24", "via", "198.18.2.254")
    lab.link_down(2)
    lab.run(lab.rtrA, "ip", "link", "set", "wan2", "up")   # back, but main gets no route
    wait_for(lambda: states(t.client)["wan2"] == "up", what="wan2 up through its own table")
    assert "default via 198.18.2.254" in lab.run(lab.rtrA, "ip", "route", "show", "table",
                                                 "1234").stdout
    before = lab.isp_bytes(2)["up"]
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 9, rate_mbit=8, duration=0.5)
    assert lab.isp_bytes(2)["up"] - before > 200_000
    t.stop()
    assert "1234" not in lab.run(lab.rtrA, "ip", "rule").stdout   # removed on exit
