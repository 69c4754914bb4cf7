/* libFuzzer harness: the receive path (csrc/mpt_receive.c) on hostile bytes.
 *
 * Build and run (tests/unit/test_fuzz.py does both; docs/FUZZING.md has the
 * long run's figures):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *       -Icsrc csrc/fuzz/fuzz_decap.c <every SOURCES of mpt/_build_datapath.py but
 *       mpt_receive.c> -lcrypto -pthread -o fuzz_decap
 *   ./fuzz_decap -max_len=8192 CORPUS_DIR
 * MPT_FUZZ_STATS=1 prints, at exit, what the inputs reached, summed over
 * the inputs run (libFuzzer may run one twice, to look for leaks); the test
 * uses it to prove the seeds get through authentication into the reorder
 * buffer.
 *
 * mpt_receive.c is included, not linked, so the harness calls its static
 * receive_one() itself: every datagram takes exactly the daemon's path (header
 * parse, version/type, handshake rate limit, session lookup, path check,
 * replay window, AEAD open, key-phase switch, inner check, allowed sources,
 * address learning, reorder) on a datapath made by the real mpt_dp_new /
 * mpt_dp_add_peer / mpt_dp_set_session / mpt_dp_set_keys.  No socket and no
 * thread: the datagram is written where recvmmsg would have put it, the TUN
 * device and the control channel are /dev/null, and the poll loop's reorder
 * tick is called after every datagram.
 *
 * Input: one byte of settings (hold and alive time), then datagram records:
 *   flags(1) time(1) length(2, big-endian) datagram(length; cut at the input's end)
 * flags: bit 0 client datapath (else server), bits 1-2 source address, bit 3
 * which socket, bit 4 MSG_TRUNC, bit 5 seal the datagram here with the key of
 * the peer its session names (a misbehaving but authenticated peer: the
 * fuzzer's own header and payload get past the AEAD), bits 6-7 local address
 * family.  time advances the clock by (time & 63) << 5 * (time >> 6) us.
 * Length past the receive buffer is received truncated, as recvmmsg would.
 *
 * Peers (server): 0 AES-256-GCM, 1 ChaCha20-Poly1305, 2 NONE with allowed
 * prefixes, 3 NONE any source and no key in phase 1, 4 added but never keyed.  Client: one NONE
 * peer with fixed paths.  The far end seals with key_of(dp, peer, phase):
 * 32 bytes of 0xA0 + 8 * dp + 2 * peer + phase (the test's seeds use it).
 * Checked beyond the sanitizers: whatever is delivered fits a slot, is one
 * whole IP packet from an allowed source; the reorder buffer's held counts
 * agree and, after a tick, its deadline lies in the future.
 */
#include "mpt_receive.c" /* first: it defines _GNU_SOURCE */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sanitizer/asan_interface.h>
#include "mpt_flow.h"

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "fuzz_decap: check failed: %s (line %d)\n", #cond, \
                    __LINE__);                                                \
            abort();                                                          \
        }                                                                     \
    } while (0)

#define SERVER 0
#define CLIENT 1
#define NPEERS_SERVER 5
#define FD_A 100   /* path sockets: only compared, never read; /dev/null, so a
                    * cookie reply (sendmsg) fails with ENOTSOCK */
#define FD_B 101
#define T0_NS ((int64_t)1000 * 1000000000)

struct peer_conf {
    uint16_t session;
    int cipher;            /* -1: added, never keyed */
    int phases;            /* key phases installed: 1 (phase 0) or 2 */
    uint32_t nallowed;
    struct mpt_prefix allowed[3];
};

static const struct peer_conf server_conf[NPEERS_SERVER] = {
    { 0x1234, MPT_CIPHER_AES256GCM, 2, 2,
      { { 4, 24, { 198, 18, 100, 0 } },
        { 6, 64, { 0x20, 0x01, 0, 2, 0, 0, 0x01, 0 } } } },
    { 0x2345, MPT_CIPHER_CHACHA20POLY1305, 2, 0, { { 0 } } },
    { 0x3456, MPT_CIPHER_NONE, 2, 3,
      { { 4, 23, { 198, 18, 102, 0 } },
        { 4, 25, { 198, 18, 104, 128 } },
        { 6, 61, { 0x20, 0x01, 0, 2, 0, 0, 0x01, 0x08 } } } },
    { 0x4567, MPT_CIPHER_NONE, 1, 0, { { 0 } } },
    { 0x5678, -1, 0, 0, { { 0 } } },
};
static const struct peer_conf client_conf = { 0x0101, MPT_CIPHER_NONE, 2, 0, { { 0 } } };

/* What a delivery is checked against. */
struct sink {
    struct mpt_dp *dp;
    struct mpt_peer *pe;
    uint64_t delivered;
};

