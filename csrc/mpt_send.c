/* Outbound: TUN device → paths.
 *
 * The stages, in the order the functions below follow them:
 *   1. read_batch    read up to MPT_BATCH packets from the TUN device, each
 *                    behind MPT_HDR_LEN bytes of headroom for the header;
 *   2. schedule      under the lock find the peer (its allowed prefixes
 *                    cover the inner destination) and its path (weighted or
 *                    auto, within rate caps), number the packet (its flow's
 *                    bucket and sequence), seal it and queue it on that
 *                    path; a packet every path is too busy for waits in
 *                    the pacing backlog (flow-fair, mpt_fq.h), at most
 *                    MPT_PACE_MAX_MS;
 *   3. flush         one sendmmsg per path, still under the lock.  A full send
 *                    buffer or an error on one path drops (and counts) that
 *                    path's packets; it never holds up another path.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "mpt_dp_internal.h"
#include "mpt_flow.h"

#define PACE_MAX_NS ((int64_t)MPT_PACE_MAX_MS * 1000000)

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

static void queue_packet(struct mpt_dp *dp, int peer, int idx, uint8_t *pkt, uint32_t len)
{
    struct mpt_peer *pe = &dp->peers[peer];
    struct mpt_path *p = &pe->paths[idx];
    struct mpt_txq *q = &dp->txq[peer * MPT_MAX_PATHS + idx];
    uint32_t bucket = mpt_flow_bucket(pkt + MPT_HDR_LEN, len, MPT_FLOW_BUCKETS);
    /* the run: how many of the bucket's packets right before this one went
     * on this path too (the receiver need not wait for them, mpt_wire.h) */
    unsigned run = pe->tx_flow_path[bucket] != idx ? 0
                   : pe->tx_flow_run[bucket] < MPT_HDR_RUN_MAX ? pe->tx_flow_run[bucket] + 1u
                   : MPT_HDR_RUN_MAX;
    uint32_t n = mpt_peer_seal(pe, pkt, len, MPT_TYPE_DATA, idx, (uint16_t)bucket,
                               pe->tx_flow_seq[bucket]++, run);
    pe->tx_flow_path[bucket] = (int8_t)idx;
    pe->tx_flow_run[bucket] = (uint8_t)run;
    unsigned i = q->n;
    if (n == 0) {
        pe->counters.path[idx].tx_errors++;
        return;
    }
    q->n++;
    q->fd = p->fd;
    q->counters = &pe->counters.path[idx];
    q->overhead = pe->sched.path[idx].overhead;
    memcpy(&q->to[i], &p->peer, p->peerlen);
    q->iov[i].iov_base = pkt;
    q->iov[i].iov_len = n;
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

/* Whose packet is it: the client has one peer; a server picks by the
 * inner destination.  -1 (counted) if nobody can take it now. */
static int peer_of(struct mpt_dp *dp, const uint8_t *pkt, uint32_t len)
{
    int peer = dp->server ? mpt_peer_for_inner_dst(dp, pkt, len) : 0;
    if (peer < 0 || !dp->peers[peer].used) {
        dp->counters.drop_no_peer++;
        return -1;
    }
    if (!dp->peers[peer].keyed) {
        dp->peers[peer].counters.drop_no_session++;
        return -1;
    }
    return peer;
}

/* Pick a path for one packet of `peer` (read from the TUN at `since`) and
 * queue it.  Returns 0 if it was queued or dropped, or MPT_SCHED_WAIT (with
 * *retry set) if every path is at its rate now.  In auto mode a packet that
 * has waited MPT_SCHED_OVERFLOW_NS overflows (mpt_sched.h). */
static int send_one(struct mpt_dp *dp, int peer, uint8_t *buf, uint32_t len, int64_t now,
                    int64_t since, int64_t *retry)
{
    struct mpt_peer *pe = &dp->peers[peer];
    /* Rates are of what the path carries: the whole datagram, plus the
     * path's outer headers (mpt_sched_set_overhead). */
    uint32_t bytes = len + MPT_HDR_LEN + MPT_TAG_LEN;
    int idx = mpt_sched_pick(&pe->sched, bytes, now, retry);
    if (idx == MPT_SCHED_WAIT && pe->sched.mode == MPT_SCHED_AUTO) {
        if (now - since >= MPT_SCHED_OVERFLOW_NS) {
            idx = mpt_sched_overflow(&pe->sched, bytes, now);
            if (idx >= 0)
                pe->counters.overflow++;
        } else if (since + MPT_SCHED_OVERFLOW_NS < *retry) {
            *retry = since + MPT_SCHED_OVERFLOW_NS;
        }
    }
    if (idx == MPT_SCHED_WAIT)
        return MPT_SCHED_WAIT;
    if (idx < 0 || pe->paths[idx].fd < 0 || pe->paths[idx].peerlen == 0) {
        pe->counters.drop_no_path++;
        return 0;
    }
    queue_packet(dp, peer, idx, buf, len);
    return 0;
}

