"""MPTCP path-manager endpoints through pyroute2, one per WAN path, kept in
step with the paths' addresses.  Run in the netlink thread (mpt/netlink.py):
pyroute2's synchronous sockets cannot run inside the event loop."""
from __future__ import annotations

import logging

from pyroute2 import MPTCP
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("mptd")

FLAG_SIGNAL, FLAG_SUBFLOW, FLAG_BACKUP = 1, 2, 4
ID_BASE = 100          # endpoint id of path i: ID_BASE + i


def set_limits(_ipr, subflows: int, add_addr_accepted: int) -> None:
    with MPTCP() as m:
        m.limits("set", subflows=subflows, add_addr_accepted=add_addr_accepted)


def set_endpoint(_ipr, index: int, address: str | None, backup: bool) -> None:
    """Path `index` sends subflows from `address` (None: it has none now)."""
    with MPTCP() as m:
        try:
            m.endpoint("del", id=ID_BASE + index)
        except NetlinkError:
            pass
        if address is None:
            return
        kw = {"addr6" if ":" in address else "addr": address}
        try:
            m.endpoint("add", id=ID_BASE + index,
                       flags=FLAG_SUBFLOW | (FLAG_BACKUP if backup else 0), **kw)
        except NetlinkError as e:
            log.warning("mptcp endpoint %s: %s", address, e)


def remove_endpoints(_ipr, indexes) -> None:
    with MPTCP() as m:
        for i in indexes:
            try:
                m.endpoint("del", id=ID_BASE + i)
            except NetlinkError:
                pass


def endpoints(_ipr) -> list[dict]:
    with MPTCP() as m:
        out = []
        for msg in m.endpoint("show"):
            a = msg.get_attr("MPTCP_PM_ATTR_ADDR")
            if a is None:
                continue
            out.append({"id": a.get_attr("MPTCP_PM_ADDR_ATTR_ID"),
                        "addr": a.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4")
                        or a.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6"),
                        "flags": a.get_attr("MPTCP_PM_ADDR_ATTR_FLAGS")})
        return out
