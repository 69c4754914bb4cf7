/* Inbound: paths → TUN device.
 *
 * The stages, in the order the functions below follow them:
 *   1. recvmmsg      up to MPT_BATCH datagrams from one path socket;
 *   2. classify      check the header (length, version, type); handshake
 *                    packets go to Python, at a bounded rate;
 *   3. session       the header's session index names the peer; the
 *                    replay window rejects what was seen, the peer's key
 *                    for the packet's phase authenticates and decrypts;
 *   4. dispatch      control packets go to Python with their source;
 *                    data must be one whole IP packet from a source the
 *                    peer may use;
 *   5. learn         (server) follow the client's address for that path
 *                    (control packets: Python does it for a valid probe);
 *   6. reorder       the peer's reorder buffer delivers each flow to the
 *                    TUN device in sequence.
 * Anything else is dropped and counted, never answered, never logged:
 * nothing unauthenticated reaches the TUN device or changes any state
 * but a counter.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>
#include "mpt_dp_internal.h"

#define HS_RATE_ALL 500.0       /* handshake packets per second, all sources */
#define HS_BURST_ALL 100.0
#define HS_RATE_SOURCE 10.0     /* ... and per source address */
#define HS_BURST_SOURCE 10.0
#define HS_REPLY_RATE 20000.0   /* cookie replies per second, all sources */
#define HS_REPLY_BURST 2000.0

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

static void to_python(struct mpt_dp *dp, int fd, int peer, unsigned i, const uint8_t *pkt,
                      size_t len)
{
    struct mpt_ctrl_meta meta;
    struct iovec iov[2];
    socklen_t fromlen = dp->rx_msgs[i].msg_hdr.msg_namelen;
    memset(&meta, 0, sizeof(meta));
    meta.fd = fd;
    meta.peer = peer;
    meta.addrlen = fromlen <= MPT_SOCKADDR_MAX ? fromlen : MPT_SOCKADDR_MAX;
    memcpy(meta.addr, &dp->rx_from[i], meta.addrlen);
    meta.local_family = dp->rx_local[i].family;
    memcpy(meta.local, dp->rx_local[i].addr, sizeof(meta.local));
    iov[0].iov_base = &meta;
    iov[0].iov_len = sizeof(meta);
    iov[1].iov_base = (void *)pkt;
    iov[1].iov_len = len;
    if (writev(dp->ctrl_fd, iov, 2) < 0)
        (peer >= 0 ? &dp->peers[peer].counters : &dp->counters)->drop_ctrl_queue++;
}

static int take_token(struct mpt_token_bucket *b, double rate, double burst, int64_t now)
{
    b->tokens += (double)(now - b->last_ns) * 1e-9 * rate;
    if (b->tokens > burst)
        b->tokens = burst;
    b->last_ns = now;
    if (b->tokens < 1.0)
        return 0;
    b->tokens -= 1.0;
    return 1;
}

/* Answer an init we have no room for with the cookie of its source, from
 * the address it was sent to, never blocking: a smaller datagram than the
 * init, at a bounded rate, so forged sources gain no amplifier. */
static void send_cookie(struct mpt_dp *dp, int fd, unsigned i, const struct mpt_hdr *in,
                        const uint8_t *pkt, size_t len, int64_t now)
{
    struct mpt_hs_limit *l = &dp->hs_limit;
    uint8_t out[MPT_HDR_LEN + MPT_HS_COOKIE_REPLY_LEN], cmsg[MPT_PKTINFO_SPACE];
    struct mpt_hdr h = {.version = MPT_VERSION, .type = MPT_TYPE_HANDSHAKE, .path = in->path};
    struct iovec iov = {.iov_base = out, .iov_len = sizeof(out)};
    struct msghdr m = {.msg_name = &dp->rx_from[i],
                       .msg_namelen = dp->rx_msgs[i].msg_hdr.msg_namelen,
                       .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg};
    if (!take_token(&l->replies, HS_REPLY_RATE, HS_REPLY_BURST, now))
        return;
    mpt_hdr_write(out, &h);
    if (mpt_cookie_reply(&l->jar, m.msg_name, m.msg_namelen, now, pkt + MPT_HDR_LEN,
                         len - MPT_HDR_LEN, out + MPT_HDR_LEN) < 0)
        return;
    m.msg_controllen = mpt_pktinfo_build(&dp->rx_local[i], cmsg, sizeof(cmsg));
    if (m.msg_controllen == 0)
        m.msg_control = NULL;
    if (sendmsg(fd, &m, MSG_DONTWAIT) == (ssize_t)sizeof(out))
        dp->counters.handshake_cookies_sent++;
}

