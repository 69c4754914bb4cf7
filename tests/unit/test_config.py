"""Tests for mpt.config: the tunnel.conf parser."""

import os
import re
import tempfile
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path

import pytest

from mpt import config
from mpt.config import (ConfigError, Endpoint, PeerConfig, TcpConfig, parse, parse_duration,
                        parse_endpoint, parse_rate)
from mpt.keyfile import generate_key, load_key

REPO = Path(__file__).resolve().parents[2]

# The parser reads every key file a config names, so the configs below name
# files that exist (mode 0600) while this module's tests run: the tunnel's key
# and two peers' keys, all different.
KEY_FILES = {
    name: os.path.join(tempfile.gettempdir(), f"mpt-test-config-{os.getpid()}-{name}.key")
    for name in ("tunnel", "a", "b")}
KEY_FILE = KEY_FILES["tunnel"]
KEY = f"key = {KEY_FILE}\n"


def write_key(path, text=None, mode=0o600):
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key() if text is None else text)
    os.chmod(path, mode)  # whatever the umask


@pytest.fixture(autouse=True, scope="module")
def key_files():
    for path in KEY_FILES.values():
        write_key(path)
    yield
    for path in KEY_FILES.values():
        os.unlink(path)


CLIENT = """\
# a full client config
[tunnel]
name = mpt0                 ; TUN device
address = 10.77.0.1/30, fd00::1/64
role = client
peer = 198.18.10.2:4700
mtu = 1420
scheduler = weighted
control = /run/mpt/custom.sock
routes = 198.18.200.0/24, 2001:2:0:200::/64
hold_time = 0.05s
probe_interval = 50ms
""" + KEY + """\
cipher = chacha20-poly1305
rekey_interval = 60s
max_hold = 100ms

[path wan1]
interface = wan1            # inline comment, hash style
weight = 3
[path wan2]
interface = wan2
local = 198.18.2.1
weight = 1.5
rate = 20mbit
[path v6]
local = fd01::2
peer = [fd00:10::2]:4701
priority = 1
gateway = fe80::1
table = 100
"""

SERVER = """\
[tunnel]
address = 10.77.0.2/30
role = server
listen = 4700
""" + KEY

MINIMAL_CLIENT = """\
[tunnel]
address = 10.77.0.1/30
role = client
peer = 198.18.10.2:4700
""" + KEY + """\
[path wan1]
interface = wan1
"""


def test_client_config():
    c = parse(CLIENT, "client.conf")
    peer = Endpoint(ip_address("198.18.10.2"), 4700)
    assert c.source == "client.conf"
    assert c.name == "mpt0"
    assert c.addresses == (ip_interface("10.77.0.1/30"), ip_interface("fd00::1/64"))
    assert c.role == "client"
    assert c.peer == peer
    assert c.listen is None
    assert c.mtu == 1420
    assert c.scheduler == "weighted"
    assert c.control == "/run/mpt/custom.sock"
    assert c.routes == (ip_network("198.18.200.0/24"), ip_network("2001:2:0:200::/64"))
    assert c.hold_time == 0.05
    assert c.max_hold == 0.1
    assert c.probe_interval == 0.05
    assert c.idle_probe_interval == 0.3
    assert (c.key, c.key_bytes) == (KEY_FILE, load_key(KEY_FILE))
    assert (c.cipher, c.rekey_interval) == ("chacha20-poly1305", 60.0)
    assert c.peers == ()
    assert [p.name for p in c.paths] == ["wan1", "wan2", "v6"]
    wan1, wan2, v6 = c.paths
    assert (wan1.interface, wan1.local, wan1.peer, wan1.weight, wan1.line) == (
        "wan1", None, peer, 3.0, 18)
    assert [p.rate_bps for p in c.paths] == [0.0, 20e6, 0.0]
    assert (wan2.interface, wan2.local, wan2.peer, wan2.weight) == (
        "wan2", ip_address("198.18.2.1"), peer, 1.5)
    assert (v6.interface, v6.local, v6.peer, v6.weight) == (
        None, ip_address("fd01::2"), Endpoint(ip_address("fd00:10::2"), 4701), 1.0)
    assert [(p.priority, p.gateway, p.table) for p in c.paths] == [
        (0, None, None), (0, None, None), (1, ip_address("fe80::1"), 100)]


def test_client_defaults():
    c = parse(MINIMAL_CLIENT)
    assert c.source == "<string>"
    assert c.name == "mpt0"
    assert c.mtu is None
    assert c.scheduler == "weighted"
    assert c.control == "/run/mpt/mpt0.sock"
    assert c.routes == ()
    assert c.hold_time is None
    assert c.max_hold == 0.2
    assert c.probe_interval == 0.1
    assert c.idle_probe_interval == 0.3
    assert c.dead_after == 3
    assert c.hold_down == 0.5
    assert c.cipher == "auto"
    assert c.rekey_interval == 120.0
    assert c.peers == ()
    p = c.paths[0]
    assert (p.weight, p.priority, p.gateway, p.table, p.rate_bps) == (1.0, 0, None, None, 0.0)


def test_server_path_health_defaults():
    c = parse(SERVER)
    assert (c.probe_interval, c.idle_probe_interval, c.dead_after, c.hold_down) == (
        0.1, 0.3, 3, 0.5)


@pytest.mark.parametrize("extra, expected", [
    ("probe_interval = 10ms\nidle_probe_interval = 10s\n", (0.01, 10.0, 3, 0.5)),
    ("probe_interval = 10s\nidle_probe_interval = 10s\n", (10.0, 10.0, 3, 0.5)),
    ("probe_interval = 0.2s\nidle_probe_interval = 200\n", (0.2, 0.2, 3, 0.5)),
    # unset idle_probe_interval follows a probe_interval above its 300ms default
    ("probe_interval = 1s\n", (1.0, 1.0, 3, 0.5)),
    ("probe_interval = 20ms\n", (0.02, 0.3, 3, 0.5)),
    ("dead_after = 2\n", (0.1, 0.3, 2, 0.5)),
    ("dead_after = 100\n", (0.1, 0.3, 100, 0.5)),
    ("hold_down = 0\n", (0.1, 0.3, 3, 0.0)),
    ("hold_down = 0ms\n", (0.1, 0.3, 3, 0.0)),
    ("hold_down = 0s\n", (0.1, 0.3, 3, 0.0)),
    ("hold_down = 60s\n", (0.1, 0.3, 3, 60.0)),
    ("hold_down = 1.5s\n", (0.1, 0.3, 3, 1.5)),
])
def test_path_health_values(extra, expected):
    c = parse(SERVER + extra)
    assert (c.probe_interval, c.idle_probe_interval, c.dead_after, c.hold_down) == expected


@pytest.mark.parametrize("keys, expected", [
    ("priority = 0\n", (0, None, None)),
    ("priority = 255\n", (255, None, None)),
    ("gateway = 198.18.1.254\n", (0, ip_address("198.18.1.254"), None)),
    ("table = 1\n", (0, None, 1)),
    ("table = 252\n", (0, None, 252)),
    ("table = 256\n", (0, None, 256)),
    ("table = 2147483647\n", (0, None, 2**31 - 1)),
    ("priority = 7\ngateway = 198.18.1.254\ntable = 1001\n",
     (7, ip_address("198.18.1.254"), 1001)),
])
def test_path_routing_values(keys, expected):
    p = parse(MINIMAL_CLIENT + keys).paths[0]
    assert (p.priority, p.gateway, p.table) == expected


