/* The datapath: one thread that owns the TUN fd and the path sockets.
 *
 * Python creates the TUN device and the sockets, hands their fds over,
 * runs the handshake and installs session keys, sets the path tables and
 * reads counters; it never touches a data packet.  Control and handshake
 * packets are passed to Python through a SOCK_SEQPACKET socketpair, each
 * prefixed by a struct mpt_ctrl_meta; control packets arrive there
 * already authenticated and decrypted, handshake packets as they came.
 *
 * A client has one peer (index 0, the server).  A server has one peer per
 * client router, each with its own session, keys, paths, scheduler,
 * reorder buffer and the inner prefixes it may use (`allowed`).
 */
#ifndef MPT_DATAPATH_H
#define MPT_DATAPATH_H

#include <stdint.h>
#include "mpt_sched.h"

#define MPT_BATCH 32
#define MPT_MAX_PKT 2048      /* largest inner packet */
#define MPT_REORDER_SLOTS 4096
#define MPT_SOCKADDR_MAX 28   /* sizeof(struct sockaddr_in6) */
#define MPT_MAX_PEERS 16
#define MPT_MAX_ALLOWED 16
/* How long a packet may wait for a paced path.  Flows take turns in the
 * backlog, so this is the queue a bulk flow may build, not what a ping
 * waits: deep enough for a TCP window across paths of 10 and 60 ms RTT
 * (cubic, cut to 0.7 on a loss, keeps the paths full from ~0.43 of the
 * path-delay product; 20 ms lost 10-20 % on such pairs). */
#define MPT_PACE_MAX_MS 40

struct mpt_path_counters {
    uint64_t tx_packets, tx_bytes;   /* data sent on this path (IP bytes: outer IP */
    uint64_t rx_packets, rx_bytes;   /* and UDP headers, mpt header, payload, tag), received on it */
    uint64_t tx_errors;              /* dropped: send buffer full or send error */
    uint64_t ctrl_rx;                /* control packets received */
    uint64_t ctrl_tx;                /* control packets sent */
    uint64_t addr_changes;           /* server: the client's address moved */
};

struct mpt_counters {
    struct mpt_path_counters path[MPT_MAX_PATHS];
    uint64_t tun_rx_packets, tun_rx_bytes;   /* read from the TUN device */
    uint64_t tun_tx_packets, tun_tx_bytes;   /* written to the TUN device */
    uint64_t drop_no_path;       /* nothing to send on */
    uint64_t drop_no_session;    /* no keys yet (handshake pending) */
    uint64_t drop_no_peer;       /* no peer's prefixes cover the inner destination */
    uint64_t drop_pacing;        /* every path at its rate for too long */
    uint64_t overflow;           /* auto: sent beyond the measured capacities */
    uint64_t drop_malformed;     /* shorter than a header, or reserved bits set */
    uint64_t drop_version;       /* unknown version or type */
    uint64_t drop_unknown_session; /* no peer has that session index */
    uint64_t drop_auth;          /* failed authentication */
    uint64_t drop_replay;        /* replayed or duplicated (replay window) */
    uint64_t drop_bad_path;      /* path index out of range, or (client) not from the server */
    uint64_t drop_bad_inner;     /* payload is not one whole IP packet */
    uint64_t drop_source;        /* inner source outside the peer's allowed prefixes */
    uint64_t drop_too_big;
    uint64_t drop_duplicate;     /* this and the reorder_* below: from the reorder buffer */
    uint64_t drop_late;
    uint64_t drop_tun_write;
    uint64_t drop_ctrl_queue;    /* Python did not keep up with control packets */
    uint64_t drop_handshake_rate; /* handshake packets over the rate limit */
    uint64_t handshake_rx;       /* handshake packets passed to Python */
    uint64_t handshake_cookies_sent;  /* cookie replies to inits over the rate limit */
    uint64_t handshake_cookies_valid; /* inits that came back with a valid cookie */
    uint64_t drop_cookie_unasked;     /* client: cookie replies to no init of ours */
    uint64_t reorder_held;
    uint64_t reorder_skipped;    /* sequence numbers given up as lost */
    uint64_t reorder_timeouts;
    uint64_t reorder_overflows;
    uint64_t sessions;           /* sessions installed (new handshakes) */
    uint64_t key_switches;       /* sending moved to a new key phase */
    uint64_t loops;
};

/* What precedes a control or handshake packet on the socketpair to Python. */
struct mpt_ctrl_meta {
    int32_t fd;                  /* socket it arrived on */
    int32_t peer;                /* CONTROL: the authenticated peer; HANDSHAKE: -1 */
    uint32_t addrlen;
    uint8_t addr[MPT_SOCKADDR_MAX];
    uint32_t local_family;       /* the address it was sent to: 0 unknown, 4 or 6 */
    uint8_t local[16];
};

