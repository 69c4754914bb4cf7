"""mptd's nftables rulesets, each one table, added atomically (nft -f) and
deleted when mptd exits.

* The client's TCP proxy: LAN TCP from the intercepted prefixes is
  redirected to the local proxy, except traffic to the router itself, to
  the intercepted prefixes (LAN to LAN) and to the excluded prefixes.  The
  router's own traffic never passes the prerouting hook, so it is never
  intercepted.
* Both routers: the MSS of TCP connections forwarded through the TUN device
  is clamped to its MTU.  Otherwise every LAN host's first full-size
  segments meet the smaller tunnel MTU, come back as "fragmentation needed",
  and the retransmission that follows leaves the connection's slow-start
  threshold at a dozen segments: a TCP flow then takes many seconds to fill
  a path of high bandwidth-delay product.
"""
from __future__ import annotations

import subprocess


class NftError(RuntimeError):
    pass


def table_name(tunnel: str) -> str:
    return f"mpt_tcp_{tunnel}"


def ruleset(tunnel: str, port: int, intercept, exclude) -> str:
    v4 = [str(n) for n in intercept if n.version == 4]
    v6 = [str(n) for n in intercept if n.version == 6]
    skip4 = v4 + [str(n) for n in exclude if n.version == 4]
    skip6 = v6 + [str(n) for n in exclude if n.version == 6]
    t = table_name(tunnel)
    rules = ["fib daddr type local return"]
    if skip4:
        rules.append(f"ip daddr {{ {', '.join(skip4)} }} return")
    if skip6:
        rules.append(f"ip6 daddr {{ {', '.join(skip6)} }} return")
    if v4:
        rules.append(f"ip saddr {{ {', '.join(v4)} }} meta l4proto tcp redirect to :{port}")
    if v6:
        rules.append(f"ip6 saddr {{ {', '.join(v6)} }} meta l4proto tcp redirect to :{port}")
    return _table(t, "prerouting", "type nat hook prerouting priority dstnat", rules)


def _drop(table: str) -> str:
    """Delete `table` whether or not it exists ("add" makes "delete" safe):
    in front of a table's definition it replaces any leftover of a crashed
    run in the same transaction."""
    return f"add table inet {table}\ndelete table inet {table}\n"


def _table(table: str, chain: str, hook: str, rules) -> str:
    body = "\n".join(f"    {r}" for r in rules)
    return (_drop(table) + f"table inet {table} {{\n  chain {chain} {{\n"
            f"    {hook}; policy accept;\n{body}\n  }}\n}}\n")


def mss_table_name(tunnel: str) -> str:
    return f"mpt_mss_{tunnel}"


def mss_ruleset(tunnel: str, device: str, mtu: int) -> str:
    """SYNs forwarded into or out of `device` announce at most the MSS that
    fits its MTU (IPv4: 40 bytes of headers, IPv6: 60)."""
    t = mss_table_name(tunnel)
    dev = device.replace('"', "")
    rules = []
    for way in ("oifname", "iifname"):
        for proto, mss in (("ipv4", mtu - 40), ("ipv6", mtu - 60)):
            rules.append(f'{way} "{dev}" meta nfproto {proto} tcp flags & syn == syn '
                         f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}")
    return _table(t, "forward", "type filter hook forward priority mangle", rules)


def install_mss_clamp(tunnel: str, device: str, mtu: int) -> None:
    _nft(mss_ruleset(tunnel, device, mtu))


def remove_mss_clamp(tunnel: str) -> None:
    _nft(_drop(mss_table_name(tunnel)))


def _nft(script: str) -> None:
    try:
        r = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                           timeout=10)
    except FileNotFoundError:
        raise NftError("nft not found: install nftables") from None
    if r.returncode != 0:
        raise NftError(f"nft: {r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode}")


def install(tunnel: str, port: int, intercept, exclude) -> None:
    _nft(ruleset(tunnel, port, intercept, exclude))


def remove(tunnel: str) -> None:
    _nft(_drop(table_name(tunnel)))