def test_gateway_family_follows_path_peer():
    c = parse(MINIMAL_CLIENT + "peer = [fd00::2]:4700\ngateway = fe80::1\n"
              "[path wan2]\ninterface = wan2\ngateway = 198.18.2.254\n")
    assert [p.gateway for p in c.paths] == [ip_address("fe80::1"), ip_address("198.18.2.254")]


def test_tcp_defaults():
    for text in (MINIMAL_CLIENT, SERVER):
        c = parse(text)
        assert c.tcp == TcpConfig() == TcpConfig(
            proxy=False, port=4701, intercept=(), exclude=(), encrypt=False, line=0)


def test_tcp_client():
    c = parse(MINIMAL_CLIENT + "\n[tcp]\nproxy = on\n"
              "port = 5000\nintercept = 198.18.100.0/24, 2001:2:0:100::/64\n"
              "exclude = 198.18.200.0/24\nencrypt = off\n")
    assert c.tcp == TcpConfig(
        proxy=True, port=5000,
        intercept=(ip_network("198.18.100.0/24"), ip_network("2001:2:0:100::/64")),
        exclude=(ip_network("198.18.200.0/24"),), encrypt=False, line=9)


def test_tcp_server():
    c = parse(SERVER + "[tcp]\nproxy = on\n")
    assert c.tcp == TcpConfig(proxy=True, line=6)
    assert parse(SERVER + "[tcp]\nproxy = yes\nport = 65535\n").tcp.port == 65535
    assert parse(SERVER + "[tcp]\nport = 1\n").tcp.port == 1


def test_tcp_section_may_come_first():
    c = parse("[tcp]\nproxy = on\n" + SERVER)
    assert (c.tcp.proxy, c.tcp.line, c.key) == (True, 1, KEY_FILE)


def test_tcp_proxy_off_needs_neither_key_nor_intercept():
    none = "cipher = none\n"
    assert parse(MINIMAL_CLIENT.replace(KEY, none) + "[tcp]\nproxy = off\n").tcp == \
        TcpConfig(line=8)
    assert parse(SERVER.replace(KEY, none) + "[tcp]\n").tcp == TcpConfig(line=6)
    # prefixes may stay configured while the proxy is off
    c = parse(MINIMAL_CLIENT + "[tcp]\nintercept = 10.0.0.0/8\nexclude = fd00::/8\n")
    assert (c.tcp.proxy, c.tcp.intercept, c.tcp.exclude) == (
        False, (ip_network("10.0.0.0/8"),), (ip_network("fd00::/8"),))


@pytest.mark.parametrize("word, value", [
    ("on", True), ("off", False), ("yes", True), ("no", False), ("true", True),
    ("false", False), ("1", True), ("0", False), ("ON", True), ("Off", False),
    ("YES", True), ("No", False), ("True", True), ("FALSE", False),
])
def test_tcp_booleans(word, value):
    c = parse(SERVER + f"[tcp]\nproxy = {word}\nencrypt = off\n")
    assert c.tcp.proxy is value
    assert parse(SERVER + f"[tcp]\nencrypt = {word}\n").tcp.encrypt is value


def test_tcp_keys_constant():
    assert config.TCP_KEYS == ("proxy", "port", "intercept", "exclude", "encrypt")
    assert "key" in config.TUNNEL_KEYS
    assert config.PEER_KEYS == ("key", "allowed")


def test_tables_may_repeat_when_unset_and_differ_when_set():
    c = parse(MINIMAL_CLIENT + "table = 1000\n[path wan2]\ninterface = wan2\ntable = 100\n"
              "[path wan3]\ninterface = wan3\n[path wan4]\ninterface = wan4\n")
    # 1000 is the default of wan1 itself, which sets its own table: no clash
    assert [p.table for p in c.paths] == [1000, 100, None, None]


def test_control_default_follows_name():
    c = parse(MINIMAL_CLIENT.replace("[tunnel]\n", "[tunnel]\nname = tun-a\n"))
    assert c.control == "/run/mpt/tun-a.sock"


def test_server_config():
    c = parse(SERVER)
    assert c.role == "server"
    assert c.listen == Endpoint(None, 4700)
    assert c.peer is None
    assert c.paths == ()
    assert c.addresses == (ip_interface("10.77.0.2/30"),)


def test_client_without_tunnel_peer_when_every_path_has_one():
    c = parse(MINIMAL_CLIENT.replace("peer = 198.18.10.2:4700\n", "")
              + "peer = 198.18.10.3:4700\n")
    assert c.peer is None
    assert c.paths[0].peer == Endpoint(ip_address("198.18.10.3"), 4700)


def test_sections_in_any_order():
    c = parse("[path wan1]\ninterface = wan1\n" + MINIMAL_CLIENT.split("[path")[0])
    assert c.paths[0].line == 1 and c.paths[0].peer.port == 4700


def test_comment_needs_whitespace_before_it():
    c = parse(SERVER + "control = /run/a#b;c.sock  ; real comment\n")
    assert c.control == "/run/a#b;c.sock"


def test_crlf_line_endings():
    assert parse(CLIENT.replace("\n", "\r\n")) == parse(CLIENT)


def shipped(name: str) -> str:
    """A shipped example, its key file replaced by the one these tests made."""
    text = (REPO / "conf" / name).read_text()
    assert "key = /etc/mpt/tunnel.key" in text
    return text.replace("/etc/mpt/tunnel.key", KEY_FILE)


@pytest.mark.parametrize("name", ["client.conf", "server.conf"])
def test_shipped_examples_parse(name):
    c = parse(shipped(name), name)
    assert c.role == name.split(".")[0]
    if c.role == "client":
        assert [(p.name, p.weight) for p in c.paths] == [("wan1", 3.0), ("wan2", 1.0)]
        assert all(p.peer == Endpoint(ip_address("198.18.10.2"), 4700) for p in c.paths)
        assert c.addresses == (ip_interface("10.77.0.1/30"), ip_interface("fd77::1/64"))
    else:
        assert c.listen.port == 4700
        assert c.addresses == (ip_interface("10.77.0.2/30"), ip_interface("fd77::2/64"))
        assert [p.name for p in c.peers] == ["default"]
    assert (c.key, c.cipher, c.scheduler) == (KEY_FILE, "auto", "weighted")


@pytest.mark.parametrize("name", ["client.conf", "server.conf"])
def test_shipped_tcp_examples_parse_when_uncommented(name):
    # "# [tcp]" and the keys under it become real lines.
    text = re.sub(r"(?m)^# (\[tcp\]|(?:proxy|port|intercept|exclude|encrypt) =)", r"\1",
                  shipped(name))
    c = parse(text, name)
    assert c.key == KEY_FILE
    assert c.tcp.proxy and c.tcp.port == 4701 and not c.tcp.encrypt
    if c.role == "client":
        assert c.tcp.intercept == (ip_network("198.18.100.0/24"),
                                   ip_network("2001:2:0:100::/64"))


