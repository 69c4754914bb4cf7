/* Outbound: TUN device → paths.
 *
 * The stages, in the order the functions below follow them:
 *   1. read_batch    read up to MPT_BATCH packets from the TUN device, each
 *                    behind MPT_HDR_LEN bytes of headroom for the header;
 *   2. schedule      under the path lock pick a path per packet (weighted
 *                    over bytes), number it, write the header in place and
 *                    queue it on that path;
 *   3. flush         one sendmmsg per path, without the lock.  A full send
 *                    buffer or an error on one path drops (and counts) that
 *                    path's packets; it never holds up another path.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "mpt_dp_internal.h"

static unsigned read_batch(struct mpt_dp *dp, uint32_t *lens)
{
    unsigned n = 0;
    while (n < MPT_BATCH) {
        ssize_t r = read(dp->tun_fd, dp->tx_buf[n] + MPT_HDR_LEN, MPT_MAX_PKT);
        if (r < 0)
            break; /* EAGAIN: drained */
        if (r == 0)
            continue;
        lens[n] = (uint32_t)r;
        dp->counters.tun_rx_packets++;
        dp->counters.tun_rx_bytes += (uint64_t)r;
        n++;
    }
    return n;
}

static void queue_packet(struct mpt_dp *dp, int idx, uint8_t *pkt, uint32_t len)
{
    struct mpt_path *p = &dp->paths[idx];
    struct mpt_txq *q = &dp->txq[idx];
    unsigned i = q->n++;
    struct mpt_hdr h = {
        .version = MPT_VERSION,
        .type = MPT_TYPE_DATA,
        .path = (uint8_t)idx,
        .session = dp->session,
        .path_seq = p->tx_path_seq++,
        .seq = dp->tx_seq++,
    };
    mpt_hdr_write(pkt, &h);
    q->fd = p->fd;
    memcpy(&q->to[i], &p->peer, p->peerlen);
    q->iov[i].iov_base = pkt;
    q->iov[i].iov_len = MPT_HDR_LEN + len;
    memset(&q->msgs[i].msg_hdr, 0, sizeof(q->msgs[i].msg_hdr));
    q->msgs[i].msg_hdr.msg_name = &q->to[i];
    q->msgs[i].msg_hdr.msg_namelen = p->peerlen;
    q->msgs[i].msg_hdr.msg_iov = &q->iov[i];
    q->msgs[i].msg_hdr.msg_iovlen = 1;
    if (p->local.family) {
        q->msgs[i].msg_hdr.msg_control = q->cmsg[i];
        q->msgs[i].msg_hdr.msg_controllen = mpt_pktinfo_build(&p->local, q->cmsg[i],
                                                              sizeof(q->cmsg[i]));
    }
}

static void schedule(struct mpt_dp *dp, unsigned n, const uint32_t *lens)
{
    pthread_mutex_lock(&dp->lock);
    for (unsigned i = 0; i < n; i++) {
        int idx = mpt_sched_pick(&dp->sched, lens[i]);
        if (idx < 0 || dp->paths[idx].fd < 0 || dp->paths[idx].peerlen == 0) {
            dp->counters.drop_no_path++;
            continue;
        }
        queue_packet(dp, idx, dp->tx_buf[i], lens[i]);
    }
    pthread_mutex_unlock(&dp->lock);
}

static void flush(struct mpt_dp *dp)
{
    for (int idx = 0; idx < MPT_MAX_PATHS; idx++) {
        struct mpt_txq *q = &dp->txq[idx];
        struct mpt_path_counters *c = &dp->counters.path[idx];
        unsigned done = 0;
        while (done < q->n) {
            int r = sendmmsg(q->fd, q->msgs + done, q->n - done, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                break; /* EAGAIN (buffer full), ENETUNREACH, ...: drop the rest */
            }
            for (int k = 0; k < r; k++) {
                c->tx_packets++;
                c->tx_bytes += q->iov[done + k].iov_len - MPT_HDR_LEN;
            }
            done += (unsigned)r;
        }
        c->tx_errors += q->n - done;
        q->n = 0;
    }
}

void mpt_send_from_tun(struct mpt_dp *dp)
{
    uint32_t lens[MPT_BATCH];
    unsigned n = read_batch(dp, lens);
    if (n == 0)
        return;
    schedule(dp, n, lens);
    flush(dp);
}
