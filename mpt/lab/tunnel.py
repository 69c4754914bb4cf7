"""Run the two routers' mptd in a lab: start, wait until the paths are up,
query status, stop (checking that each daemon exits cleanly)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from ..control import ControlError, request


class DaemonError(RuntimeError):
    pass


def write_key(path: str) -> str:
    """A new tunnel key file (0600, like `mptctl genkey > FILE`)."""
    from ..keyfile import generate_key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key())
    return path


class Daemon:
    def __init__(self, lab, ns: str, conf: str, control: str):
        self.ns, self.conf, self.control = ns, conf, control
        self.log = tempfile.NamedTemporaryFile(prefix="mptd-", suffix=".log", delete=False)
        self.proc = lab.popen(ns, [sys.executable, "-m", "mpt.cli", "-c", conf],
                              stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return "(log closed)"

    def status(self) -> dict:
        if self.proc.poll() is not None:
            raise DaemonError(f"mptd in {self.ns} exited ({self.proc.returncode}):\n"
                              f"{self.output()}")
        return request(self.control, {"cmd": "status"})

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise DaemonError(f"mptd in {self.ns} ignored {sig!r}:\n{self.output()}")
        return self.proc.returncode

    def close(self) -> None:
        self.log.close()
        if os.path.exists(self.log.name):
            os.unlink(self.log.name)


class Tunnel:
    """Both daemons of a lab, sharing a fresh key (`self.key`).
    `client=`/`server=` are [tunnel] overrides, `weights=` the client's path
    weights, `path_keys=` {k: {key: value}} extra keys for the client's
    [path wan{k}], `tcp_proxy=True` the TCP proxy on both sides,
    `tcp_encrypt` its (client, server) `encrypt`."""

    def __init__(self, lab, weights=None, client: dict | None = None,
                 server: dict | None = None, path_keys: dict | None = None,
                 tcp_proxy: bool = False, tcp_encrypt: tuple[bool, bool] = (False, False)):
        self.lab = lab
        self.dir = tempfile.mkdtemp(prefix=f"{lab.prefix}-conf-")
        cconf, sconf = os.path.join(self.dir, "client.conf"), os.path.join(self.dir, "server.conf")
        client, server = dict(client or {}), dict(server or {})
        ctext = stext = ""
        self.key = write_key(os.path.join(self.dir, "tunnel.key"))
        client.setdefault("key", self.key)
        server.setdefault("key", self.key)
        if tcp_proxy:   # LAN A's TCP goes over MPTCP
            enc = ["off", "on"]
            ctext = ("\n[tcp]\nproxy = on\n"
                     "intercept = 198.18.100.0/24, 2001:2:0:100::/64\n"
                     f"encrypt = {enc[tcp_encrypt[0]]}\n")
            stext = f"\n[tcp]\nproxy = on\nencrypt = {enc[tcp_encrypt[1]]}\n"
        with open(cconf, "w") as f:
            f.write(lab.client_conf(weights=weights, path_keys=path_keys, **client) + ctext)
        with open(sconf, "w") as f:
            f.write(lab.server_conf(**server) + stext)
        self.server = Daemon(lab, lab.rtrB, sconf, f"/run/mpt/{lab.prefix}-server.sock")
        self.client = Daemon(lab, lab.rtrA, cconf, f"/run/mpt/{lab.prefix}-client.sock")

    def wait_up(self, paths: int | None = None, timeout: float = 10.0) -> None:
        """Until `paths` (default: all) paths are up on both sides."""
        want = self.lab.paths if paths is None else paths
        deadline = time.monotonic() + timeout
        while True:
            try:
                up = [sum(p["state"] == "up" for p in d.status()["paths"])
                      for d in (self.client, self.server)]
                if min(up) >= want:
                    return
            except ControlError:
                up = None   # control socket not there yet
            if time.monotonic() > deadline:
                raise DaemonError(f"paths not up after {timeout}s (up: {up})\nclient:\n"
                                  f"{self.client.output()}\nserver:\n{self.server.output()}")
            time.sleep(0.05)

    def stop(self, keep_logs: bool = False) -> tuple[int | None, int | None]:
        """Stop both; the exit codes of those still running (None for one
        that had already been stopped or killed).  `keep_logs`: their
        output() stays readable until close_logs()."""
        try:
            return tuple(None if d.proc.returncode is not None else d.stop()
                         for d in (self.client, self.server))
        finally:
            if not keep_logs:
                self.close_logs()

    def close_logs(self) -> None:
        for d in (self.client, self.server):
            d.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