@pytest.mark.parametrize("name", ["client.conf", "server.conf"])
def test_shipped_examples_parse_without_key_only_with_cipher_none(name):
    with pytest.raises(ConfigError) as e:
        parse(shipped(name).replace(KEY, ""), name)
    assert f"{name}:5: [tunnel] key: missing required key" in str(e.value)
    assert parse(shipped(name).replace(KEY, "cipher = none\n"), name).key is None


def test_shipped_server_peer_example_parses_when_uncommented():
    text = re.sub(r"(?m)^# (\[peer \w+\]|(?:key|allowed) =)", r"\1", shipped("server.conf"))
    text = (text.replace("/etc/mpt/branch1.key", KEY_FILES["a"])
            .replace("/etc/mpt/branch2.key", KEY_FILES["b"]))
    c = parse(text, "server.conf")
    assert [(p.name, p.key) for p in c.peers] == [
        ("branch1", load_key(KEY_FILES["a"])), ("branch2", load_key(KEY_FILES["b"]))]
    assert c.peers[1].allowed == (ip_network("10.77.0.3/32"), ip_network("198.18.101.0/24"))


# --- keys, ciphers, peers, scheduling ------------------------------------------------

NO_KEY_CLIENT = MINIMAL_CLIENT.replace(KEY, "")
NO_KEY_SERVER = SERVER.replace(KEY, "")
PEER_A = (f"[peer a]\nkey = {KEY_FILES['a']}\n"
          "allowed = 10.77.0.1/32, 198.18.100.0/24, fd77::1/128\n")
PEER_B = f"[peer b]\nkey = {KEY_FILES['b']}\nallowed = 10.77.0.3/32, 198.18.101.0/24\n"


def test_key_file_is_read_by_the_parser():
    for text in (MINIMAL_CLIENT, SERVER):
        c = parse(text)
        assert c.key == KEY_FILE
        assert c.key_bytes == load_key(KEY_FILE) and len(c.key_bytes) == 32


def test_key_material_is_not_in_repr():
    c = parse(SERVER + PEER_A.replace("[peer a]", "[peer x]"))
    key, peer_key = c.key_bytes, c.peers[0].key
    for text in (repr(c), str(c), repr(c.peers)):
        for k in (key, peer_key):
            assert repr(k) not in text and k.hex() not in text


def test_server_without_peer_sections_serves_one_implicit_peer():
    c = parse("\n" + SERVER)
    assert c.peers == (PeerConfig("default", load_key(KEY_FILE),
                                  (ip_network("0.0.0.0/0"), ip_network("::/0")), 2),)
    assert config.IMPLICIT_PEER == "default"


@pytest.mark.parametrize("cipher", ["auto", "aes-256-gcm", "chacha20-poly1305"])
def test_cipher_values(cipher):
    assert parse(SERVER + f"cipher = {cipher}\n").cipher == cipher
    assert parse(MINIMAL_CLIENT.replace(KEY, KEY + f"cipher = {cipher}\n")).cipher == cipher


def test_cipher_none_needs_no_key():
    c = parse(NO_KEY_CLIENT.replace("[path", "cipher = none\n[path"))
    assert (c.cipher, c.key, c.key_bytes) == ("none", None, None)
    s = parse(NO_KEY_SERVER + "cipher = none\n")
    assert (s.key, s.key_bytes) == (None, None)
    assert s.peers == (PeerConfig("default", None, config.IMPLICIT_ALLOWED, 1),)
    # a key given anyway is read and kept
    assert parse(SERVER + "cipher = none\n").peers[0].key == load_key(KEY_FILE)


def test_missing_key_says_how_to_make_one():
    for text, line in ((NO_KEY_CLIENT, 1), ("\n" + NO_KEY_SERVER, 2),
                       (NO_KEY_SERVER + "cipher = aes-256-gcm\n", 1)):
        with pytest.raises(ConfigError) as e:
            parse(text, "f.conf")
        assert str(e.value) == (
            f"f.conf:{line}: [tunnel] key: missing required key: packets are authenticated "
            "and encrypted with it; make one with (umask 077; mptctl genkey > "
            "/etc/mpt/tunnel.key), the same file on both routers, or write cipher = none "
            "for an unprotected tunnel")


def test_key_file_errors_name_the_key_line(tmp_path):
    k = tmp_path / "tunnel.key"
    cases = [
        (None, 0, f"cannot read key file {k}: No such file or directory"),
        (generate_key(), 0o644,
         f"key file {k} is accessible by group or others (mode 0644): chmod 600 {k}"),
        (generate_key(), 0o640, "(mode 0640)"),
        ("bm90IGEga2V5\n", 0o600,
         f"key file {k}: expected one line of base64 holding 32 bytes (mptctl genkey makes one)"),
        ("", 0o600, "expected one line of base64"),
    ]
    for text, mode, message in cases:
        if text is not None:
            write_key(str(k), text, mode)
        for conf, where in (
                (NO_KEY_SERVER + f"key = {k}\n", "f.conf:5: [tunnel] key"),
                (NO_KEY_SERVER + f"cipher = none\nkey = {k}\n", "f.conf:6: [tunnel] key"),
                (MINIMAL_CLIENT.replace(KEY, f"key = {k}\n"), "f.conf:5: [tunnel] key"),
                (NO_KEY_SERVER + f"[peer a]\nallowed = 10.0.0.0/8\nkey = {k}\n",
                 "f.conf:7: [peer a] key")):
            with pytest.raises(ConfigError) as e:
                parse(conf, "f.conf")
            assert str(e.value).startswith(f"{where}: ")
            assert message in str(e.value)


@pytest.mark.parametrize("value", ["weighted", "auto"])
def test_scheduler_values(value):
    assert parse(MINIMAL_CLIENT.replace(KEY, KEY + f"scheduler = {value}\n")).scheduler == value
    assert parse(SERVER + f"scheduler = {value}\n").scheduler == value


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("120s", 120.0), ("3600s", 3600.0), ("90.5s", 90.5), ("10000ms", 10.0),
    ("3600000", 3600.0),
])
def test_rekey_interval_values(text, seconds):
    assert parse(SERVER + f"rekey_interval = {text}\n").rekey_interval == seconds


@pytest.mark.parametrize("keys, expected", [
    ("", (None, 0.2)),
    ("max_hold = 1ms\n", (None, 0.001)),
    ("max_hold = 2s\n", (None, 2.0)),
    ("max_hold = 50\n", (None, 0.05)),
    ("max_hold = 50ms\nhold_time = 50ms\n", (0.05, 0.05)),
    ("hold_time = 10ms\nmax_hold = 1s\n", (0.01, 1.0)),
    ("hold_time = 100ms\n", (0.1, 0.2)),
    ("hold_time = 200ms\n", (0.2, 0.2)),
    # unset, max_hold follows a fixed hold_time above its default
    ("hold_time = 500ms\n", (0.5, 0.5)),
    ("hold_time = 2s\n", (2.0, 2.0)),
])
def test_hold_time_and_max_hold(keys, expected):
    c = parse(SERVER + keys)
    assert (c.hold_time, c.max_hold) == expected


