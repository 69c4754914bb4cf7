/* The datapath thread: lifecycle, peers and their path tables and keys,
 * and the poll loop that drives send (mpt_send.c), receive
 * (mpt_receive.c), pacing and the reorder buffers' hold timers. */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "mpt_dp_internal.h"

#define POLL_MAX (3 + MPT_MAX_PEERS * MPT_MAX_PATHS)
#define IDLE_POLL_MS 200

int64_t mpt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct mpt_dp *mpt_dp_new(int tun_fd, int ctrl_fd, int listen_fd, uint32_t hold_us,
                          uint32_t alive_ms)
{
    struct mpt_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->tun_fd = tun_fd;
    dp->ctrl_fd = ctrl_fd;
    dp->server = listen_fd >= 0;
    dp->listen_fd = listen_fd;
    dp->hold_ns = (int64_t)hold_us * 1000;
    dp->alive_ns = (int64_t)alive_ms * 1000000;
    mpt_fq_init(&dp->backlog.fq);
    if (mpt_cookie_init(&dp->hs_limit.jar, mpt_now_ns()) < 0) {
        free(dp);                  /* no randomness: no secret to make cookies with */
        return NULL;
    }
    pthread_mutex_init(&dp->lock, NULL);
    pthread_cond_init(&dp->synced, NULL);
    dp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (dp->wake_fd < 0) {
        mpt_dp_free(dp);
        return NULL;
    }
    return dp;
}

static void wake(struct mpt_dp *dp)
{
    uint64_t one = 1;
    if (write(dp->wake_fd, &one, sizeof(one)) < 0) {
        /* Counter saturated: the loop is awake anyway. */
    }
}

int mpt_dp_failed(struct mpt_dp *dp)
{
    return dp->failed;
}

/* The peer to change, locked; NULL (and unlocked) if there is none. */
static struct mpt_peer *lock_peer(struct mpt_dp *dp, int peer)
{
    if (peer < 0 || peer >= MPT_MAX_PEERS)
        return NULL;
    pthread_mutex_lock(&dp->lock);
    if (!dp->peers[peer].used) {
        pthread_mutex_unlock(&dp->lock);
        return NULL;
    }
    return &dp->peers[peer];
}

static void unlock_wake(struct mpt_dp *dp)
{
    pthread_mutex_unlock(&dp->lock);
    wake(dp);
}

int mpt_dp_add_peer(struct mpt_dp *dp, int peer, const struct mpt_prefix *allowed, uint32_t n)
{
    struct mpt_peer *p;
    if (peer < 0 || peer >= MPT_MAX_PEERS || n > MPT_MAX_ALLOWED)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        if ((allowed[i].family != 4 || allowed[i].len > 32) &&
            (allowed[i].family != 6 || allowed[i].len > 128))
            return -1;
    pthread_mutex_lock(&dp->lock);
    p = &dp->peers[peer];
    if (p->used) {
        pthread_mutex_unlock(&dp->lock);
        return -1;
    }
    p->reorder = mpt_reorder_new(MPT_REORDER_SLOTS, MPT_FLOW_BUCKETS, MPT_MAX_PKT, dp->hold_ns,
                                 dp->alive_ns, mpt_deliver_to_tun, dp);
    for (int k = 0; k < 2; k++) {
        p->tx_aead[k] = mpt_aead_new();
        p->rx_aead[k] = mpt_aead_new();
    }
    if (!p->reorder || !p->tx_aead[0] || !p->tx_aead[1] || !p->rx_aead[0] || !p->rx_aead[1]) {
        mpt_reorder_free(p->reorder);
        for (int k = 0; k < 2; k++) {
            mpt_aead_free(p->tx_aead[k]);
            mpt_aead_free(p->rx_aead[k]);
        }
        memset(p, 0, sizeof(*p));
        pthread_mutex_unlock(&dp->lock);
        return -1;
    }
    memcpy(p->allowed, allowed, n * sizeof(*allowed));
    p->nallowed = n;
    p->tx_pending = -1;
    mpt_sched_init(&p->sched);
    for (int i = 0; i < MPT_MAX_PATHS; i++)
        p->paths[i].fd = -1;
    p->used = 1;
    dp->gen++;
    unlock_wake(dp);
    return 0;
}

