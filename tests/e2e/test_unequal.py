"""End-to-end over unequal links (issue 4): paths of different rates, delays
and jitter (Lab.set_rate / Lab.set_delay), the two scheduler modes, the
per-flow reorder buffer and the per-path `rate` cap.

Each test brings the tunnel up over shaped links, lets both daemons measure
every path's RTT (the receiver's hold time follows their spread), sends one
warm-up stream (auto learns each path's capacity from traffic; the same
warm-up runs in weighted mode so the two are measured alike), waits until
every path is up again, and only then measures.  A failure message carries
the daemons' path events (suspect, down, stall reports): a path taken out
in the middle of a run explains most losses.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

import pytest

from mpt._datapath import ffi, lib
from mpt.lab import traffic
from mpt.lab.tunnel import Tunnel

pytestmark = pytest.mark.e2e

AUTO = dict(client={"scheduler": "auto"}, server={"scheduler": "auto"})


# ------------------------------------------------------------------ helpers
def path_events(t: Tunnel) -> str:
    """The daemons' log lines about paths changing state or stalling."""
    words = ("suspect", " down", "stopped arriving", " up (hold-down")
    out = []
    for side, d in (("client", t.client), ("server", t.server)):
        out += [f"{side}: {ln.split('INFO: ', 1)[-1]}" for ln in d.output().splitlines()
                if any(w in ln for w in words)]
    return "\n".join(out) or "(no path events)"


def snapshot(t: Tunnel) -> dict:
    """Both sides' datapath counters."""
    return {side: d.status()["peers"][0]["counters"]
            for side, d in (("client", t.client), ("server", t.server))}


def counters(t: Tunnel, since: dict | None = None, until: dict | None = None) -> str:
    """Non-zero datapath counters of both sides, or what changed from the
    snapshot `since` to `until` (default: now), for failure messages."""
    now = until or snapshot(t)
    out = []
    for side, c in now.items():
        base = (since or {}).get(side, {})
        diff = {k: v - base.get(k, 0) for k, v in c.items() if v - base.get(k, 0)}
        out.append(f"{side}{' (this run)' if since else ''}: {json.dumps(diff)}")
    return "\n".join(out)


def wait_measured(t: Tunnel, one_way_spread_ms: float = 0.0, timeout: float = 15.0) -> None:
    """Until every path is up on both sides, both know every path's RTT and
    the receiver's hold time covers the one-way delay spread."""
    deadline = time.monotonic() + timeout
    while True:
        c, s = t.client.status(), t.server.status()
        ok = all(p["state"] == "up" and p["rtt_ms"] for st in (c, s) for p in st["paths"])
        hold = s["peers"][0]["hold_ms"]
        if ok and hold >= one_way_spread_ms:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"paths not up and measured after {timeout}s (server hold {hold} ms, "
                f"spread {one_way_spread_ms} ms):\n"
                + json.dumps([(p["name"], p["state"], p["rtt_ms"]) for p in c["paths"]])
                + "\n" + path_events(t))
        time.sleep(0.05)   # polling the daemons' status, with a deadline


def warm_up(t: Tunnel, rate_mbit: float, seconds: float = 3.0, port: int = 5999) -> None:
    """One stream through the tunnel, not judged; then every path up again.
    Auto knows a path's capacity only as far as traffic has shown it (it
    starts from a floor and ramps up; light traffic leaves the estimate
    where it is), so tests warm up above the rate they then measure."""
    lab = t.lab
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), port)
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), port, rate_mbit=rate_mbit,
                         size=1200, duration=seconds)
    rx.result()
    wait_measured(t)


def up_bytes(lab) -> list[int]:
    return [lab.isp_bytes(k)["up"] for k in range(1, lab.paths + 1)]


@pytest.fixture
def shaped_tunnel(tunnel):
    """Factory: ``shaped_tunnel(rates, delays, **tunnel_kw)`` builds a lab
    whose path k has rate ``rates[k-1]`` Mbit/s and, from ``delays`` {k:
    (one-way delay ms, jitter ms)}, that delay in both directions; starts
    both daemons (Tunnel keywords), waits until they have measured every
    path.  Both daemons must exit cleanly at the end (the `tunnel` fixture)."""
    def start(rates, delays=None, **kw) -> Tunnel:
        t = tunnel(paths=len(rates), rate_mbit=rates, delays=delays, **kw)
        one_way = [d for d, _ in (delays or {}).values()] or [0.0]
        if len(one_way) < len(rates):
            one_way.append(0.0)
        wait_measured(t, max(one_way) - min(one_way))
        return t

    return start


