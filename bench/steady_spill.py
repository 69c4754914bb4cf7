"""A steady flow just under the fast path's capacity (issue 4, auto): how
much of it the scheduler spills to the slow path.

The lte pair of bench/unequal.py (100 Mbit/s, 10 ms RTT + 20 Mbit/s,
60 ms ± 10 ms RTT).  After the same warm-up, one UDP flow at --mbit (default
80: about 87 % of what the fast path delivers through the tunnel) runs for
--seconds.  Every packet spilled to the slow path arrives 50 ms late and
holds the flow's later packets in the receiver's reorder buffer, so the
share on wan2 should be near zero.  Reported per run: the goodput, the share
of the flow's bytes sent on wan2, and each path's capacity estimate at the
end.

    python bench/steady_spill.py [--runs 3] [--mbit 80] [--seconds 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unequal  # noqa: E402  (bench/ is not a package)
from common import iperf3  # noqa: E402


def one_run(mbit: float, seconds: float) -> dict:
    sc = unequal.SCENARIOS["lte"]
    lab = unequal.shaped_lab(sc["paths"])
    try:
        t = unequal.start_tunnel(lab, "auto", sc["weights"])
        unequal.warm_up(lab, 1.05 * sum(r for r, _, _ in sc["paths"]))
        before = {p["name"]: p["tx_bytes"] for p in t.client.status()["paths"]}
        goodput = iperf3(lab, lab.lanA, lab.lanB, lab.lan_b_addr(), seconds=seconds,
                         udp_mbit=mbit)
        paths = t.client.status()["paths"]
        t.stop()
    finally:
        lab.close()
    sent = {p["name"]: p["tx_bytes"] - before[p["name"]] for p in paths}
    return {"goodput_mbit": round(goodput, 2),
            "wan2_share": round(sent["wan2"] / (sum(sent.values()) or 1), 5),
            "capacity_mbit": {p["name"]: p["capacity_mbps"] for p in paths}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mbit", type=float, default=80)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--out", help="JSON file (default: print only)")
    a = ap.parse_args()
    runs = []
    for _ in range(a.runs):
        runs.append(one_run(a.mbit, a.seconds))
        print(json.dumps(runs[-1]), flush=True)
    result = {"command": " ".join(["bench/steady_spill.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(), "runs": runs,
              "median_wan2_share": statistics.median(r["wan2_share"] for r in runs)}
    print(f"median share spilled to wan2: {result['median_wan2_share']:.4%}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
