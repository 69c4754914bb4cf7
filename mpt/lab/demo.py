"""The demo: a two-path tunnel in a namespace lab on this machine.

Builds lanA - rtrA - (isp1, isp2) - rtrB - lanB with RATE Mbit/s per path,
starts mptd on both routers, sends a numbered UDP stream from lanA to lanB
and prints the throughput of each path every half second.  At the end it
writes a JSON summary and a PNG plot to --out.

    python -m mpt.lab.demo [--rate 20] [--send 30] [--seconds 10] [--out demo-out]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import traffic
from .topology import Lab
from .tunnel import Tunnel

INTERVAL = 0.5


def sample_rates(lab, seconds: float, on_tick=None) -> list[dict]:
    """Per-path Mbit/s (bytes leaving the isps towards rtrB) every INTERVAL."""
    rows = []
    start = time.monotonic()
    last = [lab.isp_bytes(k)["up"] for k in range(1, lab.paths + 1)]
    t_next = start + INTERVAL
    while t_next - start <= seconds + 1e-9:
        time.sleep(max(0.0, t_next - time.monotonic()))
        now = [lab.isp_bytes(k)["up"] for k in range(1, lab.paths + 1)]
        mbit = [(b - a) * 8 / INTERVAL / 1e6 for a, b in zip(last, now)]
        row = {"t": round(t_next - start, 2), "paths": [round(x, 2) for x in mbit],
               "total": round(sum(mbit), 2)}
        rows.append(row)
        if on_tick:
            on_tick(row)
        last = now
        t_next += INTERVAL
    return rows


def plot(rows: list[dict], path: str, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i in range(len(rows[0]["paths"])):
        ax.plot(t, [r["paths"][i] for r in rows], label=f"wan{i + 1}")
    ax.plot(t, [r["total"] for r in rows], label="total", linewidth=2, color="black")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Mbit/s on the wire (isp links)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpt.lab.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20, help="Mbit/s of each path (default 20)")
    ap.add_argument("--send", type=float, default=30, help="UDP stream in Mbit/s (default 30)")
    ap.add_argument("--seconds", type=float, default=10, help="length of the stream")
    ap.add_argument("--out", default="demo-out", help="directory for summary.json and plot.png")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)

    with Lab(paths=2, rate_mbit=a.rate) as lab:
        print(f"lab {lab.prefix}: lanA - rtrA = 2 x {a.rate:g} Mbit/s = rtrB - lanB")
        t = Tunnel(lab)
        try:
            t.wait_up()
            print("tunnel up on both paths; sending UDP "
                  f"{a.send:g} Mbit/s lanA -> lanB for {a.seconds:g} s")
            rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), 5000)
            tx = traffic.ToolProcess(lab, lab.lanA, [
                "udp-send", "--to", lab.lan_b_addr(), "--port", "5000",
                "--rate-mbit", str(a.send), "--size", "1200", "--duration", str(a.seconds)])
            print(f"{'time':>6}  {'wan1':>12}  {'wan2':>12}  {'total':>12}")
            rows = sample_rates(lab, a.seconds, lambda r: print(
                f"{r['t']:5.1f}s  " + "  ".join(f"{x:7.2f} Mbit/s" for x in r["paths"])
                + f"  {r['total']:7.2f} Mbit/s", flush=True))
            tx.result(30)
            res = rx.result(30)
            status = t.client.status()
        finally:
            t.stop()
    summary = {
        "rate_per_path_mbit": a.rate, "offered_mbit": a.send, "seconds": a.seconds,
        "sent": res["sent"], "received": res["unique"], "lost": res["lost"],
        "loss_pct": round(100 * res["lost"] / res["sent"], 3) if res["sent"] else None,
        "in_order": res["in_order"], "longest_gap_ms": res["longest_gap_ms"],
        "path_bytes": {p["name"]: p["tx_bytes"] for p in status["paths"]},
        "samples": rows,
    }
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    png = plot(rows, os.path.join(a.out, "plot.png"),
               f"UDP {a.send:g} Mbit/s over 2 x {a.rate:g} Mbit/s paths")
    print(f"sent {summary['sent']}, received {summary['received']}, lost {summary['lost']} "
          f"({summary['loss_pct']} %), in order: {summary['in_order']}, "
          f"longest gap {summary['longest_gap_ms']} ms")
    print(f"summary: {os.path.join(a.out, 'summary.json')}" + (f", plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
