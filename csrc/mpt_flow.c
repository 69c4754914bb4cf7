#include <string.h>
#include "mpt_flow.h"

#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_DCCP 33
#define PROTO_SCTP 132
#define PROTO_UDPLITE 136

/* One multiply-xorshift round per 64-bit word of key. */
static inline uint64_t mix(uint64_t h, uint64_t word)
{
    h ^= word;
    h *= 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 29);
}

/* murmur3's finaliser: every key bit reaches every output bit. */
static inline uint64_t finish(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t load32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int has_ports(uint8_t proto)
{
    return proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_DCCP ||
           proto == PROTO_SCTP || proto == PROTO_UDPLITE;
}

static uint64_t hash_bytes(const uint8_t *p, uint32_t len)
{
    uint32_t n = len < 64 ? len : 64, i = 0;
    uint64_t h = mix(0x7261772062797465ull, n);
    for (; i + 8 <= n; i += 8)
        h = mix(h, load64(p + i));
    if (i < n) {
        uint64_t tail = 0;
        memcpy(&tail, p + i, n - i);
        h = mix(h, tail);
    }
    return h;
}

static uint64_t hash_v4(const uint8_t *p, uint32_t len)
{
    uint32_t ihl = (uint32_t)(p[0] & 0x0f) * 4;
    uint8_t proto = p[9];
    int fragment = (((uint32_t)p[6] << 8 | p[7]) & 0x3fff) != 0;   /* MF or offset */
    uint64_t tail = proto;
    if (!fragment && has_ports(proto) && ihl + 4 <= len)
        tail |= (uint64_t)load32(p + ihl) << 8;
    return mix(mix(0x4950763420202020ull, load64(p + 12)), tail);
}

static uint64_t hash_v6(const uint8_t *p, uint32_t len)
{
    uint8_t proto = p[6];
    uint64_t tail = proto;
    uint64_t h = 0x4950763620202020ull;
    if (has_ports(proto) && len >= 44)
        tail |= (uint64_t)load32(p + 40) << 8;
    for (int i = 8; i < 40; i += 8)
        h = mix(h, load64(p + i));
    return mix(h, tail);
}

uint32_t mpt_flow_bucket(const uint8_t *pkt, uint32_t len, uint32_t nbuckets)
{
    uint64_t h;
    if (nbuckets == 0)
        return 0;
    if (len >= 20 && pkt[0] >> 4 == 4 && (pkt[0] & 0x0f) >= 5)
        h = hash_v4(pkt, len);
    else if (len >= 40 && pkt[0] >> 4 == 6)
        h = hash_v6(pkt, len);
    else
        h = hash_bytes(pkt, len);
    return (uint32_t)(finish(h) >> 32) % nbuckets;
}