static struct {
    int devnull;
    struct mpt_dp *dp[2];
    struct sink sinks[2][NPEERS_SERVER];
    struct mpt_aead *far[NPEERS_SERVER][2];  /* the server peers' far end, per phase */
    struct sockaddr_storage from[4];
    socklen_t fromlen[4];
    uint8_t dirty[2][MPT_MAX_PEERS];         /* state changed since its reset */
    uint64_t inputs, records, sealed_here;
} S;

static void key_of(int dp, int peer, int phase, int tx, uint8_t key[MPT_KEY_LEN])
{
    memset(key, (tx ? 0x50 : 0xA0) + 8 * dp + 2 * peer + phase, MPT_KEY_LEN);
}

static void fuzz_deliver(void *ctx, const uint8_t *data, uint32_t len)
{
    struct sink *s = ctx;
    volatile uint8_t sum = 0;
    CHECK(len <= s->pe->reorder->slot_size && len <= MPT_MAX_PKT);
    CHECK(mpt_inner_ok(data, len));
    CHECK(mpt_peer_allows_src(s->pe, data, len));
    CHECK(mpt_flow_bucket(data, len, MPT_FLOW_BUCKETS) < MPT_FLOW_BUCKETS);
    for (uint32_t i = 0; i < len; i++)   /* every byte must be readable */
        sum ^= data[i];
    (void)sum;
    s->delivered++;
    mpt_deliver_to_tun(s->dp, data, len);
}

/* A fresh session for every keyed peer: what a new handshake does. */
static void new_session(int d, int peer, const struct peer_conf *c)
{
    uint8_t tx[MPT_KEY_LEN], rx[MPT_KEY_LEN];
    CHECK(mpt_dp_set_session(S.dp[d], peer, c->session, (uint16_t)~c->session,
                             c->cipher < 0 ? MPT_CIPHER_NONE : c->cipher) == 0);
    if (c->cipher < 0)
        return;
    for (int phase = 0; phase < c->phases; phase++) {
        key_of(d, peer, phase, 1, tx);
        key_of(d, peer, phase, 0, rx);
        /* phase 1 is a rekey waiting for the peer to use it (tx_pending) */
        CHECK(mpt_dp_set_keys(S.dp[d], peer, phase, tx, rx, phase == 0) == 0);
    }
}

static void set_addr(int k, int family, const uint8_t *ip, uint16_t port)
{
    memset(&S.from[k], 0, sizeof(S.from[k]));
    if (family == 4) {
        struct sockaddr_in *a = (struct sockaddr_in *)&S.from[k];
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        memcpy(&a->sin_addr, ip, 4);
        S.fromlen[k] = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&S.from[k];
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, ip, 16);
        S.fromlen[k] = sizeof(*a);
    }
}

