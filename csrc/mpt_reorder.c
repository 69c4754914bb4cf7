#include <stdlib.h>
#include <string.h>
#include <endian.h>
#include "mpt_reorder.h"
#include "mpt_wire.h"

/* Wrap-safe tunnel sequence order: a is before b. */
static inline int seq_before(uint64_t a, uint64_t b)
{
    return (int64_t)(a - b) < 0;
}

static inline uint32_t slot_of(const struct mpt_reorder *r, uint64_t seq)
{
    return (uint32_t)(seq & (r->nslots - 1));
}

/* Position of a flow_seq in its bucket's ring (nslots divides 2^16). */
static inline uint32_t pos_of(const struct mpt_reorder *r, uint16_t flow_seq)
{
    return flow_seq & (r->nslots - 1);
}

static inline uint64_t *bits_of(const struct mpt_reorder *r, uint32_t b)
{
    return r->held_bits + (size_t)b * r->bitmap_words;
}

static inline uint16_t *ring_of(const struct mpt_reorder *r, uint32_t b)
{
    return r->ring + (size_t)b * r->nslots;
}

static inline int is_held(const struct mpt_reorder *r, uint32_t b, uint32_t pos)
{
    return (int)((bits_of(r, b)[pos >> 6] >> (pos & 63)) & 1);
}

struct mpt_reorder *mpt_reorder_new(uint32_t nslots, uint32_t nbuckets, uint32_t slot_size,
                                    int64_t hold_ns, int64_t alive_ns, mpt_deliver_fn deliver,
                                    void *ctx)
{
    struct mpt_reorder *r;
    uint32_t n = 1;
    if (nslots == 0 || nslots > MPT_REORDER_MAX_SLOTS || nbuckets == 0 ||
        nbuckets > MPT_REORDER_MAX_BUCKETS || slot_size == 0)
        return NULL;
    while (n < nslots)
        n <<= 1;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->nslots = n;
    r->nbuckets = nbuckets;
    r->slot_size = slot_size;
    r->bitmap_words = (n + 63) / 64;
    r->data = malloc((size_t)n * slot_size);
    r->meta = calloc(n, sizeof(*r->meta));
    r->ring = calloc((size_t)nbuckets * n, sizeof(*r->ring));
    r->held_bits = calloc((size_t)nbuckets * r->bitmap_words, sizeof(*r->held_bits));
    r->held_buckets = calloc((nbuckets + 63) / 64, sizeof(*r->held_buckets));
    r->buckets = calloc(nbuckets, sizeof(*r->buckets));
    if (!r->data || !r->meta || !r->ring || !r->held_bits || !r->held_buckets || !r->buckets) {
        mpt_reorder_free(r);
        return NULL;
    }
    r->hold_ns = hold_ns;
    r->alive_ns = alive_ns;
    r->deliver = deliver;
    r->ctx = ctx;
    return r;
}

void mpt_reorder_free(struct mpt_reorder *r)
{
    if (!r)
        return;
    free(r->data);
    free(r->meta);
    free(r->ring);
    free(r->held_bits);
    free(r->held_buckets);
    free(r->buckets);
    free(r);
}

void mpt_reorder_reset(struct mpt_reorder *r)
{
    memset(r->meta, 0, (size_t)r->nslots * sizeof(*r->meta));
    memset(r->held_bits, 0, (size_t)r->nbuckets * r->bitmap_words * sizeof(*r->held_bits));
    memset(r->held_buckets, 0, (size_t)(r->nbuckets + 63) / 64 * sizeof(*r->held_buckets));
    memset(r->buckets, 0, (size_t)r->nbuckets * sizeof(*r->buckets));
    r->nheld = 0;
    memset(r->seen, 0, sizeof(r->seen));
    memset(r->has_frontier, 0, sizeof(r->has_frontier));
}

void mpt_reorder_set_hold(struct mpt_reorder *r, int64_t hold_ns, int64_t alive_ns)
{
    r->hold_ns = hold_ns;
    r->alive_ns = alive_ns;
}

/* Distance from flow_seq `from` to the first held position of bucket b,
 * a word of the bitmap at a time; nslots if nothing is held. */
