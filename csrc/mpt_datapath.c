/* The datapath thread: lifecycle, path table, and the poll loop that
 * drives send (mpt_send.c), receive (mpt_receive.c) and the reorder
 * buffer's hold timer. */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "mpt_dp_internal.h"

#define POLL_MAX (3 + MPT_MAX_PATHS)
#define IDLE_POLL_MS 200

int64_t mpt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct mpt_dp *mpt_dp_new(int tun_fd, int ctrl_fd, int listen_fd, uint16_t session,
                          uint32_t hold_us, uint32_t alive_ms)
{
    struct mpt_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->tun_fd = tun_fd;
    dp->ctrl_fd = ctrl_fd;
    dp->server = listen_fd >= 0;
    dp->listen_fd = listen_fd;
    dp->session = session;
    pthread_mutex_init(&dp->lock, NULL);
    pthread_cond_init(&dp->synced, NULL);
    dp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->reorder = mpt_reorder_new(MPT_REORDER_SLOTS, MPT_MAX_PKT, (int64_t)hold_us * 1000,
                                  (int64_t)alive_ms * 1000000, mpt_deliver_to_tun, dp);
    if (dp->wake_fd < 0 || !dp->reorder) {
        mpt_dp_free(dp);
        return NULL;
    }
    mpt_sched_init(&dp->sched);
    for (int i = 0; i < MPT_MAX_PATHS; i++)
        dp->paths[i].fd = -1;
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

void mpt_dp_set_hold(struct mpt_dp *dp, uint32_t hold_us, uint32_t alive_ms)
{
    pthread_mutex_lock(&dp->lock);
    mpt_reorder_set_hold(dp->reorder, (int64_t)hold_us * 1000, (int64_t)alive_ms * 1000000);
    pthread_mutex_unlock(&dp->lock);
    wake(dp);
}

int mpt_dp_set_path(struct mpt_dp *dp, int idx, int fd, const uint8_t *addr, uint32_t addrlen,
                    double weight, int active)
{
    struct mpt_path *p;
    if (idx < 0 || idx >= MPT_MAX_PATHS || addrlen > MPT_SOCKADDR_MAX)
        return -1;
    pthread_mutex_lock(&dp->lock);
    p = &dp->paths[idx];
    p->fd = fd;
    if (addrlen) {
        memcpy(&p->peer, addr, addrlen);
        p->peerlen = addrlen;
    }
    if (fd < 0)
        p->peerlen = 0;
    p->weight = weight;
    p->active = fd >= 0 && active;
    mpt_sched_set(&dp->sched, idx, weight, p->active);
    dp->gen++;
    pthread_mutex_unlock(&dp->lock);
    wake(dp);
    return 0;
}

int mpt_dp_set_peer(struct mpt_dp *dp, int idx, int fd, const uint8_t *addr, uint32_t addrlen,
                    uint32_t local_family, const uint8_t *local)
{
    struct mpt_path *p;
    if (idx < 0 || idx >= MPT_MAX_PATHS || addrlen == 0 || addrlen > MPT_SOCKADDR_MAX ||
        (local_family != 0 && local_family != 4 && local_family != 6))
        return -1;
    pthread_mutex_lock(&dp->lock);
    p = &dp->paths[idx];
    memcpy(&p->peer, addr, addrlen);
    p->peerlen = addrlen;
    p->local.family = local_family;
    memcpy(p->local.addr, local, sizeof(p->local.addr));
    if (p->fd != fd) {
        p->fd = fd;
        dp->gen++;
    }
    pthread_mutex_unlock(&dp->lock);
    wake(dp);
    return 0;
}

uint32_t mpt_dp_get_peer(struct mpt_dp *dp, int idx, uint8_t *addr)
{
    uint32_t len = 0;
    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return 0;
    pthread_mutex_lock(&dp->lock);
    len = dp->paths[idx].peerlen;
    memcpy(addr, &dp->paths[idx].peer, len);
    pthread_mutex_unlock(&dp->lock);
    return len;
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
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        int fd = dp->paths[i].fd, dup = 0;
        if (fd < 0)
            continue;
        for (int k = 2; k < n; k++)
            dup |= pfd[k].fd == fd;
        if (!dup)
            pfd[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
    }
    dp->gen_seen = *gen_built = dp->gen;
    pthread_cond_broadcast(&dp->synced);
    pthread_mutex_unlock(&dp->lock);
    return n;
}

static int poll_timeout_ms(struct mpt_dp *dp)
{
    int64_t deadline, wait_ns;
    pthread_mutex_lock(&dp->lock);
    deadline = mpt_reorder_deadline(dp->reorder);
    pthread_mutex_unlock(&dp->lock);
    if (deadline < 0)
        return IDLE_POLL_MS;
    wait_ns = deadline - mpt_now_ns();
    if (wait_ns <= 0)
        return 0;
    return (int)((wait_ns + 999999) / 1000000);
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
        if (pfd[1].revents & POLLIN)
            mpt_send_from_tun(dp);
        pthread_mutex_lock(&dp->lock);
        mpt_reorder_tick(dp->reorder, mpt_now_ns());
        pthread_mutex_unlock(&dp->lock);
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
    mpt_reorder_free(dp->reorder);
    pthread_mutex_destroy(&dp->lock);
    pthread_cond_destroy(&dp->synced);
    free(dp);
}

void mpt_dp_copy_counters(struct mpt_dp *dp, struct mpt_counters *out)
{
    const struct mpt_reorder_stats *rs = &dp->reorder->stats;
    /* A snapshot a packet stale is fine.  Aligned 64-bit loads do not tear
     * on 64-bit targets; 32-bit ones would need atomics here (not yet). */
    memcpy(out, &dp->counters, sizeof(*out));
    pthread_mutex_lock(&dp->lock);
    out->drop_duplicate = rs->duplicates;
    out->drop_late = rs->late;
    out->drop_too_big += rs->too_big;
    out->reorder_held = rs->held;
    out->reorder_skipped = rs->skipped;
    out->reorder_timeouts = rs->timeouts;
    out->reorder_overflows = rs->overflows;
    pthread_mutex_unlock(&dp->lock);
}
