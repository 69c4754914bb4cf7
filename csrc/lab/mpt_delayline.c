/* mpt_delayline: one-way delay, jitter and random loss for the namespace lab,
 * where the kernel has no netem.  A lab tool, not part of the datapath; built
 * on demand by mpt/lab/delay.py.
 *
 * It creates a TUN device (--dev NAME) in its network namespace; policy
 * routing sends one direction of a link into it.  Each packet read from the
 * TUN is dropped with probability `loss` or stamped with a release time
 * now + delay + jitter and held in a preallocated slot pool; at its release
 * time it is written back into the same TUN and the kernel forwards it on.
 * The device vanishes with the process (it is not persistent).  Packets no
 * router forwards (link-local, from ::, malformed) are dropped, not delayed.
 *
 * FIFO (default): release = max(latest release so far, now + delay + jitter),
 * so jitter never reorders.  reorder=1: packets may pass each other.  Queued
 * packets are kept in a binary min-heap on (release, arrival number), which
 * serves both modes: in FIFO mode the releases never decrease, and the
 * arrival number keeps equal releases in order.
 *
 * Control: one command per line on stdin, one reply line on stdout.
 *   set [delay_ns=N] [jitter_ns=N] [loss=P] [dist=uniform|normal] [reorder=0|1]
 *       -> "ok": keys not given keep their value; applies to packets read
 *          from now on (queued ones keep their release time).
 *   stats -> "stats key=value ..." (counters, queue length, lateness).
 *   quit, or end of stdin -> exit.
 *   anything else -> "error <why>", nothing changed.
 * On start it prints "ready ifindex=N rt=0|1 capacity=N mtu=N".
 *
 * Jitter: uniform in [-J, +J] (netem's default), or normal-ish with standard
 * deviation J (sum of four uniforms, tails bounded at ±3.46 J).  A release is
 * never earlier than the packet's arrival.
 *
 * Timing: a timerfd armed at the earliest release (absolute, CLOCK_MONOTONIC,
 * no slack) and SCHED_FIFO (--rt-prio, 0 = off) so that a busy machine does
 * not delay the wake-up.  Packets due within EARLY_NS of now go out together.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define EARLY_NS 20000ULL               /* release up to 20 us early to batch */
#define READ_BATCH 256                  /* packets read per wake before releasing */
#define MAX_DELAY_NS (60ULL * 1000000000ULL)
#define CTRL_LINE_MAX 1024

struct params {
    uint64_t delay_ns;
    uint64_t jitter_ns;
    double loss;                        /* as given, for `stats` */
    uint64_t loss_threshold;            /* drop if rng < threshold */
    bool drop_all;                      /* loss == 1 */
    bool normal;                        /* jitter distribution */
    bool reorder;
};

struct stats {
    uint64_t rx, tx, lost, overflow, oversize, local, tx_errors;
    uint64_t late_max_ns, late_sum_ns;
    /* lateness of releases: <=100us, <=500us, <=1ms, <=2ms, more */
    uint64_t late_hist[5];
};

struct line {
    uint32_t capacity, slot_size;
    uint8_t *bufs;                      /* capacity * slot_size, touched lazily */
    uint32_t *len;
    uint64_t *release;
    uint64_t *arrival_no;
    uint32_t *free_stack;               /* LIFO: reuse warm slots */
    uint32_t free_top;
    uint32_t *heap;                     /* slot indices, min on (release, arrival_no) */
    uint8_t *scratch;                   /* one slot: where packets go when the pool is full */
    uint32_t heap_len;
    uint64_t latest_release;
    uint64_t next_arrival_no;
    struct params p;
    struct stats st;
    uint64_t rng[4];
};

/* ------------------------------------------------------------------ random */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4])          /* xoshiro256** */
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double rng_unit(uint64_t s[4])            /* [0, 1) */
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&seed);
}

/* --------------------------------------------------------------------- time */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Signed jitter for one packet, in ns. */
static int64_t jitter_sample(struct line *l)
{
    if (l->p.jitter_ns == 0)
        return 0;
    double j = (double)l->p.jitter_ns, x;
    if (l->p.normal) {
        /* sum of 4 U(-1,1) has sd 2/sqrt(3); scale to sd 1 */
        x = 0;
        for (int i = 0; i < 4; i++)
            x += 2.0 * rng_unit(l->rng) - 1.0;
        x *= 0.8660254037844386;
    } else {
        x = 2.0 * rng_unit(l->rng) - 1.0;
    }
    return (int64_t)(x * j);
}