# ------------------------------------------------- 1: unequal rates and delays
@pytest.mark.parametrize("mode", ["weighted", "auto"])
def test_numbered_stream_over_unequal_paths_is_complete_and_in_order(shaped_tunnel, mode):
    """Path 1: 50 Mbit/s, 10 ms one-way; path 2: 10 Mbit/s, 40 ms ± 5 ms.
    20 Mbit/s of UDP: weighted 5:1 puts 1/6 on path 2 (well within its 10);
    auto puts it on the lowest-delay path, which can carry all of it."""
    kw = dict(weights=[5, 1]) if mode == "weighted" else AUTO   # 5:1 as the rates
    t = shaped_tunnel([50, 10], {1: (10, 0), 2: (40, 5)}, **kw)
    lab = t.lab
    warm_up(t, 30)
    before, snap = up_bytes(lab), snapshot(t)
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), 5002)
    sent = traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 5002,
                                rate_mbit=20, size=1200, duration=4)
    res = rx.result()
    moved = [a - b for a, b in zip(up_bytes(lab), before)]
    why = (f"{ {k: res[k] for k in ('sent', 'lost', 'duplicates', 'out_of_order', 'in_order', 'longest_gap_ms', 'lost_ranges')} }"
           f"\nbytes up per path {moved}\n{counters(t, snap)}\n{path_events(t)}")
    print(why)
    assert res["sent"] == sent["sent"] > 8000, why
    assert res["lost"] == 0 and res["unique"] == res["sent"], why
    assert res["duplicates"] == 0, why
    assert res["in_order"] and res["out_of_order"] == 0, why
    share1 = moved[0] / sum(moved)
    if mode == "weighted":
        assert abs(share1 - 5 / 6) <= 0.04, f"path 1 carried {share1:.3f}\n{why}"
    else:   # lowest delay first; path 2 only sees probes and spill
        assert share1 >= 0.9, f"path 1 carried {share1:.3f}\n{why}"


# ------------------------------------------- 2: a lossy flow beside a clean one
PORT_A, PORT_B = 6001, 6002


def flow_bucket(src: str, dst: str, sport: int, dport: int,
                nbuckets: int = lib.MPT_FLOW_BUCKETS) -> int:
    """The bucket the sender puts an IPv4 UDP flow in (mpt_flow_bucket)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 32, 0, 0, 64, socket.IPPROTO_UDP,
                     0, socket.inet_aton(src), socket.inet_aton(dst))
    pkt = ip + struct.pack("!HHHH", sport, dport, 8 + 32, 0) + bytes(32)
    return lib.mpt_flow_bucket(ffi.from_buffer(pkt), len(pkt), nbuckets)


def source_ports(lab) -> tuple[int, int, int]:
    """Source ports for flows A and B that land in different buckets, and A's."""
    src, dst = lab.lan_a_addr(), lab.lan_b_addr()
    sport_b = 40002
    bucket_b = flow_bucket(src, dst, sport_b, PORT_B)
    for sport_a in range(40001, 40200, 2):
        bucket_a = flow_bucket(src, dst, sport_a, PORT_A)
        if bucket_a != bucket_b:
            return sport_a, sport_b, bucket_a
    raise AssertionError("no source port puts flow A in a bucket of its own")


def start_sender(lab, sport: int, port: int, rate_mbit: float, seconds: float):
    """udp-send from lanA whose socket gets source port `sport` (the only
    ephemeral port lanA offers while it binds); returns once bound."""
    lab.run(lab.lanA, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={sport} {sport}")
    h = traffic.ToolProcess(lab, lab.lanA, [
        "udp-send", "--to", lab.lan_b_addr(), "--port", str(port), "--rate-mbit",
        str(rate_mbit), "--size", "1200", "--duration", str(seconds)])
    deadline = time.monotonic() + 10
    while not lab.run(lab.lanA, "ss", "-Huan", "sport", "=", f":{sport}").stdout.strip():
        if h.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"sender from port {sport} never bound: {h.result(5)}")
        time.sleep(0.01)   # polling for the socket, with a deadline
    return h


def drop_in_bucket(lab, bucket: int, percent: int) -> None:
    """Every isp drops `percent` % of the tunnel's data packets of `bucket`
    going up (matched in mpt's clear header: byte 0 = version 2, DATA;
    bytes 4-5 = bucket), once per packet (iif a: the delay line's second
    pass is not matched again)."""
    for k in range(1, lab.paths + 1):
        rules = (
            "table inet mptlab_flowloss {\n"
            "  chain drop_flow {\n"
            "    type filter hook forward priority -300; policy accept;\n"
            f"    iifname \"a\" udp dport 4700 @th,64,8 0x20 @th,96,16 {bucket} "
            f"numgen random mod 100 < {percent} counter drop\n"
            "  }\n"
            "}\n")
        cp = subprocess.run(
            ["ip", "netns", "exec", lab.isp_ns(k), "nft", "-f", "-"], input=rules,
            capture_output=True, text=True)
        assert cp.returncode == 0, cp.stderr


