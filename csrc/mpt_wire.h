/* Wire format of the data-plane header (16 bytes, network byte order).
 *
 *   0      1      2      4          8                 16
 *   +------+------+------+----------+-----------------+
 *   |ver|ty| path | sess | path_seq |   tunnel seq    |  payload ...
 *   +------+------+------+----------+-----------------+
 *
 * ver  (4 bits)  MPT_VERSION; a receiver drops any other version.
 * type (4 bits)  MPT_TYPE_DATA: an inner IP packet follows;
 *                MPT_TYPE_CONTROL: a control message for the Python side.
 * path           the client's index of the path the packet travels on.
 * sess           the sender's session epoch, random per start: a change
 *                tells the receiver to restart its reorder state.
 * path_seq       per-path sequence of data packets (per-path loss).
 * seq            64-bit tunnel sequence, compared wrap-safely; the
 *                future AEAD nonce, so it must never repeat in a session.
 * A later version appends a 16-byte authentication tag: the default MTU
 * already reserves room for it (MPT_TAG_RESERVE).
 */
#ifndef MPT_WIRE_H
#define MPT_WIRE_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

#define MPT_VERSION 1
#define MPT_TYPE_DATA 0
#define MPT_TYPE_CONTROL 1
#define MPT_HDR_LEN 16
#define MPT_TAG_RESERVE 16

struct mpt_hdr {
    uint8_t version;
    uint8_t type;
    uint8_t path;
    uint16_t session;
    uint32_t path_seq;
    uint64_t seq;
};

static inline void mpt_hdr_write(uint8_t *p, const struct mpt_hdr *h)
{
    uint16_t sess = htobe16(h->session);
    uint32_t pseq = htobe32(h->path_seq);
    uint64_t seq = htobe64(h->seq);
    p[0] = (uint8_t)((h->version << 4) | (h->type & 0x0f));
    p[1] = h->path;
    memcpy(p + 2, &sess, 2);
    memcpy(p + 4, &pseq, 4);
    memcpy(p + 8, &seq, 8);
}

/* Returns 0 on success, -1 when the buffer is too short for a header. */
static inline int mpt_hdr_read(const uint8_t *p, size_t len, struct mpt_hdr *h)
{
    uint16_t sess;
    uint32_t pseq;
    uint64_t seq;
    if (len < MPT_HDR_LEN)
        return -1;
    h->version = p[0] >> 4;
    h->type = p[0] & 0x0f;
    h->path = p[1];
    memcpy(&sess, p + 2, 2);
    memcpy(&pseq, p + 4, 4);
    memcpy(&seq, p + 8, 8);
    h->session = be16toh(sess);
    h->path_seq = be32toh(pseq);
    h->seq = be64toh(seq);
    return 0;
}

/* Wrap-safe sequence order: a is before b. */
static inline int mpt_seq_before(uint64_t a, uint64_t b)
{
    return (int64_t)(a - b) < 0;
}

/* A decapsulated payload may reach the TUN device only if it is one whole
 * IPv4 or IPv6 packet whose own length field matches what we received. */
static inline int mpt_inner_ok(const uint8_t *p, size_t len)
{
    if (len < 1)
        return 0;
    switch (p[0] >> 4) {
    case 4: {
        size_t ihl, total;
        if (len < 20)
            return 0;
        ihl = (size_t)(p[0] & 0x0f) * 4;
        total = ((size_t)p[2] << 8) | p[3];
        return ihl >= 20 && total == len && ihl <= total;
    }
    case 6: {
        size_t plen;
        if (len < 40)
            return 0;
        plen = ((size_t)p[4] << 8) | p[5];
        return plen + 40 == len;
    }
    default:
        return 0;
    }
}

#endif