int mpt_dp_set_session(struct mpt_dp *dp, int peer, uint16_t local_index, uint16_t remote_index,
                       int cipher)
{
    struct mpt_peer *p;
    if (local_index == 0 || cipher < MPT_CIPHER_NONE || cipher > MPT_CIPHER_CHACHA20POLY1305)
        return -1;
    if (!(p = lock_peer(dp, peer)))
        return -1;
    for (int i = 0; i < MPT_MAX_PEERS; i++)
        if (i != peer && dp->peers[i].used && dp->peers[i].keyed &&
            dp->peers[i].local_index == local_index) {
            pthread_mutex_unlock(&dp->lock);
            return -1;   /* two peers cannot share an index */
        }
    p->keyed = 0;        /* until set_keys */
    p->local_index = local_index;
    p->remote_index = remote_index;
    p->cipher = cipher;
    p->tx_phase = 0;
    p->tx_pending = -1;
    p->rx_ok[0] = p->rx_ok[1] = 0;
    p->tx_seq = 0;
    memset(p->tx_flow_seq, 0, sizeof(p->tx_flow_seq));
    memset(p->tx_flow_path, -1, sizeof(p->tx_flow_path));
    memset(p->tx_flow_run, 0, sizeof(p->tx_flow_run));
    mpt_replay_reset(&p->replay);
    mpt_reorder_reset(p->reorder);
    p->counters.sessions++;
    unlock_wake(dp);
    return 0;
}

int mpt_dp_set_keys(struct mpt_dp *dp, int peer, int phase, const uint8_t *tx_key,
                    const uint8_t *rx_key, int tx_now)
{
    struct mpt_peer *p;
    int ok;
    if (phase != 0 && phase != 1)
        return -1;
    if (!(p = lock_peer(dp, peer)))
        return -1;
    ok = p->local_index != 0 &&
         mpt_aead_set_key(p->tx_aead[phase], p->cipher, tx_key) == 0 &&
         mpt_aead_set_key(p->rx_aead[phase], p->cipher, rx_key) == 0;
    if (ok) {
        p->rx_ok[phase] = 1;
        if (tx_now || !p->keyed) {
            if (p->keyed && p->tx_phase != phase)
                p->counters.key_switches++;
            p->tx_phase = (uint8_t)phase;
            p->tx_pending = -1;
        } else {
            p->tx_pending = phase;
        }
        p->keyed = 1;
    }
    unlock_wake(dp);
    return ok ? 0 : -1;
}

int mpt_dp_tx_phase(struct mpt_dp *dp, int peer)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    int phase;
    if (!p)
        return -1;
    phase = p->tx_phase;
    pthread_mutex_unlock(&dp->lock);
    return phase;
}

void mpt_dp_set_hold(struct mpt_dp *dp, int peer, uint32_t hold_us, uint32_t alive_ms)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    if (!p)
        return;
    mpt_reorder_set_hold(p->reorder, (int64_t)hold_us * 1000, (int64_t)alive_ms * 1000000);
    unlock_wake(dp);
}

int mpt_dp_set_path(struct mpt_dp *dp, int peer, int idx, int fd, const uint8_t *addr,
                    uint32_t addrlen, double weight, int active)
{
    struct mpt_peer *pe;
    struct mpt_path *p;
    if (idx < 0 || idx >= MPT_MAX_PATHS || addrlen > MPT_SOCKADDR_MAX)
        return -1;
    if (!(pe = lock_peer(dp, peer)))
        return -1;
    p = &pe->paths[idx];
    p->fd = fd;
    if (addrlen)
        mpt_path_set_peer(pe, idx, addr, addrlen);
    if (fd < 0)
        p->peerlen = 0;
    p->weight = weight;
    p->active = fd >= 0 && active;
    mpt_sched_set(&pe->sched, idx, weight, p->active);
    dp->gen++;
    unlock_wake(dp);
    return 0;
}

