"""cffi build of the C datapath (csrc/) into the extension mpt._datapath.

Run by setuptools at install time (setup.py: cffi_modules).  MPT_SANITIZE=address
builds an AddressSanitizer-instrumented copy, which the test suite loads with
libasan preloaded.
"""
import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
SOURCES = ["mpt_sched.c", "mpt_reorder.c", "mpt_send.c", "mpt_receive.c", "mpt_datapath.c"]

CDEF = """
#define MPT_MAX_PATHS 16
#define MPT_HDR_LEN 16
#define MPT_TAG_RESERVE 16
#define MPT_VERSION 1
#define MPT_TYPE_DATA 0
#define MPT_TYPE_CONTROL 1
#define MPT_MAX_PKT 2048
#define MPT_SOCKADDR_MAX 28

struct mpt_sched { ...; };
void mpt_sched_init(struct mpt_sched *s);
void mpt_sched_set(struct mpt_sched *s, int idx, double weight, int active);
int mpt_sched_pick(struct mpt_sched *s, uint32_t bytes);

struct mpt_reorder_stats {
    uint64_t delivered, held, duplicates, late, skipped, timeouts, overflows, too_big;
};
struct mpt_reorder { uint64_t next; uint32_t nheld; struct mpt_reorder_stats stats; ...; };
typedef void (*mpt_deliver_fn)(void *ctx, const uint8_t *data, uint32_t len);
struct mpt_reorder *mpt_reorder_new(uint32_t nslots, uint32_t slot_size, int64_t hold_ns,
                                    int64_t alive_ns, mpt_deliver_fn deliver, void *ctx);
void mpt_reorder_free(struct mpt_reorder *r);
void mpt_reorder_reset(struct mpt_reorder *r);
void mpt_reorder_set_hold(struct mpt_reorder *r, int64_t hold_ns, int64_t alive_ns);
void mpt_reorder_heard(struct mpt_reorder *r, int path, int64_t now_ns);
void mpt_reorder_input(struct mpt_reorder *r, uint64_t seq, int path, const uint8_t *data,
                       uint32_t len, int64_t now_ns);
void mpt_reorder_tick(struct mpt_reorder *r, int64_t now_ns);
int64_t mpt_reorder_deadline(const struct mpt_reorder *r);
struct mpt_sink { uint64_t *ids; uint32_t n; uint32_t cap; };
void mpt_sink_record(void *ctx, const uint8_t *data, uint32_t len);

struct mpt_path_counters {
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, tx_errors, ctrl_rx, addr_changes,
             rx_path_seq;
};
struct mpt_counters {
    struct mpt_path_counters path[16];
    uint64_t tun_rx_packets, tun_rx_bytes, tun_tx_packets, tun_tx_bytes;
    uint64_t drop_no_path, drop_malformed, drop_version, drop_bad_path, drop_bad_inner,
             drop_too_big, drop_duplicate, drop_late, drop_tun_write, drop_ctrl_queue;
    uint64_t reorder_held, reorder_skipped, reorder_timeouts, reorder_overflows,
             session_resets, loops;
};
struct mpt_ctrl_meta { int32_t fd; uint32_t addrlen; uint8_t addr[28]; };

struct mpt_dp;
struct mpt_dp *mpt_dp_new(int tun_fd, int ctrl_fd, int listen_fd, uint16_t session,
                          uint32_t hold_us, uint32_t alive_ms);
int mpt_dp_start(struct mpt_dp *dp);
void mpt_dp_stop(struct mpt_dp *dp);
void mpt_dp_free(struct mpt_dp *dp);
struct mpt_counters *mpt_dp_counters(struct mpt_dp *dp);
void mpt_dp_set_hold(struct mpt_dp *dp, uint32_t hold_us, uint32_t alive_ms);
int mpt_dp_set_path(struct mpt_dp *dp, int idx, int fd, const uint8_t *addr, uint32_t addrlen,
                    double weight, int active);
uint32_t mpt_dp_get_peer(struct mpt_dp *dp, int idx, uint8_t *addr);
void mpt_dp_sync(struct mpt_dp *dp);
void mpt_dp_copy_counters(struct mpt_dp *dp, struct mpt_counters *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)

_flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-pthread"]
_link = ["-pthread"]
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
    '#include "mpt_datapath.h"\n#include "mpt_reorder.h"\n#include "mpt_sched.h"\n'
    '#include "mpt_wire.h"\n',
    depends=[_path(p) for p in sorted(CSRC.glob("*.h"))],
    sources=[_path(CSRC / s) for s in SOURCES],
    include_dirs=[_path(CSRC)],
    extra_compile_args=_flags,
    extra_link_args=_link,
)

if __name__ == "__main__":
    # python mpt/_build_datapath.py [OUTDIR]: build in place or into OUTDIR
    import sys

    print(ffibuilder.compile(tmpdir=sys.argv[1] if len(sys.argv) > 1 else ".", verbose=True))