/* An inner prefix a peer may use as source and that routes to it. */
struct mpt_prefix {
    uint32_t family;             /* 4 or 6 */
    uint32_t len;                /* prefix length in bits */
    uint8_t addr[16];
};

struct mpt_dp;

/* listen_fd >= 0 makes this the server: paths are learned from the client
 * (path index taken from the header, peer address from the packet's
 * source) and the listen socket is polled even before any path exists. */
struct mpt_dp *mpt_dp_new(int tun_fd, int ctrl_fd, int listen_fd, uint32_t hold_us,
                          uint32_t alive_ms);
int mpt_dp_start(struct mpt_dp *dp);
void mpt_dp_stop(struct mpt_dp *dp);
void mpt_dp_free(struct mpt_dp *dp);
/* 0 while the thread runs normally, else the errno that stopped it. */
int mpt_dp_failed(struct mpt_dp *dp);

/* Create peer `peer` with its allowed inner prefixes (n == 0: any address).
 * Returns 0, or -1 on bad arguments or allocation failure. */
int mpt_dp_add_peer(struct mpt_dp *dp, int peer, const struct mpt_prefix *allowed, uint32_t n);
/* A new session with the peer (a completed handshake that is not a rekey):
 * sequence numbers, replay window and reorder state start over and both
 * key phases are cleared; mpt_dp_set_keys() installs the first keys. */
int mpt_dp_set_session(struct mpt_dp *dp, int peer, uint16_t local_index, uint16_t remote_index,
                       int cipher);
/* Keys of key phase `phase` (0/1): rx_key opens packets marked with that
 * phase at once; tx_key seals what we send, from now on if tx_now, else
 * from the first authentic packet the peer sends in that phase (the
 * responder of a rekey: it proves the peer has the new keys too). */
int mpt_dp_set_keys(struct mpt_dp *dp, int peer, int phase, const uint8_t *tx_key,
                    const uint8_t *rx_key, int tx_now);
/* The key phase we send with now (0/1), or -1 if the peer is unknown.  The
 * responder puts a rekey's keys in the other one: the phase the initiator
 * sends with cannot be overwritten, whatever inits came before. */
int mpt_dp_tx_phase(struct mpt_dp *dp, int peer);
/* Seal and send a control message on a path (called from Python). */
int mpt_dp_send_control(struct mpt_dp *dp, int peer, int idx, const uint8_t *body, uint32_t len);
void mpt_dp_set_hold(struct mpt_dp *dp, int peer, uint32_t hold_us, uint32_t alive_ms);

/* Set path idx.  fd < 0 removes it.  addrlen 0 keeps the current peer
 * address (the server's learned one).  Returns 0, or -1 on bad arguments. */
int mpt_dp_set_path(struct mpt_dp *dp, int peer, int idx, int fd, const uint8_t *addr,
                    uint32_t addrlen, double weight, int active);
/* Only the peer address (and socket) of path idx: the server, once Python
 * has checked a probe from a new address.  Returns 0, or -1. */
int mpt_dp_set_peer(struct mpt_dp *dp, int peer, int idx, int fd, const uint8_t *addr,
                    uint32_t addrlen, uint32_t local_family, const uint8_t *local);
/* Copy path idx's peer address out; returns its length (0 if none). */
uint32_t mpt_dp_get_peer(struct mpt_dp *dp, int peer, int idx, uint8_t *addr);
/* Scheduler mode (MPT_SCHED_WEIGHTED/AUTO), a path's rate cap and the
 * auto mode's measurements (mpt_sched.h). */
void mpt_dp_set_sched_mode(struct mpt_dp *dp, int peer, int mode);
void mpt_dp_set_rate(struct mpt_dp *dp, int peer, int idx, double rate_bps, double burst_bytes);
/* Client: the nonce (MPT_HS_NONCE_LEN bytes) of the init it sends now, or
 * NULL for none; a cookie reply must echo it (mpt_cookie.h). */
void mpt_dp_set_init_nonce(struct mpt_dp *dp, const uint8_t *nonce);
/* Auto: may traffic beyond the measured capacities overflow (mpt_sched.h)? */
void mpt_dp_set_overflow(struct mpt_dp *dp, int peer, int on);
void mpt_dp_set_measure(struct mpt_dp *dp, int peer, int idx, double capacity_bps,
                        double delay_us);
/* Wait until the loop has picked up every path change made so far, so a
 * replaced fd can be closed safely. */
void mpt_dp_sync(struct mpt_dp *dp);
/* A snapshot of a peer's counters (peer -1: those no peer can be blamed
 * for, such as garbage from unknown senders). */
void mpt_dp_copy_counters(struct mpt_dp *dp, int peer, struct mpt_counters *out);

#endif