int mpt_dp_set_peer(struct mpt_dp *dp, int peer, int idx, int fd, const uint8_t *addr,
                    uint32_t addrlen, uint32_t local_family, const uint8_t *local)
{
    struct mpt_peer *pe;
    struct mpt_path *p;
    if (idx < 0 || idx >= MPT_MAX_PATHS || addrlen == 0 || addrlen > MPT_SOCKADDR_MAX ||
        (local_family != 0 && local_family != 4 && local_family != 6))
        return -1;
    if (!(pe = lock_peer(dp, peer)))
        return -1;
    p = &pe->paths[idx];
    mpt_path_set_peer(pe, idx, addr, addrlen);
    p->local.family = local_family;
    memcpy(p->local.addr, local, sizeof(p->local.addr));
    if (p->fd != fd) {
        p->fd = fd;
        dp->gen++;
    }
    unlock_wake(dp);
    return 0;
}

uint32_t mpt_dp_get_peer(struct mpt_dp *dp, int peer, int idx, uint8_t *addr)
{
    struct mpt_peer *pe;
    uint32_t len;
    if (idx < 0 || idx >= MPT_MAX_PATHS || !(pe = lock_peer(dp, peer)))
        return 0;
    len = pe->paths[idx].peerlen;
    memcpy(addr, &pe->paths[idx].peer, len);
    pthread_mutex_unlock(&dp->lock);
    return len;
}

void mpt_dp_set_sched_mode(struct mpt_dp *dp, int peer, int mode)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    if (!p)
        return;
    mpt_sched_set_mode(&p->sched, mode);
    unlock_wake(dp);
}

void mpt_dp_set_rate(struct mpt_dp *dp, int peer, int idx, double rate_bps, double burst_bytes)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    if (!p)
        return;
    mpt_sched_set_rate(&p->sched, idx, rate_bps, burst_bytes);
    unlock_wake(dp);
}

void mpt_dp_set_measure(struct mpt_dp *dp, int peer, int idx, double capacity_bps,
                        double delay_us)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    if (!p)
        return;
    mpt_sched_set_measure(&p->sched, idx, capacity_bps, delay_us);
    pthread_mutex_unlock(&dp->lock);
}

void mpt_dp_set_init_nonce(struct mpt_dp *dp, const uint8_t *nonce)
{
    pthread_mutex_lock(&dp->lock);
    dp->init_nonce_set = nonce != NULL;
    if (nonce)
        memcpy(dp->init_nonce, nonce, MPT_HS_NONCE_LEN);
    pthread_mutex_unlock(&dp->lock);
}

void mpt_dp_set_overflow(struct mpt_dp *dp, int peer, int on)
{
    struct mpt_peer *p = lock_peer(dp, peer);
    if (!p)
        return;
    mpt_sched_set_overflow(&p->sched, on);
    pthread_mutex_unlock(&dp->lock);
}