/* Park a packet until a paced path has room, in its flow's queue (the
 * reorder bucket's hash, so a flow's packets keep their order; IPv4
 * fragments hash without ports, as there).  If the backlog is full, the
 * oldest packet of the longest queue makes room. */
static void park(struct mpt_dp *dp, int peer, const uint8_t *buf, uint32_t len, int64_t now)
{
    struct mpt_backlog *b = &dp->backlog;
    uint32_t flow = mpt_flow_bucket(buf + MPT_HDR_LEN, len, 1u << 16) + 40503u * (uint32_t)peer;
    int dropped, s = mpt_fq_push(&b->fq, flow, &dropped);
    if (dropped >= 0)
        dp->peers[b->slot[dropped].peer].counters.drop_pacing++;
    memcpy(b->slot[s].buf + MPT_HDR_LEN, buf + MPT_HDR_LEN, len);
    b->slot[s].len = len;
    b->slot[s].peer = peer;
    b->slot[s].since_ns = now;
}

/* Called with dp->lock held. */
static void schedule(struct mpt_dp *dp, unsigned n, const uint32_t *lens)
{
    int64_t now = mpt_now_ns(), retry = 0;
    for (unsigned i = 0; i < n; i++) {
        int peer = peer_of(dp, dp->tx_buf[i] + MPT_HDR_LEN, lens[i]);
        if (peer < 0)
            continue;
        /* While packets wait, the new one waits its turn (mpt_send_backlog). */
        if (dp->backlog.fq.n || send_one(dp, peer, dp->tx_buf[i], lens[i], now, now, &retry)) {
            if (!dp->backlog.fq.n)
                dp->backlog.retry_ns = retry;
            park(dp, peer, dp->tx_buf[i], lens[i], now);
        }
    }
}

/* Send what is queued on every path.  Called with dp->lock held, in the
 * same hold as the sealing: a control packet (mpt_dp_send_control, which
 * takes the lock) then never leaves ahead of data sealed before it, which
 * would let the receiver's reorder buffer take that data for lost (its
 * frontier proof assumes each path delivers in seq order). */
static void flush(struct mpt_dp *dp)
{
    for (int k = 0; k < MPT_MAX_PEERS * MPT_MAX_PATHS; k++) {
        struct mpt_txq *q = &dp->txq[k];
        unsigned done = 0;
        if (q->n == 0)
            continue;
        while (done < q->n) {
            int r = sendmmsg(q->fd, q->msgs + done, q->n - done, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                break; /* EAGAIN (buffer full), ENETUNREACH, ...: drop the rest */
            }
            for (int j = 0; j < r; j++) {
                q->counters->tx_packets++;
                q->counters->tx_bytes += q->iov[done + j].iov_len + q->overhead;
            }
            done += (unsigned)r;
        }
        q->counters->tx_errors += q->n - done;
        q->n = 0;
    }
}

/* Offer the waiting packets to the scheduler, flow by flow in turn, until
 * the one whose turn it is finds no room (its peer's paths are busy; the
 * other flows wait with it, so on a server for that peer's next packet
 * time).  A packet whose turn comes after it waited PACE_MAX_NS and that
 * finds no room is dropped: a queue that only grows is bufferbloat, the
 * thing pacing is meant to avoid, and with flows taking turns only the
 * flows that keep the backlog full wait that long. */
void mpt_send_backlog(struct mpt_dp *dp, int64_t now)
{
    struct mpt_backlog *b = &dp->backlog;
    unsigned queued = 0;
    int s;
    if (now < b->retry_ns)
        return;
    pthread_mutex_lock(&dp->lock);
    while ((s = mpt_fq_peek(&b->fq)) >= 0 && queued < MPT_BATCH) {
        int64_t retry = 0;
        int peer = b->slot[s].peer;
        if (!dp->peers[peer].keyed) {
            dp->peers[peer].counters.drop_no_session++;
        } else if (send_one(dp, peer, b->slot[s].buf, b->slot[s].len, now,
                            b->slot[s].since_ns, &retry)) {
            if (now - b->slot[s].since_ns <= PACE_MAX_NS) {
                b->retry_ns = retry;
                break;
            }
            dp->peers[peer].counters.drop_pacing++;
        } else {
            queued++;
        }
        mpt_fq_pop(&b->fq);
    }
    /* The queued packets live in the backlog slots: send before they are
     * reused, and before the lock lets a control packet be sealed (flush). */
    flush(dp);
    pthread_mutex_unlock(&dp->lock);
}

void mpt_send_from_tun(struct mpt_dp *dp)
{
    uint32_t lens[MPT_BATCH];
    unsigned n = read_batch(dp, lens);
    if (n == 0)
        return;
    pthread_mutex_lock(&dp->lock);
    schedule(dp, n, lens);
    flush(dp);
    pthread_mutex_unlock(&dp->lock);
}