/* Release time of a packet that arrived at `now` (not yet queued). */
static uint64_t release_time(struct line *l, uint64_t now)
{
    int64_t off = (int64_t)l->p.delay_ns + jitter_sample(l);
    uint64_t t = off > 0 ? now + (uint64_t)off : now;
    if (!l->p.reorder && t < l->latest_release)
        t = l->latest_release;
    if (t > l->latest_release)
        l->latest_release = t;
    return t;
}

/* --------------------------------------------------------------------- heap */
static bool before(const struct line *l, uint32_t a, uint32_t b)
{
    if (l->release[a] != l->release[b])
        return l->release[a] < l->release[b];
    return l->arrival_no[a] < l->arrival_no[b];
}

static void heap_push(struct line *l, uint32_t slot)
{
    uint32_t i = l->heap_len++;
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!before(l, slot, l->heap[parent]))
            break;
        l->heap[i] = l->heap[parent];
        i = parent;
    }
    l->heap[i] = slot;
}

static void heap_pop(struct line *l)
{
    uint32_t last = l->heap[--l->heap_len];
    uint32_t n = l->heap_len, i = 0;
    if (n == 0)
        return;
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(l, l->heap[c + 1], l->heap[c]))
            c++;
        if (!before(l, l->heap[c], last))
            break;
        l->heap[i] = l->heap[c];
        i = c;
    }
    l->heap[i] = last;
}

/* ------------------------------------------------------------------- params */
static int set_loss(struct params *p, double loss)
{
    if (!(loss >= 0.0 && loss <= 1.0))          /* also rejects NaN */
        return -1;
    p->loss = loss;
    p->drop_all = loss >= 1.0;
    p->loss_threshold = p->drop_all ? UINT64_MAX
                                    : (uint64_t)(loss * 18446744073709551616.0);
    return 0;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

/* "set k=v ...": all-or-nothing; writes the reason into err on failure. */
static int apply_set(struct line *l, char *args, char *err, size_t errlen)
{
    struct params p = l->p;
    char *save = NULL;
    for (char *tok = strtok_r(args, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) {
            snprintf(err, errlen, "expected key=value, got '%.40s'", tok);
            return -1;
        }
        *eq = '\0';
        const char *k = tok, *v = eq + 1;
        uint64_t u;
        if (!strcmp(k, "delay_ns")) {
            if (parse_u64(v, MAX_DELAY_NS, &u))
                goto bad;
            p.delay_ns = u;
        } else if (!strcmp(k, "jitter_ns")) {
            if (parse_u64(v, MAX_DELAY_NS, &u))
                goto bad;
            p.jitter_ns = u;
        } else if (!strcmp(k, "loss")) {
            char *end;
            double d = strtod(v, &end);
            if (end == v || *end || set_loss(&p, d))
                goto bad;
        } else if (!strcmp(k, "dist")) {
            if (!strcmp(v, "uniform"))
                p.normal = false;
            else if (!strcmp(v, "normal"))
                p.normal = true;
            else
                goto bad;
        } else if (!strcmp(k, "reorder")) {
            if (parse_u64(v, 1, &u))
                goto bad;
            p.reorder = u == 1;
        } else {
            snprintf(err, errlen, "unknown key '%.40s'", k);
            return -1;
        }
        continue;
bad:
        snprintf(err, errlen, "bad value for %.40s: '%.40s'", k, v);
        return -1;
    }
    l->p = p;
    return 0;
}

/* ------------------------------------------------------------------- output */
static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        exit(1);
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(STDOUT_FILENO, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            exit(0);                    /* the controller is gone */
        off += (int)w;
    }
}