@pytest.mark.parametrize("text, bps", [
    ("20mbit", 20e6), ("1.5mbit", 1.5e6), ("20Mbit", 20e6), ("20MBIT", 20e6),
    ("1gbit", 1e9), ("64kbit", 64e3), ("100gbit", 100e9), ("64000bit", 64e3),
    (".5gbit", 5e8), ("2.5 mbit", 2.5e6), ("20mbit/s", 20e6), ("0.1mbit", 1e5),
    ("1.1mbit", 1.1e6), ("99.999kbit", 99999.0), ("0", 0.0), ("0.0", 0.0), ("0mbit", 0.0),
    # exact: 1.001 * 1e6 in floats is 1000999.9999999999
    ("1.001mbit", 1001000.0), ("1.005gbit", 1005000000.0),
])
def test_path_rate_values(text, bps):
    assert parse_rate(text) == bps
    assert parse(MINIMAL_CLIENT + f"rate = {text}\n").paths[0].rate_bps == bps


@pytest.mark.parametrize("text", [
    "", "20", "1.5", "20mbps", "20Mbps", "20bps", "20kbps", "20gbps", "20MBps", "20mb",
    "20m", "20k", "20mbyte", "20mibit", "fast", "-1mbit", "+1mbit", "1e6bit", "inf", "nan",
    "20 mbit extra", "mbit", "1,5mbit", "²mbit", "20mbit/h",
])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError) as e:
        parse_rate(text)
    assert "\n" not in str(e.value) and repr(text) in str(e.value)


def test_server_peers():
    c = parse(NO_KEY_SERVER + PEER_A + PEER_B)
    assert c.peers == (
        PeerConfig("a", load_key(KEY_FILES["a"]),
                   (ip_network("10.77.0.1/32"), ip_network("198.18.100.0/24"),
                    ip_network("fd77::1/128")), 5),
        PeerConfig("b", load_key(KEY_FILES["b"]),
                   (ip_network("10.77.0.3/32"), ip_network("198.18.101.0/24")), 8))
    # with [peer] sections the tunnel needs no [tunnel] key
    assert (c.key, c.key_bytes, c.cipher) == (None, None, "auto")


def test_server_peers_with_tunnel_key_for_the_tcp_proxy():
    c = parse(SERVER + PEER_A + "[tcp]\nproxy = on\n")
    assert (c.key, c.key_bytes) == (KEY_FILE, load_key(KEY_FILE))
    assert c.tcp.proxy and [p.name for p in c.peers] == ["a"]


def test_peer_sections_anywhere_and_without_keys_under_cipher_none():
    c = parse("[peer x]\nallowed = 10.0.0.0/8\n" + NO_KEY_SERVER + "cipher = none\n"
              "[peer default]\nallowed = fd00::/8\n")
    assert [(p.name, p.key, p.line) for p in c.peers] == [("x", None, 1), ("default", None, 8)]


def test_peer_prefixes_may_touch_and_overlap_within_one_peer():
    c = parse(NO_KEY_SERVER
              + f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = 10.0.0.0/25, ::/1, 10.0.0.0/26\n"
              + f"[peer b]\nkey = {KEY_FILES['b']}\nallowed = 10.0.0.128/25, 8000::/1\n")
    assert [len(p.allowed) for p in c.peers] == [3, 2]


def test_load_file(tmp_path):
    f = tmp_path / "tunnel.conf"
    f.write_text(CLIENT)
    assert config.load(str(f)) == parse(CLIENT, str(f))


def test_load_missing_file(tmp_path):
    f = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as e:
        config.load(str(f))
    assert str(e.value) == f"{f}: cannot read: No such file or directory"


def test_load_error_names_file_and_line(tmp_path):
    f = tmp_path / "tunnel.conf"
    f.write_text(CLIENT.replace("weight = 1.5", "weight = -1"))
    with pytest.raises(ConfigError) as e:
        config.load(str(f))
    assert str(e.value) == f"{f}:24: [path wan2] weight: must be a positive number, got '-1'"


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# Each case: (config text, expected "source:line: [section] key" prefix, message
# fragment). The prefix is checked exactly, so the line number and key are right.
def _client(extra_tunnel="", paths="[path wan1]\ninterface = wan1\n"):
    # [tunnel] on line 1; its keys on 2..4; extra_tunnel from line 5.
    return ("[tunnel]\naddress = 10.77.0.1/30\nrole = client\npeer = 198.18.10.2:4700\n"
            + extra_tunnel + paths)


def _server(extra=""):
    return "[tunnel]\naddress = 10.77.0.2/30\nrole = server\nlisten = 4700\n" + extra


