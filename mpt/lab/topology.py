"""Network-namespace testbed: lanA — rtrA — isp1..ispN — rtrB — lanB.

Everything lives in namespaces created here, named ``<prefix>-<role>`` with a
per-run prefix ``m<PID><4 hex>`` so that :func:`cleanup_stale` can later remove
the leftovers of runs whose process died.  Only 198.18.0.0/15 (and 198.19.0.0/30
for the tunnel's inner addresses) and 2001:2::/48 are used.

Addressing (k = 1..N)::

    lanA  lan0  198.18.100.2/24   2001:2:0:100::2/64   default via rtrA
    rtrA  lan0  198.18.100.1/24   2001:2:0:100::1/64
          wan{k} 198.18.{k}.1/24  2001:2:0:{k}::1/64
          198.18.10.0/24 via 198.18.{k}.254 dev wan{k} metric k  (and v6 alike)
    ispk  a     198.18.{k}.254/24     2001:2:0:{k}::254/64
          b     198.18.{20+k}.254/24  2001:2:0:{20+k}::254/64
          tbf on the egress of b (upload, A→B) and of a (download, B→A)
          set_delay: delay, jitter, loss per direction (mpt.lab.delay)
    rtrB  isp{k} 198.18.{20+k}.1/24   2001:2:0:{20+k}::1/64
          srv0 (veth, peer srv0p also in rtrB: no dummy driver here) 198.18.10.2/32 2001:2:0:10::2/128   (the tunnel server)
          lan0  198.18.200.1/24   2001:2:0:200::1/64
    lanB  lan0  198.18.200.2/24   2001:2:0:200::2/64   default via rtrB

rtrA has no default route and no route to lanB: the tunnel daemon adds those.
Reverse-path filtering is off everywhere (replies from the server arrive on
every WAN while the best route to it points at wan1).

Note: ``ip link set wan{k} down`` makes the kernel delete the IPv4 routes through
the device *and* flush its IPv6 addresses (keep_addr_on_down = 0, as on a real
router); :meth:`Lab.link_up` puts both back.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Lab", "LabError", "cleanup_stale", "CLIENT_INNER", "SERVER_INNER",
           "tbf_params", "TUNNEL_PORT"]

TUNNEL_PORT = 4700
CLIENT_INNER = ("198.19.0.1/30", "2001:2:0:77::1/64")
SERVER_INNER = ("198.19.0.2/30", "2001:2:0:77::2/64")
SERVER_PREFIX = ("198.18.10.0/24", "2001:2:0:10::/64")
LAN_A_PREFIX = ("198.18.100.0/24", "2001:2:0:100::/64")
LAN_B_PREFIX = ("198.18.200.0/24", "2001:2:0:200::/64")

# Stale-run detection: "m" + decimal PID + 4 hex chars + "-" + role.
_PREFIX_RE = re.compile(r"^m(\d+)[0-9a-f]{4}-")

# tbf: the bucket must hold a few GSO/TSO bursts (veth hands tbf up to 64 kB
# skbs, which tbf segments when they exceed the bucket) and the queue enough
# for one TCP flow to keep the link busy.  Measured with iperf3 (one TCP flow,
# one isp, 5 s): 95.5-95.6 Mbit/s of goodput at 100 Mbit/s in both directions,
# 47.8 at 50, 19.1 at 20, 9.6 at 10 -- the rate less header overhead
# (1448/1514 = 95.6 %).  tbf counts Ethernet frames: a UDP stream of 1200-byte
# payloads gets 1200/1242 of the rate.
TBF_MIN_BURST = 32 * 1024          # bytes
TBF_BURST_TIME = 0.004             # bucket = 4 ms of the rate, if larger
TBF_LATENCY_MS = 20                # queue limit = burst + 20 ms of the rate


class LabError(RuntimeError):
    """A command in the lab failed."""


def tbf_params(mbit: float) -> list[str]:
    """tc arguments for a tbf at ``mbit`` Mbit/s (rate, burst, latency)."""
    rate_bps = mbit * 1e6
    burst = max(TBF_MIN_BURST, int(rate_bps / 8 * TBF_BURST_TIME))
    return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst),
            "latency", f"{TBF_LATENCY_MS}ms"]


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30,
         input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True,
                            timeout=timeout, input=input, env=env)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and cp.returncode != 0:
        extra = f"\ninput:\n{input}" if input else ""
        raise LabError(f"command failed (exit {cp.returncode}): {' '.join(argv)}\n"
                       f"stderr: {cp.stderr.strip()}{extra}")
    return cp


def _netns_list() -> list[str]:
    cp = _run(["ip", "-j", "netns", "list"], check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return []
    return [e["name"] for e in json.loads(cp.stdout)]


def _kill_netns_processes(ns: str, deadline: float = 2.0) -> None:
    """SIGKILL every process in namespace ``ns`` and wait until none is left."""
    end = time.monotonic() + deadline
    while True:
        cp = _run(["ip", "netns", "pids", ns], check=False)
        pids = [int(p) for p in cp.stdout.split() if p.strip().isdigit()]
        if not pids or time.monotonic() > end:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)  # polling the condition "no pid left", with a deadline


def _delete_netns(names: Sequence[str]) -> None:
    for ns in names:
        _kill_netns_processes(ns)
    for ns in names:
        _run(["ip", "netns", "del", ns], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove namespaces ``m<PID>xxxx-*`` whose PID no longer runs."""
    stale = []
    for ns in _netns_list():
        m = _PREFIX_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(ns)
    _delete_netns(stale)
    return stale


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class Lab:
    """The namespace topology; a context manager.  See the module docstring."""

    def __init__(self, paths: int = 2,
                 rate_mbit: float | Sequence[float] | None = 100,
                 prefix: str | None = None):
        if paths < 1 or paths > 9:
            raise ValueError("paths must be 1..9")
        self.paths = paths
        self.prefix = prefix or f"m{os.getpid()}{secrets.token_hex(2)}"
        self.lanA = f"{self.prefix}-lanA"
        self.rtrA = f"{self.prefix}-rtrA"
        self.rtrB = f"{self.prefix}-rtrB"
        self.lanB = f"{self.prefix}-lanB"
        self.isp = [f"{self.prefix}-isp{k}" for k in range(1, paths + 1)]
        if rate_mbit is None or isinstance(rate_mbit, (int, float)):
            rates = [rate_mbit] * paths
        else:
            rates = list(rate_mbit)
            if len(rates) != paths:
                raise ValueError(f"{len(rates)} rates for {paths} paths")
        # current shaping per path: {"up": mbit|None, "down": mbit|None}
        self.rates = [{"up": r, "down": r} for r in rates]
        self._wan_host = {k: 1 for k in range(1, paths + 1)}
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ names
    @property
    def namespaces(self) -> list[str]:
        return [self.lanA, self.rtrA, *self.isp, self.rtrB, self.lanB]

    def isp_ns(self, k: int) -> str:
        self._check_path(k)
        return self.isp[k - 1]

    def _check_path(self, k: int) -> None:
        if not 1 <= k <= self.paths:
            raise ValueError(f"path {k} not in 1..{self.paths}")

    # -------------------------------------------------------------- addresses
    @staticmethod
    def server_addr(v6: bool = False) -> str:
        return "2001:2:0:10::2" if v6 else "198.18.10.2"

    @staticmethod
    def lan_a_addr(v6: bool = False) -> str:
        return "2001:2:0:100::2" if v6 else "198.18.100.2"

    @staticmethod
    def lan_b_addr(v6: bool = False) -> str:
        return "2001:2:0:200::2" if v6 else "198.18.200.2"

    def wan_addr(self, k: int, v6: bool = False) -> str:
        """rtrA's address on wan k."""
        self._check_path(k)
        return f"2001:2:0:{k}::1" if v6 else f"198.18.{k}.{self._wan_host[k]}"

    @staticmethod
    def isp_a_addr(k: int, v6: bool = False) -> str:
        """isp k's address facing rtrA (rtrA's next hop on wan k)."""
        return f"2001:2:0:{k}::254" if v6 else f"198.18.{k}.254"

    @staticmethod
    def rtr_b_isp_addr(k: int, v6: bool = False) -> str:
        """rtrB's address facing isp k."""
        return f"2001:2:0:{20 + k}::1" if v6 else f"198.18.{20 + k}.1"

    # ------------------------------------------------------------------ build
    def _batch(self, ns: str, lines: Sequence[str]) -> None:
        _run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")

    def _build(self) -> None:
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
        for ns in self.namespaces:
            # Before any interface exists, so new devices inherit "default".
            forward = 0 if ns in (self.lanA, self.lanB) else 1
            self.run(ns, "sysctl", "-q", "-w",
                     "net.ipv6.conf.all.accept_dad=0",
                     "net.ipv6.conf.default.accept_dad=0",
                     "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0",
                     f"net.ipv4.ip_forward={forward}",
                     f"net.ipv6.conf.all.forwarding={forward}")

        # lanA <-> rtrA
        self._batch(self.rtrA, [
            f"link add lan0 type veth peer name lan0 netns {self.lanA}",
            "link set dev lo up",
            "link set dev lan0 up",
            "addr add 198.18.100.1/24 dev lan0",
            "addr add 2001:2:0:100::1/64 dev lan0 nodad",
        ])
        self._batch(self.lanA, [
            "link set dev lo up",
            "link set dev lan0 up",
            "addr add 198.18.100.2/24 dev lan0",
            "addr add 2001:2:0:100::2/64 dev lan0 nodad",
            "route add default via 198.18.100.1 dev lan0",
            "route add ::/0 via 2001:2:0:100::1 dev lan0",
        ])
        # rtrB <-> lanB, server address
        self._batch(self.rtrB, [
            f"link add lan0 type veth peer name lan0 netns {self.lanB}",
            "link set dev lo up",
            "link set dev lan0 up",
            "addr add 198.18.200.1/24 dev lan0",
            "addr add 2001:2:0:200::1/64 dev lan0 nodad",
            # The kernel has no "dummy" driver: a veth pair with both ends in
            # rtrB serves as the always-up device holding the server address.
            "link add srv0 type veth peer name srv0p",
            "link set dev srv0p up",
            "link set dev srv0 up",
            "addr add 198.18.10.2/32 dev srv0",
            "addr add 2001:2:0:10::2/128 dev srv0 nodad",
        ])
        self._batch(self.lanB, [
            "link set dev lo up",
            "link set dev lan0 up",
            "addr add 198.18.200.2/24 dev lan0",
            "addr add 2001:2:0:200::2/64 dev lan0 nodad",
            "route add default via 198.18.200.1 dev lan0",
            "route add ::/0 via 2001:2:0:200::1 dev lan0",
        ])
        # the paths
        for k in range(1, self.paths + 1):
            isp = self.isp[k - 1]
            self._batch(self.rtrA, [
                f"link add wan{k} type veth peer name a netns {isp}",
                f"link set dev wan{k} up",
                f"addr add 198.18.{k}.1/24 dev wan{k}",
                f"addr add 2001:2:0:{k}::1/64 dev wan{k} nodad",
            ])  # routes go in once the isp side exists (below)
            self._batch(self.rtrB, [
                f"link add isp{k} type veth peer name b netns {isp}",
                f"link set dev isp{k} up",
                f"addr add 198.18.{20 + k}.1/24 dev isp{k}",
                f"addr add 2001:2:0:{20 + k}::1/64 dev isp{k} nodad",
                f"route add 198.18.{k}.0/24 via 198.18.{20 + k}.254 dev isp{k}",
                f"route add 2001:2:0:{k}::/64 via 2001:2:0:{20 + k}::254 dev isp{k}",
            ])
            self._batch(isp, [
                "link set dev lo up",
                "link set dev a up",
                "link set dev b up",
                f"addr add 198.18.{k}.254/24 dev a",
                f"addr add 2001:2:0:{k}::254/64 dev a nodad",
                f"addr add 198.18.{20 + k}.254/24 dev b",
                f"addr add 2001:2:0:{20 + k}::254/64 dev b nodad",
                f"route add 198.18.10.0/24 via 198.18.{20 + k}.1 dev b",
                f"route add 2001:2:0:10::/64 via 2001:2:0:{20 + k}::1 dev b",
            ])
            self._batch(self.rtrA, self._wan_routes(k, "replace"))
            self._apply_rate(k)

    def _wan_routes(self, k: int, verb: str = "replace") -> list[str]:
        return [
            f"route {verb} 198.18.10.0/24 via 198.18.{k}.254 dev wan{k} metric {k}",
            f"route {verb} 2001:2:0:10::/64 via 2001:2:0:{k}::254 dev wan{k} metric {k}",
        ]

    # ---------------------------------------------------------------- running
    def _exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, *argv: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``argv`` in namespace ``ns``; output captured as text."""
        return _run(self._exec_argv(ns, argv), check=check, timeout=timeout,
                    env=self._env())

    @staticmethod
    def _env(base: dict | None = None) -> dict:
        """The environment for commands in the lab: the project root is put on
        PYTHONPATH so ``python -m mpt...`` works without an install."""
        env = dict(base if base is not None else os.environ)
        root = _project_root()
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root if not pp else f"{root}{os.pathsep}{pp}"
        return env

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start ``argv`` in ``ns`` (Popen keywords pass through); terminated on close()."""
        if self._closed:
            raise LabError("lab is closed")
        env = self._env(kw.pop("env", None))
        p = subprocess.Popen(self._exec_argv(ns, argv), env=env, **kw)
        self._procs.append(p)
        return p

    def ping(self, ns: str, addr: str, dev: str | None = None,
             timeout: float = 1.0, count: int = 1, size: int = 56) -> bool:
        """One ICMP echo from ``ns`` (via ``dev`` like ``ping -I``); True if answered.

        A Python raw-socket ping (mpt.lab.traffic): this machine has no ping binary.
        """
        from . import traffic
        return traffic.ping(self, ns, addr, dev=dev, count=count, timeout=timeout,
                            size=size)

    def python_argv(self, module: str, *args: str) -> list[str]:
        """argv to run ``python -m module args`` with this interpreter."""
        return [sys.executable, "-m", module, *args]

    # -------------------------------------------------------------- failures
    def _operstate(self, ns: str, dev: str) -> str:
        cp = _run(["ip", "-n", ns, "-j", "link", "show", "dev", dev])
        return json.loads(cp.stdout)[0].get("operstate", "UNKNOWN")

    def operstate(self, k: int) -> str:
        """Operational state of rtrA's wan{k} ("UP", "DOWN", ...)."""
        self._check_path(k)
        return self._operstate(self.rtrA, f"wan{k}")

    def link_down(self, k: int) -> None:
        """Carrier event: ``ip link set wan{k} down`` in rtrA."""
        self._check_path(k)
        _run(["ip", "-n", self.rtrA, "link", "set", f"wan{k}", "down"])

    def link_up(self, k: int, timeout: float = 5.0, new_host: int | None = None) -> None:
        """Bring wan{k} back, wait for it to be UP, re-install addresses and routes.
        `new_host`: come back with 198.18.k.new_host instead (a new DHCP lease)."""
        self._check_path(k)
        if new_host is not None:
            if not 1 <= new_host <= 253:
                raise ValueError("new_host must be 1..253")
            _run(["ip", "-n", self.rtrA, "addr", "del",
                  f"198.18.{k}.{self._wan_host[k]}/24", "dev", f"wan{k}"], check=False)
            self._wan_host[k] = new_host
        _run(["ip", "-n", self.rtrA, "link", "set", f"wan{k}", "up"])
        end = time.monotonic() + timeout
        while self.operstate(k) != "UP":
            if time.monotonic() > end:
                raise LabError(f"wan{k} in {self.rtrA} not UP after {timeout}s")
            time.sleep(0.01)  # polling operstate with a deadline
        self._batch(self.rtrA, [
            f"addr replace 198.18.{k}.{self._wan_host[k]}/24 dev wan{k}",
            f"addr replace 2001:2:0:{k}::1/64 dev wan{k} nodad",
            *self._wan_routes(k),
        ])

    def blackhole(self, k: int, on: bool = True) -> None:
        """Silent failure: isp k drops everything it forwards (carrier stays up)."""
        ns = self.isp_ns(k)
        if on:
            _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=(
                "table inet mptlab_blackhole\n"
                "delete table inet mptlab_blackhole\n"
                "table inet mptlab_blackhole {\n"
                "  chain drop_all { type filter hook forward priority -300; policy drop; }\n"
                "}\n"))
        else:
            _run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet",
                  "mptlab_blackhole"], check=False)

    # ---------------------------------------------------------------- shaping
    def _apply_rate(self, k: int, only: str | None = None) -> None:
        """Put path k's qdiscs in place (``only``: one direction).  A direction
        with a delay has its rate where the delay backend wants it (see
        mpt.lab.delay), otherwise a tbf on the egress: b for up, a for down."""
        ns = self.isp[k - 1]
        for direction in ("up", "down"):
            if only is not None and only != direction:
                continue
            mbit = self.rates[k - 1][direction]
            if mbit is not None and mbit <= 0:
                raise ValueError("rate must be > 0 Mbit/s (or None)")
            for dev, args in self._delays.rate_qdiscs(k, direction, mbit):
                if args is not None:
                    _run(["tc", "-n", ns, "qdisc", *args])
                    continue
                cp = _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
                if cp.returncode != 0 and "No such file" not in cp.stderr \
                        and "Cannot delete qdisc with handle of zero" not in cp.stderr:
                    raise LabError(f"tc qdisc del dev {dev} in {ns}: {cp.stderr.strip()}")

    def set_rate(self, k: int, mbit: float | None, direction: str = "both") -> None:
        """Shape path k: "up" (A→B, egress of isp b), "down" (B→A), "both"; None = unshaped."""
        self._check_path(k)
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be up, down or both, not {direction!r}")
        for d in ("up", "down"):
            if direction in (d, "both"):
                self.rates[k - 1][d] = mbit
        self._apply_rate(k)

    # ------------------------------------------------------ delay, jitter, loss
    @property
    def _delays(self):
        """Per-link delay state (mpt.lab.delay.LinkDelays), made on first use."""
        d = self.__dict__.get("_delay_links")
        if d is None:
            from .delay import LinkDelays
            d = self._delay_links = LinkDelays(self)
        return d

    @property
    def delay_backend(self) -> str:
        """"netem" if the kernel has it, else "delayline" (mpt.lab.delay).
        $MPT_LAB_DELAY_BACKEND or assigning this (while no delay is set) forces one."""
        return self._delays.backend

    @delay_backend.setter
    def delay_backend(self, name: str) -> None:
        self._delays.set_backend(name)

    def set_delay(self, k: int, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                  loss: float = 0.0, direction: str = "both", *,
                  reorder: bool = False, distribution: str = "uniform") -> None:
        """One-way delay, jitter and random loss on path k: "up" (A→B), "down"
        (B→A) or "both" (each direction gets these values).

        ``jitter_ms``: uniform in ±jitter (or ``distribution="normal"``: its
        standard deviation); packets keep their order unless ``reorder``.
        ``loss``: probability 0..1 that a packet is dropped.  All zero: no
        delay stage at all (plain forwarding).  Combines with set_rate (the
        rate applies before the delay).  Changeable at any time; a running
        delay line keeps its queued packets.  See mpt.lab.delay."""
        self._check_path(k)
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be up, down or both, not {direction!r}")
        from .delay import DelayShape
        shape = DelayShape(delay_ms, jitter_ms, loss, reorder, distribution)
        for d in ("up", "down"):
            if direction in (d, "both"):
                self._delays.set(k, d, shape)

    def delay_stats(self, k: int, direction: str) -> dict | None:
        """The delay line's counters for path k, "up" or "down" (None: no delay
        line there; netem keeps its own in ``tc -s qdisc``)."""
        self._check_path(k)
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be up or down, not {direction!r}")
        return self._delays.stats(k, direction)

    def isp_bytes(self, k: int) -> dict:
        """{"up": tx bytes of isp k's b, "down": tx bytes of its a}."""
        ns = self.isp_ns(k)
        cp = _run(["ip", "-n", ns, "-s", "-j", "link", "show"])
        tx = {e["ifname"]: e["stats64"]["tx"]["bytes"] for e in json.loads(cp.stdout)}
        return {"up": tx["b"], "down": tx["a"]}

    def change_wan_address(self, k: int, new_host: int) -> None:
        """Replace rtrA's v4 address on wan k by 198.18.k.new_host/24 (a new lease)."""
        self._check_path(k)
        if not 1 <= new_host <= 253:
            raise ValueError("new_host must be 1..253")
        old = self._wan_host[k]
        self._batch(self.rtrA, [
            f"addr del 198.18.{k}.{old}/24 dev wan{k}",
            f"addr add 198.18.{k}.{new_host}/24 dev wan{k}",
        ])
        self._wan_host[k] = new_host
        self._batch(self.rtrA, self._wan_routes(k))

    # ---------------------------------------------------------------- configs
    def _control_path(self, role: str) -> str:
        return f"/run/mpt/{self.prefix}-{role}.sock"

    @staticmethod
    def _render(tunnel: dict, sections: list[tuple[str, dict]]) -> str:
        out = ["[tunnel]"]
        out += [f"{k} = {v}" for k, v in tunnel.items() if v is not None]
        for name, keys in sections:
            out.append("")
            out.append(f"[{name}]")
            out += [f"{k} = {v}" for k, v in keys.items() if v is not None]
        return "\n".join(out) + "\n"

    @staticmethod
    def _override(base: dict, overrides: dict) -> dict:
        d = dict(base)
        for k, v in overrides.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return d

    def client_conf(self, weights: Sequence[int | float] | None = None,
                    path_keys: dict[int, dict] | None = None,
                    **tunnel_overrides) -> str:
        """tunnel.conf for rtrA; overrides replace/add [tunnel] keys (None deletes);
        `path_keys` {k: {key: value}} adds keys to [path wan{k}]."""
        if weights is not None and len(weights) != self.paths:
            raise ValueError(f"{len(weights)} weights for {self.paths} paths")
        tunnel = self._override({
            "name": "mpt0",
            "address": ", ".join(CLIENT_INNER),
            "role": "client",
            "peer": f"{self.server_addr()}:{TUNNEL_PORT}",
            "routes": ", ".join(LAN_B_PREFIX),
            "control": self._control_path("client"),
        }, tunnel_overrides)
        paths = [(f"path wan{k}", {"interface": f"wan{k}",
                                   "weight": weights[k - 1] if weights else 1,
                                   **(path_keys or {}).get(k, {})})
                 for k in range(1, self.paths + 1)]
        return self._render(tunnel, paths)

    def server_conf(self, **tunnel_overrides) -> str:
        """tunnel.conf for rtrB; overrides replace/add [tunnel] keys (None deletes)."""
        tunnel = self._override({
            "name": "mpt0",
            "address": ", ".join(SERVER_INNER),
            "role": "server",
            "listen": str(TUNNEL_PORT),
            "routes": ", ".join(LAN_A_PREFIX),
            "control": self._control_path("server"),
        }, tunnel_overrides)
        return self._render(tunnel, [])

    def write_confs(self, directory, client: dict | None = None,
                    server: dict | None = None) -> tuple[str, str]:
        """Write client.conf and server.conf into ``directory``; return their paths.

        ``client``/``server``: keyword overrides for client_conf/server_conf.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        c, s = d / "client.conf", d / "server.conf"
        c.write_text(self.client_conf(**(client or {})))
        s.write_text(self.server_conf(**(server or {})))
        return str(c), str(s)

    def diagnostics(self) -> str:
        """Addresses, routes, qdiscs and nft tables of every namespace (for failure reports)."""
        out = []
        for ns in self.namespaces:
            out.append(f"===== {ns}")
            for argv in (["ip", "-n", ns, "-br", "addr"], ["ip", "-n", ns, "route"],
                         ["ip", "-n", ns, "rule"],
                         ["ip", "-n", ns, "-6", "route"], ["tc", "-n", ns, "qdisc"],
                         ["ip", "netns", "exec", ns, "nft", "list", "ruleset"]):
                cp = _run(argv, check=False)
                text = (cp.stdout + cp.stderr).strip()
                if text:
                    out.append(f"$ {' '.join(argv)}\n{text}")
        return "\n".join(out)

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop tracked processes, kill anything left in the namespaces, delete them."""
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:
            pass
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + 1.0
        for p in self._procs:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
        _delete_netns(self._created)
        for p in self._procs:
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
        self._procs.clear()

    @property
    def closed(self) -> bool:
        return self._closed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpt.lab.topology",
                                 description="mpt namespace lab")
    ap.add_argument("--cleanup", action="store_true",
                    help="remove namespaces left by lab runs whose process died")
    args = ap.parse_args(argv)
    if args.cleanup:
        for ns in cleanup_stale():
            print(f"removed {ns}")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
