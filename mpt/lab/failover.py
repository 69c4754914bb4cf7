"""The failover scenario, shared by the demo, the benchmark and the tests.

A numbered UDP stream runs from lanA to lanB through the tunnel; path 1 fails
at `fail_at` seconds and is restored at `restore_at`, either silently (`mode
= "blackhole"`: isp1 drops everything, no carrier event) or by carrier loss
(`mode = "carrier"`: the link is set down at rtrA).  Per-path throughput is
sampled every `interval` seconds from the isp links' byte counters.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import traffic

MODES = ("blackhole", "carrier", "none")
EVENT_TEXT = {("carrier", True): "path 1 unplugged (carrier lost)",
              ("carrier", False): "path 1 plugged back",
              ("blackhole", True): "path 1 blackholed (silent)",
              ("blackhole", False): "path 1 restored"}
CARRYING = 50_000     # bytes/s on the isp link above which a path carries data


@dataclass
class Scenario:
    send_mbit: float = 30
    size: int = 1200
    seconds: float = 17
    fail_at: float | None = 5
    restore_at: float | None = 12
    mode: str = "blackhole"
    interval: float = 0.5
    port: int = 5000


@dataclass
class Outcome:
    samples: list = field(default_factory=list)      # {"t", "paths": [Mbit/s], "total"}
    stream: dict = field(default_factory=dict)       # the receiver's statistics
    restored_after: float | None = None              # s from restore until path 1 carried data
    events: list = field(default_factory=list)       # (t, what)

    def summary(self, sc: Scenario) -> dict:
        s = self.stream
        return {
            "mode": sc.mode, "offered_mbit": sc.send_mbit, "datagram": sc.size,
            "seconds": sc.seconds, "fail_at": sc.fail_at, "restore_at": sc.restore_at,
            "sent": s.get("sent"), "received": s.get("unique"), "lost": s.get("lost"),
            "loss_pct": round(100 * s["lost"] / s["sent"], 4) if s.get("sent") else None,
            "in_order": s.get("in_order"), "duplicates": s.get("duplicates"),
            "longest_gap_ms": s.get("longest_gap_ms"),
            "path1_carrying_again_after_s": (round(self.restored_after, 3)
                                             if self.restored_after is not None else None),
            "events": self.events,
        }


def _fail(lab, mode: str, on: bool) -> None:
    if mode == "blackhole":
        lab.blackhole(1, on)
    elif mode == "carrier":
        (lab.link_down if on else lab.link_up)(1)


def run(lab, sc: Scenario, on_sample=None) -> Outcome:
    """Run the scenario in a lab whose tunnel is up; `on_sample(row)` is
    called for each throughput sample as it is taken."""
    if sc.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    out = Outcome()
    rx = traffic.start_udp_receiver(lab, lab.lanB, lab.lan_b_addr(), sc.port,
                                    max_time=sc.seconds + 30)
    tx = traffic.ToolProcess(lab, lab.lanA, [
        "udp-send", "--to", lab.lan_b_addr(), "--port", str(sc.port), "--rate-mbit",
        str(sc.send_mbit), "--size", str(sc.size), "--duration", str(sc.seconds)])
    start = time.monotonic()
    failed = restored = False
    restore_time = None
    k = range(1, lab.paths + 1)
    last = [lab.isp_bytes(i)["up"] for i in k]
    last_t = start
    next_sample = start + sc.interval
    fine = 0.02   # around the restore, path 1 is watched closely
    while True:
        now = time.monotonic()
        t = now - start
        if sc.mode != "none" and not failed and sc.fail_at is not None and t >= sc.fail_at:
            _fail(lab, sc.mode, True)
            failed = True
            out.events.append((round(time.monotonic() - start, 3), EVENT_TEXT[sc.mode, True]))
        if failed and not restored and sc.restore_at is not None and t >= sc.restore_at:
            _fail(lab, sc.mode, False)
            restored = True
            restore_time = time.monotonic()
            out.events.append((round(restore_time - start, 3), EVENT_TEXT[sc.mode, False]))
            base1, base_t = lab.isp_bytes(1)["up"], time.monotonic()
        if restored and out.restored_after is None:
            b1 = lab.isp_bytes(1)["up"]
            now2 = time.monotonic()
            if (b1 - base1) / max(now2 - base_t, 1e-3) > CARRYING:
                out.restored_after = base_t - restore_time
                out.events.append((round(base_t - start, 3), "path 1 carries data again"))
            base1, base_t = b1, now2
        if now >= next_sample:
            cur = [lab.isp_bytes(i)["up"] for i in k]
            dt = now - last_t
            mbit = [(b - a) * 8 / dt / 1e6 for a, b in zip(last, cur)]
            row = {"t": round(t, 2), "paths": [round(x, 2) for x in mbit],
                   "total": round(sum(mbit), 2)}
            out.samples.append(row)
            if on_sample:
                on_sample(row)
            last, last_t = cur, now
            next_sample += sc.interval
            continue
        if next_sample > start + sc.seconds + 1e-6:
            break
        wake = next_sample
        if failed and not restored and sc.restore_at is not None:
            wake = min(wake, start + sc.restore_at)
        elif not failed and sc.fail_at is not None and sc.mode != "none":
            wake = min(wake, start + sc.fail_at)
        if restored and out.restored_after is None:
            wake = min(wake, time.monotonic() + fine)
        time.sleep(max(0.0, wake - time.monotonic()))   # a clock for the scenario, not a sync
    tx.result(60)
    out.stream = rx.result(60)
    return out
