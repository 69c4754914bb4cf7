"""WAN watcher and per-path policy routing, through pyroute2.

* `LinkWatcher`: a raw rtnetlink socket bound to the link and address groups,
  watched with loop.add_reader() (pyroute2's AsyncIPRoute monitoring does not
  work under uvloop).  It keeps each interface's flags and addresses from the
  events themselves and calls back when a path interface changes.
* `Netlink`: configuration calls.  pyroute2's synchronous IPRoute cannot run
  inside a running event loop, so it lives in a thread of its own and the
  daemon awaits its calls.
* `PolicyRouting`: a table and rule per path, so each path's packets leave by
  its own link even when the main table's default route is elsewhere; the
  kernel deletes routes through a link that goes down, so they are installed
  again each time the link comes back.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
from dataclasses import dataclass, field

from pyroute2 import IPRoute, IPRSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

log = logging.getLogger("mptd")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
AF_INET, AF_INET6 = 2, 10
RULE_PRIORITY = 1000


@dataclass
class Link:
    index: int | None = None
    flags: int = 0
    addresses: set[str] = field(default_factory=set)

    def address(self, family: int) -> str | None:
        """An address of that family to send from (not link-local)."""
        want = 6 if family == AF_INET6 else 4
        for a in sorted(self.addresses):
            ip = ipaddress.ip_address(a)
            if ip.version == want and not ip.is_link_local:
                return a
        return None

    def usable(self, family: int, local: str | None) -> bool:
        """Carrier, admin up, and an address to send from."""
        if self.index is None or (self.flags & (IFF_UP | IFF_LOWER_UP)) != (IFF_UP | IFF_LOWER_UP):
            return False
        if local is not None:
            return local in self.addresses
        return self.address(family) is not None


def _apply(links: dict[str, Link], by_index: dict[int, str], msg) -> str | None:
    """Update `links` from one rtnetlink message; the interface name it
    concerns if it is one we watch."""
    event = msg.get("event")
    index = msg.get("index")
    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
        name = msg.get_attr("IFLA_IFNAME")
        if name not in links:
            return None
        link = links[name]
        if event == "RTM_DELLINK":
            by_index.pop(link.index, None)
            links[name] = Link()
        else:
            if link.index != index:
                by_index.pop(link.index, None)
                link.index = index
                by_index[index] = name
            link.flags = msg.get("flags")
        return name
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        name = by_index.get(index)
        if name is None:
            return None
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if addr:
            if event == "RTM_NEWADDR":
                links[name].addresses.add(addr)
            else:
                links[name].addresses.discard(addr)
        return name
    return None


class LinkWatcher:
    def __init__(self, names, on_change, redump):
        self.links: dict[str, Link] = {n: Link() for n in names}
        self.by_index: dict[int, str] = {}
        self.on_change = on_change
        self.redump = redump          # async: a fresh dump, after lost events
        self.sock: IPRSocket | None = None

    def start(self, loop: asyncio.AbstractEventLoop, initial: list) -> None:
        """Subscribe first, then apply a dump (`initial`, from Netlink.dump())
        so no change between the two is missed."""
        self.sock = IPRSocket()
        self.sock.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        for msg in initial:
            _apply(self.links, self.by_index, msg)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        changed = set()
        try:
            for msg in self.sock.get():
                name = _apply(self.links, self.by_index, msg)
                if name:
                    changed.add(name)
        except (OSError, NetlinkError) as e:   # e.g. ENOBUFS: events were lost
            log.warning("netlink watcher: %s; reading the links again", e)
            asyncio.get_running_loop().create_task(self._resync())
        for name in changed:
            self.on_change(name)

    async def _resync(self) -> None:
        msgs = await self.redump()
        self.links = {n: Link() for n in self.links}
        self.by_index = {}
        for msg in msgs:
            _apply(self.links, self.by_index, msg)
        for name in self.links:
            self.on_change(name)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


class Netlink:
    """IPRoute in a thread of its own; `await nl.call(fn, *args)` runs
    fn(ipr, *args) there."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._ipr = self._pool.submit(IPRoute).result()

    def run(self, fn, *args):
        """Blocking call, for use outside the event loop."""
        return self._pool.submit(fn, self._ipr, *args).result()

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self._ipr, *args)

    def close(self) -> None:
        self._pool.submit(self._ipr.close).result()
        self._pool.shutdown()


def dump(ipr) -> list:
    return list(ipr.get_links()) + list(ipr.get_addr())


@dataclass
class PathRoutes:
    """What one path needs in its own table."""
    table: int
    interface: str | None
    local: str | None
    family: int
    gateway: str | None
    learned: list = field(default_factory=list)   # (dst, dst_len, gateway) from main
    source: str | None = None     # the interface's current address, for MPTCP subflows


def learn_routes(ipr, pr: PathRoutes) -> None:
    """Remember the main table's gatewayed routes through the path's
    interface (a DHCP client's default route, say) to copy into its table."""
    if pr.interface is None or pr.gateway is not None:
        return
    idx = ipr.link_lookup(ifname=pr.interface)
    if not idx:
        return
    found = []
    for r in ipr.get_routes(family=pr.family, table=254):
        gw = r.get_attr("RTA_GATEWAY")
        if r.get_attr("RTA_OIF") == idx[0] and gw:
            found.append((r.get_attr("RTA_DST"), r.get("dst_len"), gw))
    if found:
        pr.learned = found


def install(ipr, pr: PathRoutes) -> None:
    """Rules and routes for one path; safe to repeat."""
    idx = ipr.link_lookup(ifname=pr.interface) if pr.interface else []
    if pr.interface and not idx:
        return
    routes = [(None, 0, pr.gateway)] if pr.gateway else pr.learned
    for dst, dst_len, gw in routes:
        kw = dict(table=pr.table, family=pr.family, gateway=gw)
        if idx:
            kw["oif"] = idx[0]
        if dst:
            kw.update(dst=dst, dst_len=dst_len)
        else:
            kw["dst"] = "default"
        try:
            ipr.route("replace", **kw)
        except NetlinkError as e:
            log.warning("table %d: cannot add route via %s: %s", pr.table, gw, e)
    for rule in _rules(pr):
        try:
            ipr.rule("add", **rule)
        except NetlinkError as e:
            if e.code != 17:   # EEXIST: already there
                log.warning("table %d: cannot add rule: %s", pr.table, e)


def remove(ipr, pr: PathRoutes) -> None:
    for rule in _rules(pr):
        try:
            ipr.rule("del", **rule)
        except NetlinkError:
            pass
    try:
        ipr.flush_routes(table=pr.table, family=pr.family)
    except NetlinkError:
        pass


def _rules(pr: PathRoutes) -> list[dict]:
    base = dict(table=pr.table, family=pr.family, priority=RULE_PRIORITY)
    rules = []
    if pr.interface:
        rules.append(dict(base, oifname=pr.interface))
    for src in {pr.local, pr.source} - {None}:
        rules.append(dict(base, src=src, src_len=32 if pr.family == AF_INET else 128))
    return rules