static uint32_t find_held(const struct mpt_reorder *r, uint32_t b, uint16_t from)
{
    const uint64_t *bits = bits_of(r, b);
    uint32_t pos = pos_of(r, from), d = 0;
    while (d < r->nslots) {
        uint32_t off = pos & 63;
        uint64_t word = bits[pos >> 6] >> off;
        /* to the end of this word, or of the ring when it is shorter */
        uint32_t span = r->nslots < 64 ? r->nslots - off : 64 - off;
        if (word)
            return d + (uint32_t)__builtin_ctzll(word);
        d += span;
        pos = (pos + span) & (r->nslots - 1);
    }
    return r->nslots;
}

static void mark_bucket(struct mpt_reorder *r, uint32_t b, int held)
{
    uint64_t bit = 1ull << (b & 63);
    if (held)
        r->held_buckets[b >> 6] |= bit;
    else
        r->held_buckets[b >> 6] &= ~bit;
}

/* After releases: find the bucket's new first held packet. */
static void update_head(struct mpt_reorder *r, uint32_t b)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    uint32_t d;
    if (B->nheld == 0) {
        mark_bucket(r, b, 0);
        return;
    }
    d = find_held(r, b, B->next);
    B->head = (uint16_t)(B->next + d);
}

/* Hand the held packet at ring position pos of bucket b to the callback. */
static void deliver_held(struct mpt_reorder *r, uint32_t b, uint32_t pos)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    uint32_t s = ring_of(r, b)[pos];
    struct mpt_slot_meta *m = &r->meta[s];
    bits_of(r, b)[pos >> 6] &= ~(1ull << (pos & 63));
    B->nheld--;
    r->nheld--;
    m->state = MPT_SLOT_DELIVERED;
    B->last_seq = m->seq;
    B->has_last = 1;
    r->stats.delivered++;
    r->deliver(r->ctx, r->data + (size_t)s * r->slot_size, m->len);
}

/* `next` is missing: is there a packet held within a run's reach after it
 * whose run says next went before it on its FIFO path (so next is lost)? */
static int next_lost(const struct mpt_reorder *r, uint32_t b)
{
    const struct mpt_reorder_bucket *B = &r->buckets[b];
    for (unsigned k = 1; k <= MPT_HDR_RUN_MAX && k < r->nslots; k++) {
        uint32_t pos = pos_of(r, (uint16_t)(B->next + k));
        if (is_held(r, b, pos) && r->meta[ring_of(r, b)[pos]].run >= k)
            return 1;
    }
    return 0;
}

static void release_in_order(struct mpt_reorder *r, uint32_t b)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    while (B->nheld > 0) {
        if (is_held(r, b, pos_of(r, B->next))) {
            deliver_held(r, b, pos_of(r, B->next));
        } else if (next_lost(r, b)) {
            r->stats.skipped++;
        } else {
            break;
        }
        B->next++;
    }
}

/* Give up the gap before the bucket's first held packet, then release
 * from there in order (only called while the bucket holds something). */
static void release_through_head(struct mpt_reorder *r, uint32_t b)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    r->stats.skipped += (uint16_t)(B->head - B->next);
    B->next = B->head;
    release_in_order(r, b);
    update_head(r, b);
}

/* Minimum frontier over the live paths: every seq before it that has not
 * arrived never will.  Returns 0 when nothing can be concluded: no live
 * path, or a live path that brought no data yet. */
static int proven_frontier(const struct mpt_reorder *r, int64_t now_ns, uint64_t *bound)
{
    int any = 0;
    for (int p = 0; p < MPT_MAX_PATHS; p++) {
        if (!r->seen[p] || now_ns - r->last_seen[p] > r->alive_ns)
            continue;
        if (!r->has_frontier[p])
            return 0;
        if (!any || seq_before(r->frontier[p], *bound))
            *bound = r->frontier[p];
        any = 1;
    }
    return any;
}

static void service_bucket(struct mpt_reorder *r, uint32_t b, int64_t now_ns, int proven,
                           uint64_t bound)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    while (B->nheld > 0) {
        const struct mpt_slot_meta *m = &r->meta[ring_of(r, b)[pos_of(r, B->head)]];
        /* The missing packets were sent before m; lost for sure once every
         * live (FIFO) path has delivered m's seq or a later one. */
        if (!proven || seq_before(bound, m->seq)) {
            if (now_ns - m->arrival_ns < r->hold_ns)
                return;
            r->stats.timeouts++;
        }
        release_through_head(r, b);
    }
}

