"""tunnel.conf: the per-router configuration file.

The parser is hand-written (not configparser) so that every error can name the
file, line, section and key it is about, in exactly one line:

    /etc/mpt/tunnel.conf:12: [path wan2] weight: must be a positive number, got '-1'

Parsing happens in two passes: the first splits the text into sections and
key/value pairs (syntax errors, unknown/duplicate sections and keys); the second
checks each value and the rules that tie keys together (roles, peers, families)
and reads the key files the config names (mpt.keyfile), so that an unusable
one is reported on its line like any other mistake.
See docs/CONFIG.md for the file format.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

from . import keyfile

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ROLES = ("client", "server")
SCHEDULERS = ("weighted", "auto")
# The config keeps the name; mpt.cipher turns "auto" into the CPU's best choice.
CIPHERS = ("auto", "aes-256-gcm", "chacha20-poly1305", "none")
DEFAULT_CIPHER = "auto"
MAX_PATHS = 16
MAX_WEIGHT = 1000.0
MTU_MIN, MTU_MAX = 576, 1900
HOLD_TIME_RANGE = (0.001, 2.0)  # seconds
MAX_HOLD_RANGE = HOLD_TIME_RANGE
DEFAULT_MAX_HOLD = 0.2  # or hold_time, if that is larger
REKEY_INTERVAL_RANGE = (10.0, 3600.0)  # seconds
DEFAULT_REKEY_INTERVAL = 120.0
# A path's rate cap, bits/s, tc's units (k = 1000). At 64kbit one full-size
# packet already takes 190ms to pace out; less is no use to a tunnel.
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
RATE_RANGE = (64e3, 100e9)
PROBE_INTERVAL_RANGE = (0.01, 10.0)  # seconds; also idle_probe_interval
DEFAULT_PROBE_INTERVAL = 0.1
DEFAULT_IDLE_PROBE_INTERVAL = 0.3  # or probe_interval, if that is larger
DEAD_AFTER_RANGE = (2, 100)  # probe intervals
DEFAULT_DEAD_AFTER = 3
HOLD_DOWN_RANGE = (0.0, 60.0)  # seconds
DEFAULT_HOLD_DOWN = 0.5
PRIORITY_RANGE = (0, 255)
TABLE_RANGE = (1, 2**31 - 1)
# Routing tables the kernel itself uses: a path must not take one over.
RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}
DEFAULT_TABLE_BASE = 1000  # a path without `table` gets 1000 + its index (from 0)
DEFAULT_NAME = "mpt0"
# A server without [peer] sections serves one peer by this name, with the
# [tunnel] key and every address.
IMPLICIT_PEER = "default"
IMPLICIT_ALLOWED = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
DEFAULT_TCP_PORT = 4701
# Spellings of a boolean: the first of each pair is the canonical one.
BOOLEANS = {"on": True, "off": False, "yes": True, "no": False,
            "true": True, "false": False, "1": True, "0": False}

TUNNEL_KEYS = (
    "name", "address", "role", "peer", "listen", "mtu", "scheduler",
    "control", "routes", "hold_time", "probe_interval", "idle_probe_interval",
    "dead_after", "hold_down", "key", "cipher", "rekey_interval", "max_hold",
)
PATH_KEYS = ("interface", "local", "peer", "weight", "priority", "gateway", "table", "rate")
TCP_KEYS = ("proxy", "port", "intercept", "exclude", "encrypt")
PEER_KEYS = ("key", "allowed")

_SECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # NAME of [path NAME], [peer NAME]
_KEY = re.compile(r"[A-Za-z0-9_.-]+")
# An inline comment needs whitespace before it, so values like "a#b" survive.
_INLINE_COMMENT = re.compile(r"\s[;#]")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_RATE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z/]*)", re.ASCII)


class ConfigError(ValueError):
    """A problem with a config file; str() is always a single line."""

    def __init__(self, message: str):
        # Values and file names come from user input: keep the promise of one line.
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class Endpoint:
    host: IPAddress | None  # None only for a bare-port `listen`
    port: int

    def __str__(self) -> str:
        if self.host is None:
            return f"*:{self.port}"
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PathConfig:
    name: str
    interface: str | None
    local: IPAddress | None
    peer: Endpoint | None  # effective peer: the path's own or the tunnel's
    weight: float
    priority: int  # lower is preferred; higher numbers are backups
    gateway: IPAddress | None  # next hop in the path's own routing table
    table: int | None  # path's routing table; None: the daemon picks 1000 + index
    rate_bps: float  # cap on what is sent on this path, bits/s; 0: no cap
    line: int  # line of the [path NAME] header, for later diagnostics


@dataclass(frozen=True)
class PeerConfig:
    """A client router the server serves: a [peer NAME] section, or the
    implicit one (IMPLICIT_PEER) of a server without any."""

    name: str
    key: bytes | None = field(repr=False)  # keyfile.KEY_BYTES; None only with cipher = none
    allowed: tuple[IPNetwork, ...]  # inner addresses it may use, and that route to it
    line: int  # its [peer NAME] header; the [tunnel] header for the implicit peer


@dataclass(frozen=True)
class TcpConfig:
    """The [tcp] section: TCP carried over Linux MPTCP by a proxy on each end."""

    proxy: bool = False
    # The server's MPTCP proxy port; the client also listens on it locally for
    # the LAN connections it intercepts.
    port: int = DEFAULT_TCP_PORT
    intercept: tuple[IPNetwork, ...] = ()  # client: LAN source prefixes to intercept
    exclude: tuple[IPNetwork, ...] = ()  # client: destination prefixes never intercepted
    encrypt: bool = False  # payload encryption (AES-256-GCM); off: authenticated only
    line: int = 0  # line of the [tcp] header; 0 when the section is absent


@dataclass(frozen=True)
class TunnelConfig:
    source: str
    name: str
    addresses: tuple[IPInterface, ...]
    role: str
    peer: Endpoint | None
    listen: Endpoint | None
    mtu: int | None  # None: the daemon computes it from the paths
    scheduler: str
    control: str
    routes: tuple[IPNetwork, ...]
    hold_time: float | None  # seconds; None: derived at runtime
    max_hold: float  # seconds: bound of the derived hold time (>= hold_time)
    probe_interval: float  # seconds, on a path in use or being brought up
    idle_probe_interval: float  # seconds, on an idle path; >= probe_interval
    dead_after: int  # probe intervals of silence before a path leaves the schedule
    hold_down: float  # seconds before a path that left may be re-admitted
    cipher: str  # one of CIPHERS; "auto" is resolved by mpt.cipher
    rekey_interval: float  # seconds between session rekeys
    paths: tuple[PathConfig, ...]
    # Server: the peers it serves, never empty (IMPLICIT_PEER without [peer]
    # sections); client: empty.
    peers: tuple[PeerConfig, ...]
    key: str | None = None  # absolute path of the [tunnel] key file (mpt.keyfile)
    key_bytes: bytes | None = field(default=None, repr=False)  # that file's key, loaded
    tcp: TcpConfig = field(default_factory=TcpConfig)  # defaults without [tcp]


# --- value parsers (raise ValueError with a short message) -------------------


def parse_duration(text: str) -> float:
    """Parse a duration into seconds.

    Accepts "50ms", "0.05s" and a plain number, which means milliseconds
    ("50" == 50ms), since that is the natural unit for the timers it sets.
    """
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected a duration like 50ms or 0.5s, got {text!r}")
    number, unit = float(m.group(1)), m.group(2) or "ms"
    # Divide rather than multiply by 0.001 so that "50ms" == 0.05 exactly.
    return number / 1000 if unit == "ms" else number


def parse_endpoint(text: str, default_host: str | IPAddress | None = None) -> Endpoint:
    """Parse "IPv4:port", "[IPv6]:port" or a bare "port".

    A bare port gets default_host as its host (None unless given).
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if _is_uint(text):
        host = ipaddress.ip_address(default_host) if default_host is not None else None
        return Endpoint(host, _port(text))
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
        host = _ip(addr)
        if host.version != 6:
            raise ValueError(f"brackets are for IPv6 addresses, got {text!r}")
        return Endpoint(host, _port(port))
    if text.count(":") > 1:
        raise ValueError(f"an IPv6 address needs brackets: [addr]:port, got {text!r}")
    addr, sep, port = text.partition(":")
    if not sep:
        raise ValueError(f"missing port: expected IPv4:port or [IPv6]:port, got {text!r}")
    return Endpoint(_ip(addr), _port(port))


