"""Aggregation benchmark (issue: core tunnel).

One TCP flow and one UDP flow from lanA to lanB over 2 x RATE Mbit/s tbf
paths through the tunnel, next to the same flow through the tunnel over one
path, and over the bare link without a tunnel (the reference peer), all in
the same run, each repeated --repeat times (median reported).

    python bench/aggregate.py [--rate 100] [--seconds 8] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import iperf3, median  # noqa: E402

from mpt.lab.topology import Lab  # noqa: E402
from mpt.lab.tunnel import Tunnel  # noqa: E402


def measure(paths: int, rate: float, seconds: float, repeat: int, tunnel: bool) -> dict:
    out = {"tcp": [], "udp": []}
    with Lab(paths=paths, rate_mbit=rate) as lab:
        if tunnel:
            t = Tunnel(lab)
            t.wait_up()
            src, dst, addr = lab.lanA, lab.lanB, lab.lan_b_addr()
        else:   # the bare link: rtrA to rtrB's server address over wan1
            src, dst, addr = lab.rtrA, lab.rtrB, lab.server_addr()
        try:
            for _ in range(repeat):
                out["tcp"].append(iperf3(lab, src, dst, addr, seconds=seconds))
                out["udp"].append(iperf3(lab, src, dst, addr, seconds=seconds,
                                         udp_mbit=rate * paths * 1.05))
        finally:
            if tunnel:
                t.stop()
    return {k: {"runs": [round(x, 2) for x in v], "median": round(median(v), 2)}
            for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    res = {
        "bare_link": measure(1, a.rate, a.seconds, a.repeat, tunnel=False),
        "tunnel_1_path": measure(1, a.rate, a.seconds, a.repeat, tunnel=True),
        "tunnel_2_paths": measure(2, a.rate, a.seconds, a.repeat, tunnel=True),
    }
    for proto in ("tcp", "udp"):
        single = res["tunnel_1_path"][proto]["median"]
        agg = res["tunnel_2_paths"][proto]["median"]
        res[f"{proto}_ratio_to_sum_of_single_paths"] = round(agg / (2 * single), 4)
        res[f"{proto}_tunnel_vs_bare_single_path"] = round(
            single / res["bare_link"][proto]["median"], 4)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