int mpt_dp_send_control(struct mpt_dp *dp, int peer, int idx, const uint8_t *body, uint32_t len)
{
    struct mpt_peer *pe;
    struct mpt_path *p;
    struct msghdr m;
    struct iovec iov;
    uint8_t cmsg[MPT_PKTINFO_SPACE];
    uint32_t n;
    int r = -1;
    if (idx < 0 || idx >= MPT_MAX_PATHS || len > MPT_MAX_PKT)
        return -1;
    if (!(pe = lock_peer(dp, peer)))
        return -1;
    p = &pe->paths[idx];
    if (pe->keyed && p->fd >= 0 && p->peerlen) {
        memcpy(dp->ctrl_buf + MPT_HDR_LEN, body, len);
        n = mpt_peer_seal(pe, dp->ctrl_buf, len, MPT_TYPE_CONTROL, idx, 0, 0, 0);
        iov.iov_base = dp->ctrl_buf;
        iov.iov_len = n;
        memset(&m, 0, sizeof(m));
        m.msg_name = &p->peer;
        m.msg_namelen = p->peerlen;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        if (p->local.family) {
            m.msg_control = cmsg;
            m.msg_controllen = mpt_pktinfo_build(&p->local, cmsg, sizeof(cmsg));
        }
        if (n && sendmsg(p->fd, &m, MSG_DONTWAIT) == (ssize_t)n) {
            pe->counters.path[idx].ctrl_tx++;
            r = 0;
        }
    }
    pthread_mutex_unlock(&dp->lock);
    return r;
}

void mpt_dp_sync(struct mpt_dp *dp)
{
    pthread_mutex_lock(&dp->lock);
    while (dp->running && dp->gen_seen != dp->gen)
        pthread_cond_wait(&dp->synced, &dp->lock);
    pthread_mutex_unlock(&dp->lock);
}

/* The fds to poll: wake, TUN, the listen socket, then each distinct path
 * socket. */
static int build_pollset(struct mpt_dp *dp, struct pollfd *pfd, uint64_t *gen_built)
{
    int n = 0;
    pfd[n++] = (struct pollfd){ .fd = dp->wake_fd, .events = POLLIN };
    pfd[n++] = (struct pollfd){ .fd = dp->tun_fd, .events = POLLIN };
    if (dp->listen_fd >= 0)
        pfd[n++] = (struct pollfd){ .fd = dp->listen_fd, .events = POLLIN };
    pthread_mutex_lock(&dp->lock);
    for (int pe = 0; pe < MPT_MAX_PEERS; pe++) {
        if (!dp->peers[pe].used)
            continue;
        for (int i = 0; i < MPT_MAX_PATHS; i++) {
            int fd = dp->peers[pe].paths[i].fd, dup = 0;
            if (fd < 0)
                continue;
            for (int k = 2; k < n; k++)
                dup |= pfd[k].fd == fd;
            if (!dup && n < POLL_MAX)
                pfd[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
        }
    }
    dp->gen_seen = *gen_built = dp->gen;
    pthread_cond_broadcast(&dp->synced);
    pthread_mutex_unlock(&dp->lock);
    return n;
}

/* Until the next thing due: a reorder hold expiring, a paced packet. */
static int poll_timeout_ms(struct mpt_dp *dp)
{
    int64_t deadline = -1, wait_ns;
    pthread_mutex_lock(&dp->lock);
    for (int pe = 0; pe < MPT_MAX_PEERS; pe++) {
        int64_t d;
        if (!dp->peers[pe].used)
            continue;
        d = mpt_reorder_deadline(dp->peers[pe].reorder);
        if (d >= 0 && (deadline < 0 || d < deadline))
            deadline = d;
    }
    pthread_mutex_unlock(&dp->lock);
    if (dp->backlog.fq.n && (deadline < 0 || dp->backlog.retry_ns < deadline))
        deadline = dp->backlog.retry_ns;
    if (deadline < 0)
        return IDLE_POLL_MS;
    wait_ns = deadline - mpt_now_ns();
    if (wait_ns <= 0)
        return 0;
    return (int)((wait_ns + 999999) / 1000000);
}

static void tick_reorder(struct mpt_dp *dp)
{
    int64_t now = mpt_now_ns();
    pthread_mutex_lock(&dp->lock);
    for (int pe = 0; pe < MPT_MAX_PEERS; pe++)
        if (dp->peers[pe].used)
            mpt_reorder_tick(dp->peers[pe].reorder, now);
    pthread_mutex_unlock(&dp->lock);
}

static void *loop(void *arg)
{
    struct mpt_dp *dp = arg;
    struct pollfd pfd[POLL_MAX];
    uint64_t gen_polled = (uint64_t)-1;
    int n = 0;

    while (!dp->stop) {
        uint64_t gen;
        pthread_mutex_lock(&dp->lock);
        gen = dp->gen;
        pthread_mutex_unlock(&dp->lock);
        if (gen != gen_polled)
            n = build_pollset(dp, pfd, &gen_polled);
        dp->counters.loops++;
        if (poll(pfd, (nfds_t)n, poll_timeout_ms(dp)) < 0) {
            if (errno == EINTR)
                continue;
            dp->failed = errno;
            break;
        }
        if (pfd[1].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            /* The TUN device is gone: nothing more to do; Python sees failed. */
            dp->failed = EIO;
            break;
        }
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            if (read(dp->wake_fd, &v, sizeof(v)) < 0) {
                /* Already drained. */
            }
        }
        for (int k = 2; k < n; k++)
            if (pfd[k].revents & POLLIN)
                mpt_receive_from_socket(dp, pfd[k].fd);
        if (dp->backlog.fq.n)
            mpt_send_backlog(dp, mpt_now_ns());
        if (pfd[1].revents & POLLIN)
            mpt_send_from_tun(dp);
        tick_reorder(dp);
    }
    pthread_mutex_lock(&dp->lock);
    dp->running = 0;
    pthread_cond_broadcast(&dp->synced);
    pthread_mutex_unlock(&dp->lock);
    return NULL;
}

