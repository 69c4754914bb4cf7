/* The datapath: one thread that owns the TUN fd and the path sockets.
 *
 * Python creates the TUN device and the sockets, hands their fds over,
 * sets the path table and reads counters; it never touches a data packet.
 * Control packets (type MPT_TYPE_CONTROL) are passed to Python through a
 * SOCK_SEQPACKET socketpair, each prefixed by a struct mpt_ctrl_meta.
 */
#ifndef MPT_DATAPATH_H
#define MPT_DATAPATH_H

#include <stdint.h>
#include "mpt_sched.h"

#define MPT_BATCH 32
#define MPT_MAX_PKT 2048      /* largest inner packet */
#define MPT_REORDER_SLOTS 4096
#define MPT_SOCKADDR_MAX 28   /* sizeof(struct sockaddr_in6) */

struct mpt_path_counters {
    uint64_t tx_packets, tx_bytes;   /* data sent on this path (inner bytes) */
    uint64_t rx_packets, rx_bytes;   /* data received on this path */
    uint64_t tx_errors;              /* dropped: send buffer full or send error */
    uint64_t ctrl_rx;                /* control packets received */
    uint64_t addr_changes;           /* server: the client's address moved */
    uint64_t rx_path_seq;            /* highest per-path sequence received */
};

struct mpt_counters {
    struct mpt_path_counters path[MPT_MAX_PATHS];
    uint64_t tun_rx_packets, tun_rx_bytes;   /* read from the TUN device */
    uint64_t tun_tx_packets, tun_tx_bytes;   /* written to the TUN device */
    uint64_t drop_no_path;       /* nothing to send on */
    uint64_t drop_malformed;     /* shorter than a header */
    uint64_t drop_version;       /* unknown version or type */
    uint64_t drop_bad_path;      /* path index out of range, or (client) not from the server */
    uint64_t drop_bad_inner;     /* payload is not one whole IP packet */
    uint64_t drop_too_big;
    uint64_t drop_duplicate;     /* this and the reorder_* below: from the reorder buffer */
    uint64_t drop_late;
    uint64_t drop_tun_write;
    uint64_t drop_ctrl_queue;    /* Python did not keep up with control packets */
    uint64_t reorder_held;
    uint64_t reorder_skipped;    /* sequence numbers given up as lost */
    uint64_t reorder_timeouts;
    uint64_t reorder_overflows;
    uint64_t session_resets;     /* the peer restarted */
    uint64_t loops;
};

/* What precedes a control packet on the socketpair to Python. */
struct mpt_ctrl_meta {
    int32_t fd;                  /* socket it arrived on */
    uint32_t addrlen;
    uint8_t addr[MPT_SOCKADDR_MAX];
    uint32_t local_family;       /* the address it was sent to: 0 unknown, 4 or 6 */
    uint8_t local[16];
};

struct mpt_dp;

/* listen_fd >= 0 makes this the server: paths are learned from the client
 * (path index taken from the header, peer address from the packet's
 * source) and the listen socket is polled even before any path exists. */
struct mpt_dp *mpt_dp_new(int tun_fd, int ctrl_fd, int listen_fd, uint16_t session,
                          uint32_t hold_us, uint32_t alive_ms);
int mpt_dp_start(struct mpt_dp *dp);
void mpt_dp_stop(struct mpt_dp *dp);
void mpt_dp_free(struct mpt_dp *dp);
/* 0 while the thread runs normally, else the errno that stopped it. */
int mpt_dp_failed(struct mpt_dp *dp);
void mpt_dp_set_hold(struct mpt_dp *dp, uint32_t hold_us, uint32_t alive_ms);

/* Set path idx.  fd < 0 removes it.  addrlen 0 keeps the current peer
 * address (the server's learned one).  Returns 0, or -1 on bad arguments. */
int mpt_dp_set_path(struct mpt_dp *dp, int idx, int fd, const uint8_t *addr, uint32_t addrlen,
                    double weight, int active);
/* Only the peer address (and socket) of path idx: the server, once Python
 * has checked a probe from a new address.  Returns 0, or -1. */
int mpt_dp_set_peer(struct mpt_dp *dp, int idx, int fd, const uint8_t *addr, uint32_t addrlen,
                    uint32_t local_family, const uint8_t *local);
/* Copy path idx's peer address out; returns its length (0 if none). */
uint32_t mpt_dp_get_peer(struct mpt_dp *dp, int idx, uint8_t *addr);
/* Wait until the loop has picked up every path change made so far, so a
 * replaced fd can be closed safely. */
void mpt_dp_sync(struct mpt_dp *dp);
/* A snapshot of the counters for the control plane. */
void mpt_dp_copy_counters(struct mpt_dp *dp, struct mpt_counters *out);

#endif
