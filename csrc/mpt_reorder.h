/* Receiver reorder buffer, per flow.
 *
 * Every data packet carries the 64-bit tunnel sequence `seq` (+1 per data
 * packet sent on any path), the flow `bucket` (the inner 5-tuple hashed by
 * the sender, mpt_flow.h) and `flow_seq`, a 16-bit counter of the packets
 * sent in that bucket.  Each bucket releases its packets to the deliver
 * callback in flow_seq order, on its own: a gap in one bucket never holds
 * back another, and a flow whose packets arrive in order is never held.
 *
 * A gap in a bucket is given up ("skipped") as soon as
 *   - the packet after it says (its run) that the missing ones went before
 *     it on its FIFO path: they are lost (a flow that uses one path only is
 *     never held), or
 *   - every path heard from within the alive window (data or control) has
 *     delivered a tunnel seq at or past that of the first packet held
 *     behind the gap: paths are FIFO and the missing packets were sent
 *     before it, so they can no longer arrive (most losses cost no hold
 *     time at all), or
 *   - that held packet has waited the hold time, or
 *   - its storage is needed (overflow).
 * A path's frontier is the seq of the latest data packet on it (on a FIFO
 * path the latest is the highest; taking the latest rather than the max
 * also means one forged far seq cannot pin a path's frontier).
 *
 * Storage is fixed and allocated once: a pool of nslots packet slots
 * shared by all buckets, slot = seq & (nslots - 1), and per bucket a ring
 * of nslots 16-bit slot indices (valid where the bucket's bitmap says a
 * packet is held), so a bucket's window is nslots flow sequences.  4096
 * slots of 2048 bytes and 64 buckets take about 9.1 MB (8 MiB of it packet data).
 *
 * Classifying a packet by d = flow_seq - bucket's next (mod 2^16):
 *   - d < nslots: in the window: delivered at once (d == 0, no copy), held,
 *     or a duplicate of a held packet;
 *   - otherwise it is either far behind or far ahead, and the tunnel seq
 *     tells which: at or before the seq of the bucket's last released
 *     packet it is a duplicate (that seq was delivered) or late; after it,
 *     the bucket jumps: everything held is released in order, the rest of
 *     the distance is skipped, and this packet is delivered at once.  This
 *     covers a run of losses longer than the window, a receiver that
 *     restarted while the sender did not, and a garbage flow_seq (which
 *     costs one spurious jump, never a wedged bucket).
 * After any release a bucket's last released packet was delivered, so all
 * packets of the bucket behind its release point have a seq at or before
 * that packet's: the test above is exact for a well-behaved sender.
 */
#ifndef MPT_REORDER_H
#define MPT_REORDER_H

#include <stdint.h>
#include "mpt_sched.h"

#define MPT_FLOW_BUCKETS 64
#define MPT_REORDER_MAX_SLOTS 32768    /* a bucket's window stays within half the flow_seq space */
#define MPT_REORDER_MAX_BUCKETS 4096

typedef void (*mpt_deliver_fn)(void *ctx, const uint8_t *data, uint32_t len);

enum mpt_slot_state { MPT_SLOT_EMPTY = 0, MPT_SLOT_HELD, MPT_SLOT_DELIVERED };

struct mpt_reorder_stats {
    uint64_t delivered;
    uint64_t held;          /* packets that had to wait in the buffer */
    uint64_t duplicates;
    uint64_t late;
    uint64_t skipped;       /* flow sequence numbers given up as lost */
    uint64_t timeouts;      /* gaps given up because the hold time ran out */
    uint64_t overflows;     /* gaps given up because storage or the window ran out */
    uint64_t too_big;
};

/* One slot of the shared pool, indexed by seq & (nslots - 1). */
struct mpt_slot_meta {
    uint64_t seq;
    int64_t arrival_ns;
    uint32_t len;
    uint32_t bucket;
    uint16_t flow_seq;
    uint8_t run;            /* this many packets right before it in its bucket went on its path */
    uint8_t state;          /* enum mpt_slot_state; DELIVERED lets duplicates be told from late */
};