def _is_uint(text: str) -> bool:
    # str.isdigit() alone would accept non-ASCII digits such as '²'.
    return text.isascii() and text.isdigit()


def _ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {text.strip()!r}") from None


def _port(text: str) -> int:
    if not _is_uint(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be 1..65535, got {text!r}")
    return int(text)


def _ifname(text: str) -> str:
    # Linux rules (dev_valid_name): IFNAMSIZ-1 bytes, no '/', ':' or whitespace.
    if not 1 <= len(text.encode()) <= 15:
        raise ValueError(f"interface name must be 1..15 bytes, got {text!r}")
    if text in (".", "..") or any(c in "/:" or c.isspace() for c in text):
        raise ValueError(f"invalid interface name {text!r} (no '/', ':' or whitespace)")
    return text


def _list(text: str, parse, what: str) -> tuple:
    items = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty item in comma-separated list {text!r}")
        try:
            item = parse(part)
        except ValueError:
            raise ValueError(f"{part!r} is not {what}") from None
        if item in items:
            raise ValueError(f"{part!r} is listed twice")
        items.append(item)
    return tuple(items)


def _addresses(text: str) -> tuple:
    return _list(text, ipaddress.ip_interface, "an address/prefix like 10.77.0.1/30")


def _routes(text: str) -> tuple:
    # strict: "10.0.0.1/24" is probably a typo for an address, so refuse it.
    return _list(text, lambda s: ipaddress.ip_network(s, strict=True),
                 "a prefix like 198.18.200.0/24 (host bits must be zero)")


def _choice(allowed: tuple[str, ...]):
    def check(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}; got {text!r}")
        return text
    return check


def _bool(text: str) -> bool:
    value = BOOLEANS.get(text.lower())
    if value is None:
        raise ValueError(f"must be one of: {', '.join(BOOLEANS)}; got {text!r}")
    return value


def _mtu(text: str) -> int:
    if not _is_uint(text) or not MTU_MIN <= int(text) <= MTU_MAX:
        raise ValueError(f"must be an integer {MTU_MIN}..{MTU_MAX}, got {text!r}")
    return int(text)


def _abspath(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, got {text!r}")
    return text


def _duration_in(lo: float, hi: float):
    def check(text: str) -> float:
        value = parse_duration(text)
        if not lo <= value <= hi:
            hint = ("" if value == 0 or any(c.isalpha() for c in text)
                    else " (a number without unit is milliseconds)")
            raise ValueError(f"must be between {_fmt_s(lo)} and {_fmt_s(hi)}, "
                             f"got {text!r}{hint}")
        return value
    return check


def _fmt_s(seconds: float) -> str:
    if seconds == 0:
        return "0"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


def parse_rate(text: str) -> float:
    """Parse a rate like tc does ("20mbit", "1.5Gbit"; k = 1000) into bits/s.

    "0" means no cap. tc's "bps" units mean bytes/s while many people read
    "Mbps" as bits/s, so those are refused rather than guessed.
    """
    m = _RATE.fullmatch(text.strip().lower())
    if not m:
        raise ValueError(f"expected a rate like 20mbit or 1.5gbit, got {text!r}")
    number, unit = Decimal(m.group(1)), m.group(2)
    if number == 0 and (not unit or unit in RATE_UNITS):
        return 0.0
    units = ", ".join(RATE_UNITS)
    if not unit:
        raise ValueError(f"needs a unit ({units}), e.g. 20mbit; got {text!r}")
    if unit.endswith("bps"):
        raise ValueError(f"ambiguous unit in {text!r} (tc reads bps as bytes/s): "
                         f"write bits/s as {units}, e.g. 20mbit")
    unit = unit.removesuffix("/s")  # "mbit/s" is as clear as "mbit"
    if unit not in RATE_UNITS:
        raise ValueError(f"unknown unit in {text!r} (expected {units}, e.g. 20mbit)")
    return float(number * RATE_UNITS[unit])


def _rate(text: str) -> float:
    value = parse_rate(text)
    lo, hi = RATE_RANGE
    if value and not lo <= value <= hi:
        raise ValueError(f"must be 0 (no cap) or between 64kbit and 100gbit, got {text!r}")
    return value


def _key_file(text: str) -> tuple[str, bytes]:
    # KeyFileError is a ValueError, one line, and never shows key material.
    path = _abspath(text)
    return path, keyfile.load_key(path)


def _int_in(lo: int, hi: int):
    def check(text: str) -> int:
        if not _is_uint(text) or not lo <= int(text) <= hi:
            raise ValueError(f"must be an integer {lo}..{hi}, got {text!r}")
        return int(text)
    return check


def _table(text: str) -> int:
    value = _int_in(*TABLE_RANGE)(text)
    if value in RESERVED_TABLES:
        reserved = ", ".join(f"{n} ({name})" for n, name in RESERVED_TABLES.items())
        raise ValueError(f"table {value} is the kernel's {RESERVED_TABLES[value]} table; "
                         f"{reserved} are reserved")
    return value


def _gateway(text: str) -> IPAddress:
    addr = _ip(text)
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"must be a unicast address, got {text!r}")
    return addr


def _weight(text: str) -> float:
    if not _DECIMAL.fullmatch(text) or float(text) <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    value = float(text)
    if not math.isfinite(value) or value > MAX_WEIGHT:
        raise ValueError(f"must be at most {MAX_WEIGHT:g}, got {text!r}")
    return value


# --- first pass: sections and keys ---------------------------------------------


@dataclass
class _Section:
    title: str  # "tunnel", "tcp", "path NAME" or "peer NAME", as shown in messages
    line: int
    keys: tuple[str, ...]  # the keys this kind of section allows
    values: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, line)


