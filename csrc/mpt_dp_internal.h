/* State shared by the datapath's files (loop, peers, send, receive). */
#ifndef MPT_DP_INTERNAL_H
#define MPT_DP_INTERNAL_H

#include <pthread.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "mpt_aead.h"
#include "mpt_cookie.h"
#include "mpt_datapath.h"
#include "mpt_fq.h"
#include "mpt_pktinfo.h"
#include "mpt_reorder.h"
#include "mpt_replay.h"
#include "mpt_wire.h"

#define MPT_BUF_LEN (MPT_HDR_LEN + MPT_MAX_PKT + MPT_TAG_LEN)

struct mpt_path {
    int fd;                        /* -1: no path */
    int active;                    /* in the schedule */
    double weight;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct mpt_local local;        /* server: the address the client sends to */
};

struct mpt_peer {
    int used;
    struct mpt_prefix allowed[MPT_MAX_ALLOWED];
    uint32_t nallowed;             /* 0: any address */

    /* session: all zero until the first handshake completes */
    int keyed;
    uint16_t local_index;          /* in the headers we receive */
    uint16_t remote_index;         /* in the headers we send */
    int cipher;
    uint8_t tx_phase;
    int tx_pending;                /* -1, or the phase to switch to when the peer uses it */
    uint8_t rx_ok[2];
    struct mpt_aead *tx_aead[2], *rx_aead[2];
    struct mpt_replay replay;
    uint64_t tx_seq;
    uint16_t tx_flow_seq[MPT_FLOW_BUCKETS];
    int8_t tx_flow_path[MPT_FLOW_BUCKETS];   /* path of the bucket's last packet, -1 none */
    uint8_t tx_flow_run[MPT_FLOW_BUCKETS];   /* ... and how many before it went there too */

    struct mpt_path paths[MPT_MAX_PATHS];
    struct mpt_sched sched;
    struct mpt_reorder *reorder;
    struct mpt_counters counters;
};

/* One batch of outbound packets per path, handed to sendmmsg at once. */
struct mpt_txq {
    struct mmsghdr msgs[MPT_BATCH];
    struct iovec iov[MPT_BATCH];
    struct sockaddr_storage to[MPT_BATCH];
    uint8_t cmsg[MPT_BATCH][MPT_PKTINFO_SPACE];
    struct mpt_path_counters *counters;
    uint32_t overhead;             /* counted per packet sent (the path's, in its scheduler) */
    int fd;
    unsigned n;
};

/* Packets waiting until a paced path has room, taken in flow-fair order
 * (mpt_fq.h); slot[i] is the packet in the queue's slot i. */
struct mpt_backlog {
    int64_t retry_ns;              /* when the next one may go; 0: now */
    struct mpt_fq fq;
    struct {
        int64_t since_ns;
        uint32_t len;
        int32_t peer;
        uint8_t buf[MPT_BUF_LEN];
    } slot[MPT_FQ_SLOTS];
};

/* Handshake packets reach Python at a bounded rate, per source and in all;
 * inits with a valid cookie (mpt_cookie.h) have limits of their own, which
 * forged source addresses cannot use up. */
#define MPT_HS_SOURCES 256
struct mpt_token_bucket {
    double tokens;
    int64_t last_ns;
};
struct mpt_hs_limit {
    struct mpt_token_bucket all, source[MPT_HS_SOURCES];
    struct mpt_token_bucket cookie_all, cookie_source[MPT_HS_SOURCES];
    struct mpt_token_bucket replies;        /* cookie replies sent */
    struct mpt_cookie_jar jar;
};

struct mpt_dp {
    int tun_fd, ctrl_fd, wake_fd;
    int listen_fd;                 /* server only, else -1 */
    int server;
    int64_t hold_ns, alive_ns;

    pthread_mutex_t lock;          /* guards peers (paths, sched, keys), gen */
    pthread_cond_t synced;
    struct mpt_peer peers[MPT_MAX_PEERS];
    uint64_t gen, gen_seen;

    pthread_t thread;
    int running;
    volatile int stop;
    volatile int failed;           /* errno that stopped the loop */

    struct mpt_counters counters;  /* what no peer can be blamed for */
    struct mpt_hs_limit hs_limit;
    int init_nonce_set;            /* client: the nonce of its current init */
    uint8_t init_nonce[MPT_HS_NONCE_LEN];

    /* Preallocated packet buffers: nothing is allocated per packet. */
    uint8_t tx_buf[MPT_BATCH][MPT_BUF_LEN];
    uint8_t ctrl_buf[MPT_BUF_LEN];
    uint8_t rx_buf[MPT_BATCH][MPT_BUF_LEN + 1];
    struct mpt_txq txq[MPT_MAX_PEERS * MPT_MAX_PATHS];
    struct mmsghdr rx_msgs[MPT_BATCH];
    struct iovec rx_iov[MPT_BATCH];
    struct sockaddr_storage rx_from[MPT_BATCH];
    uint8_t rx_cmsg[MPT_BATCH][MPT_PKTINFO_SPACE];
    struct mpt_local rx_local[MPT_BATCH];
    struct mpt_backlog backlog;
};

int64_t mpt_now_ns(void);
/* peer.c: the peer whose allowed prefixes cover an inner address (the
 * longest match), whether an inner source is allowed, session lookup. */
int mpt_peer_for_inner_dst(struct mpt_dp *dp, const uint8_t *pkt, uint32_t len);
int mpt_peer_allows_src(const struct mpt_peer *p, const uint8_t *pkt, uint32_t len);
int mpt_peer_by_session(struct mpt_dp *dp, uint16_t local_index);
/* Header + seal a packet of `len` payload bytes at buf + MPT_HDR_LEN;
 * returns the datagram length, or 0 if it cannot be sealed. */
uint32_t mpt_peer_seal(struct mpt_peer *p, uint8_t *buf, uint32_t len, uint8_t type, int idx,
                       uint16_t bucket, uint16_t flow_seq, unsigned run);
/* Path idx of pe now sends to addr (len <= MPT_SOCKADDR_MAX); its rate
 * and byte counters count that address's outer UDP + IP header bytes (28
 * for IPv4, v4-mapped included; 48 for IPv6), kept in pe->sched
 * (mpt_sched_set_overhead). */
void mpt_path_set_peer(struct mpt_peer *pe, int idx, const void *addr, socklen_t len);
/* send.c: read a batch from the TUN device and send it on the paths;
 * retry what waits for a paced path. */
void mpt_send_from_tun(struct mpt_dp *dp);
void mpt_send_backlog(struct mpt_dp *dp, int64_t now);
/* receive.c: drain one path socket, deliver data to the TUN device. */
void mpt_receive_from_socket(struct mpt_dp *dp, int fd);
void mpt_deliver_to_tun(void *ctx, const uint8_t *data, uint32_t len);

#endif
