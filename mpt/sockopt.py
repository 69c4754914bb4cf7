"""Socket options the daemon and the lab's traffic tools share."""
from __future__ import annotations

import socket

# Linux values the socket module does not export.
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
IP_PKTINFO = 8


def big_buffers(sock: socket.socket, size: int = 4 << 20) -> None:
    """Send and receive buffers of `size` bytes: forced past the sysctl
    limits when we are root, else as large as they allow."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
