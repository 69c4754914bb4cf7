"""End-to-end: LAN TCP carried over MPTCP between the routers by the
transparent proxy, one subflow per WAN path."""
import sys
import time

import pytest

from mpt.lab import traffic

pytestmark = pytest.mark.e2e


# connects, then tells what the first read gives: data, eof or reset
RESET_PROBE = ("import socket, sys\n"
               "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
               "try:\n"
               "    print('data' if s.recv(1) else 'eof')\n"
               "except ConnectionResetError:\n"
               "    print('reset')\n")


def wait_for(pred, timeout=5.0, what="condition"):
    """Poll kernel or daemon state (no event to wait on) until pred() holds."""
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return v


def subflows(lab) -> set[str]:
    """Source addresses of rtrA's established TCP subflows to the server's proxy."""
    out = lab.run(lab.rtrA, "ss", "-Htn", "state", "established",
                  "dst", f"{lab.server_addr()}:4701").stdout
    return {line.split()[2].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def long_transfer(lab, nbytes, port, v6=False):
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(v6), port)
    tx = traffic.ToolProcess(lab, lab.lanA, ["tcp-send", "--to", lab.lan_b_addr(v6), "--port",
                                             str(port), "--bytes", str(nbytes)])
    return sink, tx


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_lan_tcp_goes_over_mptcp_with_one_subflow_per_path(tunnel, v6):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    sink, tx = long_transfer(lab, 60_000_000, 5020, v6)
    # the kernel shows two subflows, one from each WAN address
    assert wait_for(lambda: subflows(lab) == {lab.wan_addr(1), lab.wan_addr(2)},
                    what="a subflow on each WAN")
    (conn,) = wait_for(lambda: [c for c in t.client.status()["tcp"]["connections"]
                                if c["subflows"] == 2], what="the proxy seeing 2 subflows")
    assert conn["dst"] == f"{lab.lan_b_addr(v6)}:5020"     # the original destination
    res = tx.result(60)
    assert res["ok"] and sink.result(60)["bytes"] == 60_000_000
    srv = t.server.status()["tcp"]
    assert srv["total"] == 1 and srv["bytes_out"] == 60_000_000 and srv["refused"] == 0
    assert "tcp proxy: 0 connection(s) open, 1 in all" in lab.run(
        lab.rtrA, sys.executable, "-c", "import sys; from mpt.cli import mptctl_main; "
        "sys.exit(mptctl_main(sys.argv[1:]))", "-s", t.client.control, "status").stdout


def test_connection_survives_unplug_and_replug(tunnel):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    sink, tx = long_transfer(lab, 150_000_000, 5021)
    wait_for(lambda: len(subflows(lab)) == 2, what="two subflows")
    lab.link_down(1)
    wait_for(lambda: subflows(lab) == {lab.wan_addr(2)}, what="wan1's subflow gone")
    lab.link_up(1)
    wait_for(lambda: subflows(lab) == {lab.wan_addr(1), lab.wan_addr(2)}, timeout=10,
             what="a new subflow on wan1")
    res = tx.result(120)
    assert res["ok"] and sink.result(60)["bytes"] == 150_000_000


def test_refused_destination_is_refused_to_the_lan_client(tunnel):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    r = lab.run(lab.lanA, sys.executable, "-c", RESET_PROBE, lab.lan_b_addr(), "5999")
    assert r.stdout.strip() == "reset"
    assert t.client.status()["tcp"]["refused"] == 1


@pytest.mark.parametrize("proto", ["tcp", "mptcp"])
def test_unauthenticated_connection_to_the_proxy_port_is_refused(tunnel, proto):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, int(sys.argv[3]))\n"
             "s.settimeout(10)\n"
             "s.connect((sys.argv[1], int(sys.argv[2])))\n"
             "s.sendall(bytes(79))\n"
             "try:\n"
             "    print('data' if s.recv(100) else 'eof')\n"
             "except ConnectionResetError:\n"
             "    print('reset')\n")
    r = lab.run(lab.isp[0], sys.executable, "-c", probe, lab.server_addr(), "4701",
                "6" if proto == "tcp" else "262")
    assert r.stdout.strip() in ("reset", "eof")     # and never a byte of answer
    wait_for(lambda: t.server.status()["tcp"]["refused"] == 1, what="refusal counted")


def test_routers_own_and_lan_to_lan_traffic_is_not_intercepted(tunnel):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(), 5022)
    res = traffic.run_tcp_send(lab, lab.rtrA, lab.lan_b_addr(), 5022, 1_000_000)
    assert res["ok"] and sink.result()["bytes"] == 1_000_000   # through the tunnel instead
    sink = traffic.start_tcp_sink(lab, lab.rtrA, lab.wan_addr(1), 5023)
    res = traffic.run_tcp_send(lab, lab.lanA, lab.wan_addr(1), 5023, 100_000)
    assert res["ok"]                                            # to the router itself
    assert t.client.status()["tcp"]["total"] == 0


def test_rules_and_endpoints_are_gone_after_exit(tunnel):
    t = tunnel(tcp_proxy=True)
    lab = t.lab
    assert "mpt_tcp_mpt0" in lab.run(lab.rtrA, "nft", "list", "tables").stdout
    assert "subflow" in lab.run(lab.rtrA, "ip", "mptcp", "endpoint").stdout
    assert t.stop() == (0, 0)
    assert "mpt_tcp_mpt0" not in lab.run(lab.rtrA, "nft", "list", "tables").stdout
    assert lab.run(lab.rtrA, "ip", "mptcp", "endpoint").stdout.strip() == ""
    assert "lookup 100" not in lab.run(lab.rtrA, "ip", "rule").stdout


def test_encrypted_payload_arrives_intact(tunnel):
    t = tunnel(tcp_proxy=True, tcp_encrypt=(True, True))
    lab = t.lab
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(), 5030)
    res = traffic.run_tcp_send(lab, lab.lanA, lab.lan_b_addr(), 5030, 30_000_000)
    assert res["ok"] and sink.result()["bytes"] == 30_000_000
    assert t.server.status()["tcp"]["bytes_out"] == 30_000_000


def test_server_requiring_encryption_refuses_plain_connections(tunnel):
    t = tunnel(tcp_proxy=True, tcp_encrypt=(False, True))
    lab = t.lab
    sink = traffic.start_tcp_sink(lab, lab.lanB, lab.lan_b_addr(), 5031)
    r = lab.run(lab.lanA, sys.executable, "-c", RESET_PROBE, lab.lan_b_addr(), "5031")
    assert r.stdout.strip() == "reset"
    sink.stop()
    assert t.client.status()["tcp"]["refused"] == 1