ERRORS = [
    # structure
    ("", "f.conf", "empty config"),
    ("# only a comment\n", "f.conf", "empty config"),
    ("[path wan1]\ninterface = wan1\n", "f.conf", "missing [tunnel] section"),
    ("name = x\n[tunnel]\n", "f.conf:1: name", "outside any section"),
    ("[tunnel]\njust words\n", "f.conf:2: [tunnel]", "expected 'key = value'"),
    ("[tunnel]\n= value\n", "f.conf:2: [tunnel]", "expected 'key = value'"),
    ("[tunnel\n", "f.conf:1", "malformed section header"),
    (_server("[peers]\n"), "f.conf:5", "unknown section '[peers]'"),
    (_server("[tunnel extra]\n"), "f.conf:5", "unknown section"),
    (_server("[path]\n"), "f.conf:5", "expected [path NAME]"),
    (_server("[path bad/name]\n"), "f.conf:5", "expected [path NAME]"),
    (_server("[path " + "x" * 33 + "]\n"), "f.conf:5", "expected [path NAME]"),
    (_server("[tunnel]\n"), "f.conf:5: [tunnel]", "duplicate section (first at line 1)"),
    (_client(paths="[path a]\ninterface = a\n[path a]\n"), "f.conf:7: [path a]",
     "duplicate section (first at line 5)"),
    (_server("Name = x\n"), "f.conf:5: [tunnel] Name", "unknown key"),
    (_server("weight = 1\n"), "f.conf:5: [tunnel] weight", "unknown key"),
    (_client(paths="[path a]\ninterface = a\nmtu = 1400\n"), "f.conf:7: [path a] mtu",
     "unknown key"),
    (_server("listen = 4701\n"), "f.conf:5: [tunnel] listen", "duplicate key (first at line 4)"),
    (_client(paths="[path a]\nweight = 1\nweight = 2\n"), "f.conf:7: [path a] weight",
     "duplicate key"),
    (_server("mtu =\n"), "f.conf:5: [tunnel] mtu", "empty value"),
    # missing required keys: reported at the section header
    ("\n[tunnel]\nrole = server\nlisten = 1\n", "f.conf:2: [tunnel] address",
     "missing required key"),
    ("[tunnel]\naddress = 10.77.0.2/30\n", "f.conf:1: [tunnel] role", "missing required key"),
    ("[tunnel]\naddress = 10.77.0.2/30\nrole = server\n", "f.conf:1: [tunnel] listen",
     "missing required key"),
    ("[tunnel]\naddress = 10.77.0.1/30\nrole = client\n[path a]\ninterface = a\n",
     "f.conf:1: [tunnel] peer", "missing required key"),
    # [tunnel] values
    (_server("name = way-too-long-name0\n"), "f.conf:5: [tunnel] name", "1..15 bytes"),
    (_server("name = a:b\n"), "f.conf:5: [tunnel] name", "invalid interface name"),
    (_server("name = a/b\n"), "f.conf:5: [tunnel] name", "invalid interface name"),
    ("[tunnel]\naddress = 10.77.0.300/30\n", "f.conf:2: [tunnel] address", "10.77.0.300/30"),
    ("[tunnel]\naddress = 10.77.0.1/30,\n", "f.conf:2: [tunnel] address", "empty item"),
    ("[tunnel]\naddress = 10.0.0.1/8, 10.0.0.1/8\n", "f.conf:2: [tunnel] address",
     "listed twice"),
    ("[tunnel]\naddress = 10.77.0.1/30\nrole = relay\n", "f.conf:3: [tunnel] role",
     "must be one of: client, server"),
    (_server("peer = 198.18.10.2:4700\n"), "f.conf:5: [tunnel] peer",
     "peer is for role = client"),
    (_client("listen = 4700\n"), "f.conf:5: [tunnel] listen", "listen is for role = server"),
    (_client().replace("198.18.10.2:4700", "198.18.10.2"), "f.conf:4: [tunnel] peer",
     "missing port"),
    (_client().replace("198.18.10.2:4700", "198.18.10.2:0"), "f.conf:4: [tunnel] peer",
     "port must be 1..65535, got '0'"),
    (_client().replace("198.18.10.2:4700", "198.18.10.2:65536"), "f.conf:4: [tunnel] peer",
     "port must be 1..65535"),
    (_client().replace("198.18.10.2:4700", "example.com:4700"), "f.conf:4: [tunnel] peer",
     "not an IP address"),
    (_client().replace("198.18.10.2:4700", "4700"), "f.conf:4: [tunnel] peer",
     "needs an address"),
    (_client().replace("198.18.10.2:4700", "fd00::2:4700"), "f.conf:4: [tunnel] peer",
     "needs brackets"),
    (_client().replace("198.18.10.2:4700", "0.0.0.0:4700"), "f.conf:4: [tunnel] peer",
     "unicast"),
    (_server().replace("listen = 4700", "listen = 1.2.3.4:x"), "f.conf:4: [tunnel] listen",
     "port must be"),
    (_server("mtu = 575\n"), "f.conf:5: [tunnel] mtu", "576..1900"),
    (_server("mtu = 1901\n"), "f.conf:5: [tunnel] mtu", "576..1900"),
    (_server("mtu = 1400.5\n"), "f.conf:5: [tunnel] mtu", "integer"),
    (_server("scheduler = roundrobin\n"), "f.conf:5: [tunnel] scheduler",
     "must be one of: weighted"),
    (_server("control = run/mpt.sock\n"), "f.conf:5: [tunnel] control", "absolute path"),
    (_server("routes = 198.18.200.1/24\n"), "f.conf:5: [tunnel] routes",
     "'198.18.200.1/24' is not a prefix"),
    (_server("routes = 10.0.0.0/8, , 10.1.0.0/16\n"), "f.conf:5: [tunnel] routes",
     "empty item"),
    (_server("hold_time = 0.5ms\n"), "f.conf:5: [tunnel] hold_time",
     "between 1ms and 2s, got '0.5ms'"),
    (_server("hold_time = 3s\n"), "f.conf:5: [tunnel] hold_time", "between 1ms and 2s"),
    (_server("hold_time = soon\n"), "f.conf:5: [tunnel] hold_time", "expected a duration"),
    # path health
    (_server("keepalive = 1s\n"), "f.conf:5: [tunnel] keepalive", "unknown key"),
    (_server("probe_interval = 9ms\n"), "f.conf:5: [tunnel] probe_interval",
     "between 10ms and 10s, got '9ms'"),
    (_server("probe_interval = 10.5s\n"), "f.conf:5: [tunnel] probe_interval",
     "between 10ms and 10s"),
    (_server("probe_interval = 0\n"), "f.conf:5: [tunnel] probe_interval",
     "between 10ms and 10s"),
    (_server("probe_interval = often\n"), "f.conf:5: [tunnel] probe_interval",
     "expected a duration"),
    (_server("idle_probe_interval = 9ms\n"), "f.conf:5: [tunnel] idle_probe_interval",
     "between 10ms and 10s"),
    (_server("idle_probe_interval = 11s\n"), "f.conf:5: [tunnel] idle_probe_interval",
     "between 10ms and 10s"),
    (_server("idle_probe_interval = -1s\n"), "f.conf:5: [tunnel] idle_probe_interval",
     "expected a duration"),
    (_server("idle_probe_interval = 50ms\n"), "f.conf:5: [tunnel] idle_probe_interval",
     "must be at least probe_interval (100ms), got '50ms'"),
    # reported on the idle_probe_interval line, whichever key comes first
    (_server("idle_probe_interval = 200ms\nprobe_interval = 0.5s\n"),
     "f.conf:5: [tunnel] idle_probe_interval", "must be at least probe_interval (500ms)"),
    (_server("probe_interval = 2s\nidle_probe_interval = 1s\n"),
     "f.conf:6: [tunnel] idle_probe_interval", "must be at least probe_interval (2s)"),
    (_server("dead_after = 1\n"), "f.conf:5: [tunnel] dead_after",
     "must be an integer 2..100, got '1'"),
    (_server("dead_after = 101\n"), "f.conf:5: [tunnel] dead_after", "2..100"),
    (_server("dead_after = 3.5\n"), "f.conf:5: [tunnel] dead_after", "integer"),
    (_server("dead_after = -3\n"), "f.conf:5: [tunnel] dead_after", "integer"),
    (_server("dead_after = three\n"), "f.conf:5: [tunnel] dead_after", "integer"),
    (_server("dead_after = 300ms\n"), "f.conf:5: [tunnel] dead_after", "integer"),
    (_server("hold_down = 61s\n"), "f.conf:5: [tunnel] hold_down",
     "between 0 and 60s, got '61s'"),
    (_server("hold_down = -1\n"), "f.conf:5: [tunnel] hold_down", "expected a duration"),
    (_server("hold_down = later\n"), "f.conf:5: [tunnel] hold_down", "expected a duration"),
    (_server("[path wan1]\npriority = 1\n"), "f.conf:5: [path wan1]",
     "the server learns paths from the client"),
    # paths
    (_server("[path wan1]\ninterface = wan1\n"), "f.conf:5: [path wan1]",
     "the server learns paths from the client"),
    (_client(paths=""), "f.conf:1: [tunnel]", "at least one [path NAME]"),
    (_client(paths="[path a]\nweight = 2\n"), "f.conf:5: [path a]", "needs interface or local"),
    (_client(paths="[path a]\ninterface = a\nweight = -1\n"), "f.conf:7: [path a] weight",
     "must be a positive number, got '-1'"),
    (_client(paths="[path a]\ninterface = a\nweight = 0\n"), "f.conf:7: [path a] weight",
     "must be a positive number, got '0'"),
    (_client(paths="[path a]\ninterface = a\nweight = lots\n"), "f.conf:7: [path a] weight",
     "must be a positive number"),
    (_client(paths="[path a]\ninterface = a\nweight = 1001\n"), "f.conf:7: [path a] weight",
     "at most 1000"),
    (_client(paths="[path a]\ninterface = a b\n"), "f.conf:6: [path a] interface",
     "invalid interface name"),
    (_client(paths="[path a]\nlocal = 1.2.3\n"), "f.conf:6: [path a] local",
     "not an IP address"),
    (_client(paths="[path a]\nlocal = fd00::1\n"), "f.conf:6: [path a] local",
     "IPv6 address 'fd00::1' but the path's peer 198.18.10.2:4700 is IPv4"),
    (_client(paths="[path a]\nlocal = 10.0.0.1\npeer = [fd00::2]:4700\n"),
     "f.conf:6: [path a] local", "is IPv6"),
    (_client(paths="[path a]\ninterface = a\npeer = 1.2.3.4:99999\n"),
     "f.conf:7: [path a] peer", "port must be 1..65535"),
    (_client(paths="[path a]\ninterface = wan1\n[path b]\ninterface = wan1\n"),
     "f.conf:8: [path b] interface", "already used by [path a]"),
    # priority, gateway, table
    (_client(paths="[path a]\ninterface = a\npriority = 256\n"),
     "f.conf:7: [path a] priority", "must be an integer 0..255, got '256'"),
    (_client(paths="[path a]\ninterface = a\npriority = -1\n"),
     "f.conf:7: [path a] priority", "0..255"),
    (_client(paths="[path a]\ninterface = a\npriority = 1.5\n"),
     "f.conf:7: [path a] priority", "integer"),
    (_client(paths="[path a]\ninterface = a\npriority = backup\n"),
     "f.conf:7: [path a] priority", "integer"),
    (_client(paths="[path a]\ninterface = a\ngateway = 198.18.1\n"),
     "f.conf:7: [path a] gateway", "not an IP address: '198.18.1'"),
    (_client(paths="[path a]\ninterface = a\ngateway = 198.18.1.0/24\n"),
     "f.conf:7: [path a] gateway", "not an IP address"),
    (_client(paths="[path a]\ninterface = a\ngateway = 0.0.0.0\n"),
     "f.conf:7: [path a] gateway", "unicast"),
    (_client(paths="[path a]\ninterface = a\ngateway = fe80::1\n"),
     "f.conf:7: [path a] gateway",
     "IPv6 address 'fe80::1' but the path's peer 198.18.10.2:4700 is IPv4"),
    (_client(paths="[path a]\ninterface = a\npeer = [fd00::2]:4700\ngateway = 10.0.0.1\n"),
     "f.conf:8: [path a] gateway", "IPv4 address '10.0.0.1' but the path's peer "
     "[fd00::2]:4700 is IPv6"),
    (_client(paths="[path a]\ninterface = a\ntable = 0\n"), "f.conf:7: [path a] table",
     "must be an integer 1..2147483647, got '0'"),
    (_client(paths="[path a]\ninterface = a\ntable = 2147483648\n"),
     "f.conf:7: [path a] table", "1..2147483647"),
    (_client(paths="[path a]\ninterface = a\ntable = main\n"), "f.conf:7: [path a] table",
     "integer"),
    (_client(paths="[path a]\ninterface = a\ntable = 10.5\n"), "f.conf:7: [path a] table",
     "integer"),
    (_client(paths="[path a]\ninterface = a\ntable = 253\n"), "f.conf:7: [path a] table",
     "table 253 is the kernel's default table; 253 (default), 254 (main), 255 (local) "
     "are reserved"),
    (_client(paths="[path a]\ninterface = a\ntable = 254\n"), "f.conf:7: [path a] table",
     "the kernel's main table"),
    (_client(paths="[path a]\ninterface = a\ntable = 255\n"), "f.conf:7: [path a] table",
     "the kernel's local table"),
    (_client(paths="[path a]\ninterface = a\ntable = 1001\n[path b]\ninterface = b\n"
             "[path c]\ninterface = c\ntable = 1001\n"),
     "f.conf:12: [path c] table", "table 1001 is already used by [path a]"),
    # an explicit table may not be the default (1000 + index) of a path without one
    (_client(paths="[path a]\ninterface = a\ntable = 1001\n[path b]\ninterface = b\n"),
     "f.conf:7: [path a] table", "table 1001 is the default table of [path b] "
     "(1000 + its index 1)"),
    (_client(paths="[path a]\ninterface = a\n[path b]\ninterface = b\ntable = 1000\n"),
     "f.conf:9: [path b] table", "default table of [path a]"),
    (_client(paths="".join(f"[path p{i}]\ninterface = e{i}\n" for i in range(17))),
     "f.conf:37: [path p16]", "too many paths (at most 16)"),
    # key
    (_server("key = etc/mpt/tunnel.key\n"), "f.conf:5: [tunnel] key",
     "must be an absolute path, got 'etc/mpt/tunnel.key'"),
    (_server("key = ~/tunnel.key\n"), "f.conf:5: [tunnel] key", "absolute path"),
    (_server(KEY + "key = /etc/mpt/other.key\n"), "f.conf:6: [tunnel] key",
     "duplicate key (first at line 5)"),
    (_client(paths="[path a]\ninterface = a\nkey = /k\n"), "f.conf:7: [path a] key",
     "unknown key"),
    # cipher, key required, scheduler, rekey_interval, max_hold
    (_server("cipher = aes\n"), "f.conf:5: [tunnel] cipher",
     "must be one of: auto, aes-256-gcm, chacha20-poly1305, none; got 'aes'"),
    (_server("cipher = AES-256-GCM\n"), "f.conf:5: [tunnel] cipher", "must be one of"),
    (_server("cipher = none\ncipher = auto\n"), "f.conf:6: [tunnel] cipher",
     "duplicate key (first at line 5)"),
    (_client(), "f.conf:1: [tunnel] key", "missing required key: packets are authenticated"),
    (_client("cipher = auto\n"), "f.conf:1: [tunnel] key", "or write cipher = none"),
    (_server("cipher = chacha20-poly1305\n"), "f.conf:1: [tunnel] key", "mptctl genkey"),
    # a mistake in a value is reported before the missing key
    (_client(paths="[path a]\ninterface = a\nrate = 5\n"), "f.conf:7: [path a] rate",
     "needs a unit"),
    (_server("scheduler = Auto\n"), "f.conf:5: [tunnel] scheduler",
     "must be one of: weighted, auto; got 'Auto'"),
    (_server("rekey_interval = 9s\n"), "f.conf:5: [tunnel] rekey_interval",
     "must be between 10s and 3600s, got '9s'"),
    (_server("rekey_interval = 3601s\n"), "f.conf:5: [tunnel] rekey_interval",
     "between 10s and 3600s"),
    (_server("rekey_interval = 120\n"), "f.conf:5: [tunnel] rekey_interval",
     "must be between 10s and 3600s, got '120' (a number without unit is milliseconds)"),
    (_server("rekey_interval = 0\n"), "f.conf:5: [tunnel] rekey_interval",
     "must be between 10s and 3600s, got '0'"),
    (_server("rekey_interval = 1h\n"), "f.conf:5: [tunnel] rekey_interval",
     "expected a duration"),
    (_server("rekey_interval = never\n"), "f.conf:5: [tunnel] rekey_interval",
     "expected a duration"),
    (_server("max_hold = 0.5ms\n"), "f.conf:5: [tunnel] max_hold",
     "must be between 1ms and 2s, got '0.5ms'"),
    (_server("max_hold = 2001ms\n"), "f.conf:5: [tunnel] max_hold", "between 1ms and 2s"),
    (_server("max_hold = 0.5\n"), "f.conf:5: [tunnel] max_hold",
     "got '0.5' (a number without unit is milliseconds)"),
    (_server("max_hold = long\n"), "f.conf:5: [tunnel] max_hold", "expected a duration"),
    (_server("max_hold = 100ms\nhold_time = 150ms\n"), "f.conf:6: [tunnel] hold_time",
     "must be at most max_hold (100ms), got '150ms'"),
    # reported on the hold_time line, whichever key comes first
    (_server("hold_time = 1s\nmax_hold = 999ms\n"), "f.conf:5: [tunnel] hold_time",
     "must be at most max_hold (999ms), got '1s'"),
    # rate
    (_client(paths="[path a]\ninterface = a\nrate = 20\n"), "f.conf:7: [path a] rate",
     "needs a unit (bit, kbit, mbit, gbit), e.g. 20mbit; got '20'"),
    (_client(paths="[path a]\ninterface = a\nrate = 20Mbps\n"), "f.conf:7: [path a] rate",
     "ambiguous unit in '20Mbps' (tc reads bps as bytes/s): write bits/s as bit, kbit, "
     "mbit, gbit, e.g. 20mbit"),
    (_client(paths="[path a]\ninterface = a\nrate = 20mb\n"), "f.conf:7: [path a] rate",
     "unknown unit in '20mb' (expected bit, kbit, mbit, gbit, e.g. 20mbit)"),
    (_client(paths="[path a]\ninterface = a\nrate = fast\n"), "f.conf:7: [path a] rate",
     "expected a rate like 20mbit or 1.5gbit, got 'fast'"),
    (_client(paths="[path a]\ninterface = a\nrate = -1mbit\n"), "f.conf:7: [path a] rate",
     "expected a rate like 20mbit"),
    (_client(paths="[path a]\ninterface = a\nrate = 63.9kbit\n"), "f.conf:7: [path a] rate",
     "must be 0 (no cap) or between 64kbit and 100gbit, got '63.9kbit'"),
    (_client(paths="[path a]\ninterface = a\nrate = 100.5gbit\n"), "f.conf:7: [path a] rate",
     "between 64kbit and 100gbit"),
    (_client(paths="[path a]\ninterface = a\nrate = 1mbit\nrate = 2mbit\n"),
     "f.conf:8: [path a] rate", "duplicate key (first at line 7)"),
    (_server("rate = 1mbit\n"), "f.conf:5: [tunnel] rate", "unknown key"),
    # [peer NAME]
    (_client(paths="[path a]\ninterface = a\n[peer x]\nallowed = 10.0.0.0/8\n"),
     "f.conf:7: [peer x]",
     "[peer] sections are for role = server; a client's one peer is peer = in [tunnel]"),
    (_server("[peer]\n"), "f.conf:5", "bad peer section '[peer]': expected [peer NAME] with "
     "NAME of 1..32 characters from A-Z a-z 0-9 _ . -"),
    (_server("[peer a b]\n"), "f.conf:5", "expected [peer NAME]"),
    (_server("[peer a/b]\n"), "f.conf:5", "expected [peer NAME]"),
    (_server("[peer " + "x" * 33 + "]\n"), "f.conf:5", "expected [peer NAME]"),
    (_server(PEER_A + "[peer a]\n"), "f.conf:8: [peer a]", "duplicate section (first at line 5)"),
    (_server("[peer a]\nallowed = 10.0.0.0/8\nweight = 1\n"), "f.conf:7: [peer a] weight",
     "unknown key (allowed: key, allowed)"),
    (_server("[peer a]\nkey = /k\nkey = /k\n"), "f.conf:7: [peer a] key",
     "duplicate key (first at line 6)"),
    (_server("[peer a]\nallowed =\n"), "f.conf:6: [peer a] allowed", "empty value"),
    (_server("[peer a]\nkey = k.key\n"), "f.conf:6: [peer a] key",
     "must be an absolute path, got 'k.key'"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\n"), "f.conf:5: [peer a] allowed",
     "missing required key"),
    (_server("[peer a]\nallowed = 10.0.0.0/8\n"), "f.conf:5: [peer a] key",
     "missing required key: this peer's packets are authenticated and encrypted with it "
     "(a copy of its router's [tunnel] key), or write cipher = none in [tunnel]"),
    (_server(PEER_A + "[peer b]\nallowed = 10.9.0.0/16\n"), "f.conf:8: [peer b] key",
     "missing required key"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = 10.0.0.1/8\n"),
     "f.conf:7: [peer a] allowed",
     "'10.0.0.1/8' is not a prefix like 198.18.200.0/24 (host bits must be zero)"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = 10.0.0.0/8, fd00::1/8\n"),
     "f.conf:7: [peer a] allowed", "'fd00::1/8' is not a prefix"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = 10.0.0.0/8,\n"),
     "f.conf:7: [peer a] allowed", "empty item"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = lan\n"),
     "f.conf:7: [peer a] allowed", "'lan' is not a prefix"),
    (_server(f"[peer a]\nkey = {KEY_FILES['a']}\nallowed = 10.0.0.0/8, 10.0.0.0/8\n"),
     "f.conf:7: [peer a] allowed", "listed twice"),
    (_server(PEER_A + f"[peer b]\nkey = {KEY_FILES['b']}\nallowed = 198.18.0.0/16\n"),
     "f.conf:10: [peer b] allowed", "198.18.0.0/16 overlaps 198.18.100.0/24 of [peer a] "
     "(line 7): an address must belong to one peer only"),
    (_server(PEER_A + f"[peer b]\nkey = {KEY_FILES['b']}\nallowed = 10.9.0.0/16, fd77::/64\n"),
     "f.conf:10: [peer b] allowed", "fd77::/64 overlaps fd77::1/128 of [peer a] (line 7)"),
    (_server(PEER_A + f"[peer b]\nkey = {KEY_FILES['b']}\nallowed = 10.77.0.1/32\n"),
     "f.conf:10: [peer b] allowed", "10.77.0.1/32 overlaps 10.77.0.1/32 of [peer a]"),
    (_server(PEER_A + PEER_B
             + f"[peer c]\nkey = {KEY_FILE}\nallowed = 10.9.0.0/16, 0.0.0.0/0\n"),
     "f.conf:13: [peer c] allowed", "0.0.0.0/0 overlaps 10.77.0.1/32 of [peer a] (line 7)"),
    (_server(PEER_A + f"[peer b]\nkey = {KEY_FILES['a']}\nallowed = 10.9.0.0/16\n"),
     "f.conf:9: [peer b] key", "same key as [peer a]: each peer needs a key of its own"),
    (_server(PEER_A + "[tcp]\nproxy = on\n"), "f.conf:9: [tcp] proxy",
     "needs key = in [tunnel]: proxied connections are authenticated with it"),
    # [tcp] structure
    ("[tcp]\nproxy = off\n", "f.conf", "missing [tunnel] section"),
    (_server("[tcp]\n[tcp]\n"), "f.conf:6: [tcp]", "duplicate section (first at line 5)"),
    (_server("[tcp]\nproxy = off\n[path a]\n[tcp]\n"), "f.conf:8: [tcp]",
     "duplicate section (first at line 5)"),
    (_server("[tcp proxy]\n"), "f.conf:5", "unknown section '[tcp proxy]' "
     "(expected [tunnel], [tcp], [path NAME] or [peer NAME])"),
    (_server("[tcp]\ncolour = blue\n"), "f.conf:6: [tcp] colour",
     "unknown key (allowed: proxy, port, intercept, exclude, encrypt)"),
    (_server("[tcp]\nroutes = 10.0.0.0/8\n"), "f.conf:6: [tcp] routes", "unknown key"),
    (_server("[tcp]\nkey = /etc/mpt/tunnel.key\n"), "f.conf:6: [tcp] key", "unknown key"),
    (_server("proxy = on\n"), "f.conf:5: [tunnel] proxy", "unknown key"),
    (_client(paths="[path a]\ninterface = a\nintercept = 10.0.0.0/8\n"),
     "f.conf:7: [path a] intercept", "unknown key"),
    (_server("[tcp]\nport = 4701\nport = 4702\n"), "f.conf:7: [tcp] port",
     "duplicate key (first at line 6)"),
    (_server("[tcp]\nproxy =\n"), "f.conf:6: [tcp] proxy", "empty value"),
    # [tcp] values
    (_server("[tcp]\nproxy = maybe\n"), "f.conf:6: [tcp] proxy",
     "must be one of: on, off, yes, no, true, false, 1, 0; got 'maybe'"),
    (_server("[tcp]\nproxy = enabled\n"), "f.conf:6: [tcp] proxy", "must be one of: on, off"),
    (_server("[tcp]\nproxy = 2\n"), "f.conf:6: [tcp] proxy", "must be one of: on, off"),
    (_server("[tcp]\nencrypt = aes\n"), "f.conf:6: [tcp] encrypt",
     "must be one of: on, off, yes, no, true, false, 1, 0; got 'aes'"),
    (_server("[tcp]\nport = 0\n"), "f.conf:6: [tcp] port",
     "must be an integer 1..65535, got '0'"),
    (_server("[tcp]\nport = 65536\n"), "f.conf:6: [tcp] port", "1..65535"),
    (_server("[tcp]\nport = -1\n"), "f.conf:6: [tcp] port", "1..65535"),
    (_server("[tcp]\nport = http\n"), "f.conf:6: [tcp] port", "integer"),
    (_server("[tcp]\nport = 1.2.3.4:4701\n"), "f.conf:6: [tcp] port", "integer"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nintercept = 198.18.100.1/24\n"),
     "f.conf:8: [tcp] intercept", "'198.18.100.1/24' is not a prefix"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nintercept = 10.0.0.0/8,\n"),
     "f.conf:8: [tcp] intercept", "empty item"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nintercept = fd00::/8, fd00::/8\n"),
     "f.conf:8: [tcp] intercept", "listed twice"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nexclude = lan\n"),
     "f.conf:8: [tcp] exclude", "'lan' is not a prefix"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nexclude = 2001:db8::1/32\n"),
     "f.conf:8: [tcp] exclude", "host bits must be zero"),
    # [tcp] rules
    (_server("[tcp]\nencrypt = maybe\n"), "f.conf:6: [tcp] encrypt", "must be one of: on, off"),
    (_server("[tcp]\nport = 4701\nproxy = on\n"), "f.conf:7: [tcp] proxy",
     "needs key = in [tunnel]: proxied connections are authenticated with it"),
    (_client(paths="[path a]\ninterface = a\n[tcp]\nproxy = true\n"
             "intercept = 10.0.0.0/8\n"), "f.conf:8: [tcp] proxy", "needs key = in [tunnel]"),
    (_client(KEY, "[path a]\ninterface = a\n\n[tcp]\nproxy = on\nexclude = 10.0.0.0/8\n"),
     "f.conf:9: [tcp] intercept", "missing required key"),
    (_client(KEY, "[tcp]\nproxy = on\n[path a]\ninterface = a\n"),
     "f.conf:6: [tcp] intercept", "missing required key"),
    (_server(KEY + "[tcp]\nproxy = on\nintercept = 198.18.100.0/24\n"),
     "f.conf:8: [tcp] intercept", "only for role = client"),
    (_server("[tcp]\nexclude = 198.18.200.0/24\n"), "f.conf:6: [tcp] exclude",
     "only for role = client"),
    (_server("[tcp]\nproxy = off\nintercept = 198.18.100.0/24\n"),
     "f.conf:7: [tcp] intercept", "only for role = client"),
]