static void reply_stats(const struct line *l, bool rt)
{
    const struct stats *s = &l->st;
    reply("stats rx=%" PRIu64 " tx=%" PRIu64 " lost=%" PRIu64 " overflow=%" PRIu64
          " oversize=%" PRIu64 " local=%" PRIu64 " tx_errors=%" PRIu64 " queued=%" PRIu32
          " late_max_ns=%" PRIu64 " late_sum_ns=%" PRIu64
          " late_le_100us=%" PRIu64 " late_le_500us=%" PRIu64 " late_le_1ms=%" PRIu64
          " late_le_2ms=%" PRIu64 " late_gt_2ms=%" PRIu64
          " delay_ns=%" PRIu64 " jitter_ns=%" PRIu64 " loss=%.9g dist=%s reorder=%d rt=%d",
          s->rx, s->tx, s->lost, s->overflow, s->oversize, s->local, s->tx_errors, l->heap_len,
          s->late_max_ns, s->late_sum_ns, s->late_hist[0], s->late_hist[1], s->late_hist[2],
          s->late_hist[3], s->late_hist[4], l->p.delay_ns, l->p.jitter_ns, l->p.loss,
          l->p.normal ? "normal" : "uniform", l->p.reorder ? 1 : 0, rt ? 1 : 0);
}

/* ------------------------------------------------------------------ control */
struct ctrl {
    char buf[CTRL_LINE_MAX];
    size_t len;
    const char *refused;                /* why the current line will be refused */
};

/* Returns false when the controller asked to quit. */
static bool handle_command(struct line *l, char *cmd, bool rt)
{
    char err[160];
    while (*cmd == ' ' || *cmd == '\t')
        cmd++;
    size_t n = strlen(cmd);
    while (n && (cmd[n - 1] == ' ' || cmd[n - 1] == '\t' || cmd[n - 1] == '\r'))
        cmd[--n] = '\0';
    if (!strcmp(cmd, "quit"))
        return false;
    if (!strcmp(cmd, "stats")) {
        reply_stats(l, rt);
    } else if (!strncmp(cmd, "set", 3) && (cmd[3] == '\0' || cmd[3] == ' ' || cmd[3] == '\t')) {
        if (apply_set(l, cmd + 3, err, sizeof err) == 0)
            reply("ok");
        else
            reply("error %s", err);
    } else {
        reply("error unknown command");
    }
    return true;
}

/* Read what stdin has; false on EOF or quit. */
static bool read_control(struct line *l, struct ctrl *c, bool rt)
{
    char chunk[512];
    ssize_t r = read(STDIN_FILENO, chunk, sizeof chunk);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN;
    if (r == 0)
        return false;
    for (ssize_t i = 0; i < r; i++) {
        char ch = chunk[i];
        if (ch == '\n') {
            if (c->refused) {
                reply("error %s", c->refused);
            } else {
                c->buf[c->len] = '\0';
                if (!handle_command(l, c->buf, rt))
                    return false;
            }
            c->len = 0;
            c->refused = NULL;
        } else if (c->refused) {
            continue;                   /* skip to the end of the line */
        } else if (ch == '\0') {
            c->refused = "NUL byte in line";
        } else if (c->len >= sizeof c->buf - 1) {
            c->refused = "line too long";
        } else {
            c->buf[c->len++] = ch;
        }
    }
    return true;
}

