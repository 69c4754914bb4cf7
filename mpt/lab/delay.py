"""One-way delay, jitter and random loss per lab link and direction.

:meth:`mpt.lab.topology.Lab.set_delay` is the entry point; this module does
the work, with one of two backends (``Lab.delay_backend``):

The backend is ``netem`` when the kernel has it, else ``delayline``;
``$MPT_LAB_DELAY_BACKEND`` or assigning ``Lab.delay_backend`` picks one.

``netem``
    The kernel's netem qdisc.  It replaces the
    direction's tbf on the isp's egress device (``b`` for up, ``a`` for down)
    and carries the rate itself (netem ``rate``): a packet leaves at
    max(previous departure, arrival + delay + jitter) plus its serialisation
    time, so there is no reordering.  With ``reorder=True`` netem gets no
    ``rate`` (its jitter then reorders) and the tbf becomes its child.  The
    queue limit is the packets in flight plus about the tbf's queue.

``delayline``
    For kernels without netem (like this lab's): ``csrc/lab/mpt_delayline.c``
    (in the source tree and the sdist, not in a wheel), compiled on first use
    with gcc into a cache keyed by the source's hash (``$MPT_LAB_CACHE``,
    default ``/var/tmp/mpt-lab``).  One process and one TUN device per link
    and direction, in the isp namespace::

        up   (A→B): iif a  --rule pref 101--> table 101: default dev dlup
                    dlup --(delay line)--> back into dlup --main table--> b
        down (B→A): iif b  --rule pref 102--> table 102: default dev dldown

    The program reads the packets (non-blocking, in batches), drops each with
    probability ``loss``, stamps a release time now + delay + jitter (FIFO by
    default: never earlier than the previous packet's), holds them in a
    preallocated slot pool and writes them back into the TUN at that time
    (timerfd, SCHED_FIFO); the kernel forwards them on.  While a delay line
    is active its direction's tbf sits on the TUN instead of ``b``/``a``, so
    the link is rate → queue → delay, like netem with ``rate`` (a tbf after
    the delay would drop the bursts that FIFO jitter makes); it counts 14
    bytes per packet more (``stab overhead``) since a TUN has no Ethernet
    header, so a rate means the same on either device.  Side effects:
    packets cross the isp's forwarding twice (TTL −2) and traffic addressed to
    the isp itself is not delayed.

    Parameters change at run time over the program's stdin (``set ...``,
    answered ``ok``) without touching the queued packets; the new values apply
    to packets arriving from then on.  Removing a delay line (all of delay,
    jitter and loss 0) first takes its rules out, lets it drain, then stops
    it; its TUN goes with the process.  The processes are started with
    ``Lab.popen``, so closing the lab kills them (and a lab process that dies
    closes their stdin, which ends them too).

Jitter is uniform in [−jitter, +jitter] (netem's default) or, with
``distribution="normal"``, normal with standard deviation ``jitter``; a delay
never goes below zero.  In FIFO mode a packet cannot leave before the one
ahead of it, so at high packet rates the delay tends towards delay + jitter
(as with netem ``rate``); ``reorder=True`` lets packets pass each other.

Measured on the 2-core lab VM (delayline backend): ping RTT with 20 ms each
way 40.4–40.6 ms median (the extra is two wake-ups and the ping tool); 95
Mbit/s of UDP through 10 ms each way without loss, one-way median 10.1 ms and
p99 10.2 ms, no release more than 0.5 ms late, the line using about 20 % of a
core; the same with mptd carrying 85 Mbit/s through it (0 loss, ping through
the tunnel 20.4 ms median under load).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import select
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .topology import (LabError, _run, tbf_params, TBF_BURST_TIME, TBF_LATENCY_MS,
                       TBF_MIN_BURST)

__all__ = ["DelayShape", "DelayLine", "LinkDelays", "build_delayline",
           "netem_available", "BACKENDS", "DIRECTIONS"]

BACKENDS = ("netem", "delayline")
# direction -> (device packets arrive on, egress device, TUN name, table/rule pref)
DIRECTIONS = {"up": ("a", "b", "dlup", 101), "down": ("b", "a", "dldown", 102)}

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "lab" / "mpt_delayline.c"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]
SANITIZE_FLAGS = ["-std=gnu11", "-O1", "-g", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-Wall", "-Wextra", "-Werror"]
ETH_HLEN = 14
DEFAULT_RT_PRIO = 20      # SCHED_FIFO priority of the delay lines (0: normal)


@dataclass(frozen=True)
class DelayShape:
    """What one direction of a link does to packets (times in ms, loss 0..1)."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    reorder: bool = False
    distribution: str = "uniform"

    def __post_init__(self):
        for name in ("delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 60_000):
                raise ValueError(f"{name} must be 0..60000 ms, not {v!r}")
        if not (isinstance(self.loss, (int, float)) and 0 <= self.loss <= 1):
            raise ValueError(f"loss is a probability 0..1, not {self.loss!r}")
        if self.distribution not in ("uniform", "normal"):
            raise ValueError("distribution must be 'uniform' or 'normal'")

    @property
    def active(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss)

    def command(self) -> str:
        """The delay line's ``set`` command for this shape."""
        return (f"set delay_ns={round(self.delay_ms * 1e6)} "
                f"jitter_ns={round(self.jitter_ms * 1e6)} loss={self.loss!r} "
                f"dist={self.distribution} reorder={int(self.reorder)}")


# ------------------------------------------------------------------ building
def cache_dir() -> Path:
    return Path(os.environ.get("MPT_LAB_CACHE", "/var/tmp/mpt-lab"))


def build_delayline(sanitize: bool = False) -> str:
    """Path of the compiled delay line, building it if the source changed.

    ``sanitize``: an AddressSanitizer + UBSan build (for the tests)."""
    if not SOURCE.is_file():
        raise LabError(f"{SOURCE} is missing: the delay line needs a source checkout")
    flags = SANITIZE_FLAGS if sanitize else CFLAGS
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join(flags).encode()).hexdigest()[:16]
    d = cache_dir()
    out = d / f"mpt_delayline-{key}{'-asan' if sanitize else ''}"
    if out.is_file() and os.access(out, os.X_OK):
        return str(out)
    d.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: concurrent builders never see half a file
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=d)
    os.close(fd)
    try:
        cp = subprocess.run(["gcc", *flags, "-o", tmp, str(SOURCE)],
                            capture_output=True, text=True, timeout=120)
        if cp.returncode != 0:
            raise LabError(f"building {SOURCE.name} failed:\n{cp.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(out)


# --------------------------------------------------------------------- netem
def netem_available(ns: str) -> bool:
    """Can a netem qdisc be made in namespace ``ns``?  (Tried on its lo.)"""
    cp = _run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "handle", "7357:",
               "netem", "delay", "1ms"], check=False)
    if cp.returncode != 0:
        return False
    _run(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
    return True


def _netem_limit(shape: DelayShape, mbit: float | None) -> int:
    """netem's queue limit in packets: what is in flight over delay + jitter
    plus what the tbf would queue (its bucket and TBF_LATENCY_MS of the rate),
    counted in 1250-byte packets."""
    if mbit is None:
        return 100_000
    byte_rate = mbit * 1e6 / 8
    queue = max(TBF_MIN_BURST, byte_rate * TBF_BURST_TIME) + byte_rate * TBF_LATENCY_MS / 1e3
    in_flight = byte_rate * (shape.delay_ms + shape.jitter_ms) / 1e3
    return max(16, math.ceil((queue + in_flight) / 1250))


def netem_qdiscs(dev: str, shape: DelayShape, mbit: float | None) -> list[list[str]]:
    """``tc qdisc`` argument lists (after ``tc -n NS qdisc``) that put ``shape``
    and the rate ``mbit`` on ``dev``'s egress."""
    args = ["netem", "limit", str(_netem_limit(shape, mbit))]
    if shape.delay_ms or shape.jitter_ms:
        args += ["delay", f"{shape.delay_ms:.6f}ms"]
        if shape.jitter_ms:
            args += [f"{shape.jitter_ms:.6f}ms"]
            if shape.distribution == "normal":
                args += ["distribution", "normal"]
    if shape.loss:
        args += ["loss", "random", f"{shape.loss * 100:.6f}%"]
    if shape.reorder:
        out = [["replace", "dev", dev, "root", "handle", "1:", *args]]
        if mbit is not None:
            out.append(["replace", "dev", dev, "parent", "1:1", "handle", "10:",
                        *tbf_params(mbit)])
        return out
    # netem's own rate keeps FIFO order under jitter; with no rate set, a rate
    # far above any link here does the same
    rate = f"{int(mbit * 1e6)}bit" if mbit is not None else "100gbit"
    return [["replace", "dev", dev, "root", *args, "rate", rate]]


# ----------------------------------------------------------------- delay line
class DelayLine:
    """One running ``mpt_delayline`` (one direction of one link) and its pipes."""

    def __init__(self, lab, ns: str, dev: str, *, binary: str | None = None,
                 rt_prio: int = DEFAULT_RT_PRIO, capacity: int = 65536,
                 ready_timeout: float = 10.0):
        self.ns, self.dev = ns, dev
        argv = [binary or build_delayline(), "--dev", dev, "--capacity", str(capacity),
                "--rt-prio", str(rt_prio)]
        self.proc = lab.popen(ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, bufsize=0)
        self._buf = b""
        ready = self._line(ready_timeout)
        if not ready.startswith("ready "):
            raise self._fail(f"unexpected first line {ready!r}")
        self.info = _kv(ready[len("ready "):])

    def _fail(self, why: str) -> LabError:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            _out, err = self.proc.communicate(timeout=5)
        except Exception:
            err = b""
        return LabError(f"delay line {self.dev} in {self.ns}: {why} (exit "
                        f"{self.proc.returncode}); stderr: "
                        f"{(err or b'').decode(errors='replace').strip()}")

    def _line(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no answer after {timeout}s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise self._fail("exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def command(self, text: str, timeout: float = 5.0) -> str:
        """Send one control line, return the one-line answer."""
        if self.proc.poll() is not None:
            raise self._fail("not running")
        try:
            self.proc.stdin.write(text.encode() + b"\n")
        except OSError as e:
            raise self._fail(f"control pipe: {e}") from None
        return self._line(timeout)

    def set(self, shape: DelayShape) -> None:
        answer = self.command(shape.command())
        if answer != "ok":
            raise LabError(f"delay line {self.dev} in {self.ns}: {answer}")

    def stats(self) -> dict:
        """Counters: rx, tx, lost (random loss), overflow (pool full), local
        (packets no router forwards: the namespace's own MLD reports, link-local,
        malformed; dropped), queued, late_max_ns / late_sum_ns and
        late_le_100us .. late_gt_2ms (how late the releases were), the current
        parameters and rt (SCHED_FIFO on)."""
        answer = self.command("stats")
        if not answer.startswith("stats "):
            raise LabError(f"delay line {self.dev} in {self.ns}: {answer}")
        return _kv(answer[len("stats "):])

    def stop(self, timeout: float = 2.0) -> int | None:
        """Ask it to quit (kill it if it does not); its exit status.  What it
        wrote to stderr is kept in ``self.stderr``."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
            except OSError:
                pass
        try:
            _out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=timeout)
        except ValueError:              # pipes already closed by an earlier stop
            err = b""
        self.stderr = (err or b"").decode(errors="replace")
        return self.proc.returncode


def _kv(text: str) -> dict:
    out: dict = {}
    for tok in text.split():
        k, _, v = tok.partition("=")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


# ------------------------------------------------------------- per-lab state
class LinkDelays:
    """The delay state of every link and direction of one lab (see module doc)."""

    def __init__(self, lab):
        self.lab = lab
        self._backend: str | None = None
        self.shapes: dict[tuple[int, str], DelayShape] = {}
        self.lines: dict[tuple[int, str], DelayLine] = {}
        # for new delay lines (tests change them)
        self.rt_prio = DEFAULT_RT_PRIO
        self.capacity = 65536                 # packets a line can hold
        self.binary: str | None = None        # None: build_delayline()
        self.stopped: list[DelayLine] = []    # lines taken out, for inspection

    # ---------------------------------------------------------- backend
    @property
    def backend(self) -> str:
        if self._backend is None:
            forced = os.environ.get("MPT_LAB_DELAY_BACKEND")
            if forced:
                self.set_backend(forced)
            else:
                self._backend = ("netem" if netem_available(self.lab.isp[0])
                                 else "delayline")
        return self._backend

    def set_backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"delay backend must be one of {BACKENDS}, not {name!r}")
        if any(s.active for s in self.shapes.values()):
            raise LabError("cannot change the delay backend while a delay is set")
        if name == "netem" and not netem_available(self.lab.isp[0]):
            raise LabError("this kernel has no netem qdisc")
        self._backend = name

    # ------------------------------------------------------- qdisc plan
    def rate_qdiscs(self, k: int, direction: str, mbit: float | None
                    ) -> list[tuple[str, list[str] | None]]:
        """Where the rate (and, for netem, the delay) goes: [(dev, tc qdisc args
        after ``tc -n NS qdisc`` or None to delete dev's root qdisc)]."""
        _iif, egress, tun, _pref = DIRECTIONS[direction]
        shape = self.shapes.get((k, direction), DelayShape())
        if not shape.active:
            return [(egress, None if mbit is None else
                     ["replace", "dev", egress, "root", *tbf_params(mbit)])]
        if self._backend == "netem":
            return [(egress, a) for a in netem_qdiscs(egress, shape, mbit)]
        # A TUN carries bare IP packets: count the Ethernet header the veth
        # would add, so that a rate means the same on either device.
        return [(tun, None if mbit is None else
                 ["replace", "dev", tun, "root", "stab", "overhead", str(ETH_HLEN),
                  *tbf_params(mbit)]),
                (egress, None)]

    # ------------------------------------------------------------ set
    def set(self, k: int, direction: str, shape: DelayShape) -> None:
        backend = self.backend
        key = (k, direction)
        was = self.shapes.get(key, DelayShape())
        if backend == "netem":
            self.shapes[key] = shape
            self.lab._apply_rate(k)
            if not shape.active:
                self.shapes.pop(key, None)
            return
        line = self.lines.get(key)
        if shape.active and line is not None:
            line.set(shape)                      # queued packets keep their times
            self.shapes[key] = shape
        elif shape.active:
            self._start_line(k, direction, shape)
        elif was.active or line is not None:
            self._stop_line(k, direction, max_delay_ms=was.delay_ms + 4 * was.jitter_ms)

    def _start_line(self, k: int, direction: str, shape: DelayShape) -> None:
        iif, _egress, tun, pref = DIRECTIONS[direction]
        ns = self.lab.isp_ns(k)
        line = DelayLine(self.lab, ns, tun, binary=self.binary, rt_prio=self.rt_prio,
                         capacity=self.capacity)
        try:
            line.set(shape)
            self.lines[(k, direction)] = line
            self.shapes[(k, direction)] = shape
            # the rate moves onto the TUN first, then traffic follows it there
            self._apply_rate_dir(k, direction)
            for fam in ("-4", "-6"):
                _run(["ip", "-n", ns, fam, "-batch", "-"], input=(
                    f"route replace default dev {tun} table {pref}\n"
                    f"rule add pref {pref} iif {iif} lookup {pref}\n"))
        except BaseException:
            self.shapes.pop((k, direction), None)
            self.lines.pop((k, direction), None)
            self._unroute(ns, direction)
            line.stop()
            self._apply_rate_dir(k, direction)
            raise

    def _unroute(self, ns: str, direction: str) -> None:
        _iif, _egress, _tun, pref = DIRECTIONS[direction]
        for fam in ("-4", "-6"):
            _run(["ip", "-n", ns, fam, "rule", "del", "pref", str(pref)], check=False)

    def _stop_line(self, k: int, direction: str, max_delay_ms: float) -> None:
        ns = self.lab.isp_ns(k)
        key = (k, direction)
        line = self.lines.pop(key, None)
        self.shapes.pop(key, None)
        _iif, _egress, tun, _pref = DIRECTIONS[direction]
        # rate back on the egress first, then traffic back to plain forwarding
        self._apply_rate_dir(k, direction)
        self._unroute(ns, direction)
        if line is None:
            return
        # let what is in the line (and in the TUN's tbf) go out, then stop it
        deadline = time.monotonic() + max_delay_ms / 1e3 + 1.0
        while time.monotonic() < deadline:
            if line.proc.poll() is not None:
                break
            if line.stats()["queued"] == 0 and self._tun_backlog(ns, tun) == 0:
                break
            time.sleep(0.002)       # polling "drained", bounded by the deadline
        line.stop()
        self.stopped.append(line)

    @staticmethod
    def _tun_backlog(ns: str, tun: str) -> int:
        cp = _run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", tun], check=False)
        try:
            return sum(int(q.get("qlen", 0)) for q in json.loads(cp.stdout or "[]"))
        except ValueError:
            return 0

    def _apply_rate_dir(self, k: int, direction: str) -> None:
        self.lab._apply_rate(k, only=direction)

    def stats(self, k: int, direction: str) -> dict | None:
        line = self.lines.get((k, direction))
        return None if line is None else line.stats()