/* Release in every bucket what the paths' progress or time allow. */
static void service_all(struct mpt_reorder *r, int64_t now_ns)
{
    uint64_t bound = 0;
    int proven = proven_frontier(r, now_ns, &bound);
    for (uint32_t w = 0; w < (r->nbuckets + 63) / 64; w++) {
        uint64_t bits = r->held_buckets[w];
        while (bits) {
            service_bucket(r, w * 64 + (uint32_t)__builtin_ctzll(bits), now_ns, proven, bound);
            bits &= bits - 1;
        }
    }
}

void mpt_reorder_tick(struct mpt_reorder *r, int64_t now_ns)
{
    if (r->nheld > 0)
        service_all(r, now_ns);
}

int64_t mpt_reorder_deadline(const struct mpt_reorder *r)
{
    int64_t best = -1;
    if (r->nheld == 0)
        return -1;
    for (uint32_t w = 0; w < (r->nbuckets + 63) / 64; w++) {
        uint64_t bits = r->held_buckets[w];
        while (bits) {
            uint32_t b = w * 64 + (uint32_t)__builtin_ctzll(bits);
            const struct mpt_reorder_bucket *B = &r->buckets[b];
            int64_t t = r->meta[ring_of(r, b)[pos_of(r, B->head)]].arrival_ns + r->hold_ns;
            if (best < 0 || t < best)
                best = t;
            bits &= bits - 1;
        }
    }
    return best;
}

static void mark_alive(struct mpt_reorder *r, int path, int64_t now_ns)
{
    r->seen[path] = 1;
    r->last_seen[path] = now_ns;
}

void mpt_reorder_heard(struct mpt_reorder *r, int path, int64_t now_ns)
{
    if (path < 0 || path >= MPT_MAX_PATHS)
        return;
    mark_alive(r, path, now_ns);
}

void mpt_reorder_heard_upto(struct mpt_reorder *r, int path, uint64_t next_seq, int64_t now_ns)
{
    if (path < 0 || path >= MPT_MAX_PATHS)
        return;
    mark_alive(r, path, now_ns);
    /* Everything before next_seq is accounted for, which is what a data
     * frontier at next_seq says too (the data packet itself arrived). */
    if (!r->has_frontier[path] || seq_before(r->frontier[path], next_seq)) {
        r->frontier[path] = next_seq;
        r->has_frontier[path] = 1;
    }
    mpt_reorder_tick(r, now_ns);
}

/* A packet behind the bucket's release point: a duplicate if its seq was
 * delivered (and its slot not reused since), else late. */
static void count_stale(struct mpt_reorder *r, uint64_t seq)
{
    const struct mpt_slot_meta *m = &r->meta[slot_of(r, seq)];
    if (m->state != MPT_SLOT_EMPTY && m->seq == seq)
        r->stats.duplicates++;
    else
        r->stats.late++;
}

/* The packet is the bucket's next: straight from the caller's buffer. */
static void deliver_now(struct mpt_reorder *r, uint32_t b, uint64_t seq, const uint8_t *data,
                        uint32_t len)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    struct mpt_slot_meta *m = &r->meta[slot_of(r, seq)];
    if (m->state != MPT_SLOT_HELD) {   /* remembered for telling duplicates */
        m->seq = seq;
        m->state = MPT_SLOT_DELIVERED;
    }
    B->next++;
    B->last_seq = seq;
    B->has_last = 1;
    r->stats.delivered++;
    r->deliver(r->ctx, data, len);
    if (B->nheld > 0) {
        release_in_order(r, b);
        update_head(r, b);
    }
}

/* Slot s is needed but holds another packet: release that packet's bucket
 * up to and including it. */
static void evict(struct mpt_reorder *r, uint32_t s)
{
    struct mpt_slot_meta *m = &r->meta[s];
    uint32_t b = m->bucket;
    r->stats.overflows++;
    while (m->state == MPT_SLOT_HELD && r->buckets[b].nheld > 0)
        release_through_head(r, b);
}