static void print_stats(void)
{
    uint64_t hs = 0, ctrl = 0, switches = 0, auth = 0, too_big = 0;
    for (int d = 0; d < 2; d++) {
        hs += S.dp[d]->counters.handshake_rx;
        for (int p = 0; p < NPEERS_SERVER; p++) {
            const struct mpt_peer *pe = &S.dp[d]->peers[p];
            if (!pe->used)
                continue;
            auth += pe->counters.drop_auth;
            too_big += pe->reorder->stats.too_big;
            for (int i = 0; i < MPT_MAX_PATHS; i++)
                ctrl += pe->counters.path[i].ctrl_rx;
        }
    }
    switches = S.dp[SERVER]->peers[0].counters.key_switches;
    fprintf(stderr,
            "mpt-fuzz-stats: inputs=%llu records=%llu sealed_here=%llu delivered_aes=%llu "
            "delivered_chacha=%llu delivered_none=%llu delivered_any=%llu "
            "delivered_client=%llu control=%llu handshake=%llu key_switches=%llu "
            "drop_auth=%llu too_big=%llu\n",
            (unsigned long long)S.inputs, (unsigned long long)S.records,
            (unsigned long long)S.sealed_here,
            (unsigned long long)S.sinks[SERVER][0].delivered,
            (unsigned long long)S.sinks[SERVER][1].delivered,
            (unsigned long long)S.sinks[SERVER][2].delivered,
            (unsigned long long)S.sinks[SERVER][3].delivered,
            (unsigned long long)S.sinks[CLIENT][0].delivered, (unsigned long long)ctrl,
            (unsigned long long)hs, (unsigned long long)switches, (unsigned long long)auth,
            (unsigned long long)too_big);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const uint8_t ip_a[4] = { 198, 18, 0, 1 }, ip_c[4] = { 198, 18, 0, 9 };
    static const uint8_t ip_b[16] = { 0x20, 0x01, 0, 2, [15] = 1 };
    uint8_t key[MPT_KEY_LEN];
    (void)argc;
    (void)argv;
    S.devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(S.devnull >= 0);
    CHECK(dup2(S.devnull, FD_A) == FD_A && dup2(S.devnull, FD_B) == FD_B);
    set_addr(0, 4, ip_a, 4000);
    set_addr(1, 6, ip_b, 4001);
    set_addr(2, 4, ip_a, 4999);   /* the same host behind a rebinding NAT */
    set_addr(3, 4, ip_c, 4000);
    /* hold and alive times are set per input */
    S.dp[SERVER] = mpt_dp_new(S.devnull, S.devnull, S.devnull, 50000, 1000);
    S.dp[CLIENT] = mpt_dp_new(S.devnull, S.devnull, -1, 50000, 1000);
    CHECK(S.dp[SERVER] && S.dp[CLIENT]);
    for (int p = 0; p < NPEERS_SERVER; p++) {
        const struct peer_conf *c = &server_conf[p];
        CHECK(mpt_dp_add_peer(S.dp[SERVER], p, c->allowed, c->nallowed) == 0);
        for (int phase = 0; phase < 2; phase++) {
            CHECK((S.far[p][phase] = mpt_aead_new()) != NULL);
            key_of(SERVER, p, phase, 0, key);
            if (c->cipher >= 0)
                CHECK(mpt_aead_set_key(S.far[p][phase], c->cipher, key) == 0);
        }
    }
    CHECK(mpt_dp_add_peer(S.dp[CLIENT], 0, client_conf.allowed, client_conf.nallowed) == 0);
    /* the client knows its paths: socket and server address */
    CHECK(mpt_dp_set_path(S.dp[CLIENT], 0, 0, FD_A, (const uint8_t *)&S.from[0],
                          S.fromlen[0], 1.0, 1) == 0);
    CHECK(mpt_dp_set_path(S.dp[CLIENT], 0, 1, FD_B, (const uint8_t *)&S.from[1],
                          S.fromlen[1], 1.0, 1) == 0);
    CHECK(mpt_dp_set_path(S.dp[CLIENT], 0, 2, FD_A, (const uint8_t *)&S.from[3],
                          S.fromlen[3], 0.5, 1) == 0);
    for (int d = 0; d < 2; d++)
        for (int p = 0; p < MPT_MAX_PEERS; p++) {
            struct mpt_peer *pe = &S.dp[d]->peers[p];
            if (!pe->used)
                continue;
            S.sinks[d][p] = (struct sink){ S.dp[d], pe, 0 };
            pe->reorder->deliver = fuzz_deliver;
            pe->reorder->ctx = &S.sinks[d][p];
        }
    memset(S.dirty, 1, sizeof(S.dirty));
    if (getenv("MPT_FUZZ_STATS"))
        atexit(print_stats);
    return 0;
}

/* Every input starts from the same state: new sessions (replay windows,
 * reorder buffers, key phases) and the server's learned paths forgotten for
 * the peers the last input reached, the hold and alive times of the
 * settings byte, the handshake limiter full. */
static void reset(uint8_t settings)
{
    static const uint32_t hold_us[4] = { 0, 1000, 50000, 2000000 };
    static const uint32_t alive_ms[4] = { 0, 10, 1000, 60000 };
    int64_t hold = (int64_t)hold_us[settings & 3] * 1000;
    int64_t alive = (int64_t)alive_ms[(settings >> 2) & 3] * 1000000;
    for (int d = 0; d < 2; d++) {
        for (int p = 0; p < MPT_MAX_PEERS; p++) {
            struct mpt_peer *pe = &S.dp[d]->peers[p];
            if (!pe->used)
                continue;
            mpt_reorder_set_hold(pe->reorder, hold, alive);
            if (!S.dirty[d][p])
                continue;
            S.dirty[d][p] = 0;
            new_session(d, p, d == SERVER ? &server_conf[p] : &client_conf);
            for (int i = 0; d == SERVER && i < MPT_MAX_PATHS; i++) {
                memset(&pe->paths[i], 0, sizeof(pe->paths[i]));
                pe->paths[i].fd = -1;
            }
        }
        memset(&S.dp[d]->hs_limit, 0, sizeof(S.dp[d]->hs_limit));
        CHECK(mpt_cookie_init(&S.dp[d]->hs_limit.jar, T0_NS) == 0);
    }
}

/* The peer a datagram will reach, whose state the next input must reset. */
static void mark_dirty(int d, const uint8_t *buf, size_t len)
{
    struct mpt_hdr h;
    int peer;
    if (mpt_hdr_read(buf, len, &h) == 0 && (peer = mpt_peer_by_session(S.dp[d], h.session)) >= 0)
        S.dirty[d][peer] = 1;
}