int mpt_dp_start(struct mpt_dp *dp)
{
    if (dp->running)
        return 0;
    dp->stop = 0;
    dp->running = 1;
    if (pthread_create(&dp->thread, NULL, loop, dp) != 0) {
        dp->running = 0;
        return -1;
    }
    return 0;
}

void mpt_dp_stop(struct mpt_dp *dp)
{
    int joinable;
    pthread_mutex_lock(&dp->lock);
    joinable = dp->running || dp->thread;
    pthread_mutex_unlock(&dp->lock);
    if (!joinable)
        return;
    dp->stop = 1;
    wake(dp);
    pthread_join(dp->thread, NULL);
    dp->thread = 0;
}

void mpt_dp_free(struct mpt_dp *dp)
{
    if (!dp)
        return;
    mpt_dp_stop(dp);
    if (dp->wake_fd >= 0)
        close(dp->wake_fd);
    for (int pe = 0; pe < MPT_MAX_PEERS; pe++) {
        struct mpt_peer *p = &dp->peers[pe];
        if (!p->used)
            continue;
        mpt_reorder_free(p->reorder);
        for (int k = 0; k < 2; k++) {
            mpt_aead_free(p->tx_aead[k]);
            mpt_aead_free(p->rx_aead[k]);
        }
    }
    pthread_mutex_destroy(&dp->lock);
    pthread_cond_destroy(&dp->synced);
    free(dp);
}

void mpt_dp_copy_counters(struct mpt_dp *dp, int peer, struct mpt_counters *out)
{
    const struct mpt_reorder_stats *rs;
    /* A snapshot a packet stale is fine.  Aligned 64-bit loads do not tear
     * on 64-bit targets; 32-bit ones would need atomics here (not yet). */
    if (peer < 0 || peer >= MPT_MAX_PEERS || !dp->peers[peer].used) {
        memcpy(out, &dp->counters, sizeof(*out));
        return;
    }
    memcpy(out, &dp->peers[peer].counters, sizeof(*out));
    pthread_mutex_lock(&dp->lock);
    rs = &dp->peers[peer].reorder->stats;
    out->drop_duplicate = rs->duplicates;
    out->drop_late = rs->late;
    out->drop_too_big += rs->too_big;
    out->reorder_held = rs->held;
    out->reorder_skipped = rs->skipped;
    out->reorder_timeouts = rs->timeouts;
    out->reorder_overflows = rs->overflows;
    pthread_mutex_unlock(&dp->lock);
}
