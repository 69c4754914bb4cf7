/* Handshake cookies: see mpt_cookie.h. */
#include "mpt_cookie.h"

#include <string.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>

#define ROTATE_NS ((int64_t)MPT_COOKIE_ROTATE_S * 1000000000)
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

static void sipround(uint64_t v[4])
{
    v[0] += v[1]; v[1] = ROTL(v[1], 13); v[1] ^= v[0]; v[0] = ROTL(v[0], 32);
    v[2] += v[3]; v[3] = ROTL(v[3], 16); v[3] ^= v[2];
    v[0] += v[3]; v[3] = ROTL(v[3], 21); v[3] ^= v[0];
    v[2] += v[1]; v[1] = ROTL(v[1], 17); v[1] ^= v[2]; v[2] = ROTL(v[2], 32);
}

static void absorb(uint64_t v[4], uint64_t m)
{
    v[3] ^= m;
    sipround(v);
    sipround(v);
    v[0] ^= m;
}

static uint64_t squeeze(uint64_t v[4], uint64_t mark)
{
    v[mark == 0xdd ? 1 : 2] ^= mark;
    for (int i = 0; i < 4; i++)
        sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

void mpt_siphash(const uint8_t key[16], const uint8_t *in, size_t len, uint8_t *out,
                 size_t out_len)
{
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
                     k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL};
    uint8_t tail[8] = {0};
    size_t full = len & ~(size_t)7;
    int wide = out_len == 16;
    if (wide)
        v[1] ^= 0xee;
    for (size_t i = 0; i < full; i += 8)
        absorb(v, le64(in + i));
    memcpy(tail, in + full, len - full);
    tail[7] = (uint8_t)len;
    absorb(v, le64(tail));
    put_le64(out, squeeze(v, wide ? 0xee : 0xff));
    if (wide)
        put_le64(out + 8, squeeze(v, 0xdd));
}

/* family, port and address in a fixed layout; 0 if not IPv4/IPv6 */
static size_t canonical(const void *addr, uint32_t addrlen, uint8_t buf[19])
{
    sa_family_t family;
    if (addrlen < sizeof(family))
        return 0;
    memcpy(&family, addr, sizeof(family));
    if (family == AF_INET && addrlen >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof(a));
        buf[0] = 4;
        memcpy(buf + 1, &a.sin_port, 2);
        memcpy(buf + 3, &a.sin_addr, 4);
        return 7;
    }
    if (family == AF_INET6 && addrlen >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof(a));
        buf[0] = 6;
        memcpy(buf + 1, &a.sin6_port, 2);
        memcpy(buf + 3, &a.sin6_addr, 16);
        return 19;
    }
    return 0;
}

static int draw(uint8_t secret[16], unsigned flags)
{
    uint8_t fresh[16];
    if (getrandom(fresh, sizeof(fresh), flags) != (ssize_t)sizeof(fresh))
        return -1;
    memcpy(secret, fresh, sizeof(fresh));
    return 0;
}

int mpt_cookie_init(struct mpt_cookie_jar *j, int64_t now_ns)
{
    memset(j, 0, sizeof(*j));
    if (draw(j->secret[0], 0) < 0 || draw(j->secret[1], 0) < 0 || draw(j->source_key, 0) < 0)
        return -1;
    j->keyed = 1;
    j->rotated_ns = now_ns;
    return 0;
}

/* Rotations run in the datapath thread: never wait for randomness there.
 * Should none come, the old secret stays (still secret, only older). */
static void rotate(struct mpt_cookie_jar *j, int64_t now)
{
    if (now - j->rotated_ns >= 2 * ROTATE_NS) {
        draw(j->secret[0], GRND_NONBLOCK);   /* the previous secret is too old as well */
        draw(j->secret[1], GRND_NONBLOCK);
        j->rotated_ns = now;
    } else if (now - j->rotated_ns >= ROTATE_NS) {
        j->current ^= 1;
        draw(j->secret[j->current], GRND_NONBLOCK);
        j->rotated_ns = now;
    }
}

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

