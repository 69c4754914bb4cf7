"""The TUN device: opened on /dev/net/tun, configured through pyroute2.

The device is not persistent: it exists while our fd is open, so it is gone
when the daemon exits, however it exits (also on a crash or SIGKILL).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(RuntimeError):
    pass


class Tun:
    """An open TUN device.  `fd` is non-blocking and handed to the datapath."""

    def __init__(self, name: str):
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            why = "it exists already (another mptd?)" if e.errno == errno.EBUSY else e.strerror
            raise TunError(f"cannot create TUN device {name}: {why}") from None
        self.fd = fd
        self.name = name
        self._ipr = IPRoute()
        self.index = self._ipr.link_lookup(ifname=name)[0]

    def configure(self, mtu: int, addresses, routes=()) -> None:
        """Set MTU and addresses, bring the link up, then add the routes."""
        ipr = self._ipr
        try:
            ipr.link("set", index=self.index, mtu=mtu)
            for a in addresses:
                iface = ipaddress.ip_interface(a)
                kw = {}
                if iface.version == 6:
                    kw["IFA_FLAGS"] = 0x80  # IFA_F_NODAD: usable at once
                ipr.addr("add", index=self.index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen, **kw)
            ipr.link("set", index=self.index, state="up")
            for r in routes:
                net = ipaddress.ip_network(r)
                ipr.route("replace", dst=str(net), oif=self.index,
                          family=10 if net.version == 6 else 2)
        except NetlinkError as e:
            raise TunError(f"cannot configure {self.name}: {e}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._ipr.close()


def interface_mtu(name: str) -> int | None:
    try:
        with open(f"/sys/class/net/{name}/mtu") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
