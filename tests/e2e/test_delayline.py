"""Delay, jitter and loss per lab link and direction (Lab.set_delay, mpt.lab.delay).

The accuracy tests run on every backend this kernel offers: the delay line
always, netem too where the kernel has it (probed once at collection).
Figures measured on the 2-core lab VM (no netem): ping RTT with 20 ms each way
40.3–40.6 ms median; 95 Mbit/s of UDP through 10 ms each way with no loss,
one-way median 10.1 ms and p99 10.2 ms, releases ≤ 0.5 ms late, the delay
line using ~20 % of a core.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time

import pytest

from mpt.lab import delay as dl
from mpt.lab import traffic as tr
from mpt.lab.topology import Lab, LabError, _netns_list

e2e = pytest.mark.e2e


def _kernel_backends() -> list[str]:
    """delayline, plus netem if this kernel has it (needs root to find out)."""
    if os.geteuid() != 0:
        return ["delayline"]
    ns = f"m{os.getpid()}c0de-probe"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        return ["delayline"] + (["netem"] if dl.netem_available(ns) else [])
    except (OSError, subprocess.CalledProcessError):
        return ["delayline"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


BACKENDS = _kernel_backends()


@pytest.fixture(params=BACKENDS)
def dlab(request, make_lab):
    """Factory: a lab whose delays use one backend (the test's parameter)."""
    def factory(**kw) -> Lab:
        lab = make_lab(**kw)
        lab.delay_backend = request.param
        return lab
    return factory


def rtts(lab: Lab, count: int, v6: bool = False, dev: str = "wan1") -> list[float]:
    """ICMP echo round trips (ms) from rtrA to the server over ``dev``."""
    h = tr.ToolProcess(lab, lab.rtrA, ["ping", "--to", lab.server_addr(v6), "--dev", dev,
                                       "--count", str(count), "--timeout", "2"])
    res = h.result(count * 2 + 20)
    assert res["received"] == count, res
    return res["rtt_ms"]


def udp_stream(lab: Lab, up: bool = True, port: int = 5301, **send) -> tuple[dict, dict]:
    """A numbered UDP stream over path 1, A→B (``up``) or B→A: (sender, receiver)."""
    if up:
        src, dst, addr = lab.rtrA, lab.rtrB, lab.server_addr()
    else:
        src, dst, addr = lab.rtrB, lab.rtrA, lab.wan_addr(1)
    rx = tr.start_udp_receiver(lab, dst, addr, port, idle=2.0)
    sent = tr.run_udp_send(lab, src, addr, port, **send)
    return sent, rx.result(30)


def tun_devices(lab: Lab, k: int) -> set[str]:
    cp = subprocess.run(["ip", "-n", lab.isp[k - 1], "-j", "link", "show"],
                        capture_output=True, text=True, check=True)
    return {e["ifname"] for e in json.loads(cp.stdout)} & {"dlup", "dldown"}


def rules(lab: Lab, k: int, v6: bool = False) -> list[int]:
    cp = subprocess.run(["ip", "-n", lab.isp[k - 1], "-6" if v6 else "-4", "-j", "rule"],
                        capture_output=True, text=True, check=True)
    return sorted(r["priority"] for r in json.loads(cp.stdout))


def iperf3_udp(lab: Lab, mbit: float, seconds: float, size: int = 1200) -> dict:
    """iperf3 UDP rtrA → server at ``mbit`` of payload; the client's JSON "end"."""
    srv = lab.popen(lab.rtrB, ["iperf3", "-s", "-1", "-B", lab.server_addr(), "-p", "5201",
                               "--forceflush"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in srv.stdout:          # until it listens
        if "listening" in line:
            break
    r = lab.run(lab.rtrA, "iperf3", "-c", lab.server_addr(), "-p", "5201", "-u",
                "-b", f"{mbit}M", "-l", str(size), "-t", str(seconds), "-J",
                check=False, timeout=seconds + 30)
    srv.communicate(timeout=10)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-1000:]
    return json.loads(r.stdout)["end"]


# ------------------------------------------------------------------ accuracy
@e2e
def test_rtt_is_twice_the_one_way_delay(dlab):
    lab = dlab(paths=2)
    assert statistics.median(rtts(lab, 10)) < 1.0
    lab.set_delay(1, 20)
    for v6 in (False, True):
        med = statistics.median(rtts(lab, 25, v6=v6))
        assert 39.0 <= med <= 41.0, (v6, med)
    # only path 1 is delayed
    assert statistics.median(rtts(lab, 10, dev="wan2")) < 1.0
    lab.set_delay(1, 0)
    assert statistics.median(rtts(lab, 10)) < 1.0


@e2e
def test_up_and_down_delays_are_separate(dlab):
    lab = dlab(paths=1)
    lab.set_delay(1, 30, direction="up")
    lab.set_delay(1, 5, direction="down")
    assert 34.0 <= statistics.median(rtts(lab, 20)) <= 36.0
    # the traffic tools' one-way delay (one monotonic clock for all namespaces)
    _, up = udp_stream(lab, up=True, rate_mbit=2, count=200)
    _, down = udp_stream(lab, up=False, rate_mbit=2, count=200)
    assert up["unique"] == down["unique"] == 200
    assert 30.0 <= up["one_way_delay_ms"]["median"] <= 31.0, up["one_way_delay_ms"]
    assert 5.0 <= down["one_way_delay_ms"]["median"] <= 6.0, down["one_way_delay_ms"]
    lab.set_delay(1, 0, direction="up")              # down keeps its 5 ms
    assert 4.5 <= statistics.median(rtts(lab, 20)) <= 6.5


@e2e
def test_jitter_spreads_delay_but_keeps_order(dlab):
    lab = dlab(paths=1)
    lab.set_delay(1, 20, jitter_ms=10, direction="up")
    # one echo at a time: no packet waits behind another, so each sees the
    # plain 20 ± 10 ms (uniform): median 20, deciles near 12 and 28
    samples = sorted(rtts(lab, 200))
    med, mean = statistics.median(samples), statistics.fmean(samples)
    p10, p90 = samples[20], samples[179]
    assert 17.0 <= med <= 23.5 and 18.5 <= mean <= 22.0, samples   # SE 0.7 / 0.4
    assert p10 < 15.0 and p90 > 25.0, samples
    assert 4.5 <= statistics.stdev(samples) <= 7.0, samples         # 20/sqrt(12)
    # the floor is physical: nothing leaves before 20 - 10 ms; above, the lab's
    # own scheduling only ever adds, and on a loaded machine one echo in 200
    # can wait 15 ms for a core (CI: 47.9), so the bound is on all but two
    assert samples[0] >= 9.9 and samples[-3] <= 31.5, samples
    # normal: jitter is the standard deviation
    lab.set_delay(1, 40, jitter_ms=10, direction="up", distribution="normal")
    samples = rtts(lab, 150)
    # median SE ~1 ms; allow ~4 SE plus the lab's own scheduling delay, which
    # only ever adds (CI failed once at 43.03 on a loaded machine)
    assert 37.0 <= statistics.median(samples) <= 44.5, samples
    assert 8.0 <= statistics.stdev(samples) <= 12.5, samples        # SE 0.6
    lab.set_delay(1, 20, jitter_ms=10, direction="up")
    # a stream keeps its order in FIFO mode ...
    sent, res = udp_stream(lab, rate_mbit=20, count=3000)
    assert res["unique"] == 3000 and res["lost"] == 0
    assert res["in_order"] and res["out_of_order"] == 0
    # ... and is reordered when packets may pass each other
    lab.set_delay(1, 20, jitter_ms=10, direction="up", reorder=True)
    _, res = udp_stream(lab, port=5302, rate_mbit=20, count=3000)
    assert res["unique"] == 3000 and res["out_of_order"] > 100, res


@e2e
def test_random_loss_rate(dlab):
    lab = dlab(paths=1)
    lab.set_delay(1, loss=0.10, direction="up")
    sent, res = udp_stream(lab, rate_mbit=40, count=5000)
    assert sent["sent"] == 5000
    lost = 5000 - res["unique"]          # (the end markers may be lost too)
    assert 0.07 <= lost / 5000 <= 0.13, lost          # mean 500, sd 21
    assert res["in_order"] and res["duplicates"] == 0
    assert res["one_way_delay_ms"]["median"] < 1.0   # loss alone adds no delay
    if lab.delay_backend == "delayline":
        st = lab.delay_stats(1, "up")
        assert lost <= st["lost"] <= lost + 3 and st["overflow"] == 0, st
    _, down = udp_stream(lab, up=False, rate_mbit=40, count=1000)
    assert down["lost"] == 0                          # the other direction is clean


@e2e
def test_100mbit_through_10ms(dlab):
    lab = dlab(paths=1)                               # the lab's default: tbf 100 Mbit/s
    assert lab.rates[0] == {"up": 100, "down": 100}
    lab.set_delay(1, 10)
    # 96 Mbit/s of payload is 99.4 Mbit/s of Ethernet frames
    end = iperf3_udp(lab, 96, seconds=3)
    s = end["sum_received"]
    goodput = s["bytes"] * 8 / end["sum_sent"]["seconds"] / 1e6
    assert goodput >= 95 and end["sum"]["lost_packets"] <= 0.005 * end["sum"]["packets"], end
    # and the delay held while the link was full: a numbered stream at 90 Mbit/s
    _, res = udp_stream(lab, rate_mbit=90, duration=2)
    assert res["lost"] == 0 and res["in_order"], res
    owd = res["one_way_delay_ms"]
    assert 10.0 <= owd["median"] <= 11.0 and owd["p99"] <= 11.5, owd
    if lab.delay_backend == "delayline":
        st = lab.delay_stats(1, "up")
        # the line's own view: releases rarely more than 1 ms late
        assert st["late_le_2ms"] + st["late_gt_2ms"] <= st["tx"] / 1000, st
        assert st["overflow"] == st["tx_errors"] == 0


@e2e
def test_rate_delay_jitter_loss_combine(dlab):
    lab = dlab(paths=1)
    lab.set_rate(1, 20, "up")
    lab.set_delay(1, 30, jitter_ms=10, loss=0.01, direction="up")
    sent, res = udp_stream(lab, rate_mbit=40, duration=2.1)
    # full middle bins: 20 Mbit/s of Ethernet frames, 1200 of 1242 bytes
    # payload, 1 % lost on top of what the rate drops
    expect = 20e6 / 8 * res["bin_s"] * 1200 / 1242 * 0.99
    for b in res["bins"][1:4]:
        assert 0.96 * expect < b < 1.03 * expect, (res["bins"], expect)
    assert res["in_order"]
    owd = res["one_way_delay_ms"]
    # the full tbf queue (32 kB bucket + 20 ms: 33 ms at 20 Mbit/s), then
    # 30 ± 10 ms, FIFO: at 2000 packets/s each waits for the latest ahead,
    # so nearer 40 than 30 (measured: median 69, p99 73)
    assert 40.0 <= owd["median"] <= 75.0 and owd["p99"] <= 77.0, owd


@e2e
def test_change_at_run_time_keeps_queued_packets(make_lab):
    lab = make_lab(paths=1)
    lab.delay_backend = "delayline"
    lab.set_delay(1, 50, direction="up")
    pid = lab._delays.lines[(1, "up")].proc.pid
    rx = tr.start_udp_receiver(lab, lab.rtrB, lab.server_addr(), 5303, idle=2.0)
    tx = tr.ToolProcess(lab, lab.rtrA, ["udp-send", "--to", lab.server_addr(),
                                        "--port", "5303", "--rate-mbit", "10",
                                        "--duration", "1.5"])
    # change while ~50 ms of the stream sit in the line: 50 → 5 ms (FIFO:
    # the new packets wait behind the old), then off (drained, not dropped)
    deadline = time.monotonic() + 5
    while lab.delay_stats(1, "up")["queued"] < 20:
        assert time.monotonic() < deadline
    lab.set_delay(1, 5, direction="up")
    assert lab._delays.lines[(1, "up")].proc.pid == pid        # same process
    while lab.delay_stats(1, "up")["tx"] < 500:
        assert time.monotonic() < deadline
    lab.set_delay(1, 0, direction="up")
    sent = tx.result(20)
    res = rx.result(20)
    assert res["lost"] == 0 and res["unique"] == sent["sent"], res
    assert lab._delays.stopped[-1].proc.returncode == 0
    assert tun_devices(lab, 1) == set() and rules(lab, 1) == [0, 32766, 32767]
    assert statistics.median(rtts(lab, 10)) < 1.0
    lab.set_delay(1, 15, direction="down")                      # and again
    assert 14.5 <= statistics.median(rtts(lab, 10)) <= 16.5
    assert rules(lab, 1, v6=True) == [0, 102, 32766]


@e2e
def test_pool_full_drops_and_counts(make_lab):
    lab = make_lab(paths=1)
    lab.delay_backend = "delayline"
    lab._delays.capacity = 64
    lab.set_delay(1, 300, direction="up")
    sent, res = udp_stream(lab, rate_mbit=50, count=400)
    st = lab.delay_stats(1, "up")
    # 400 packets (and 3 end markers) in 90 ms: the first 64 fill the slots,
    # which stay full until 300 ms
    assert sent["sent"] == 400 and res["unique"] == 64 and res["in_order"], (st, res)
    assert st["overflow"] == 339 and st["tx"] == 64 and st["queued"] == 0, st


@e2e
def test_full_loss_and_bad_values(make_lab):
    lab = make_lab(paths=1)
    lab.set_delay(1, loss=1.0, direction="up")
    assert not lab.ping(lab.rtrA, lab.server_addr(), dev="wan1", timeout=0.3)
    lab.set_delay(1, loss=0.0, direction="up")
    assert lab.ping(lab.rtrA, lab.server_addr(), dev="wan1")
    for bad in ({"delay_ms": -1}, {"jitter_ms": float("nan")}, {"loss": 1.5},
                {"loss": -0.1}, {"direction": "sideways"}, {"distribution": "pareto"}):
        with pytest.raises(ValueError):
            lab.set_delay(1, **bad)
    with pytest.raises(ValueError):
        lab.set_delay(2, 10)
    lab.set_delay(1, 10)
    with pytest.raises(LabError):
        lab.delay_backend = "delayline"              # not while a delay is set
    with pytest.raises(ValueError):
        dl.DelayShape(delay_ms=70_000)


# ----------------------------------------------------------------- backends
@e2e
def test_backend_follows_the_kernel(make_lab):
    lab = make_lab(paths=1)
    has_netem = dl.netem_available(lab.isp[0])
    assert lab.delay_backend == ("netem" if has_netem else "delayline")
    lab.delay_backend = "delayline"
    assert lab.delay_backend == "delayline"
    if has_netem:
        lab.delay_backend = "netem"
    else:
        with pytest.raises(LabError, match="no netem"):
            lab.delay_backend = "netem"
    with pytest.raises(ValueError):
        lab.delay_backend = "dummynet"


@e2e
def test_netem_command_lines_parse(make_lab):
    """tc accepts every netem command this module makes (the kernel may then
    refuse an unknown qdisc: that is the only error allowed)."""
    lab = make_lab(paths=1)
    ns = lab.isp[0]
    shapes = [dl.DelayShape(20), dl.DelayShape(30, 10, 0.01),
              dl.DelayShape(30, 10, distribution="normal"),
              dl.DelayShape(loss=0.5), dl.DelayShape(5, 2, reorder=True)]
    for shape in shapes:
        for mbit in (None, 20):
            for args in dl.netem_qdiscs("b", shape, mbit):
                if "parent" in args:
                    continue                          # needs the netem made first
                cp = subprocess.run(["tc", "-n", ns, "qdisc", *args],
                                    capture_output=True, text=True)
                assert cp.returncode == 0 or "qdisc kind is unknown" in cp.stderr, \
                    (args, cp.stderr)


# -------------------------------------------------------- the program itself
@e2e
def test_control_protocol_under_sanitizers(make_lab):
    """Bad commands are refused whole and change nothing; the line passes
    traffic and exits cleanly under AddressSanitizer + UBSan."""
    lab = make_lab(paths=1)
    lab.delay_backend = "delayline"
    lab._delays.binary = dl.build_delayline(sanitize=True)
    lab.set_delay(1, 10, jitter_ms=2, direction="up", reorder=True)
    line = lab._delays.lines[(1, "up")]
    assert line.info["rt"] in (0, 1) and line.info["capacity"] == 65536
    before = line.stats()
    for cmd, why in (("set delay_ns=abc", "bad value"), ("set loss=1.5", "bad value"),
                     ("set loss=nan", "bad value"), ("set delay_ns=-5", "bad value"),
                     ("set delay_ns=60000000001", "bad value"),
                     ("set dist=pareto", "bad value"), ("set reorder=2", "bad value"),
                     ("set delay_ns=5 loss=2", "bad value"),   # all or nothing
                     ("set foo=1", "unknown key"), ("set delay_ns", "expected key=value"),
                     ("bogus", "unknown command"), ("x" * 3000, "line too long"),
                     ("set delay_ns=1\0", "NUL byte"), ("", "unknown command")):
        assert line.command(cmd).startswith(f"error {why}"), cmd
    after = line.stats()
    for k in ("delay_ns", "jitter_ns", "loss", "dist", "reorder"):
        assert after[k] == before[k], k
    assert line.command("set") == "ok"
    assert line.command("  set  loss=0.25   dist=normal  ") == "ok"
    st = line.stats()
    assert st["loss"] == 0.25 and st["dist"] == "normal" and st["delay_ns"] == 10_000_000
    assert line.command("set loss=0 dist=uniform jitter_ns=2000000") == "ok"
    _, res = udp_stream(lab, rate_mbit=20, count=2000)
    assert res["unique"] == 2000
    lab.set_delay(1, 0, direction="up")
    assert line.proc.returncode == 0, line.stderr
    assert "runtime error" not in line.stderr and "Sanitizer" not in line.stderr


@e2e
def test_line_exits_when_its_controller_goes(make_lab):
    lab = make_lab(paths=1)
    lab.delay_backend = "delayline"
    lab.set_delay(1, 5, direction="down")
    line = lab._delays.lines[(1, "down")]
    assert tun_devices(lab, 1) == {"dldown"}
    line.proc.stdin.close()                          # as if the lab process died
    assert line.proc.wait(timeout=5) == 0
    assert tun_devices(lab, 1) == set()              # the TUN went with it


@e2e
def test_close_kills_lines_even_when_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(paths=2) as lab:
            lab.delay_backend = "delayline"
            lab.set_delay(1, 20)
            lab.set_delay(2, 5, jitter_ms=1, loss=0.01, direction="down")
            procs = [line.proc for line in lab._delays.lines.values()]
            names = lab.namespaces
            assert len(procs) == 3 and all(p.poll() is None for p in procs)
            raise RuntimeError("boom")
    assert all(p.poll() is not None for p in procs)
    assert not set(names) & set(_netns_list())


# -------------------------------------------------------------- no root needed
class TestPure:
    def test_shape_command_and_activity(self):
        assert not dl.DelayShape().active
        assert dl.DelayShape(loss=0.01).active and dl.DelayShape(jitter_ms=1).active
        assert dl.DelayShape(12.5, 0.25, 0.01, True, "normal").command() == (
            "set delay_ns=12500000 jitter_ns=250000 loss=0.01 dist=normal reorder=1")

    def test_netem_qdiscs(self):
        fifo = dl.netem_qdiscs("b", dl.DelayShape(30, 10, 0.01), 20)
        assert len(fifo) == 1
        args = fifo[0]
        assert args[:4] == ["replace", "dev", "b", "root"] and args[4] == "netem"
        assert args[args.index("delay") + 1:args.index("delay") + 3] == \
            ["30.000000ms", "10.000000ms"]
        assert args[args.index("rate") + 1] == "20000000bit"
        assert args[args.index("loss") + 1:args.index("loss") + 3] == ["random", "1.000000%"]
        # in flight (30 + 10 ms) plus the tbf's queue at 20 Mbit/s (32 kB
        # bucket + 20 ms), in 1250-byte packets
        limit = int(args[args.index("limit") + 1])
        assert limit == math.ceil((32 * 1024 + 2.5e6 * 0.060) / 1250)
        unshaped = dl.netem_qdiscs("a", dl.DelayShape(5), None)[0]
        assert unshaped[unshaped.index("rate") + 1] == "100gbit"
        reorder = dl.netem_qdiscs("b", dl.DelayShape(5, 2, reorder=True), 20)
        assert "rate" not in reorder[0] and reorder[1][3:6] == ["parent", "1:1", "handle"]
        assert "tbf" in reorder[1]

    def test_build_is_cached_by_source_hash(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MPT_LAB_CACHE", str(tmp_path))
        first = dl.build_delayline()
        mtime = os.stat(first).st_mtime_ns
        assert dl.build_delayline() == first and os.stat(first).st_mtime_ns == mtime
        assert os.access(first, os.X_OK) and str(tmp_path) in first
        r = subprocess.run([first, "--bogus"], capture_output=True, text=True)
        assert r.returncode == 2 and "usage" in r.stderr
