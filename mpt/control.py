"""The control socket: JSON lines over a UNIX socket (0600, root only).

A request is one JSON object per line, {"cmd": "status"}; the answer is one
JSON object per line, {"ok": true, ...} or {"ok": false, "error": "..."}.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat


class ControlError(RuntimeError):
    pass


async def serve(path: str, handle) -> asyncio.AbstractServer:
    """Listen on `path`; `handle(request: dict) -> dict` answers each request."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path):
        if _in_use(path):
            raise ControlError(f"control socket {path} is in use by another mptd")
        os.unlink(path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("request must be a JSON object")
                    reply = {"ok": True, **handle(req)}
                except (ValueError, KeyError) as e:
                    reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)  # the socket file is created 0600
    try:
        server = await asyncio.start_unix_server(client, path=path)
    finally:
        os.umask(old)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return server


def _in_use(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(path: str, req: dict, timeout: float = 5.0) -> dict:
    """Blocking client for mptctl and tests."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        raise ControlError(f"cannot reach mptd at {path}: {e.strerror or e}") from None
    try:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ControlError(f"mptd at {path} closed the connection")
            buf += chunk
    finally:
        s.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"))
    return reply
