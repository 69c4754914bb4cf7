"""Command lines of mptd and mptctl: argument parsing and exit codes only."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _fail(prog: str, msg: str, code: int) -> int:
    print(f"{prog}: {msg}", file=sys.stderr)
    return code


def mptd_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mptd", description="multipath tunnel daemon")
    ap.add_argument("-c", "--config", required=True, help="tunnel.conf")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = ap.parse_args(argv)

    from .config import ConfigError, load

    try:
        cfg = load(args.config)
    except ConfigError as e:
        return _fail("mptd", str(e), EXIT_CONFIG)
    if args.check:
        print(f"{args.config}: ok ({cfg.role}, {len(cfg.paths)} path(s))")
        return 0

    logging.basicConfig(level=logging.INFO, format=f"mptd[{cfg.name}] %(levelname)s: %(message)s")
    logging.getLogger("mptd").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    import uvloop

    from .control import ControlError
    from .daemon import Daemon
    from .keyfile import KeyFileError
    from .nft import NftError
    from .tun import TunError

    from pyroute2.netlink.exceptions import NetlinkError

    # until the event loop takes over the signals, SIGTERM still unwinds
    # through close(): nothing (device, routes, rules) is left half made
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_RUNTIME))
    daemon = Daemon(cfg)
    try:
        daemon.open()
        uvloop.run(daemon.run())
    except KeyFileError as e:
        return _fail("mptd", str(e), EXIT_CONFIG)
    except (TunError, ControlError, NftError, OSError, NetlinkError, RuntimeError) as e:
        return _fail("mptd", str(e), EXIT_RUNTIME)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.close()
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _status_table(st: dict) -> str:
    rows = [("PATH", "DEVICE", "STATE", "LOCAL -> REMOTE", "RTT", "LOSS OUT/IN", "SHARE",
             "TX PKTS", "TX BYTES", "RX PKTS", "RX BYTES")]
    for p in st["paths"]:
        rtt = f"{p['rtt_ms']:.1f}ms" if p["rtt_ms"] is not None else "-"
        state = p["state"] + ("" if p["active"] or p["state"] != "up" else " (standby)")
        rows.append((p["name"], p["device"] or "-", state,
                     f"{p['local'] or '-'} -> {p['remote'] or '-'}", rtt,
                     f"{_pct(p['loss_out'])}/{_pct(p['loss_in'])}", _pct(p["share"]),
                     str(p["tx_packets"]), str(p["tx_bytes"]),
                     str(p["rx_packets"]), str(p["rx_bytes"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{st['tunnel']} ({st['role']}) mtu {st['mtu']} hold {st['hold_ms']}ms"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    drops = {k: v for k, v in st["counters"].items() if k.startswith("drop_") and v}
    if drops:
        lines.append("drops: " + ", ".join(f"{k[5:]}={v}" for k, v in sorted(drops.items())))
    tcp = st.get("tcp")
    if tcp:
        lines.append(f"tcp proxy: {tcp['active']} connection(s) open, {tcp['total']} in all, "
                     f"{tcp['refused']} refused, {tcp['bytes_out']} bytes out, "
                     f"{tcp['bytes_in']} bytes in")
        for c in tcp["connections"]:
            lines.append(f"  {c['peer']} -> {c['dst'] or '?'}  subflows {c['subflows'] or '-'}"
                         f"  out {c['bytes_out']}  in {c['bytes_in']}")
    return "\n".join(lines)


def mptctl_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mptctl", description="talk to a running mptd")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("-s", "--socket", help="control socket (default /run/mpt/mpt0.sock)")
    where.add_argument("-c", "--config", help="take the control socket from this tunnel.conf")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="one row per path")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    pa = sub.add_parser("path", help="take a path out of service by hand, or back")
    pa.add_argument("name")
    pa.add_argument("state", choices=("up", "down"))
    sub.add_parser("genkey", help="print a new random key: mptctl genkey > /etc/mpt/tunnel.key")
    args = ap.parse_args(argv)

    if args.cmd == "genkey":  # needs no daemon, so no control socket
        from .keyfile import generate_key

        sys.stdout.write(generate_key())
        return 0

    from .config import ConfigError, load
    from .control import ControlError, request

    path = args.socket or "/run/mpt/mpt0.sock"
    if args.config:
        try:
            path = load(args.config).control
        except ConfigError as e:
            return _fail("mptctl", str(e), EXIT_CONFIG)
    req = {"cmd": args.cmd}
    if args.cmd == "path":
        req.update(name=args.name, state=args.state)
    try:
        reply = request(path, req)
    except ControlError as e:
        return _fail("mptctl", str(e), EXIT_RUNTIME)
    reply.pop("ok", None)
    if args.cmd == "path":
        print(f"path {reply['path']}: {reply['state']}")
    else:
        print(json.dumps(reply, indent=2) if args.json else _status_table(reply))
    return 0


if __name__ == "__main__":
    sys.exit(mptd_main())
