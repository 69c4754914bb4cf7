"""MPTCP path-manager endpoints through pyroute2, one per WAN path, kept in
step with the paths' addresses.  Run in the netlink thread (mpt/netlink.py):
pyroute2's synchronous sockets cannot run inside the event loop."""
from __future__ import annotations

import logging

from pyroute2 import MPTCP
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("mptd")

FLAG_SIGNAL, FLAG_SUBFLOW, FLAG_BACKUP = 1, 2, 4
# Endpoint ids of path i: ID_BASE + i + ID_STRIDE * g, g = 0..ID_GENERATIONS-1.
# Each time a path's address comes back it gets the next id: the kernel may
# still count the old id as in use by a connection for a moment after the
# old subflow closed, and would then not open the new one.
ID_BASE, ID_STRIDE, ID_GENERATIONS = 100, 16, 8


def _ids(index: int) -> list[int]:
    return [ID_BASE + index + ID_STRIDE * g for g in range(ID_GENERATIONS)]


def set_limits(_ipr, subflows: int, add_addr_accepted: int) -> None:
    with MPTCP() as m:
        m.limits("set", subflows=subflows, add_addr_accepted=add_addr_accepted)


def set_endpoint(_ipr, index: int, address: str | None, backup: bool, generation: int = 0) -> None:
    """Path `index` sends subflows from `address` (None: it has none now)."""
    with MPTCP() as m:
        for i in _ids(index):
            try:
                m.endpoint("del", id=i)
            except NetlinkError:
                pass
        if address is None:
            return
        kw = {"addr6" if ":" in address else "addr": address}
        try:
            m.endpoint("add", id=_ids(index)[generation % ID_GENERATIONS],
                       flags=FLAG_SUBFLOW | (FLAG_BACKUP if backup else 0), **kw)
        except NetlinkError as e:
            log.warning("mptcp endpoint %s: %s", address, e)


def remove_endpoints(_ipr, indexes) -> None:
    with MPTCP() as m:
        for index in indexes:
            for i in _ids(index):
                try:
                    m.endpoint("del", id=i)
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
