/* Receiver reorder buffer keyed on the 64-bit tunnel sequence.
 *
 * Packets are released to the deliver callback strictly in sequence order.
 * A missing sequence number is given up ("skipped") as soon as
 *   - every path heard from within the alive window (data or control) has
 *     already delivered something newer: paths are FIFO, so it can no
 *     longer arrive (this makes most losses cost no hold time at all), or
 *   - the first packet held behind it has waited the hold time, or
 *   - the window is full and newer packets need the room.
 * Packets older than the release point are dropped as duplicates (if that
 * sequence was delivered) or late (if it was skipped).  Memory is a fixed
 * ring of slots allocated once; nothing is allocated per packet.
 */
#ifndef MPT_REORDER_H
#define MPT_REORDER_H

#include <stdint.h>
#include "mpt_sched.h"

typedef void (*mpt_deliver_fn)(void *ctx, const uint8_t *data, uint32_t len);

enum mpt_slot_state { MPT_SLOT_EMPTY = 0, MPT_SLOT_HELD, MPT_SLOT_DELIVERED, MPT_SLOT_SKIPPED };

struct mpt_reorder_stats {
    uint64_t delivered;
    uint64_t held;          /* packets that had to wait in the buffer */
    uint64_t duplicates;
    uint64_t late;
    uint64_t skipped;       /* sequence numbers given up as lost */
    uint64_t timeouts;      /* gaps given up because the hold time ran out */
    uint64_t overflows;     /* gaps given up because the window was full */
    uint64_t too_big;
};

struct mpt_slot_meta {
    uint64_t seq;
    int64_t arrival_ns;
    uint32_t len;
    uint32_t state;
};

struct mpt_reorder {
    uint32_t nslots;            /* power of two */
    uint32_t slot_size;
    uint8_t *data;              /* nslots * slot_size */
    struct mpt_slot_meta *meta; /* nslots */
    uint64_t next;              /* next sequence to release */
    int started;
    uint32_t nheld;
    int64_t hold_ns;
    int64_t alive_ns;           /* a path silent this long no longer counts */
    uint64_t frontier[MPT_MAX_PATHS]; /* highest seq seen per path */
    int64_t last_seen[MPT_MAX_PATHS];
    uint8_t seen[MPT_MAX_PATHS];     /* heard from at all (data or control) */
    uint8_t has_data[MPT_MAX_PATHS]; /* frontier[] is valid */
    mpt_deliver_fn deliver;
    void *ctx;
    struct mpt_reorder_stats stats;
};

/* nslots is rounded up to a power of two; returns NULL on allocation failure. */
struct mpt_reorder *mpt_reorder_new(uint32_t nslots, uint32_t slot_size, int64_t hold_ns,
                                    int64_t alive_ns, mpt_deliver_fn deliver, void *ctx);
void mpt_reorder_free(struct mpt_reorder *r);
/* Forget all state (the sender restarted): held packets are discarded. */
void mpt_reorder_reset(struct mpt_reorder *r);
void mpt_reorder_set_hold(struct mpt_reorder *r, int64_t hold_ns, int64_t alive_ns);
/* A control packet arrived on `path`: it is alive even if it carries no data. */
void mpt_reorder_heard(struct mpt_reorder *r, int path, int64_t now_ns);
/* Feed one packet that arrived on path `path` at `now_ns`. */
void mpt_reorder_input(struct mpt_reorder *r, uint64_t seq, int path, const uint8_t *data,
                       uint32_t len, int64_t now_ns);
/* Release what time or the paths' progress allow; call when the deadline passes. */
void mpt_reorder_tick(struct mpt_reorder *r, int64_t now_ns);
/* Absolute time at which tick() has work to do, or -1 if nothing is held. */
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
