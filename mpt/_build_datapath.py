"""cffi build of the C datapath (csrc/) into the extension mpt._datapath.

Run by setuptools at install time (setup.py: cffi_modules).  MPT_SANITIZE=address
builds an AddressSanitizer-instrumented copy, which the test suite loads with
libasan preloaded.
"""
import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
SOURCES = ["mpt_sched.c", "mpt_fq.c", "mpt_flow.c", "mpt_reorder.c", "mpt_aead.c", "mpt_replay.c",
           "mpt_cookie.c", "mpt_pktinfo.c", "mpt_peer.c", "mpt_send.c", "mpt_receive.c", "mpt_datapath.c"]

# The declarations Python sees are the headers' own, read at build time, so
# they cannot drift from the C: header guards and includes are dropped
# (cffi's cdef takes no preprocessor beyond integer #defines).
CDEF_HEADERS = ["mpt_sched.h", "mpt_fq.h", "mpt_flow.h", "mpt_reorder.h", "mpt_aead.h", "mpt_replay.h",
                "mpt_cookie.h", "mpt_datapath.h"]
_SKIP = re.compile(r"^\s*#\s*(ifndef|endif|include|define\s+\w+_H\s*$)")


def cdef_source() -> str:
    lines = []
    for name in CDEF_HEADERS:
        for line in (CSRC / name).read_text().splitlines():
            if not _SKIP.match(line):
                lines.append(re.sub(r"/\*.*?\*/", "", line))
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(cdef_source())

_flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-pthread"]
_link = ["-pthread"]
_libs = ["crypto"]   # OpenSSL libcrypto: per-packet AEAD (mpt_aead.c)
if os.environ.get("MPT_SANITIZE") == "address":
    _flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
              "-std=gnu11", "-Wall", "-Wextra", "-pthread"]
    _link = ["-fsanitize=address,undefined", "-pthread"]

# setuptools wants paths relative to setup.py; a direct build (the
# sanitizer test) compiles in another directory and needs absolute ones.
_direct = __name__ == "__main__"
_path = str if _direct else os.path.relpath

ffibuilder.set_source(
    "mpt._datapath",
    "".join(f'#include "{h}"\n' for h in CDEF_HEADERS + ["mpt_wire.h"]),
    depends=[_path(p) for p in sorted(CSRC.glob("*.h"))],
    sources=[_path(CSRC / s) for s in SOURCES],
    include_dirs=[_path(CSRC)],
    extra_compile_args=_flags,
    extra_link_args=_link,
    libraries=_libs,
)

if __name__ == "__main__":
    # python mpt/_build_datapath.py [OUTDIR]: build in place or into OUTDIR
    import sys

    print(ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True))
