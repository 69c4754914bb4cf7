"""The tunnel's pre-shared key file (`key = PATH` in [tunnel]).

The file holds one line: 32 random bytes in standard base64 with padding, as
printed by `mptctl genkey`. Like ssh with a private key, load_key refuses a
file that the group or others may access. Messages are one line and never
contain key material (not even a rejected file's content).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import shlex
import stat

KEY_BYTES = 32
# A valid file is 45 bytes (44 of base64 and a newline); allow generous
# whitespace around it, but do not read an arbitrarily large file.
_MAX_FILE_BYTES = 4096


class KeyFileError(ValueError):
    """A key file that cannot be used; str() is always a single line."""

    def __init__(self, message: str):
        # The path comes from user input: keep the promise of one line.
        super().__init__(" ".join(message.splitlines()))


def generate_key() -> str:
    """A new random key as the file holds it: one base64 line and a newline."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii") + "\n"


def load_key(path: str) -> bytes:
    """Read the key file at path and return its KEY_BYTES bytes.

    Raises KeyFileError if the file is not a regular file, may be accessed by
    group or others, cannot be read, or does not hold exactly one base64 line
    of KEY_BYTES bytes.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang; the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from None
    try:
        # fstat the open file, not the path: what is checked is what is read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(f"key file {path} is accessible by group or others "
                               f"(mode {mode:04o}): chmod 600 {shlex.quote(path)}")
        data = b""
        while len(data) <= _MAX_FILE_BYTES:
            chunk = os.read(fd, _MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    key = _decode(data)
    if key is None:
        raise KeyFileError(f"key file {path}: expected one line of base64 holding "
                           f"{KEY_BYTES} bytes (mptctl genkey makes one)")
    return key


def _decode(data: bytes) -> bytes | None:
    if len(data) > _MAX_FILE_BYTES:
        return None
    text = data.strip()
    if not text:
        return None
    try:
        # validate=True refuses anything outside the alphabet, whitespace inside
        # included, so a second line or a space within the key is an error.
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None