def dropped(lab) -> int:
    total = 0
    for k in range(1, lab.paths + 1):
        out = lab.run(lab.isp_ns(k), "nft", "-j", "list", "table", "inet",
                      "mptlab_flowloss").stdout
        for item in json.loads(out)["nftables"]:
            for e in item.get("rule", {}).get("expr", []):
                if "counter" in e:
                    total += e["counter"]["packets"]
    return total


def two_flows(lab, sport_a: int, sport_b: int, mbit_a: float = 10,
              mbit_b: float = 4) -> tuple[dict, dict]:
    """Flow A (5 s) and, inside it, flow B (4 s): their receivers' stats."""
    rx_a = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), PORT_A)
    rx_b = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), PORT_B)
    a = start_sender(lab, sport_a, PORT_A, mbit_a, 5)
    b = start_sender(lab, sport_b, PORT_B, mbit_b, 4)
    b.result(40)
    a.result(40)
    return rx_a.result(), rx_b.result()


@pytest.mark.parametrize("mode", ["weighted", "auto"])
def test_loss_in_one_flow_costs_another_flow_nothing(shaped_tunnel, mode):
    """Two paths, 10 ms and 30 ms one-way.  Weighted 1:1 spreads both flows
    over both paths; auto keeps them on the 10 ms path, where a loss is
    proven at once by the sender's same-path mark (without it, only by path
    2's probes, and a shared reorder buffer would hold every flow that long).  Flow A loses 5 % of its packets
    inside the tunnel; flow B's one-way delay, median and p99, stays what it
    is beside the same flow A without the loss."""
    kw = {} if mode == "weighted" else AUTO
    t = shaped_tunnel([100, 100], {1: (10, 0), 2: (30, 0)}, **kw)
    lab = t.lab
    sport_a, sport_b, bucket_a = source_ports(lab)
    warm_up(t, 30)
    snap = snapshot(t)
    base_a, base_b = two_flows(lab, sport_a, sport_b)
    wait_measured(t)
    drop_in_bucket(lab, bucket_a, 5)
    snap_lossy = snapshot(t)
    lossy_a, lossy_b = two_flows(lab, sport_a, sport_b)
    snap_end = snapshot(t)
    n_dropped = dropped(lab)
    d = {name: r["one_way_delay_ms"] for name, r in
         (("A", base_a), ("B", base_b), ("A lossy", lossy_a), ("B beside lossy A", lossy_b))}
    why = (f"one-way delay ms {d}\nlost: base A {base_a['lost']} B {base_b['lost']}, "
           f"lossy A {lossy_a['lost']} B {lossy_b['lost']}; dropped by nft {n_dropped}\n"
           f"base run: {counters(t, snap, snap_lossy)}\nlossy run: {counters(t, snap_lossy, snap_end)}\n"
           f"{path_events(t)}")
    print(why)
    # the loss happened, to flow A only, and the tunnel passed it on as loss
    assert base_a["lost"] == 0 and base_b["lost"] == 0, why
    assert n_dropped >= 0.02 * lossy_a["sent"], why
    # every datagram the tunnel lost is one nft dropped (nft may also have
    # dropped some of the three end markers, which are not counted as lost)
    assert n_dropped - 3 <= lossy_a["lost"] <= n_dropped, why
    assert lossy_b["lost"] == 0 and lossy_b["in_order"] and lossy_b["duplicates"] == 0, why
    assert lossy_a["in_order"], why
    # ... and cost flow B nothing.  (Weighted: B itself alternates paths, so
    # its packets wait for the 30 ms path with or without A's loss; where
    # its median lands between 10 and 30 ms is chance, so it is compared
    # with what the slow path imposes anyway.)
    floor = 0.0 if mode == "auto" else 30.0
    assert (lossy_b["one_way_delay_ms"]["median"]
            <= max(base_b["one_way_delay_ms"]["median"], floor) + 1.0), why
    assert lossy_b["one_way_delay_ms"]["p99"] <= max(base_b["one_way_delay_ms"]["p99"], floor) + 3.0, why
    if mode == "auto":
        # flow A runs on path 1 alone: its losses are never waited for (the
        # sender marks each packet that follows the flow's last on its path)
        assert lossy_a["one_way_delay_ms"]["median"] <= base_a["one_way_delay_ms"]["median"] + 1.0, why
        assert lossy_a["one_way_delay_ms"]["p99"] <= base_a["one_way_delay_ms"]["p99"] + 3.0, why


# --------------------------------------------------------- 3: rate = 20mbit
def tx_counter(lab, k: int) -> tuple[int, float]:
    """Bytes isp k has sent up (Ethernet frames), and when they were read."""
    b = lab.isp_bytes(k)["up"]
    return b, time.monotonic()


