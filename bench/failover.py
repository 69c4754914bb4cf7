"""Failover benchmark (issue: path health).

The standard failover test: UDP at 50 Mbit/s in 1200-byte datagrams over
2 x 100 Mbit/s paths; path 1 fails from 5 s to 12 s of a 17 s stream, either
silently (blackholed in its isp namespace, no carrier event) or by carrier
loss (link set down at rtrA).  Reports loss, the longest arrival gap, and how
long after the restore path 1 carried traffic again; the same stream with no
failure runs in the same invocation as the baseline.

    python bench/failover.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpt.lab import failover  # noqa: E402
from mpt.lab.topology import Lab  # noqa: E402
from mpt.lab.tunnel import Tunnel  # noqa: E402

KEYS = ("lost", "loss_pct", "longest_gap_ms", "path1_carrying_again_after_s", "in_order")


def one(mode: str) -> dict:
    with Lab(paths=2, rate_mbit=100) as lab:
        t = Tunnel(lab)
        try:
            t.wait_up()
            sc = failover.Scenario(send_mbit=50, size=1200, seconds=17, fail_at=5,
                                   restore_at=12, mode=mode)
            s = failover.run(lab, sc).summary(sc)
        finally:
            t.stop()
    return {k: s[k] for k in ("sent", *KEYS)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    res = {m: [one(m) for _ in range(a.repeat)] for m in ("none", "blackhole", "carrier")}
    for m, runs in res.items():
        res[m] = {"runs": runs,
                  "worst": {k: max((r[k] for r in runs if r[k] is not None), default=None)
                            for k in ("loss_pct", "longest_gap_ms",
                                      "path1_carrying_again_after_s")}}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