/* Client: a cookie reply that does not echo our current init.  Dropped
 * before it costs a token: a forger who knows our address and port can make
 * the server send us such replies at its full cookie reply rate. */
static int unasked_cookie(const struct mpt_dp *dp, const uint8_t *pkt, size_t len)
{
    const uint8_t *body = pkt + MPT_HDR_LEN;
    if (mpt_hs_kind(body, len - MPT_HDR_LEN) != MPT_HS_COOKIE_REPLY)
        return 0;
    return !dp->init_nonce_set
        || memcmp(body + MPT_HS_COOKIE_NONCE_OFFSET, dp->init_nonce, MPT_HS_NONCE_LEN) != 0;
}

/* Handshakes cost the Python side a MAC per configured peer: a flood of
 * them must not starve it, and one source must not starve the others.
 * The server lets an init with a valid cookie in under limits of its own
 * (and the shared ones if those are used up); one without, when there is
 * no room, gets a cookie to come back with. */
static int handshake_admitted(struct mpt_dp *dp, int fd, unsigned i, const struct mpt_hdr *h,
                              const uint8_t *pkt, size_t len, int64_t now)
{
    struct mpt_hs_limit *l = &dp->hs_limit;
    const void *from = &dp->rx_from[i];
    socklen_t fromlen = dp->rx_msgs[i].msg_hdr.msg_namelen;
    unsigned k = mpt_cookie_source_slot(&l->jar, from, fromlen, MPT_HS_SOURCES);
    int kind = dp->server ? mpt_hs_kind(pkt + MPT_HDR_LEN, len - MPT_HDR_LEN) : MPT_HS_NOT_INIT;
    int cookie_ok = 0;
    if (kind == MPT_HS_INIT_COOKIE
        && mpt_cookie_check(&l->jar, from, fromlen, now, pkt + len - MPT_COOKIE_LEN)) {
        dp->counters.handshake_cookies_valid++;
        cookie_ok = 1;
        if (take_token(&l->cookie_source[k], HS_RATE_SOURCE, HS_BURST_SOURCE, now)
            && take_token(&l->cookie_all, HS_RATE_ALL, HS_BURST_ALL, now))
            return 1;
    }
    if (take_token(&l->source[k], HS_RATE_SOURCE, HS_BURST_SOURCE, now)
        && take_token(&l->all, HS_RATE_ALL, HS_BURST_ALL, now))
        return 1;
    if (!cookie_ok && (kind == MPT_HS_INIT || kind == MPT_HS_INIT_COOKIE))
        send_cookie(dp, fd, i, h, pkt, len, now);
    return 0;
}

/* Which path a datagram of peer `pe` belongs to: the client knows it by
 * the socket and accepts only the server's address on it; the server reads
 * the client's index from the header.  -1 if none. */
static int path_of(struct mpt_dp *dp, struct mpt_peer *pe, int fd, const struct mpt_hdr *h,
                   unsigned i)
{
    const struct mpt_path *p;
    socklen_t fromlen = dp->rx_msgs[i].msg_hdr.msg_namelen;
    if (h->path >= MPT_MAX_PATHS)
        return -1;
    if (dp->server)
        return h->path;
    p = &pe->paths[h->path];
    if (p->fd != fd || p->peerlen != fromlen || memcmp(&p->peer, &dp->rx_from[i], fromlen) != 0)
        return -1;
    return h->path;
}

static void learn(struct mpt_dp *dp, struct mpt_peer *pe, int idx, int fd, unsigned i)
{
    struct mpt_path *p = &pe->paths[idx];
    socklen_t fromlen = dp->rx_msgs[i].msg_hdr.msg_namelen;
    if (fromlen > MPT_SOCKADDR_MAX)
        return;
    if (dp->rx_local[i].family)
        p->local = dp->rx_local[i];
    if (p->peerlen == fromlen && memcmp(&p->peer, &dp->rx_from[i], fromlen) == 0 && p->fd == fd)
        return;
    if (p->peerlen != 0)
        pe->counters.path[idx].addr_changes++;
    mpt_path_set_peer(pe, idx, &dp->rx_from[i], fromlen);
    if (p->fd != fd) {
        p->fd = fd;
        dp->gen++;
    }
}

