"""The UDP failover demo: a two-path tunnel in a namespace lab on this machine.

Builds lanA - rtrA - (isp1, isp2) - rtrB - lanB with RATE Mbit/s per path,
starts mptd on both routers and sends a numbered UDP stream from lanA to lanB.
Path 1 is unplugged at 5 s (carrier loss at rtrA; --mode blackhole makes it a
silent failure in isp1 instead) and plugged back at 12 s.  The throughput of
each path is printed every half second; at the end a PNG plot and a JSON
summary (packets sent/lost, longest gap, time until path 1 carried traffic
again) are written to --out.

    python -m mpt.lab.demo [--rate 20] [--send 30] [--mode carrier|blackhole] [--out demo-out]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import failover
from .topology import Lab
from .tunnel import Tunnel


def plot(out: failover.Outcome, sc: failover.Scenario, path: str, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = out.samples
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i in range(len(rows[0]["paths"])):
        ax.plot(t, [r["paths"][i] for r in rows], label=f"wan{i + 1}", marker=".")
    ax.plot(t, [r["total"] for r in rows], label="total", linewidth=2.5, color="black")
    for i, (when, what) in enumerate(out.events[:2]):   # the unplug and the replug
        ax.axvline(when, color="red" if i == 0 else "green", linestyle="--", alpha=0.7)
        ax.annotate(what, (when, ax.get_ylim()[1] * 0.02), rotation=90, fontsize=8,
                    va="bottom", ha="right")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Mbit/s on the wire (isp links)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpt.lab.demo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20, help="Mbit/s of each path (default 20)")
    ap.add_argument("--send", type=float, default=30, help="UDP stream in Mbit/s (default 30)")
    ap.add_argument("--seconds", type=float, default=17, help="length of the stream")
    ap.add_argument("--unplug", type=float, default=5, help="when path 1 fails (s)")
    ap.add_argument("--replug", type=float, default=12, help="when path 1 comes back (s)")
    ap.add_argument("--mode", choices=failover.MODES, default="carrier",
                    help="carrier: link down at rtrA; blackhole: silent drop in isp1")
    ap.add_argument("--out", default="demo-out", help="directory for summary.json and plot.png")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    sc = failover.Scenario(send_mbit=a.send, seconds=a.seconds, fail_at=a.unplug,
                           restore_at=a.replug, mode=a.mode)

    with Lab(paths=2, rate_mbit=a.rate) as lab:
        print(f"lab {lab.prefix}: lanA - rtrA = 2 x {a.rate:g} Mbit/s = rtrB - lanB")
        t = Tunnel(lab)
        try:
            t.wait_up()
            print(f"tunnel up on both paths; UDP {a.send:g} Mbit/s lanA -> lanB for "
                  f"{a.seconds:g} s; path 1 {a.mode} at {a.unplug:g} s, back at {a.replug:g} s")
            print(f"{'time':>6}  {'wan1':>12}  {'wan2':>12}  {'total':>12}")
            out = failover.run(lab, sc, lambda r: print(
                f"{r['t']:5.1f}s  " + "  ".join(f"{x:7.2f} Mbit/s" for x in r["paths"])
                + f"  {r['total']:7.2f} Mbit/s", flush=True))
        finally:
            t.stop()
    summary = out.summary(sc)
    summary["rate_per_path_mbit"] = a.rate
    summary["samples"] = out.samples
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    png = plot(out, sc, os.path.join(a.out, "plot.png"),
               f"UDP {a.send:g} Mbit/s over 2 x {a.rate:g} Mbit/s, path 1 {a.mode} "
               f"{a.unplug:g}-{a.replug:g} s")
    for when, what in out.events:
        print(f"{when:6.2f}s  {what}")
    print(f"sent {summary['sent']}, received {summary['received']}, lost {summary['lost']} "
          f"({summary['loss_pct']} %), longest gap {summary['longest_gap_ms']:.1f} ms, "
          f"path 1 carrying again {summary['path1_carrying_again_after_s']} s after replug")
    if a.send > a.rate and summary["lost"]:
        print(f"(while path 1 was out, the {a.send:g} Mbit/s stream did not fit in the one "
              f"{a.rate:g} Mbit/s path left: those datagrams were lost to capacity; "
              f"with --send {a.rate * 0.75:g} the stream fits in one path)")
    print(f"summary: {os.path.join(a.out, 'summary.json')}" + (f", plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
