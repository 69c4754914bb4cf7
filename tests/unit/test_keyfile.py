"""Tests for mpt.keyfile: the tunnel's pre-shared key file."""

import base64
import errno
import os

import pytest

from mpt import keyfile
from mpt.keyfile import KEY_BYTES, KeyFileError, generate_key, load_key

FORMAT = f"expected one line of base64 holding {KEY_BYTES} bytes (mptctl genkey makes one)"


def _write(path, content, mode=0o600):
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(path, mode)
    return str(path)


def _refused(path, secret=None) -> str:
    with pytest.raises(KeyFileError) as e:
        load_key(str(path))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(path) in msg
    if secret:
        assert secret not in msg
    return msg


def test_generate_key_is_one_base64_line_of_32_bytes():
    k = generate_key()
    assert k.endswith("\n") and k.count("\n") == 1
    assert len(base64.b64decode(k.strip(), validate=True)) == KEY_BYTES == 32
    assert len(k) == 45  # 44 characters with one '=' of padding
    assert generate_key() != k


def test_roundtrip(tmp_path):
    k = generate_key()
    path = _write(tmp_path / "tunnel.key", k)
    assert load_key(path) == base64.b64decode(k)


@pytest.mark.parametrize("content", [
    "{key}", "{key}\n", "  {key}  \n\n", "\n{key}\r\n", "\t{key}\t",
])
def test_surrounding_whitespace_is_allowed(tmp_path, content):
    raw = os.urandom(32)
    text = content.format(key=base64.b64encode(raw).decode())
    assert load_key(_write(tmp_path / "k", text)) == raw


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path, mode):
    assert len(load_key(_write(tmp_path / "k", generate_key(), mode))) == KEY_BYTES


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601, 0o777])
def test_group_or_other_access_is_refused(tmp_path, mode):
    k = generate_key()
    path = _write(tmp_path / "tunnel.key", k, mode)
    msg = _refused(path, k.strip())
    assert msg == (f"key file {path} is accessible by group or others "
                   f"(mode {mode:04o}): chmod 600 {path}")


def test_mode_message_quotes_path_for_the_shell(tmp_path):
    path = _write(tmp_path / "my key", generate_key(), 0o644)
    assert _refused(path).endswith(f"chmod 600 '{path}'")


@pytest.mark.parametrize("content", [
    base64.b64encode(b"x" * 16).decode() + "\n",  # too short
    base64.b64encode(b"x" * 31).decode() + "\n",
    base64.b64encode(b"x" * 33).decode() + "\n",  # too long
    base64.b64encode(b"x" * 64).decode() + "\n",
    "garbage!(%s)*nonsense* zzz\n",
    base64.b64encode(b"x" * 32).decode().rstrip("=") + "\n",  # padding missing
    base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n",  # not the standard alphabet
    "",
    "\n",
    "   \n\t\n",
    base64.b64encode(b"x" * 32).decode() + "\n" + base64.b64encode(b"y" * 32).decode() + "\n",
    base64.b64encode(b"x" * 32).decode()[:20] + " " + base64.b64encode(b"x" * 32).decode()[20:],
    base64.b64encode(b"x" * 32).decode()[:20] + "\n" + base64.b64encode(b"x" * 32).decode()[20:],
    b"\xff\xfe" + base64.b64encode(b"x" * 32),  # not ASCII
    "A" * 8000 + "\n",  # far too large (not read beyond 4 KiB)
])
def test_bad_content_is_refused_without_showing_it(tmp_path, content):
    path = _write(tmp_path / "tunnel.key", content)
    text = content.decode("latin-1") if isinstance(content, bytes) else content
    msg = _refused(path)
    assert msg == f"key file {path}: {FORMAT}"
    for word in text.split():
        assert word not in msg


def test_directory_is_refused(tmp_path):
    d = tmp_path / "keydir"
    d.mkdir(mode=0o700)
    assert _refused(d) == f"key file {d} is not a regular file"


def test_fifo_is_refused_without_blocking(tmp_path):
    f = tmp_path / "fifo"
    os.mkfifo(f, 0o600)
    assert _refused(f) == f"key file {f} is not a regular file"


def test_symlink_to_a_good_key_is_followed(tmp_path):
    k = generate_key()
    target = _write(tmp_path / "real.key", k)
    link = tmp_path / "tunnel.key"
    link.symlink_to(target)
    assert load_key(str(link)) == base64.b64decode(k)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.key"
    assert _refused(path) == f"cannot read key file {path}: No such file or directory"


def test_read_error_is_reported_with_strerror(tmp_path, monkeypatch):
    # An unreadable file cannot be made as root (CI runs as root): fake the read error.
    path = _write(tmp_path / "tunnel.key", generate_key())

    def fail(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(keyfile.os, "read", fail)
    assert _refused(path) == f"cannot read key file {path}: {os.strerror(errno.EIO)}"


def test_message_is_one_line_even_for_odd_path(tmp_path):
    d = tmp_path / "a\nb"
    d.mkdir()
    with pytest.raises(KeyFileError) as e:
        load_key(str(d))
    assert "\n" not in str(e.value)


def test_key_file_error_is_value_error():
    assert issubclass(KeyFileError, ValueError)
    assert keyfile.KEY_BYTES == 32
