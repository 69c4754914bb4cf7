/* Inbound: paths → TUN device.
 *
 * The stages, in the order the functions below follow them:
 *   1. recvmmsg      up to MPT_BATCH datagrams from one path socket;
 *   2. classify      check the header (length, version, type, path index);
 *                    control packets go to Python with their source address;
 *   3. check         the payload must be one whole IP packet;
 *   4. learn         (server) follow the client's address for that path
 *                    (control packets: Python does it for a valid probe);
 *   5. reorder       hand it to the reorder buffer, which delivers to the
 *                    TUN device in sequence.
 * Anything malformed is dropped and counted; nothing unchecked is written
 * to the TUN device.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>
#include "mpt_dp_internal.h"

void mpt_deliver_to_tun(void *ctx, const uint8_t *data, uint32_t len)
{
    struct mpt_dp *dp = ctx;
    if (write(dp->tun_fd, data, len) == (ssize_t)len) {
        dp->counters.tun_tx_packets++;
        dp->counters.tun_tx_bytes += len;
    } else {
        dp->counters.drop_tun_write++;
    }
}

static void to_python(struct mpt_dp *dp, int fd, const struct sockaddr_storage *from,
                      socklen_t fromlen, const struct mpt_local *local, const uint8_t *pkt,
                      size_t len)
{
    struct mpt_ctrl_meta meta;
    struct iovec iov[2];
    memset(&meta, 0, sizeof(meta));
    meta.fd = fd;
    meta.addrlen = fromlen <= MPT_SOCKADDR_MAX ? fromlen : MPT_SOCKADDR_MAX;
    memcpy(meta.addr, from, meta.addrlen);
    meta.local_family = local->family;
    memcpy(meta.local, local->addr, sizeof(meta.local));
    iov[0].iov_base = &meta;
    iov[0].iov_len = sizeof(meta);
    iov[1].iov_base = (void *)pkt;
    iov[1].iov_len = len;
    if (writev(dp->ctrl_fd, iov, 2) < 0)
        dp->counters.drop_ctrl_queue++;
}

/* Which path a datagram belongs to: the client knows it by the socket and
 * accepts only the server's address on it; the server reads the client's
 * index from the header.  -1 if none. */
static int path_of(struct mpt_dp *dp, int fd, const struct mpt_hdr *h,
                   const struct sockaddr_storage *from, socklen_t fromlen)
{
    const struct mpt_path *p;
    if (dp->server)
        return h->path < MPT_MAX_PATHS ? h->path : -1;
    if (h->path >= MPT_MAX_PATHS)
        return -1;
    p = &dp->paths[h->path];
    if (p->fd != fd || p->peerlen != fromlen || memcmp(&p->peer, from, fromlen) != 0)
        return -1;
    return h->path;
}

static void learn(struct mpt_dp *dp, int idx, int fd, const struct sockaddr_storage *from,
                  socklen_t fromlen, const struct mpt_local *local)
{
    struct mpt_path *p = &dp->paths[idx];
    if (fromlen > MPT_SOCKADDR_MAX)
        return;
    if (local->family)
        p->local = *local;
    if (p->peerlen == fromlen && memcmp(&p->peer, from, fromlen) == 0 && p->fd == fd)
        return;
    if (p->peerlen != 0)
        dp->counters.path[idx].addr_changes++;
    memcpy(&p->peer, from, fromlen);
    p->peerlen = fromlen;
    p->fd = fd;
}

static void check_session(struct mpt_dp *dp, uint16_t session)
{
    if (dp->peer_session_known && dp->peer_session == session)
        return;
    if (dp->peer_session_known) {
        /* The peer restarted: its sequence numbers start over. */
        mpt_reorder_reset(dp->reorder);
        dp->counters.session_resets++;
    }
    dp->peer_session = session;
    dp->peer_session_known = 1;
}

static void receive_one(struct mpt_dp *dp, int fd, unsigned i, int64_t now)
{
    const uint8_t *pkt = dp->rx_buf[i];
    size_t len = dp->rx_msgs[i].msg_len;
    struct mpt_hdr h;
    int idx;

    if ((dp->rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len > MPT_HDR_LEN + MPT_MAX_PKT) {
        dp->counters.drop_too_big++;
        return;
    }
    if (mpt_hdr_read(pkt, len, &h) < 0) {
        dp->counters.drop_malformed++;
        return;
    }
    if (h.version != MPT_VERSION || (h.type != MPT_TYPE_DATA && h.type != MPT_TYPE_CONTROL)) {
        dp->counters.drop_version++;
        return;
    }
    idx = path_of(dp, fd, &h, &dp->rx_from[i], dp->rx_msgs[i].msg_hdr.msg_namelen);
    if (idx < 0) {
        dp->counters.drop_bad_path++;
        return;
    }
    if (h.type == MPT_TYPE_CONTROL) {
        /* Python parses it and, for a valid probe, sets the address. */
        dp->counters.path[idx].ctrl_rx++;
        mpt_reorder_heard(dp->reorder, idx, now);
        to_python(dp, fd, &dp->rx_from[i], dp->rx_msgs[i].msg_hdr.msg_namelen,
                  &dp->rx_local[i], pkt, len);
        return;
    }
    if (!mpt_inner_ok(pkt + MPT_HDR_LEN, len - MPT_HDR_LEN)) {
        dp->counters.drop_bad_inner++;
        return;
    }
    check_session(dp, h.session);
    if (dp->server)
        learn(dp, idx, fd, &dp->rx_from[i], dp->rx_msgs[i].msg_hdr.msg_namelen,
              &dp->rx_local[i]);
    dp->counters.path[idx].rx_packets++;
    dp->counters.path[idx].rx_bytes += len - MPT_HDR_LEN;
    if (h.path_seq > dp->counters.path[idx].rx_path_seq)
        dp->counters.path[idx].rx_path_seq = h.path_seq;
    mpt_reorder_input(dp->reorder, h.seq, idx, pkt + MPT_HDR_LEN, (uint32_t)(len - MPT_HDR_LEN), now);
}

void mpt_receive_from_socket(struct mpt_dp *dp, int fd)
{
    int n;
    int64_t now;
    for (unsigned i = 0; i < MPT_BATCH; i++) {
        dp->rx_iov[i].iov_base = dp->rx_buf[i];
        dp->rx_iov[i].iov_len = sizeof(dp->rx_buf[i]);
        memset(&dp->rx_msgs[i].msg_hdr, 0, sizeof(dp->rx_msgs[i].msg_hdr));
        dp->rx_msgs[i].msg_hdr.msg_iov = &dp->rx_iov[i];
        dp->rx_msgs[i].msg_hdr.msg_iovlen = 1;
        dp->rx_msgs[i].msg_hdr.msg_name = &dp->rx_from[i];
        dp->rx_msgs[i].msg_hdr.msg_namelen = sizeof(dp->rx_from[i]);
        dp->rx_msgs[i].msg_hdr.msg_control = dp->rx_cmsg[i];
        dp->rx_msgs[i].msg_hdr.msg_controllen = sizeof(dp->rx_cmsg[i]);
    }
    n = recvmmsg(fd, dp->rx_msgs, MPT_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return;
    now = mpt_now_ns();
    for (int i = 0; i < n; i++)
        mpt_pktinfo_parse(&dp->rx_msgs[i].msg_hdr, &dp->rx_local[i]);
    pthread_mutex_lock(&dp->lock);
    for (int i = 0; i < n; i++)
        receive_one(dp, fd, (unsigned)i, now);
    pthread_mutex_unlock(&dp->lock);
}
