"""Shared helpers for the benchmarks: iperf3 runs inside a lab."""
from __future__ import annotations

import json
import subprocess

IPERF_PORT = 5201


def iperf3(lab, src_ns: str, dst_ns: str, dst_addr: str, *, seconds: float = 8,
           udp_mbit: float | None = None, size: int = 1200, cc: str | None = None) -> float:
    """Goodput in Mbit/s measured at the receiver of one TCP flow (congestion
    control `cc`, else the system's default), or of one UDP flow sent at
    `udp_mbit`."""
    srv = lab.popen(dst_ns, ["iperf3", "-s", "-1", "-B", dst_addr, "-p", str(IPERF_PORT),
                             "--forceflush"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in srv.stdout:   # wait until it listens
        if "listening" in line:
            break
    argv = ["iperf3", "-c", dst_addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if udp_mbit:
        argv += ["-u", "-b", f"{udp_mbit}M", "-l", str(size)]
    elif cc:
        argv += ["-C", cc]
    r = lab.run(src_ns, *argv, check=False, timeout=seconds + 30)
    try:
        srv.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.communicate()
    if r.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    end = json.loads(r.stdout)["end"]
    if udp_mbit:
        s = end["sum"]
        # bytes the receiver got: sent minus lost, over the test time
        return (s["packets"] - s["lost_packets"]) * size * 8 / s["seconds"] / 1e6
    return end["sum_received"]["bits_per_second"] / 1e6


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