/* Seal buf[MPT_HDR_LEN..len) as the far end of the peer the header names;
 * returns the new length, or len unchanged if that peer has no key. */
static size_t seal_here(uint8_t *buf, size_t len)
{
    struct mpt_hdr h;
    if (mpt_hdr_read(buf, len, &h) < 0 || len + MPT_TAG_LEN > MPT_BUF_LEN + 1)
        return len;
    for (int p = 0; p < NPEERS_SERVER; p++) {
        const struct peer_conf *c = &server_conf[p];
        if (c->session != h.session || c->cipher <= MPT_CIPHER_NONE)
            continue;
        if (mpt_aead_seal(S.far[p][h.phase], h.seq, buf, MPT_HDR_LEN, buf + MPT_HDR_LEN,
                          (uint32_t)(len - MPT_HDR_LEN)) != 0)
            return len;
        S.sealed_here++;
        return len + MPT_TAG_LEN;
    }
    return len;
}

/* Bookkeeping a bug in the reorder buffer would break first. */
static void check_reorder(const struct mpt_reorder *r, int64_t now)
{
    uint32_t held = 0;
    int64_t deadline = mpt_reorder_deadline(r);
    for (uint32_t b = 0; b < r->nbuckets; b++) {
        held += r->buckets[b].nheld;
        CHECK(r->buckets[b].nheld <= r->nslots);
        CHECK(!r->buckets[b].nheld == !((r->held_buckets[b >> 6] >> (b & 63)) & 1));
    }
    CHECK(held == r->nheld && r->nheld <= r->nslots);
    /* the poll loop would spin if the tick left an expired deadline behind */
    CHECK(r->nheld == 0 ? deadline == -1 : deadline > now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t now = T0_NS;
    unsigned batch = 0;
    if (size < 1)
        return 0;
    reset(data[0]);
    S.inputs++;
    data++;
    size--;
    while (size >= 4) {
        uint8_t flags = data[0], t = data[1];
        size_t len = (size_t)data[2] << 8 | data[3], want;
        int trunc;
        unsigned i = batch++ % MPT_BATCH;   /* recvmmsg's slot */
        struct mpt_dp *dp = S.dp[flags & 1];
        uint8_t *buf = dp->rx_buf[i];
        int src = (flags >> 1) & 3, fam = flags >> 6;

        data += 4;
        size -= 4;
        want = len < size ? len : size;
        now += (int64_t)(t & 63) * 1000 << (5 * (t >> 6));
        trunc = want > sizeof(dp->rx_buf[i]);   /* recvmmsg keeps what fits */
        len = trunc ? sizeof(dp->rx_buf[i]) : want;
        memcpy(buf, data, len);
        data += want;
        size -= want;
        S.records++;

        if (flags & 0x20)
            len = seal_here(buf, len);
        dp->rx_msgs[i].msg_len = (unsigned)len;
        dp->rx_msgs[i].msg_hdr.msg_flags = trunc || (flags & 0x10) ? MSG_TRUNC : 0;
        dp->rx_msgs[i].msg_hdr.msg_namelen = S.fromlen[src];
        memcpy(&dp->rx_from[i], &S.from[src], sizeof(S.from[src]));
        memset(&dp->rx_local[i], 0, sizeof(dp->rx_local[i]));
        if (fam == 1 || fam == 2) {
            dp->rx_local[i].family = fam == 1 ? 4 : 6;
            dp->rx_local[i].addr[0] = 198;
            dp->rx_local[i].addr[15] = t;
        }
        mark_dirty(flags & 1, buf, len);
        /* what lies past the datagram was never received: reading it is a bug */
        ASAN_POISON_MEMORY_REGION(buf + len, sizeof(dp->rx_buf[i]) - len);
        /* the sender's flow hash, on hostile bytes too */
        if (len > MPT_HDR_LEN)
            CHECK(mpt_flow_bucket(buf + MPT_HDR_LEN, (uint32_t)(len - MPT_HDR_LEN),
                                  MPT_FLOW_BUCKETS) < MPT_FLOW_BUCKETS);
        receive_one(dp, (flags & 8) ? FD_B : FD_A, i, now);
        ASAN_UNPOISON_MEMORY_REGION(buf + len, sizeof(dp->rx_buf[i]) - len);

        for (int p = 0; p < MPT_MAX_PEERS; p++) {
            struct mpt_peer *pe = &dp->peers[p];
            if (!pe->used)
                continue;
            mpt_reorder_tick(pe->reorder, now);
            check_reorder(pe->reorder, now);
        }
    }
    return 0;
}