class _Parser:
    def __init__(self, text: str, source: str):
        self.source = source
        self.tunnel: _Section | None = None
        self.tcp: _Section | None = None
        self.paths: dict[str, _Section] = {}
        self.peers: dict[str, _Section] = {}
        self._scan(text)

    def error(self, line: int | None, section: _Section | None, key: str | None,
              message: str) -> ConfigError:
        where = [self.source if line is None else f"{self.source}:{line}"]
        label = " ".join(([f"[{section.title}]"] if section else []) + ([key] if key else []))
        if label:
            where.append(label)
        return ConfigError(f"{': '.join(where)}: {message}")

    def _scan(self, text: str) -> None:
        section: _Section | None = None
        # split("\n") rather than splitlines(): line numbers must match editors'.
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line[0] in ";#":
                continue
            m = _INLINE_COMMENT.search(line)
            if m:
                line = line[: m.start()].rstrip()
            if line.startswith("["):
                section = self._header(line, lineno)
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _KEY.fullmatch(key):
                raise self.error(lineno, section, None,
                                 f"expected 'key = value' or '[section]', got {line!r}")
            if section is None:
                raise self.error(lineno, None, key,
                                 "key outside any section "
                                 "(put it under [tunnel], [tcp], [path NAME] or [peer NAME])")
            if key not in section.keys:
                raise self.error(lineno, section, key,
                                 f"unknown key (allowed: {', '.join(section.keys)})")
            if key in section.values:
                raise self.error(lineno, section, key,
                                 f"duplicate key (first at line {section.values[key][1]})")
            if not value:
                raise self.error(lineno, section, key, "empty value")
            section.values[key] = (value, lineno)

    def _header(self, line: str, lineno: int) -> _Section:
        if not line.endswith("]"):
            raise self.error(lineno, None, None, f"malformed section header {line!r}")
        words = line[1:-1].split()
        if words == ["tunnel"]:
            if self.tunnel is not None:
                raise self.error(lineno, self.tunnel, None,
                                 f"duplicate section (first at line {self.tunnel.line})")
            self.tunnel = _Section("tunnel", lineno, TUNNEL_KEYS)
            return self.tunnel
        if words == ["tcp"]:
            if self.tcp is not None:
                raise self.error(lineno, self.tcp, None,
                                 f"duplicate section (first at line {self.tcp.line})")
            self.tcp = _Section("tcp", lineno, TCP_KEYS)
            return self.tcp
        for kind, named, keys in (("path", self.paths, PATH_KEYS),
                                  ("peer", self.peers, PEER_KEYS)):
            if not words or words[0] != kind:
                continue
            if len(words) != 2 or not _SECTION_NAME.fullmatch(words[1]):
                raise self.error(lineno, None, None,
                                 f"bad {kind} section {line!r}: expected [{kind} NAME] with "
                                 "NAME of 1..32 characters from A-Z a-z 0-9 _ . -")
            name = words[1]
            if name in named:
                first = named[name]
                raise self.error(lineno, first, None,
                                 f"duplicate section (first at line {first.line})")
            named[name] = _Section(f"{kind} {name}", lineno, keys)
            return named[name]
        raise self.error(lineno, None, None,
                         f"unknown section {line!r} "
                         "(expected [tunnel], [tcp], [path NAME] or [peer NAME])")

    # --- second pass: values and cross-key rules -------------------------------

    def get(self, section: _Section, key: str, parse, default=None, required=False):
        if key not in section.values:
            if required:
                raise self.error(section.line, section, key, "missing required key")
            return default
        value, lineno = section.values[key]
        try:
            return parse(value)
        except ValueError as e:
            raise self.error(lineno, section, key, str(e)) from None

    def line_of(self, section: _Section, key: str) -> int:
        return section.values[key][1]

    def build(self) -> TunnelConfig:
        t = self.tunnel
        if t is None:
            if not self.paths and self.tcp is None:
                raise self.error(None, None, None, "empty config: expected a [tunnel] section")
            raise self.error(None, None, None, "missing [tunnel] section")

        name = self.get(t, "name", _ifname, DEFAULT_NAME)
        addresses = self.get(t, "address", _addresses, required=True)
        role = self.get(t, "role", _choice(ROLES), required=True)
        peer = self.get(t, "peer", self._peer)
        listen = self.get(t, "listen", parse_endpoint)
        mtu = self.get(t, "mtu", _mtu)
        scheduler = self.get(t, "scheduler", _choice(SCHEDULERS), "weighted")
        control = self.get(t, "control", _abspath, f"/run/mpt/{name}.sock")
        routes = self.get(t, "routes", _routes, ())
        hold_time = self.get(t, "hold_time", _duration_in(*HOLD_TIME_RANGE))
        # Unset, it follows a larger fixed hold_time rather than contradict it.
        max_hold = self.get(t, "max_hold", _duration_in(*MAX_HOLD_RANGE),
                            max(DEFAULT_MAX_HOLD, hold_time or 0))
        if hold_time is not None and hold_time > max_hold:
            raise self.error(self.line_of(t, "hold_time"), t, "hold_time",
                             f"must be at most max_hold ({_fmt_s(max_hold)}), "
                             f"got {t.values['hold_time'][0]!r}")
        probe_interval = self.get(t, "probe_interval", _duration_in(*PROBE_INTERVAL_RANGE),
                                  DEFAULT_PROBE_INTERVAL)
        # Unset, it follows a larger probe_interval rather than contradict it.
        idle_probe_interval = self.get(t, "idle_probe_interval",
                                       _duration_in(*PROBE_INTERVAL_RANGE),
                                       max(DEFAULT_IDLE_PROBE_INTERVAL, probe_interval))
        if idle_probe_interval < probe_interval:
            raise self.error(self.line_of(t, "idle_probe_interval"), t, "idle_probe_interval",
                             f"must be at least probe_interval ({_fmt_s(probe_interval)}), "
                             f"got {t.values['idle_probe_interval'][0]!r}")
        dead_after = self.get(t, "dead_after", _int_in(*DEAD_AFTER_RANGE), DEFAULT_DEAD_AFTER)
        hold_down = self.get(t, "hold_down", _duration_in(*HOLD_DOWN_RANGE), DEFAULT_HOLD_DOWN)
        cipher = self.get(t, "cipher", _choice(CIPHERS), DEFAULT_CIPHER)
        rekey_interval = self.get(t, "rekey_interval", _duration_in(*REKEY_INTERVAL_RANGE),
                                  DEFAULT_REKEY_INTERVAL)
        # Read now, so that --check finds an unusable key file and names its line.
        key, key_bytes = self.get(t, "key", _key_file, (None, None))

        if role == "server":
            if peer is not None:
                raise self.error(self.line_of(t, "peer"), t, "peer",
                                 "peer is for role = client (a server uses listen)")
            if listen is None:
                raise self.error(t.line, t, "listen", "missing required key")
            if self.paths:
                first = next(iter(self.paths.values()))
                raise self.error(first.line, first, None,
                                 "[path] sections are for role = client; "
                                 "the server learns paths from the client")
            paths: tuple[PathConfig, ...] = ()
            if self.peers:
                peers = self._peers(cipher)
            else:
                peers = (PeerConfig(IMPLICIT_PEER, key_bytes, IMPLICIT_ALLOWED, t.line),)
        else:
            if listen is not None:
                raise self.error(self.line_of(t, "listen"), t, "listen",
                                 "listen is for role = server (a client uses peer)")
            if self.peers:
                first = next(iter(self.peers.values()))
                raise self.error(first.line, first, None,
                                 "[peer] sections are for role = server; "
                                 "a client's one peer is peer = in [tunnel]")
            if not self.paths:
                raise self.error(t.line, t, None,
                                 "a client needs at least one [path NAME] section")
            paths = self._paths(peer)
            peers = ()
        tcp = self._tcp(role, key)
        # Last, so that a mistake in a value is reported before the missing key.
        if cipher != "none" and key is None and not self.peers:
            raise self.error(t.line, t, "key",
                             "missing required key: packets are authenticated and encrypted "
                             "with it; make one with (umask 077; mptctl genkey > "
                             "/etc/mpt/tunnel.key), the same file on both routers, "
                             "or write cipher = none for an unprotected tunnel")

        return TunnelConfig(
            source=self.source, name=name, addresses=addresses, role=role,
            peer=peer, listen=listen, mtu=mtu, scheduler=scheduler, control=control,
            routes=routes, hold_time=hold_time, max_hold=max_hold,
            probe_interval=probe_interval, idle_probe_interval=idle_probe_interval,
            dead_after=dead_after, hold_down=hold_down, cipher=cipher,
            rekey_interval=rekey_interval, paths=paths, peers=peers, key=key,
            key_bytes=key_bytes, tcp=tcp,
        )

    def _peers(self, cipher: str) -> tuple[PeerConfig, ...]:
        peers: list[PeerConfig] = []
        owner: dict[IPNetwork, tuple[str, int]] = {}  # prefix -> (peer, line of its allowed)
        key_owner: dict[bytes, str] = {}
        for name, s in self.peers.items():
            key = self.get(s, "key", _key_file, (None, None))[1]
            allowed = self.get(s, "allowed", _routes, required=True)
            if key is None and cipher != "none":
                raise self.error(s.line, s, "key",
                                 "missing required key: this peer's packets are authenticated "
                                 "and encrypted with it (a copy of its router's [tunnel] key), "
                                 "or write cipher = none in [tunnel]")
            if key is not None:
                # The server tells peers apart by their keys; shared, one could
                # pose as the other and use its addresses.
                if key in key_owner:
                    raise self.error(self.line_of(s, "key"), s, "key",
                                     f"same key as [peer {key_owner[key]}]: "
                                     "each peer needs a key of its own")
                key_owner[key] = name
            line = self.line_of(s, "allowed")
            for prefix in allowed:
                for other, (other_peer, other_line) in owner.items():
                    if prefix.overlaps(other):
                        raise self.error(line, s, "allowed",
                                         f"{prefix} overlaps {other} of [peer {other_peer}] "
                                         f"(line {other_line}): an address must belong "
                                         "to one peer only")
            for prefix in allowed:
                owner[prefix] = (name, line)
            peers.append(PeerConfig(name, key, allowed, s.line))
        return tuple(peers)

    def _tcp(self, role: str, key: str | None) -> TcpConfig:
        s = self.tcp
        if s is None:
            return TcpConfig()
        proxy = self.get(s, "proxy", _bool, False)
        port = self.get(s, "port", _int_in(1, 65535), DEFAULT_TCP_PORT)
        intercept = self.get(s, "intercept", _routes, ())
        exclude = self.get(s, "exclude", _routes, ())
        encrypt = self.get(s, "encrypt", _bool, False)

        if role == "server":
            for k in ("intercept", "exclude"):
                if k in s.values:
                    raise self.error(self.line_of(s, k), s, k,
                                     "only for role = client (the client intercepts; "
                                     "the server connects to the original destinations)")
        if proxy:
            if key is None:
                raise self.error(self.line_of(s, "proxy"), s, "proxy",
                                 "needs key = in [tunnel]: proxied connections are "
                                 "authenticated with it")
            if role == "client" and not intercept:
                raise self.error(s.line, s, "intercept",
                                 "missing required key (a client with proxy = on needs "
                                 "the LAN prefixes whose TCP it intercepts)")
        return TcpConfig(proxy=proxy, port=port, intercept=intercept, exclude=exclude,
                         encrypt=encrypt, line=s.line)

    @staticmethod
    def _peer(text: str) -> Endpoint:
        ep = parse_endpoint(text)
        if ep.host is None:
            raise ValueError(f"needs an address: IPv4:port or [IPv6]:port, got {text!r}")
        if ep.host.is_unspecified or ep.host.is_multicast:
            raise ValueError(f"must be a unicast address, got {text!r}")
        return ep

    def _paths(self, tunnel_peer: Endpoint | None) -> tuple[PathConfig, ...]:
        paths = []
        interfaces: dict[str, str] = {}  # interface -> path that uses it
        tables: dict[int, str] = {}  # explicit table -> path that uses it
        for count, (name, s) in enumerate(self.paths.items(), start=1):
            if count > MAX_PATHS:
                raise self.error(s.line, s, None, f"too many paths (at most {MAX_PATHS})")
            interface = self.get(s, "interface", _ifname)
            local = self.get(s, "local", _ip)
            peer = self.get(s, "peer", self._peer) or tunnel_peer
            weight = self.get(s, "weight", _weight, 1.0)
            priority = self.get(s, "priority", _int_in(*PRIORITY_RANGE), 0)
            gateway = self.get(s, "gateway", _gateway)
            table = self.get(s, "table", _table)
            rate_bps = self.get(s, "rate", _rate, 0.0)

            if interface is None and local is None:
                raise self.error(s.line, s, None, "needs interface or local (or both)")
            if peer is None:
                t = self.tunnel
                raise self.error(t.line, t, "peer", "missing required key "
                                 f"([path {name}] has no peer of its own)")
            if local is not None and local.version != peer.host.version:
                raise self.error(self.line_of(s, "local"), s, "local",
                                 f"IPv{local.version} address {str(local)!r} but the "
                                 f"path's peer {peer} is IPv{peer.host.version}")
            if interface is not None:
                if interface in interfaces:
                    raise self.error(self.line_of(s, "interface"), s, "interface",
                                     f"{interface!r} is already used by "
                                     f"[path {interfaces[interface]}]")
                interfaces[interface] = name
            if gateway is not None and gateway.version != peer.host.version:
                raise self.error(self.line_of(s, "gateway"), s, "gateway",
                                 f"IPv{gateway.version} address {str(gateway)!r} but the "
                                 f"path's peer {peer} is IPv{peer.host.version}")
            if table is not None:
                if table in tables:
                    raise self.error(self.line_of(s, "table"), s, "table",
                                     f"table {table} is already used by [path {tables[table]}]")
                tables[table] = name
            paths.append(PathConfig(name, interface, local, peer, weight, priority,
                                    gateway, table, rate_bps, s.line))
        # An explicit table must not be the one the daemon gives a path without one.
        for index, p in enumerate(paths):
            default = DEFAULT_TABLE_BASE + index
            if p.table is None and default in tables:
                s = self.paths[tables[default]]
                raise self.error(self.line_of(s, "table"), s, "table",
                                 f"table {default} is the default table of [path {p.name}] "
                                 f"({DEFAULT_TABLE_BASE} + its index {index}); "
                                 "choose another or set that path's table")
        return tuple(paths)


# --- public entry points ----------------------------------------------------------


def parse(text: str, source: str = "<string>") -> TunnelConfig:
    """Parse config text; raise ConfigError naming source:line on any problem."""
    return _Parser(text, source).build()


def load(path: str) -> TunnelConfig:
    """Read and parse a config file; raise ConfigError if unreadable or invalid."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text (byte {e.start})") from None
    return parse(text, path)
