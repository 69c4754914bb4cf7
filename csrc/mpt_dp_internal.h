/* State shared by the datapath's files (loop, send, receive). */
#ifndef MPT_DP_INTERNAL_H
#define MPT_DP_INTERNAL_H


#include <pthread.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "mpt_datapath.h"
#include "mpt_pktinfo.h"
#include "mpt_reorder.h"
#include "mpt_wire.h"

struct mpt_path {
    int fd;                        /* -1: no path */
    int active;                    /* in the schedule */
    double weight;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct mpt_local local;        /* server: the address the client sends to */
    uint32_t tx_path_seq;
};

/* One batch of outbound packets per path, handed to sendmmsg at once. */
struct mpt_txq {
    struct mmsghdr msgs[MPT_BATCH];
    struct iovec iov[MPT_BATCH];
    struct sockaddr_storage to[MPT_BATCH];
    uint8_t cmsg[MPT_BATCH][MPT_PKTINFO_SPACE];
    int fd;
    unsigned n;
};

struct mpt_dp {
    int tun_fd, ctrl_fd, wake_fd;
    int listen_fd;                 /* server only, else -1 */
    int server;
    uint16_t session;              /* ours, sent in every header */
    int peer_session_known;
    uint16_t peer_session;

    pthread_mutex_t lock;          /* guards paths, sched, gen */
    pthread_cond_t synced;
    struct mpt_path paths[MPT_MAX_PATHS];
    struct mpt_sched sched;
    uint64_t gen, gen_seen;
    uint64_t tx_seq;

    pthread_t thread;
    int running;
    volatile int stop;
    volatile int failed;           /* errno that stopped the loop */

    struct mpt_reorder *reorder;
    struct mpt_counters counters;

    /* Preallocated packet buffers: nothing is allocated per packet. */
    uint8_t tx_buf[MPT_BATCH][MPT_HDR_LEN + MPT_MAX_PKT];
    uint8_t rx_buf[MPT_BATCH][MPT_HDR_LEN + MPT_MAX_PKT + 1];
    struct mpt_txq txq[MPT_MAX_PATHS];
    struct mmsghdr rx_msgs[MPT_BATCH];
    struct iovec rx_iov[MPT_BATCH];
    struct sockaddr_storage rx_from[MPT_BATCH];
    uint8_t rx_cmsg[MPT_BATCH][MPT_PKTINFO_SPACE];
    struct mpt_local rx_local[MPT_BATCH];
};

int64_t mpt_now_ns(void);
/* send.c: read a batch from the TUN device and send it on the paths. */
void mpt_send_from_tun(struct mpt_dp *dp);
/* receive.c: drain one path socket, deliver data to the TUN device. */
void mpt_receive_from_socket(struct mpt_dp *dp, int fd);
void mpt_deliver_to_tun(void *ctx, const uint8_t *data, uint32_t len);

#endif