uint32_t mpt_cookie_source_slot(const struct mpt_cookie_jar *j, const void *addr,
                                uint32_t addrlen, uint32_t nslots)
{
    uint8_t buf[19], h[8];
    size_t n = canonical(addr, addrlen, buf);
    if (n == 0 || nslots == 0)
        return 0;
    /* family and address, without the port; IPv6: the /64, but an
     * IPv4-mapped address (a dual-stack socket) as the IPv4 address */
    if (n == 19 && memcmp(buf + 3, v4_mapped, sizeof(v4_mapped)) == 0) {
        buf[0] = 4;
        memmove(buf + 3, buf + 15, 4);
        n = 7;
    }
    buf[2] = buf[0];
    mpt_siphash(j->source_key, buf + 2, n == 7 ? 5 : 9, h, sizeof(h));
    return (uint32_t)(((uint64_t)h[0] | (uint64_t)h[1] << 8 | (uint64_t)h[2] << 16
                       | (uint64_t)h[3] << 24) % nslots);
}

int mpt_cookie_make(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                    int64_t now_ns, uint8_t out[MPT_COOKIE_LEN])
{
    uint8_t buf[19];
    size_t n = canonical(addr, addrlen, buf);
    if (n == 0 || !j->keyed)
        return -1;
    rotate(j, now_ns);
    mpt_siphash(j->secret[j->current], buf, n, out, MPT_COOKIE_LEN);
    return 0;
}

int mpt_cookie_check(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                     int64_t now_ns, const uint8_t cookie[MPT_COOKIE_LEN])
{
    uint8_t buf[19], want[MPT_COOKIE_LEN];
    size_t n = canonical(addr, addrlen, buf);
    int ok = 0;
    if (n == 0 || !j->keyed)
        return 0;
    rotate(j, now_ns);
    for (int s = 0; s < 2; s++) {
        uint8_t diff = 0;
        mpt_siphash(j->secret[s], buf, n, want, sizeof(want));
        for (int i = 0; i < MPT_COOKIE_LEN; i++)   /* no early exit: no timing hint */
            diff |= (uint8_t)(want[i] ^ cookie[i]);
        ok |= diff == 0;
    }
    return ok;
}

static const uint8_t init_head[6] = {'M', 'P', 'T', 'H', 1, 1};
static const uint8_t reply_head[6] = {'M', 'P', 'T', 'H', 1, 3};

int mpt_hs_kind(const uint8_t *body, size_t len)
{
    if (len == MPT_HS_COOKIE_REPLY_LEN && memcmp(body, reply_head, sizeof(reply_head)) == 0)
        return MPT_HS_COOKIE_REPLY;
    if (len != MPT_HS_INIT_LEN && len != MPT_HS_INIT_LEN + MPT_COOKIE_LEN)
        return MPT_HS_NOT_INIT;
    if (memcmp(body, init_head, sizeof(init_head)) != 0)
        return MPT_HS_NOT_INIT;
    return len == MPT_HS_INIT_LEN ? MPT_HS_INIT : MPT_HS_INIT_COOKIE;
}

int mpt_cookie_reply(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                     int64_t now_ns, const uint8_t *body, size_t len,
                     uint8_t out[MPT_HS_COOKIE_REPLY_LEN])
{
    int kind = mpt_hs_kind(body, len);
    if (kind != MPT_HS_INIT && kind != MPT_HS_INIT_COOKIE)
        return -1;
    memcpy(out, reply_head, sizeof(reply_head));
    memcpy(out + sizeof(reply_head), body + MPT_HS_NONCE_OFFSET, MPT_HS_NONCE_LEN);
    return mpt_cookie_make(j, addr, addrlen, now_ns,
                           out + sizeof(reply_head) + MPT_HS_NONCE_LEN);
}