@pytest.mark.parametrize("mode", ["weighted", "auto"])
def test_rate_cap_holds_within_5_percent(shaped_tunnel, mode):
    """`rate = 20mbit` on path 1 of 2 x 100 Mbit/s, UDP offered above it
    (weights 1:1 would give path 1 30 Mbit/s; auto fills path 1 first, the
    other path being 5 ms farther): path 1 carries 20 Mbit/s ± 5 % over a
    5-s window, counted on the isp link.  The cap counts IP packets (here
    1288 bytes: the 1260-byte datagram and 28 bytes of IPv4 and UDP); the
    link adds 14 bytes of Ethernet to each: +1.1 %."""
    delays = {2: (5, 0)} if mode == "auto" else None
    kw = AUTO if mode == "auto" else {}
    t = shaped_tunnel([100, 100], delays, path_keys={1: {"rate": "20mbit"}}, **kw)
    lab = t.lab
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), 5004, idle=3)
    snd = traffic.ToolProcess(lab, lab.lanA, [
        "udp-send", "--to", lab.lan_b_addr(), "--port", "5004", "--rate-mbit", "60",
        "--size", "1200", "--duration", "9"])
    # the window opens once path 1 has carried 2 MB of the stream (auto
    # has learnt the paths by then), and closes 5 s later
    b0, _ = tx_counter(lab, 1)
    deadline = time.monotonic() + 10
    while (start := tx_counter(lab, 1))[0] - b0 < 2_000_000:
        assert time.monotonic() < deadline and snd.proc.poll() is None, \
            f"path 1 carried {start[0] - b0} bytes\n{path_events(t)}"
        time.sleep(0.02)   # polling the counter, with a deadline
    time.sleep(5.0)        # the measurement window itself
    end = tx_counter(lab, 1)
    assert snd.proc.poll() is None, "the stream ended inside the window"
    snd.result(30)
    rx.result()
    mbit = (end[0] - start[0]) * 8 / (end[1] - start[1]) / 1e6
    print(f"path 1 carried {mbit:.2f} Mbit/s")
    why = f"path 1 carried {mbit:.2f} Mbit/s (Ethernet frames)\n{counters(t)}\n{path_events(t)}"
    assert abs(mbit - 20) <= 1.0, why
    # the IP packets, without the Ethernet header: the cap itself, to 1.5 %
    assert abs(mbit * 1288 / 1302 - 20) <= 0.3, why


# ------------------------------------- 4: a sparse flow beside a backlogged one
def test_sparse_flow_does_not_wait_behind_a_bulk_flow(shaped_tunnel):
    """Both paths capped at 10 Mbit/s (`rate`), flow A offers 40: the pacing
    backlog stays full of A (its packets wait there up to MPT_PACE_MAX_MS,
    then are dropped).  Flow B, 1 Mbit/s, takes turns with A in the backlog
    (mpt_fq.h): it waits behind at most one of A's packets, not behind A's
    whole queue, and loses nothing."""
    t = shaped_tunnel([100, 100], path_keys={1: {"rate": "10mbit"}, 2: {"rate": "10mbit"}})
    lab = t.lab
    src, dst = lab.lan_a_addr(), lab.lan_b_addr()

    def queue(sport, dport):      # the client's backlog queue (park(), peer 0)
        return flow_bucket(src, dst, sport, dport, 1 << 16) % lib.MPT_FQ_QUEUES
    sport_b = 40002
    sport_a = next(p for p in range(40001, 40200, 2) if queue(p, PORT_A) != queue(sport_b, PORT_B))
    snap = snapshot(t)
    res_a, res_b = two_flows(lab, sport_a, sport_b, mbit_a=40, mbit_b=1)
    d = {"A": res_a["one_way_delay_ms"], "B": res_b["one_way_delay_ms"]}
    why = (f"one-way delay ms {d}\nlost A {res_a['lost']} of {res_a['sent']}, "
           f"B {res_b['lost']} of {res_b['sent']}\n{counters(t, snap)}\n{path_events(t)}")
    print(why)
    # A kept the backlog full: about half of it dropped, the rest waited long
    drops = snapshot(t)["client"]["drop_pacing"] - snap["client"].get("drop_pacing", 0)
    assert drops >= 0.3 * res_a["sent"], why
    assert d["A"]["median"] >= 0.5 * lib.MPT_PACE_MAX_MS, why
    # B passed it: complete, in order, and at the links' own delay (one of
    # A's packets at 20 Mbit/s is 0.5 ms)
    assert res_b["lost"] == 0 and res_b["in_order"] and res_b["duplicates"] == 0, why
    assert d["B"]["median"] <= 2.0 and d["B"]["p99"] <= 5.0, why
