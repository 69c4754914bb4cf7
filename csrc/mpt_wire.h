/* Wire format of the data-plane header (16 bytes, network byte order).
 *
 *   0      1      2        4        6          8                  16
 *   +------+------+--------+--------+----------+------------------+
 *   |ver|ty|ph|run|r|pth|sess| bucket | flow_seq |        seq       | payload+tag
 *   +------+------+--------+--------+----------+------------------+
 *
 * ver  (4 bits)  MPT_VERSION; a receiver drops any other version.
 * type (4 bits)  DATA: an inner IP packet; CONTROL: a message for the
 *                Python side (both sealed with the session's keys);
 *                HANDSHAKE: a key exchange message, in the clear but
 *                authenticated by the pre-shared key (mpt/handshake.py).
 * ph   (1 bit)   key phase: which of the receiver's two keys opens it
 *                (rekeying flips it while packets of the old phase are
 *                still in flight).
 * run  (2 bits)  DATA: how many of this bucket's packets right before it
 *                (at most 3) went on this same path.  Paths are FIFO, so
 *                such a packet missing when this one arrives is lost: the
 *                receiver need not wait for it (a flow on one path is
 *                never held).  The bit between run and pth is reserved.
 * pth  (4 bits)  the client's index of the path the packet travels on.
 * session        the RECEIVER's session index, chosen by it in the
 *                handshake: it picks the peer and its keys.
 * bucket         DATA: the inner flow's hash bucket (mpt_flow.c) ...
 * flow_seq       ... and that bucket's 16-bit sequence: the receiver
 *                reorders each flow on its own (mpt_reorder.c).
 * seq            64-bit packet sequence of the session and direction, +1
 *                per DATA or CONTROL packet: the AEAD nonce (never
 *                repeats under one key), the replay window's index, and
 *                the paths' progress for the reorder buffer.
 * With a cipher the whole header is the AEAD's associated data and a
 * 16-byte tag follows the payload (MPT_TAG_LEN).
 */
#ifndef MPT_WIRE_H
#define MPT_WIRE_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

#define MPT_VERSION 2
#define MPT_TYPE_DATA 0
#define MPT_TYPE_CONTROL 1
#define MPT_TYPE_HANDSHAKE 2
#define MPT_HDR_LEN 16
#define MPT_HDR_RUN_SHIFT 5      /* in byte 1 */
#define MPT_HDR_RUN_MAX 3
#define MPT_TAG_RESERVE 16

struct mpt_hdr {
    uint8_t version;
    uint8_t type;
    uint8_t phase;
    uint8_t run;
    uint8_t path;
    uint16_t session;
    uint16_t bucket;
    uint16_t flow_seq;
    uint64_t seq;
};

static inline void mpt_hdr_write(uint8_t *p, const struct mpt_hdr *h)
{
    uint16_t sess = htobe16(h->session), bucket = htobe16(h->bucket);
    uint16_t fseq = htobe16(h->flow_seq);
    uint64_t seq = htobe64(h->seq);
    p[0] = (uint8_t)((h->version << 4) | (h->type & 0x0f));
    p[1] = (uint8_t)(((h->phase & 1) << 7) | ((h->run & MPT_HDR_RUN_MAX) << MPT_HDR_RUN_SHIFT)
                     | (h->path & 0x0f));
    memcpy(p + 2, &sess, 2);
    memcpy(p + 4, &bucket, 2);
    memcpy(p + 6, &fseq, 2);
    memcpy(p + 8, &seq, 8);
}

/* Returns 0 on success, -1 when the buffer is too short for a header or
 * reserved bits are set. */
static inline int mpt_hdr_read(const uint8_t *p, size_t len, struct mpt_hdr *h)
{
    uint16_t sess, bucket, fseq;
    uint64_t seq;
    if (len < MPT_HDR_LEN || (p[1] & 0x10))
        return -1;
    h->version = p[0] >> 4;
    h->type = p[0] & 0x0f;
    h->phase = p[1] >> 7;
    h->run = (p[1] >> MPT_HDR_RUN_SHIFT) & MPT_HDR_RUN_MAX;
    h->path = p[1] & 0x0f;
    memcpy(&sess, p + 2, 2);
    memcpy(&bucket, p + 4, 2);
    memcpy(&fseq, p + 6, 2);
    memcpy(&seq, p + 8, 8);
    h->session = be16toh(sess);
    h->bucket = be16toh(bucket);
    h->flow_seq = be16toh(fseq);
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