@pytest.mark.parametrize("text, where, fragment", ERRORS)
def test_errors(text, where, fragment):
    with pytest.raises(ConfigError) as e:
        parse(text, "f.conf")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(where + ": "), msg
    assert fragment in msg


def test_error_is_one_line_even_for_odd_source():
    with pytest.raises(ConfigError) as e:
        parse("", "weird\nname")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, seconds", [
    ("50ms", 0.05), ("0.05s", 0.05), ("50", 0.05), ("2s", 2.0), ("1ms", 0.001),
    (" 250 ms ", 0.25), (".5s", 0.5), ("60s", 60.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ms", "-5ms", "5m", "1e3", "fast", "5 min", "inf"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, default, expected", [
    ("198.18.10.2:4700", None, Endpoint(ip_address("198.18.10.2"), 4700)),
    ("[fd77::2]:4700", None, Endpoint(ip_address("fd77::2"), 4700)),
    ("4700", None, Endpoint(None, 4700)),
    ("4700", "0.0.0.0", Endpoint(ip_address("0.0.0.0"), 4700)),
    ("[::]:1", None, Endpoint(ip_address("::"), 1)),
])
def test_parse_endpoint(text, default, expected):
    assert parse_endpoint(text, default) == expected


@pytest.mark.parametrize("text", [
    "", "1.2.3.4", "1.2.3.4:", ":4700", "1.2.3.4:0", "1.2.3.4:65536", "[1.2.3.4]:80",
    "fd00::1:80", "[fd00::1]", "[fd00::1]80", "host:80", "0", "4700x", "²",
])
def test_parse_endpoint_rejects(text):
    with pytest.raises(ValueError) as e:
        parse_endpoint(text)
    assert "\n" not in str(e.value)


def test_endpoint_str():
    assert str(parse_endpoint("1.2.3.4:5")) == "1.2.3.4:5"
    assert str(parse_endpoint("[fd00::1]:5")) == "[fd00::1]:5"
