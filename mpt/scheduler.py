"""Scheduling policy: from path state to the table the C datapath follows.

The datapath spreads packets over the active paths by weight (smooth
weighted round-robin over bytes, csrc/mpt_sched.c); this module decides
which paths are active with which weight, and how long the receiver holds
packets waiting for a gap to fill.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOLD = 0.050    # reorder hold time while no RTT is known
MIN_HOLD = 0.005
MAX_HOLD = 1.0
HOLD_MARGIN = 0.020     # a path's queue may fill this much between two RTT samples
MODES = ("weighted",)


@dataclass(frozen=True)
class PathEntry:
    index: int
    weight: float
    active: bool


def path_table(paths) -> list[PathEntry]:
    """`paths`: objects with .index, .weight, .priority and .usable.  In
    `weighted` mode the usable paths of the best (lowest) priority present
    carry data, in proportion to their weights; higher priorities are
    backups, used only while no better path is usable."""
    paths = list(paths)
    usable = [p for p in paths if p.usable and p.weight > 0]
    best = min((p.priority for p in usable), default=None)
    return [PathEntry(p.index, p.weight, p in usable and p.priority == best) for p in paths]


def hold_time(configured: float | None, rtts: list[float], max_hold: float = MAX_HOLD,
              jitter: float = 0.0) -> float:
    """The reorder hold time: the configured one, else one derived from the
    spread of the paths' RTTs (one-way spread is about half the RTT spread;
    doubled for safety), plus four times the largest RTT variation (jitter,
    as an RTO counts it) and a margin for queues that fill between two RTT
    samples, at most max_hold; DEFAULT_HOLD (bounded too) while fewer than
    two RTTs are known."""
    if configured is not None:
        return configured
    if len(rtts) < 2:
        return min(max_hold, DEFAULT_HOLD)
    spread = (max(rtts) - min(rtts)) / 2
    return min(max_hold, max(MIN_HOLD, 2 * spread + 4 * jitter + HOLD_MARGIN))
