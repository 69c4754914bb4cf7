"""TCP over MPTCP benchmark (issue: TCP proxy).

1. Aggregation: one LAN TCP flow (lanA -> lanB) over 2 x RATE Mbit/s paths
   through mpt's proxy, next to one plain TCP flow over a single bare path, in
   the same run.  Goodput is a whole transfer of --bytes timed end to end
   (mpt.lab.traffic tcp-send/tcp-sink): iperf3's fixed-time test stops its
   clock while megabytes still sit in the two relays' socket buffers, which
   understates any proxy by a varying amount.
2. CPU-bound relay: the same flow with no shaping, through mpt's proxy
   (encrypt off, and on) and through Debian's shadowsocks-libev (ss-redir on
   rtrA, ss-server on rtrB, both under mptcpize, fastest AEAD cipher), the
   seed project's setup.

    python bench/tcp_proxy.py [--rate 100] [--seconds 8] [--repeat 3] [--bytes 200000000]

Needs: apt-get install shadowsocks-libev mptcpize iperf3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import iperf3, median  # noqa: E402

from mpt import nft  # noqa: E402
from mpt.lab import traffic  # noqa: E402
from mpt.lab.topology import Lab  # noqa: E402
from mpt.lab.tunnel import Tunnel  # noqa: E402

SS_CIPHER = "aes-128-gcm"       # the fastest AEAD here (AES-NI); shadowsocks-libev has no "none"
SS_PORT, SS_LOCAL = 8388, 1080


def transfer(lab, src, dst, addr, nbytes, port) -> float:
    """Mbit/s of one TCP transfer of nbytes, from the first byte sent until
    the receiver confirmed the last one."""
    sink = traffic.start_tcp_sink(lab, dst, addr, port)
    res = traffic.run_tcp_send(lab, src, addr, port, nbytes, timeout=120)
    sink.result(60)
    if not res["ok"]:
        raise RuntimeError(f"transfer corrupted: {res}")
    return res["mbit"]


def through_mpt(rate, seconds, repeat, nbytes=None, encrypt=False) -> list[float]:
    """iperf3 for `seconds`, or whole transfers of `nbytes`."""
    with Lab(paths=2, rate_mbit=rate) as lab:
        t = Tunnel(lab, tcp_proxy=True, tcp_encrypt=(encrypt, encrypt))
        try:
            t.wait_up()
            if nbytes:
                return [transfer(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), nbytes, 5300 + i)
                        for i in range(repeat)]
            return [iperf3(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), seconds=seconds)
                    for _ in range(repeat)]
        finally:
            t.stop()


def unplug_replug(rate, seconds=30, unplug=10, replug=20) -> dict:
    """One LAN TCP flow through mpt's proxy; wan1 unplugged at `unplug` s and
    plugged back at `replug` s.  How long after the replug until throughput
    is back to 95 % of what it was before the unplug?"""
    import time
    with Lab(paths=2, rate_mbit=rate) as lab:
        t = Tunnel(lab, tcp_proxy=True)
        try:
            t.wait_up()
            srv = lab.popen(lab.lanB, ["iperf3", "-s", "-1", "-B", lab.lan_b_addr(),
                                       "--forceflush"], stdout=subprocess.PIPE, text=True)
            for line in srv.stdout:
                if "listening" in line:
                    break
            cli = lab.popen(lab.lanA, ["iperf3", "-c", lab.lan_b_addr(), "-t", str(seconds),
                                       "-i", "0.5", "-J"], stdout=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            time.sleep(unplug)                      # the scenario's clock
            lab.link_down(1)
            time.sleep(max(0.0, t0 + replug - time.monotonic()))
            lab.link_up(1)
            out, _ = cli.communicate(timeout=seconds + 30)
            srv.communicate(timeout=10)
        finally:
            t.stop()
    j = json.loads(out)
    iv = [(i["sum"]["end"], i["sum"]["bits_per_second"] / 1e6) for i in j["intervals"]]
    before = [m for end, m in iv if 2 <= end <= unplug]
    full = 0.95 * sum(before) / len(before)
    back = next((end - replug for end, m in iv if end > replug + 0.5 and m >= full), None)
    return {"survived": j["end"]["sum_received"]["bytes"] > 0 and "error" not in j,
            "before_mbit": round(sum(before) / len(before), 2),
            "during_mbit": round(median([m for end, m in iv if unplug + 1 <= end <= replug]), 2),
            "back_to_95pct_after_s": back,
            "intervals": [(round(e, 1), round(m, 1)) for e, m in iv]}


def bare_single_path(rate, repeat, nbytes) -> list[float]:
    with Lab(paths=1, rate_mbit=rate) as lab:
        return [transfer(lab, lab.rtrA, lab.rtrB, lab.server_addr(), nbytes, 5300 + i)
                for i in range(repeat)]


def through_shadowsocks(rate, seconds, repeat) -> list[float]:
    """ss-redir/ss-server over MPTCP (mptcpize), with MPTCP endpoints on both
    WAN addresses and source rules, as mpt sets them up for its own proxy."""
    import ipaddress
    with Lab(paths=2, rate_mbit=rate) as lab:
        def in_ns(ns, fn, *a):
            lab.run(ns, sys.executable, "-c",
                    f"import sys; sys.path.insert(0, {os.getcwd()!r}); "
                    f"from mpt import mptcp; mptcp.{fn}(None, *{a!r})")
        in_ns(lab.rtrA, "set_limits", 8, 8)
        in_ns(lab.rtrB, "set_limits", 8, 8)
        for k in (1, 2):
            in_ns(lab.rtrA, "set_endpoint", k - 1, lab.wan_addr(k), False)
            lab.run(lab.rtrA, "ip", "rule", "add", "from", lab.wan_addr(k), "lookup", str(100 + k))
            lab.run(lab.rtrA, "ip", "route", "add", "198.18.10.0/24", "via",
                    f"198.18.{k}.254", "dev", f"wan{k}", "table", str(100 + k))
        script = nft.ruleset("ss", SS_LOCAL, [ipaddress.ip_network("198.18.100.0/24")], [])
        subprocess.run(["ip", "netns", "exec", lab.rtrA, "nft", "-f", "-"], input=script,
                       text=True, check=True)
        key = "benchmark-only"
        server = lab.popen(lab.rtrB, ["mptcpize", "run", "ss-server", "-s", lab.server_addr(),
                                      "-p", str(SS_PORT), "-k", key, "-m", SS_CIPHER],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = lab.popen(lab.rtrA, ["mptcpize", "run", "ss-redir", "-s", lab.server_addr(),
                                      "-p", str(SS_PORT), "-l", str(SS_LOCAL), "-b", "0.0.0.0",
                                      "-k", key, "-m", SS_CIPHER],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listen(lab, lab.rtrB, SS_PORT)
            _wait_listen(lab, lab.rtrA, SS_LOCAL)
            return [iperf3(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), seconds=seconds)
                    for _ in range(repeat)]
        finally:
            client.terminate()
            server.terminate()


def _wait_listen(lab, ns, port, timeout=5.0):
    import time
    end = time.monotonic() + timeout
    while f":{port} " not in lab.run(ns, "ss", "-Hltn").stdout:
        if time.monotonic() > end:
            raise RuntimeError(f"nothing listens on {port} in {ns}")
        time.sleep(0.05)


def summary(runs):
    return {"runs": [round(x, 2) for x in runs], "median": round(median(runs), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bytes", type=int, default=200_000_000,
                    help="size of a transfer over 2 paths (half of it over 1)")
    a = ap.parse_args()
    for tool in ("iperf3", "ss-server", "ss-redir", "mptcpize"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install shadowsocks-libev mptcpize iperf3)",
                  file=sys.stderr)
            return 2
    res = {
        "shaped": {
            "bare_single_path_tcp": summary(bare_single_path(a.rate, a.repeat, a.bytes // 2)),
            "mpt_proxy_2_paths": summary(through_mpt(a.rate, a.seconds, a.repeat, a.bytes)),
        },
        "unplug_replug": unplug_replug(a.rate),
        "unshaped": {
            "mpt_proxy": summary(through_mpt(None, a.seconds, a.repeat)),
            "mpt_proxy_encrypted": summary(through_mpt(None, a.seconds, a.repeat,
                                                       encrypt=True)),
            "shadowsocks_libev_mptcpize": summary(through_shadowsocks(None, a.seconds, a.repeat)),
        },
    }
    sh, un = res["shaped"], res["unshaped"]
    res["aggregation_ratio_to_sum"] = round(
        sh["mpt_proxy_2_paths"]["median"] / (2 * sh["bare_single_path_tcp"]["median"]), 4)
    res["relay_speedup_vs_shadowsocks"] = round(
        un["mpt_proxy"]["median"] / un["shadowsocks_libev_mptcpize"]["median"], 2)
    res["encrypted_relay_vs_shadowsocks"] = round(
        un["mpt_proxy_encrypted"]["median"] / un["shadowsocks_libev_mptcpize"]["median"], 2)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
