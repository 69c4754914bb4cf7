"""Tunnel cipher names, their datapath numbers (csrc/mpt_aead.h), and the
"auto" choice: AES-256-GCM where the CPU has AES instructions, else
ChaCha20-Poly1305, which is faster than table-free software AES."""

from __future__ import annotations

# Must match MPT_CIPHER_* in csrc/mpt_aead.h.
NAMES = {"aes-256-gcm": 1, "chacha20-poly1305": 2, "none": 0}

CPUINFO = "/proc/cpuinfo"


def cpu_has_aes(cpuinfo: str = CPUINFO) -> bool:
    """True if the CPU advertises AES instructions: the 'aes' flag on x86
    ('flags' lines) or the 'aes' feature on ARM ('Features' lines).  False if
    the file cannot be read."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features") and "aes" in value.split():
                    return True
    except OSError:
        return False
    return False


def default_cipher() -> str:
    """The cipher "auto" stands for on this machine."""
    return "aes-256-gcm" if cpu_has_aes() else "chacha20-poly1305"


def resolve(name: str) -> str:
    """A configured cipher name as the datapath uses it: "auto" becomes
    default_cipher(), a name in NAMES stays; anything else is a ValueError."""
    if name == "auto":
        return default_cipher()
    if name not in NAMES:
        raise ValueError(f"unknown cipher {name!r}: choose auto, " + ", ".join(NAMES))
    return name
