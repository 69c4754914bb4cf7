"""Cost of authenticated encryption (issue: security).

CPU-bound throughput of one TCP flow from lanA to lanB through the tunnel
over one path with no rate limit (the CPU is the bottleneck), with each
cipher, in the same run: the runs of the ciphers are interleaved, so drift
in the shared machine's load hits all of them alike.  The figure is each
cipher's median over `cipher = none`'s (target: AEAD >= 80 %).

    python bench/crypto.py [--seconds 8] [--repeat 3]
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

CIPHERS = ("none", "aes-256-gcm", "chacha20-poly1305")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    runs = {c: [] for c in CIPHERS}
    with Lab(paths=1, rate_mbit=None) as lab:
        for _ in range(a.repeat):
            for c in CIPHERS:
                t = Tunnel(lab, client={"cipher": c}, server={"cipher": c})
                try:
                    t.wait_up()
                    runs[c].append(iperf3(lab, lab.lanA, lab.lanB, lab.lan_b_addr(),
                                          seconds=a.seconds))
                finally:
                    t.stop()
    res = {c: {"runs_mbit": [round(x, 1) for x in v], "median_mbit": round(median(v), 1)}
           for c, v in runs.items()}
    base = res["none"]["median_mbit"]
    for c in CIPHERS[1:]:
        res[c]["ratio_to_none"] = round(res[c]["median_mbit"] / base, 4)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