static void store(struct mpt_reorder *r, uint32_t b, uint64_t seq, uint16_t flow_seq,
                  unsigned run, const uint8_t *data, uint32_t len, int64_t now_ns)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    uint32_t s = slot_of(r, seq), pos = pos_of(r, flow_seq);
    struct mpt_slot_meta *m = &r->meta[s];
    memcpy(r->data + (size_t)s * r->slot_size, data, len);
    m->seq = seq;
    m->arrival_ns = now_ns;
    m->len = len;
    m->bucket = b;
    m->flow_seq = flow_seq;
    m->run = (uint8_t)run;
    m->state = MPT_SLOT_HELD;
    ring_of(r, b)[pos] = (uint16_t)s;
    bits_of(r, b)[pos >> 6] |= 1ull << (pos & 63);
    if (B->nheld == 0 || (uint16_t)(flow_seq - B->next) < (uint16_t)(B->head - B->next))
        B->head = flow_seq;
    B->nheld++;
    r->nheld++;
    r->stats.held++;
    mark_bucket(r, b, 1);
}

/* Deliver, hold or drop the packet in its bucket. */
static void place(struct mpt_reorder *r, uint32_t b, uint64_t seq, uint16_t flow_seq,
                  unsigned run, const uint8_t *data, uint32_t len, int64_t now_ns)
{
    struct mpt_reorder_bucket *B = &r->buckets[b];
    uint16_t d = (uint16_t)(flow_seq - B->next);
    struct mpt_slot_meta *m;

    if (d >= r->nslots) {
        if (B->has_last && !seq_before(B->last_seq, seq)) {
            count_stale(r, seq);
            return;
        }
        /* Far ahead: release everything held in order, give up the rest of
         * the distance, deliver this one. */
        r->stats.overflows++;
        while (B->nheld > 0)
            release_through_head(r, b);
        r->stats.skipped += (uint16_t)(flow_seq - B->next);
        B->next = flow_seq;
        d = 0;
    }
    if (d > 0 && d <= run && B->nheld == 0) {
        /* the d packets missing went before this one on its FIFO path */
        r->stats.skipped += d;
        B->next = flow_seq;
        d = 0;
    }
    if (d == 0) {
        deliver_now(r, b, seq, data, len);
        return;
    }
    if (is_held(r, b, pos_of(r, flow_seq))) {
        r->stats.duplicates++;
        return;
    }
    m = &r->meta[slot_of(r, seq)];
    if (m->state == MPT_SLOT_HELD) {
        if (m->seq == seq) {    /* the same seq under another bucket or flow_seq: garbage */
            r->stats.duplicates++;
            return;
        }
        evict(r, slot_of(r, seq));
        /* that may have moved this very bucket on */
        d = (uint16_t)(flow_seq - B->next);
        if (d >= r->nslots) {
            r->stats.late++;
            return;
        }
        if (d == 0) {
            deliver_now(r, b, seq, data, len);
            return;
        }
    }
    store(r, b, seq, flow_seq, run, data, len, now_ns);
    if (run > 0 && d <= run) {
        /* it may prove the gap before the packets held ahead of it lost */
        release_in_order(r, b);
        update_head(r, b);
    }
}

void mpt_reorder_input(struct mpt_reorder *r, uint64_t seq, uint32_t bucket, uint16_t flow_seq,
                       int path, unsigned run, const uint8_t *data, uint32_t len,
                       int64_t now_ns)
{
    if (len > r->slot_size) {
        r->stats.too_big++;
        return;
    }
    if (path >= 0 && path < MPT_MAX_PATHS) {
        r->frontier[path] = seq;
        r->has_frontier[path] = 1;
        mark_alive(r, path, now_ns);
    }
    place(r, bucket % r->nbuckets, seq, flow_seq, run > MPT_HDR_RUN_MAX ? MPT_HDR_RUN_MAX : run,
          data, len, now_ns);
    /* The new frontier may prove gaps in any bucket. */
    if (r->nheld > 0)
        service_all(r, now_ns);
}

void mpt_sink_record(void *ctx, const uint8_t *data, uint32_t len)
{
    struct mpt_sink *s = ctx;
    uint64_t id = 0;
    if (len >= 8) {
        memcpy(&id, data, 8);
        id = be64toh(id);
    }
    if (s->n < s->cap)
        s->ids[s->n] = id;
    s->n++;
}