/* Replay window, then the key of the packet's phase.  Returns the
 * plaintext payload length, or -1 (counted). */
static int authenticate(struct mpt_peer *pe, const struct mpt_hdr *h, uint8_t *pkt, size_t len)
{
    int n;
    if (mpt_replay_check(&pe->replay, h->seq) != MPT_REPLAY_NEW) {
        pe->counters.drop_replay++;
        return -1;
    }
    if (!pe->rx_ok[h->phase]) {
        pe->counters.drop_auth++;
        return -1;
    }
    n = mpt_aead_open(pe->rx_aead[h->phase], h->seq, pkt, MPT_HDR_LEN, pkt + MPT_HDR_LEN,
                      (uint32_t)(len - MPT_HDR_LEN));
    if (n < 0) {
        pe->counters.drop_auth++;
        return -1;
    }
    if (mpt_replay_update(&pe->replay, h->seq) != MPT_REPLAY_NEW) {
        pe->counters.drop_replay++;
        return -1;
    }
    if (pe->tx_pending == h->phase) {
        /* The peer sends with the new keys: so may we (rekey confirmed). */
        pe->tx_phase = h->phase;
        pe->tx_pending = -1;
        pe->counters.key_switches++;
    }
    return n;
}

static void receive_one(struct mpt_dp *dp, int fd, unsigned i, int64_t now)
{
    uint8_t *pkt = dp->rx_buf[i];
    size_t len = dp->rx_msgs[i].msg_len;
    struct mpt_peer *pe;
    struct mpt_hdr h;
    int peer, idx, n;

    if ((dp->rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len > MPT_BUF_LEN) {
        dp->counters.drop_too_big++;
        return;
    }
    if (mpt_hdr_read(pkt, len, &h) < 0) {
        dp->counters.drop_malformed++;
        return;
    }
    if (h.version != MPT_VERSION || h.type > MPT_TYPE_HANDSHAKE) {
        dp->counters.drop_version++;
        return;
    }
    if (h.type == MPT_TYPE_HANDSHAKE) {
        if (!dp->server && unasked_cookie(dp, pkt, len)) {
            dp->counters.drop_cookie_unasked++;
            return;
        }
        if (!handshake_admitted(dp, fd, i, &h, pkt, len, now)) {
            dp->counters.drop_handshake_rate++;
            return;
        }
        dp->counters.handshake_rx++;
        to_python(dp, fd, -1, i, pkt, len);
        return;
    }
    peer = mpt_peer_by_session(dp, h.session);
    if (peer < 0) {
        dp->counters.drop_unknown_session++;
        return;
    }
    pe = &dp->peers[peer];
    idx = path_of(dp, pe, fd, &h, i);
    if (idx < 0) {
        pe->counters.drop_bad_path++;
        return;
    }
    n = authenticate(pe, &h, pkt, len);
    if (n < 0)
        return;
    if (h.type == MPT_TYPE_CONTROL) {
        /* Python parses it and, for a valid probe, sets the address. */
        pe->counters.path[idx].ctrl_rx++;
        /* Control shares the data's sequence: everything sent on this path
         * before it has arrived or is lost. */
        mpt_reorder_heard_upto(pe->reorder, idx, h.seq + 1, now);
        to_python(dp, fd, peer, i, pkt, MPT_HDR_LEN + (size_t)n);
        return;
    }
    if (!mpt_inner_ok(pkt + MPT_HDR_LEN, (size_t)n) || h.bucket >= MPT_FLOW_BUCKETS) {
        pe->counters.drop_bad_inner++;
        return;
    }
    if (!mpt_peer_allows_src(pe, pkt + MPT_HDR_LEN, (uint32_t)n)) {
        pe->counters.drop_source++;
        return;
    }
    if (dp->server)
        learn(dp, pe, idx, fd, i);
    pe->counters.path[idx].rx_packets++;
    pe->counters.path[idx].rx_bytes += len + pe->sched.path[idx].overhead;
    mpt_reorder_input(pe->reorder, h.seq, h.bucket, h.flow_seq, idx, h.run, pkt + MPT_HDR_LEN,
                      (uint32_t)n, now);
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