/* --------------------------------------------------------------- the device */
static void die(const char *what)
{
    fprintf(stderr, "mpt_delayline: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int tun_create(const char *name, int mtu, int txqlen, int *ifindex)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        die("open /dev/net/tun");
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    memcpy(ifr.ifr_name, name, strlen(name));      /* length checked by caller */
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        die("TUNSETIFF");
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("socket");
    ifr.ifr_mtu = mtu;
    if (ioctl(s, SIOCSIFMTU, &ifr) < 0)
        die("SIOCSIFMTU");
    ifr.ifr_qlen = txqlen;
    if (ioctl(s, SIOCSIFTXQLEN, &ifr) < 0)
        die("SIOCSIFTXQLEN");
    /* No IPv6 link-local address: the device then sends nothing of its own
     * (MLD reports would otherwise pass through the line). */
    char path[96];
    snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/addr_gen_mode", name);
    int f = open(path, O_WRONLY | O_CLOEXEC);
    if (f >= 0) {
        if (write(f, "1", 1) != 1)
            fprintf(stderr, "mpt_delayline: %s: %s\n", path, strerror(errno));
        close(f);
    }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        die("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        die("SIOCSIFFLAGS");
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0)
        die("SIOCGIFINDEX");
    *ifindex = ifr.ifr_ifindex;
    close(s);
    return fd;
}

/* ------------------------------------------------------------------ packets */
/* Packets no router forwards: what the namespace's kernel sends of its own on
 * the TUN (MLD reports for the groups a router joins, from ::).  They are
 * dropped, not delayed.  Anything shorter than its IP header counts here too. */
static bool never_forwarded(const uint8_t *p, size_t len)
{
    static const uint8_t zero16[16];
    if (len >= 20 && p[0] >> 4 == 4) {
        uint32_t src = (uint32_t)p[12] << 24 | (uint32_t)p[13] << 16 | (uint32_t)p[14] << 8 | p[15];
        uint32_t dst = (uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 | (uint32_t)p[18] << 8 | p[19];
        return src == 0 || dst == 0xffffffffu || (dst & 0xffffff00u) == 0xe0000000u;
    }
    if (len >= 40 && p[0] >> 4 == 6) {
        const uint8_t *src = p + 8, *dst = p + 24;
        bool src_ll = src[0] == 0xfe && (src[1] & 0xc0) == 0x80;
        bool dst_ll = dst[0] == 0xfe && (dst[1] & 0xc0) == 0x80;
        bool dst_mc_local = dst[0] == 0xff && (dst[1] & 0x0f) <= 2;
        return !memcmp(src, zero16, 16) || src_ll || dst_ll || dst_mc_local;
    }
    return true;
}

static void line_init(struct line *l, uint32_t capacity, uint32_t slot_size, uint64_t seed)
{
    memset(l, 0, sizeof *l);
    l->capacity = capacity;
    l->slot_size = slot_size;
    /* untouched pages cost nothing: memory follows the peak queue length */
    l->bufs = mmap(NULL, (size_t)capacity * slot_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (l->bufs == MAP_FAILED)
        die("mmap");
    l->len = calloc(capacity, sizeof *l->len);
    l->release = calloc(capacity, sizeof *l->release);
    l->arrival_no = calloc(capacity, sizeof *l->arrival_no);
    l->free_stack = calloc(capacity, sizeof *l->free_stack);
    l->heap = calloc(capacity, sizeof *l->heap);
    l->scratch = malloc(slot_size);
    if (!l->len || !l->release || !l->arrival_no || !l->free_stack || !l->heap || !l->scratch)
        die("calloc");
    for (uint32_t i = 0; i < capacity; i++)
        l->free_stack[i] = capacity - 1 - i;
    l->free_top = capacity;
    rng_seed(l->rng, seed);
    set_loss(&l->p, 0.0);
}

static void count_lateness(struct stats *s, uint64_t late)
{
    s->late_sum_ns += late;
    if (late > s->late_max_ns)
        s->late_max_ns = late;
    int b = late <= 100000 ? 0 : late <= 500000 ? 1 : late <= 1000000 ? 2
          : late <= 2000000 ? 3 : 4;
    s->late_hist[b]++;
}

/* Write every packet due by now (+EARLY_NS).  False if the device pushed back. */
static bool release_due(struct line *l, int fd)
{
    while (l->heap_len) {
        uint32_t slot = l->heap[0];
        uint64_t now = now_ns();        /* time moves on while writing */
        if (l->release[slot] > now + EARLY_NS)
            break;
        ssize_t w = write(fd, l->bufs + (size_t)slot * l->slot_size, l->len[slot]);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return false;               /* keep it queued; wait for POLLOUT */
        if (w < 0)
            l->st.tx_errors++;          /* malformed or device down: drop it */
        else
            l->st.tx++;
        count_lateness(&l->st, now > l->release[slot] ? now - l->release[slot] : 0);
        heap_pop(l);
        l->free_stack[l->free_top++] = slot;
    }
    return true;
}

/* Read up to READ_BATCH packets; loss and queueing decided per packet. */
static void read_batch(struct line *l, int fd)
{
    for (int i = 0; i < READ_BATCH; i++) {
        bool have_slot = l->free_top > 0;
        uint32_t slot = have_slot ? l->free_stack[l->free_top - 1] : 0;
        uint8_t *dst = have_slot ? l->bufs + (size_t)slot * l->slot_size : l->scratch;
        size_t room = l->slot_size;
        ssize_t r = read(fd, dst, room);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            die("read tun");
        }
        uint64_t now = now_ns();
        l->st.rx++;
        if (r == 0 || (size_t)r >= room) {  /* a full buffer may be a cut packet */
            l->st.oversize++;
            continue;
        }
        if (never_forwarded(dst, (size_t)r)) {
            l->st.local++;
            continue;
        }
        if (!have_slot) {
            l->st.overflow++;
            continue;
        }
        if (l->p.drop_all || (l->p.loss_threshold && rng_next(l->rng) < l->p.loss_threshold)) {
            l->st.lost++;
            continue;
        }
        l->free_top--;
        l->len[slot] = (uint32_t)r;
        l->release[slot] = release_time(l, now);
        l->arrival_no[slot] = l->next_arrival_no++;
        heap_push(l, slot);
    }
}

static void arm_timer(int tfd, uint64_t at_ns, uint64_t *armed)
{
    if (at_ns == *armed)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = (time_t)(at_ns / 1000000000ULL);
    its.it_value.tv_nsec = (long)(at_ns % 1000000000ULL);
    if (timerfd_settime(tfd, at_ns ? TFD_TIMER_ABSTIME : 0, &its, NULL) < 0)
        die("timerfd_settime");
    *armed = at_ns;
}

/* --------------------------------------------------------------------- main */
static void usage(void)
{
    fprintf(stderr, "usage: mpt_delayline --dev NAME [--mtu 1500] [--capacity 65536]\n"
                    "                     [--txqlen 1000] [--rt-prio 20] [--seed N]\n");
    exit(2);
}

static uint64_t arg_u64(const char *v, uint64_t min, uint64_t max)
{
    uint64_t u;
    if (!v || parse_u64(v, max, &u) || u < min)
        usage();
    return u;
}

int main(int argc, char **argv)
{
    const char *dev = NULL;
    uint64_t mtu = 1500, capacity = 65536, txqlen = 1000, rt_prio = 20, seed = 0;
    bool seeded = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--dev") && v)
            dev = v;
        else if (!strcmp(a, "--mtu"))
            mtu = arg_u64(v, 576, 9000);
        else if (!strcmp(a, "--capacity"))
            capacity = arg_u64(v, 1, 1u << 22);
        else if (!strcmp(a, "--txqlen"))
            txqlen = arg_u64(v, 1, 1u << 20);
        else if (!strcmp(a, "--rt-prio"))
            rt_prio = arg_u64(v, 0, 99);
        else if (!strcmp(a, "--seed")) {
            seed = arg_u64(v, 0, UINT64_MAX);
            seeded = true;
        } else
            usage();
        i++;
    }
    if (!dev || !*dev || strlen(dev) >= IFNAMSIZ)
        usage();
    if (!seeded && getrandom(&seed, sizeof seed, 0) != sizeof seed)
        die("getrandom");
    signal(SIGPIPE, SIG_IGN);

    /* slots hold a whole packet plus one byte, so a cut packet shows as full */
    uint32_t slot_size = (uint32_t)((mtu + 1 + 63) & ~63ULL);
    static struct line l;
    line_init(&l, (uint32_t)capacity, slot_size, seed);

    int ifindex = 0;
    int tfd_dev = tun_create(dev, (int)mtu, (int)txqlen, &ifindex);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        die("timerfd_create");
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    bool rt = false;
    if (rt_prio > 0) {
        struct sched_param sp = {.sched_priority = (int)rt_prio};
        rt = sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) == 0;
    }
    reply("ready ifindex=%d rt=%d capacity=%" PRIu64 " mtu=%" PRIu64, ifindex, rt ? 1 : 0,
          capacity, mtu);

    struct ctrl ctrl = {.len = 0, .refused = NULL};
    uint64_t armed = 0;
    bool can_write = true;
    for (;;) {
        if (can_write)
            can_write = release_due(&l, tfd_dev);
        arm_timer(tfd, can_write && l.heap_len ? l.release[l.heap[0]] : 0, &armed);
        struct pollfd pfd[3] = {
            {.fd = tfd_dev, .events = (short)(POLLIN | (can_write ? 0 : POLLOUT))},
            {.fd = tfd, .events = POLLIN},
            {.fd = STDIN_FILENO, .events = POLLIN},
        };
        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t expirations;
            if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                die("read timerfd");
            armed = 0;                  /* one-shot: it has to be armed again */
        }
        if (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            errno = EIO;
            die("tun device");
        }
        if (pfd[0].revents & POLLOUT)
            can_write = true;
        if (pfd[0].revents & POLLIN)
            read_batch(&l, tfd_dev);
        if (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!read_control(&l, &ctrl, rt))
                return 0;
        }
    }
}