struct mpt_reorder_bucket {
    uint64_t last_seq;      /* tunnel seq of the last packet released (if has_last) */
    uint32_t nheld;
    uint16_t next;          /* flow_seq to release next */
    uint16_t head;          /* flow_seq of the first held packet (if nheld) */
    uint8_t has_last;
};

struct mpt_reorder {
    uint32_t nslots;            /* power of two */
    uint32_t nbuckets;
    uint32_t slot_size;
    uint32_t bitmap_words;      /* per bucket: nslots bits */
    uint8_t *data;              /* nslots * slot_size */
    struct mpt_slot_meta *meta; /* nslots */
    uint16_t *ring;             /* nbuckets * nslots: slot of each held flow_seq */
    uint64_t *held_bits;        /* nbuckets * bitmap_words */
    uint64_t *held_buckets;     /* one bit per bucket that holds something */
    struct mpt_reorder_bucket *buckets;
    uint32_t nheld;             /* over all buckets */
    int64_t hold_ns;
    int64_t alive_ns;           /* a path silent this long no longer counts */
    uint64_t frontier[MPT_MAX_PATHS]; /* seq of the latest data packet per path */
    int64_t last_seen[MPT_MAX_PATHS];
    uint8_t seen[MPT_MAX_PATHS];      /* heard from at all (data or control) */
    uint8_t has_frontier[MPT_MAX_PATHS];
    mpt_deliver_fn deliver;
    void *ctx;
    struct mpt_reorder_stats stats;
};

/* nslots is rounded up to a power of two (at most MPT_REORDER_MAX_SLOTS);
 * nbuckets is 1..MPT_REORDER_MAX_BUCKETS.  Returns NULL on bad sizes or
 * allocation failure. */
struct mpt_reorder *mpt_reorder_new(uint32_t nslots, uint32_t nbuckets, uint32_t slot_size,
                                    int64_t hold_ns, int64_t alive_ns, mpt_deliver_fn deliver,
                                    void *ctx);
void mpt_reorder_free(struct mpt_reorder *r);
/* A fresh session (the sender restarted): held packets are discarded, every
 * bucket expects flow_seq 0 next, paths are forgotten.  Stats are kept. */
void mpt_reorder_reset(struct mpt_reorder *r);
void mpt_reorder_set_hold(struct mpt_reorder *r, int64_t hold_ns, int64_t alive_ns);
/* A control packet arrived on `path`: it is alive even if it carries no data. */
void mpt_reorder_heard(struct mpt_reorder *r, int path, int64_t now_ns);
/* Optional: a control packet on `path`, sent behind all of the peer's data
 * on that path, reported the peer's next tunnel seq `next_seq`: everything
 * it sent there has a smaller seq and has arrived or is lost.  Lets a path
 * that carries only probes stop blocking the loss proof. */
void mpt_reorder_heard_upto(struct mpt_reorder *r, int path, uint64_t next_seq, int64_t now_ns);
/* Feed one data packet that arrived on `path` at `now_ns`.  A bucket
 * >= nbuckets is taken modulo nbuckets.  `run`: the sender says that many
 * of the bucket's packets right before this one went on this path too
 * (mpt_wire.h). */
void mpt_reorder_input(struct mpt_reorder *r, uint64_t seq, uint32_t bucket, uint16_t flow_seq,
                       int path, unsigned run, const uint8_t *data, uint32_t len,
                       int64_t now_ns);
/* Release what time or the paths' progress allow, in every bucket; call
 * when the deadline passes. */
void mpt_reorder_tick(struct mpt_reorder *r, int64_t now_ns);
/* Absolute time of the earliest hold expiry over all buckets, or -1 if
 * nothing is held.  Costs one look per bucket that holds something. */
int64_t mpt_reorder_deadline(const struct mpt_reorder *r);

/* A deliver callback for tests: records the first 8 payload bytes
 * (big-endian) of each delivered packet. */
struct mpt_sink {
    uint64_t *ids;
    uint32_t n;
    uint32_t cap;
};
void mpt_sink_record(void *ctx, const uint8_t *data, uint32_t len);

#endif
