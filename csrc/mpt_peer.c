/* Per-peer pieces of the datapath: which peer an inner packet belongs to
 * (its allowed prefixes), which peer a session index names, and sealing a
 * packet with the peer's current key. */
#define _GNU_SOURCE /* struct mmsghdr in mpt_dp_internal.h */
#include <string.h>
#include "mpt_dp_internal.h"

/* The inner packet's source (which == 0) or destination address; returns
 * the family (4/6) or 0 if the packet is too short to have one. */
static int inner_addr(const uint8_t *pkt, uint32_t len, int which, const uint8_t **addr)
{
    if (len >= 20 && pkt[0] >> 4 == 4) {
        *addr = pkt + (which ? 16 : 12);
        return 4;
    }
    if (len >= 40 && pkt[0] >> 4 == 6) {
        *addr = pkt + (which ? 24 : 8);
        return 6;
    }
    return 0;
}

static int prefix_match(const struct mpt_prefix *p, int family, const uint8_t *addr)
{
    uint32_t full = p->len / 8, rest = p->len % 8;
    if ((int)p->family != family || p->len > (family == 4 ? 32u : 128u))
        return 0;
    if (memcmp(p->addr, addr, full) != 0)
        return 0;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((p->addr[full] & mask) != (addr[full] & mask))
            return 0;
    }
    return 1;
}

/* Longest matching prefix length of the peer for addr, -1 if none (-2: the
 * peer takes any address, which loses to every explicit prefix). */
static int best_match(const struct mpt_peer *p, int family, const uint8_t *addr)
{
    int best = -1;
    if (p->nallowed == 0)
        return -2;
    for (uint32_t i = 0; i < p->nallowed; i++)
        if (prefix_match(&p->allowed[i], family, addr) && (int)p->allowed[i].len > best)
            best = (int)p->allowed[i].len;
    return best;
}

int mpt_peer_for_inner_dst(struct mpt_dp *dp, const uint8_t *pkt, uint32_t len)
{
    const uint8_t *addr;
    int family = inner_addr(pkt, len, 1, &addr), best = -1, best_len = -1;
    if (!family)
        return -1;
    for (int i = 0; i < MPT_MAX_PEERS; i++) {
        int m;
        if (!dp->peers[i].used)
            continue;
        m = best_match(&dp->peers[i], family, addr);
        if (m == -1)
            continue;
        if (best < 0 || m > best_len) {
            best = i;
            best_len = m;
        }
    }
    return best;
}

int mpt_peer_allows_src(const struct mpt_peer *p, const uint8_t *pkt, uint32_t len)
{
    const uint8_t *addr;
    int family = inner_addr(pkt, len, 0, &addr);
    return family && best_match(p, family, addr) != -1;
}

int mpt_peer_by_session(struct mpt_dp *dp, uint16_t local_index)
{
    if (local_index == 0)
        return -1;
    for (int i = 0; i < MPT_MAX_PEERS; i++)
        if (dp->peers[i].used && dp->peers[i].keyed && dp->peers[i].local_index == local_index)
            return i;
    return -1;
}

uint32_t mpt_peer_seal(struct mpt_peer *p, uint8_t *buf, uint32_t len, uint8_t type, int idx,
                       uint16_t bucket, uint16_t flow_seq, unsigned run)
{
    struct mpt_hdr h = {
        .version = MPT_VERSION,
        .type = type,
        .phase = p->tx_phase,
        .run = (uint8_t)(run > MPT_HDR_RUN_MAX ? MPT_HDR_RUN_MAX : run),
        .path = (uint8_t)idx,
        .session = p->remote_index,
        .bucket = bucket,
        .flow_seq = flow_seq,
        .seq = p->tx_seq++,
    };
    struct mpt_aead *a = p->tx_aead[p->tx_phase];
    mpt_hdr_write(buf, &h);
    if (mpt_aead_seal(a, h.seq, buf, MPT_HDR_LEN, buf + MPT_HDR_LEN, len) != 0)
        return 0;
    return MPT_HDR_LEN + len + (mpt_aead_cipher(a) == MPT_CIPHER_NONE ? 0 : MPT_TAG_LEN);
}

static uint32_t outer_overhead(const struct sockaddr_storage *addr, socklen_t len)
{
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)addr;
    if (len >= sizeof(*a6) && addr->ss_family == AF_INET6 &&
        !IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
        return 40 + 8;
    return 20 + 8;
}

void mpt_path_set_peer(struct mpt_peer *pe, int idx, const void *addr, socklen_t len)
{
    struct mpt_path *p = &pe->paths[idx];
    memcpy(&p->peer, addr, len);
    p->peerlen = len;
    mpt_sched_set_overhead(&pe->sched, idx, outer_overhead(&p->peer, len));
}
