"""Unequal links benchmark (issue 4: delay line, auto scheduler, pacing,
per-flow reordering).

Three pairs of links (rate Mbit/s, one-way delay ms each direction, jitter
± ms each direction, set with Lab.set_rate / Lab.set_delay):

    equal      100, 5       + 25, 5          (equal delay)
    rtt        50, 5        + 50, 30         (10 ms vs 60 ms RTT)
    lte        100, 5       + 20, 30 ± 5     (10 ms + 60 ms RTT, 10 ms of RTT jitter)

For each pair, in the same run:
* each path alone through the tunnel (a one-path lab of that shape): one
  TCP flow and one UDP flow (iperf3, goodput at the receiver); their sum is
  what two paths should add up to, the better one is "the best single path";
* both paths through the tunnel, for each scheduler (`weighted` with weights
  in the ratio of the rates, `auto`, and `auto-proxy`: auto with the TCP
  proxy on, so the TCP flow goes over MPTCP, one subflow per path, as mptd
  carries LAN TCP when `[tcp]` is configured; iperf3's fixed time cuts off
  what the relays still hold, so that figure errs low): the same TCP and UDP
  flows; then
  ping lanA -> lanB through the idle tunnel (alternating with ping rtrA ->
  rtrB over the bare fastest path, wan1) and while one TCP flow saturates
  the tunnel, next to the same ping over the bare wan1 while one TCP flow
  saturates that path alone (tunnel idle).  The datapath counters and the
  daemons' path events (suspect, stall reports) go into the JSON.
Every tunnel lab first carries a warm-up UDP stream (auto learns each
path's capacity from traffic; the other labs get the same, to be measured
alike).  UDP is offered at 1.05 x the rates' sum in 1200-byte datagrams.

    python bench/unequal.py [--seconds 8] [--repeat 3] [--pings 100]
                            [--only equal,rtt,lte] [--modes weighted,auto,auto-proxy]
    python bench/unequal.py --retable docs/bench-unequal-<date>.json

Writes docs/bench-unequal-<date>.json and prints a table.  The latency
targets are judged for the auto modes only: weighted mode sends every other ping
over the slow path, so its median is the slow path's or the fast one's by
chance (its figures are in the table all the same).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import iperf3, median  # noqa: E402

from mpt.lab import traffic  # noqa: E402
from mpt.lab.topology import Lab  # noqa: E402
from mpt.lab.tunnel import Tunnel  # noqa: E402

# name -> [(rate Mbit/s, one-way delay ms, jitter ms)] per path; weights for `weighted`
SCENARIOS = {
    "equal": {"paths": [(100, 5, 0), (25, 5, 0)], "weights": [4, 1]},
    "rtt": {"paths": [(50, 5, 0), (50, 30, 0)], "weights": [1, 1]},
    "lte": {"paths": [(100, 5, 0), (20, 30, 5)], "weights": [5, 1]},
}
WARMUP_S = 3.0
SATURATE_RAMP_S = 2.0     # TCP's slow start before the pings under load begin
TCP_CC = "cubic"          # congestion control of the TCP flows (--cc)


def shaped_lab(shapes) -> Lab:
    lab = Lab(paths=len(shapes), rate_mbit=[r for r, _, _ in shapes])
    try:
        for k, (_, d, j) in enumerate(shapes, start=1):
            if d or j:
                lab.set_delay(k, d, j)
    except BaseException:
        lab.close()
        raise
    return lab


def start_tunnel(lab, mode: str | None, weights) -> Tunnel:
    kw = {}
    if mode in ("auto", "auto-proxy"):
        kw = dict(client={"scheduler": "auto"}, server={"scheduler": "auto"},
                  tcp_proxy=mode == "auto-proxy")
    elif mode == "weighted":
        kw = dict(weights=weights)
    t = Tunnel(lab, **kw)
    t.wait_up(timeout=20)
    # both sides know every path's RTT before anything is measured
    deadline = time.monotonic() + 15
    while not all(p["rtt_ms"] for d in (t.client, t.server) for p in d.status()["paths"]):
        if time.monotonic() > deadline:
            raise RuntimeError("RTTs not measured after 15 s")
        time.sleep(0.05)
    return t


def warm_up(lab, rate_mbit: float) -> None:
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), 5999)
    traffic.run_udp_send(lab, lab.lanA, lab.lan_b_addr(), 5999, rate_mbit=rate_mbit,
                         size=1200, duration=WARMUP_S)
    rx.result()


def pings(lab, ns: str, to: str, count: int, dev: str | None = None) -> list[float]:
    args = ["ping", "--to", to, "--count", str(count), "--timeout", "1"]
    if dev:
        args += ["--dev", dev]
    res = traffic.ToolProcess(lab, ns, args).result(count + 30)
    return res["rtt_ms"]


def pings_under_tcp(lab, src, dst, addr, ping_to, count, seconds, dev=None) -> dict:
    """Pings from src while one TCP flow src -> addr runs (started first)."""
    out = {}

    def flow():
        try:
            out["tcp_mbit"] = iperf3(lab, src, dst, addr, seconds=seconds, cc=TCP_CC)
        except Exception as e:   # reported, not fatal for the pings
            out["tcp_error"] = str(e)

    th = threading.Thread(target=flow)
    th.start()
    time.sleep(SATURATE_RAMP_S)   # measurement design: pings once the flow is going
    out["rtt_ms"] = pings(lab, src, ping_to, count, dev)
    out["tcp_ran_throughout"] = th.is_alive()
    th.join()
    return out


def idle_pings(lab, count: int, rounds: int = 5) -> tuple[list[float], list[float]]:
    """Pings over the bare wan1 (rtrA -> the server address) and through the
    idle tunnel (lanA -> lanB), alternating in `rounds` so that drift in the
    machine's load hits both alike."""
    bare, tunnel = [], []
    for _ in range(rounds):
        bare += pings(lab, lab.rtrA, lab.server_addr(), max(1, count // rounds), dev="wan1")
        tunnel += pings(lab, lab.lanA, lab.lan_b_addr(), max(1, count // rounds))
    return bare, tunnel


def stats(rtts: list[float]) -> dict:
    if not rtts:
        return {"n": 0, "median": None}
    q = sorted(rtts)
    return {"n": len(q), "median": round(statistics.median(q), 3),
            "p90": round(q[int(0.9 * (len(q) - 1))], 3), "max": round(q[-1], 3)}


def throughput(lab, src, dst, addr, udp_mbit, seconds, repeat) -> dict:
    out = {"tcp": [], "udp": []}
    for _ in range(repeat):
        out["tcp"].append(round(iperf3(lab, src, dst, addr, seconds=seconds, cc=TCP_CC), 2))
        out["udp"].append(round(iperf3(lab, src, dst, addr, seconds=seconds,
                                       udp_mbit=udp_mbit), 2))
    return {k: {"runs": v, "median": median(v)} for k, v in out.items()}


def single_path(shape, seconds, repeat) -> dict:
    with shaped_lab([shape]) as lab:
        t = start_tunnel(lab, None, None)
        try:
            warm_up(lab, shape[0] * 0.9)
            return throughput(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), shape[0] * 1.05,
                              seconds, repeat)
        finally:
            t.stop()


def bare_fastest(lab, seconds, pcount) -> dict:
    """Pings over rtrA's wan1 without the tunnel (rtrA -> the server
    address) while one TCP flow saturates that path alone."""
    sat = pings_under_tcp(lab, lab.rtrA, lab.rtrB, lab.server_addr(), lab.server_addr(),
                          pcount, seconds + SATURATE_RAMP_S, dev="wan1")
    return {"ping_saturated": stats(sat["rtt_ms"]), "tcp_during_pings": sat.get("tcp_mbit"),
            "tcp_ran_throughout": sat["tcp_ran_throughout"], "error": sat.get("tcp_error")}


def nonzero_counters(t: Tunnel) -> dict:
    return {side: {k: v for k, v in d.status()["peers"][0]["counters"].items() if v}
            for side, d in (("client", t.client), ("server", t.server))}


def two_paths(sc, mode, seconds, repeat, pcount) -> dict:
    shapes = sc["paths"]
    total = sum(r for r, _, _ in shapes)
    with shaped_lab(shapes) as lab:
        t = start_tunnel(lab, mode, sc["weights"])
        try:
            bare = bare_fastest(lab, seconds, pcount)   # tunnel idle meanwhile
            warm_up(lab, total * 0.9)
            res = throughput(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), total * 1.05,
                             seconds, repeat)
            bare_idle, idle = idle_pings(lab, pcount)
            sat = pings_under_tcp(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), lab.lan_b_addr(),
                                  pcount, seconds + SATURATE_RAMP_S)
            res["ping_idle"] = stats(idle)
            res["ping_saturated"] = stats(sat["rtt_ms"])
            res["tcp_during_pings"] = sat.get("tcp_mbit")
            res["tcp_ran_throughout"] = sat["tcp_ran_throughout"]
            bare["ping_idle"] = stats(bare_idle)
            res["bare_fastest_path"] = bare
            res["counters"] = nonzero_counters(t)
            st = t.client.status()
            res["client_paths"] = [{k: p.get(k) for k in ("name", "rtt_ms", "share",
                                                         "capacity_mbps", "flaps")}
                                   for p in st["paths"]]
            res["client_drop_pacing"] = st["peers"][0]["counters"].get("drop_pacing")
            res["path_events"] = [ln.split("INFO: ", 1)[-1]
                                  for d in (t.client, t.server)
                                  for ln in d.output().splitlines()
                                  if "suspect" in ln or "stopped arriving" in ln]
        finally:
            t.stop()
    return res


def evaluate(name, r) -> list[dict]:
    """The issue's targets for scenario `name` from its results `r`."""
    out = []
    s1, s2 = (r["single"][k] for k in ("path1", "path2"))

    def add(what, value, ok):
        out.append({"scenario": name, "target": what, "value": value, "met": ok})

    for mode, m in r["two_paths"].items():
        for proto in ("tcp", "udp"):
            agg = m[proto]["median"]
            ssum = s1[proto]["median"] + s2[proto]["median"]
            best = max(s1[proto]["median"], s2[proto]["median"])
            frac = round(agg / ssum, 4)
            m[f"{proto}_of_sum"] = frac
            m[f"{proto}_vs_best_single"] = round(agg / best, 4)
            if name == "equal":
                add(f"{mode} {proto} >= 95 % of the sum", frac, frac >= 0.95)
            elif name == "rtt" and mode.startswith("auto"):
                add(f"{mode} {proto} >= 90 % of the sum", frac, frac >= 0.90)
            elif name == "lte" and mode.startswith("auto"):
                add(f"{mode} {proto} >= 85 % of the sum and >= best single", frac,
                    frac >= 0.85 and agg >= best)
        bare = m["bare_fastest_path"]
        if m["ping_idle"]["median"] is not None and bare["ping_idle"]["median"] is not None:
            added = round(m["ping_idle"]["median"] - bare["ping_idle"]["median"], 3)
            m["ping_idle_added_ms"] = added
            if mode.startswith("auto"):
                add(f"{mode}: tunnel adds <= 0.2 ms median to an idle ping (fastest path)",
                    added, added <= 0.2)
        if m["ping_saturated"]["median"] is not None and m["ping_idle"]["median"] is not None:
            rise = round(m["ping_saturated"]["median"] - m["ping_idle"]["median"], 3)
            m["ping_rise_saturated_ms"] = rise
            if not mode.startswith("auto"):   # weighted spreads the pings over both delays
                continue
            add(f"{mode}: median ping rises <= 30 ms under one TCP flow "
                f"({m['tcp_during_pings']:.1f} Mbit/s)"
                + ("" if m["tcp_ran_throughout"] else ", TCP ended before the pings"),
                rise, rise <= 30 and m["tcp_ran_throughout"])
    return out


def table(results) -> str:
    lines = ["| scenario | flow | path 1 alone | path 2 alone | mode | 2 paths | of sum | vs best |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["scenarios"].items():
        s1, s2 = r["single"]["path1"], r["single"]["path2"]
        for mode, m in r["two_paths"].items():
            for proto in ("tcp", "udp"):
                lines.append(f"| {name} | {proto.upper()} | {s1[proto]['median']:.2f} | "
                             f"{s2[proto]['median']:.2f} | {mode} | {m[proto]['median']:.2f} | "
                             f"{m[f'{proto}_of_sum'] * 100:.1f} % | "
                             f"{m[f'{proto}_vs_best_single'] * 100:.1f} % |")
    lines += ["", "| scenario | mode | bare wan1 idle | tunnel idle | added | bare wan1 + TCP "
              "| tunnel + TCP | rise |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["scenarios"].items():
        for mode, m in r["two_paths"].items():
            b = m["bare_fastest_path"]
            bare_rise = (None if None in (b["ping_saturated"]["median"], b["ping_idle"]["median"])
                         else round(b["ping_saturated"]["median"] - b["ping_idle"]["median"], 3))
            lines.append(f"| {name} | {mode} | {b['ping_idle']['median']} | "
                         f"{m['ping_idle']['median']} | {m.get('ping_idle_added_ms')} | "
                         f"{b['ping_saturated']['median']} (+{bare_rise}) | "
                         f"{m['ping_saturated']['median']} | {m.get('ping_rise_saturated_ms')} |")
    lines += ["", "| target | value | met |", "| --- | --- | --- |"]
    for e in results["targets"]:
        lines.append(f"| {e['scenario']}: {e['target']} | {e['value']} | "
                     f"{'yes' if e['met'] else '**no**'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pings", type=int, default=100)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--modes", default="weighted,auto,auto-proxy")
    ap.add_argument("--cc", default="cubic",
                    help="TCP congestion control of the LAN hosts' flows (default cubic, "
                         "the default of Linux, Windows, macOS and Android; this "
                         "machine's system default is bbr)")
    ap.add_argument("--out", help="JSON file (default docs/bench-unequal-<date>.json)")
    ap.add_argument("--retable", metavar="JSON",
                    help="measure nothing: evaluate the targets of an earlier run's "
                         "JSON again (rewriting it) and print its table")
    a = ap.parse_args()
    if a.retable:
        with open(a.retable) as f:
            results = json.load(f)
        results["targets"] = [e for name, r in results["scenarios"].items()
                              for e in evaluate(name, r)]
        with open(a.retable, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(table(results))
        return 0
    global TCP_CC
    TCP_CC = a.cc
    names = [n for n in a.only.split(",") if n]
    modes = [m for m in a.modes.split(",") if m]
    results = {"command": " ".join(["bench/unequal.py", *sys.argv[1:]]),
               "date": datetime.date.today().isoformat(), "tcp_cc": a.cc,
               "scenarios": {}, "targets": []}
    for name in names:
        sc = SCENARIOS[name]
        r = results["scenarios"][name] = {"paths": sc["paths"], "weights": sc["weights"]}
        r["single"] = {f"path{k}": single_path(shape, a.seconds, a.repeat)
                       for k, shape in enumerate(sc["paths"], start=1)}
        r["two_paths"] = {mode: two_paths(sc, mode, a.seconds, a.repeat, a.pings)
                          for mode in modes}
        results["targets"] += evaluate(name, r)
    out = a.out or os.path.join(ROOT, "docs", f"bench-unequal-{results['date']}.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(table(results))
    print(f"\nraw: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
