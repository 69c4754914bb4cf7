"""End-to-end: two mptd in a namespace lab, real traffic from lanA to lanB."""
import json
import sys

import pytest

from mpt.lab import traffic

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_icmp_crosses_the_tunnel(tunnel, v6):
    t = tunnel()
    lab = t.lab
    assert lab.ping(lab.lanA, lab.lan_b_addr(v6), count=3)
    assert lab.ping(lab.lanB, lab.lan_a_addr(v6), count=3)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_transfer_is_complete(tunnel, v6):
    t = tunnel()
    lab = t.lab
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(v6), 5001)
    res = traffic.run_tcp_send(lab, lab.lanA, lab.lan_b_addr(v6), 5001, 20_000_000)
    assert res["ok"] and res["bytes"] == 20_000_000
    assert sink.result()["bytes"] == 20_000_000
    c = t.client.status()
    assert all(p["tx_packets"] > 1000 for p in c["paths"]), "both paths carried the flow"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_stream_on_two_equal_paths_arrives_complete_and_in_order(tunnel, v6):
    t = tunnel()
    lab = t.lab
    before = [lab.isp_bytes(k) for k in (1, 2)]
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(v6), 5002)
    sent = traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(v6), 5002,
                                rate_mbit=40, size=1200, duration=3)
    res = rx.result()
    assert res["sent"] == sent["sent"] > 10000
    assert res["unique"] == res["sent"] and res["lost"] == 0
    assert res["duplicates"] == 0
    assert res["in_order"] and res["out_of_order"] == 0
    up = [lab.isp_bytes(k)["up"] - b["up"] for k, b in zip((1, 2), before)]
    assert min(up) / sum(up) > 0.45, f"both paths carry half: {up}"


@pytest.mark.parametrize("direction", ["up", "down"])
def test_weights_3_to_1_split_bytes_75_25(tunnel, direction):
    """Counted on the isp links; the server follows the weights the client announces."""
    t = tunnel(weights=[3, 1])
    lab = t.lab
    if direction == "up":
        src, dst, addr = lab.lanA, lab.lanB, lab.lan_b_addr()
    else:
        src, dst, addr = lab.lanB, lab.lanA, lab.lan_a_addr()
    before = [lab.isp_bytes(k)[direction] for k in (1, 2)]
    rx = traffic.start_udp_receiver(lab, dst, addr, 5003)
    traffic.run_udp_send(lab, src, addr, 5003, rate_mbit=40, size=1200, duration=3)
    res = rx.result()
    assert res["lost"] == 0
    moved = [lab.isp_bytes(k)[direction] - b for k, b in zip((1, 2), before)]
    share = moved[0] / sum(moved)
    assert abs(share - 0.75) <= 0.03, f"path 1 carried {share:.3f} of {moved}"


def test_mptctl_status_shows_every_path(tunnel):
    t = tunnel(weights=[3, 1])
    lab = t.lab
    assert lab.ping(lab.lanA, lab.lan_b_addr(), count=4)
    out = lab.run(lab.rtrA, sys.executable, "-c",
                  "import sys; from mpt.cli import mptctl_main; "
                  "sys.exit(mptctl_main(sys.argv[1:]))", "-c", t.client.conf, "status", "--json")
    st = json.loads(out.stdout)
    assert [p["name"] for p in st["paths"]] == ["wan1", "wan2"]
    assert [p["weight"] for p in st["paths"]] == [3, 1]
    for p in st["paths"]:
        assert p["state"] == "up" and p["device"] == p["name"]
        assert p["remote"] == f"{lab.server_addr()}:4700"
        assert p["local"].startswith(lab.wan_addr(int(p["name"][-1])) + ":") or \
            p["local"].startswith("0.0.0.0:")
    assert sum(p["tx_packets"] for p in st["paths"]) >= 4
    assert sum(p["rx_packets"] for p in st["paths"]) >= 4
    text = lab.run(lab.rtrB, sys.executable, "-c",
                   "import sys; from mpt.cli import mptctl_main; "
                   "sys.exit(mptctl_main(sys.argv[1:]))", "-s", t.server.control, "status").stdout
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["PATH", "DEVICE", "STATE"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["wan1", "wan2"]
    assert all(" up " in ln and f"{lab.wan_addr(k)}:" in ln for k, ln in ((1, lines[2]), (2, lines[3])))


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_tun_device_is_gone_when_the_daemon_exits(tunnel, how):
    import signal
    t = tunnel()
    lab = t.lab
    assert lab.run(lab.rtrA, "ip", "link", "show", "mpt0", check=False).returncode == 0
    code = t.client.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    assert code == (0 if how == "sigterm" else -signal.SIGKILL)
    assert lab.run(lab.rtrA, "ip", "link", "show", "mpt0", check=False).returncode != 0
    # routes through it are gone with it
    assert "mpt0" not in lab.run(lab.rtrA, "ip", "route").stdout


def test_tcp_mss_is_clamped_to_the_tunnel_mtu(tunnel):
    """Both routers clamp forwarded SYNs to the TUN's MTU, so a LAN host's
    first full-size segments never come back as "fragmentation needed"
    (which would cost the connection its slow start); the table goes with
    the daemon."""
    t = tunnel()
    lab = t.lab
    for ns in (lab.rtrA, lab.rtrB):
        assert "mpt_mss_mpt0" in lab.run(ns, "nft", "list", "tables").stdout
    lab.run(lab.lanA, "nstat", "-n")
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(), 5003)
    res = traffic.run_tcp_send(lab, lab.lanA, lab.lan_b_addr(), 5003, 5_000_000)
    assert res["ok"] and sink.result()["bytes"] == 5_000_000
    icmp = lab.run(lab.lanA, "nstat", "-az", "IcmpInDestUnreachs").stdout.split()
    assert icmp[icmp.index("IcmpInDestUnreachs") + 1] == "0", icmp
    assert t.client.stop() == 0
    assert "mpt_mss_mpt0" not in lab.run(lab.rtrA, "nft", "list", "tables").stdout
