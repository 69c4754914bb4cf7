#include <stdlib.h>
#include <string.h>
#include <endian.h>
#include "mpt_reorder.h"
#include "mpt_wire.h"

static inline uint32_t slot_of(const struct mpt_reorder *r, uint64_t seq)
{
    return (uint32_t)(seq & (r->nslots - 1));
}

struct mpt_reorder *mpt_reorder_new(uint32_t nslots, uint32_t slot_size, int64_t hold_ns,
                                    int64_t alive_ns, mpt_deliver_fn deliver, void *ctx)
{
    struct mpt_reorder *r;
    uint32_t n = 1;
    if (nslots == 0 || nslots > (1u << 20) || slot_size == 0)
        return NULL;
    while (n < nslots)
        n <<= 1;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->nslots = n;
    r->slot_size = slot_size;
    r->data = malloc((size_t)n * slot_size);
    r->meta = calloc(n, sizeof(*r->meta));
    if (!r->data || !r->meta) {
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
    free(r);
}

void mpt_reorder_reset(struct mpt_reorder *r)
{
    memset(r->meta, 0, (size_t)r->nslots * sizeof(*r->meta));
    r->started = 0;
    r->nheld = 0;
    memset(r->seen, 0, sizeof(r->seen));
    memset(r->has_data, 0, sizeof(r->has_data));
}

void mpt_reorder_set_hold(struct mpt_reorder *r, int64_t hold_ns, int64_t alive_ns)
{
    r->hold_ns = hold_ns;
    r->alive_ns = alive_ns;
}

void mpt_reorder_heard(struct mpt_reorder *r, int path, int64_t now_ns)
{
    if (path < 0 || path >= MPT_MAX_PATHS)
        return;
    r->seen[path] = 1;
    r->last_seen[path] = now_ns;
}

/* Release r->next: deliver it if held, else record it as skipped. */
static void release_next(struct mpt_reorder *r)
{
    struct mpt_slot_meta *m = &r->meta[slot_of(r, r->next)];
    if (m->state == MPT_SLOT_HELD && m->seq == r->next) {
        r->nheld--;
        m->state = MPT_SLOT_DELIVERED;
        r->stats.delivered++;
        r->deliver(r->ctx, r->data + (size_t)slot_of(r, r->next) * r->slot_size, m->len);
    } else {
        m->seq = r->next;
        m->state = MPT_SLOT_SKIPPED;
        r->stats.skipped++;
    }
    r->next++;
}

/* Move the release point far ahead in one pass over the ring (a jump of
 * 2^62 must not cost 2^62 steps): what is held is delivered in order, the
 * rest of the distance counts as skipped. */
static void jump(struct mpt_reorder *r, uint64_t to)
{
    while (r->nheld > 0) {
        uint32_t i;
        for (i = 0; i < r->nslots; i++) {
            struct mpt_slot_meta *m = &r->meta[slot_of(r, r->next + i)];
            if (m->state == MPT_SLOT_HELD && m->seq == r->next + i)
                break;
        }
        if (i == r->nslots)
            break;
        r->stats.skipped += i;
        r->next += i;
        release_next(r);
    }
    r->stats.skipped += to - r->next;
    r->next = to;
    memset(r->meta, 0, (size_t)r->nslots * sizeof(*r->meta));
    r->nheld = 0;
}

static void release_in_order(struct mpt_reorder *r)
{
    for (;;) {
        struct mpt_slot_meta *m = &r->meta[slot_of(r, r->next)];
        if (r->nheld == 0 || m->state != MPT_SLOT_HELD || m->seq != r->next)
            return;
        release_next(r);
    }
}

/* The first held packet at or after next (only called while nheld > 0). */
static struct mpt_slot_meta *first_held(const struct mpt_reorder *r)
{
    for (uint32_t i = 0; i < r->nslots; i++) {
        struct mpt_slot_meta *m = &r->meta[slot_of(r, r->next + i)];
        if (m->state == MPT_SLOT_HELD && m->seq == r->next + i)
            return m;
    }
    return NULL;
}

/* Everything up to this sequence that has not arrived never will: each
 * path that is still delivering has moved past it.  Returns 0 if no path
 * counts (nothing can be concluded). */
static int lost_below(const struct mpt_reorder *r, int64_t now_ns, uint64_t *bound)
{
    int any = 0;
    for (int p = 0; p < MPT_MAX_PATHS; p++) {
        uint64_t f;
        if (!r->seen[p] || now_ns - r->last_seen[p] > r->alive_ns)
            continue;
        /* A live path that brought no data yet proves nothing. */
        f = r->has_data[p] ? r->frontier[p] : r->next - 1;
        if (!any || mpt_seq_before(f, *bound))
            *bound = f;
        any = 1;
    }
    return any;
}

void mpt_reorder_tick(struct mpt_reorder *r, int64_t now_ns)
{
    uint64_t bound = 0;
    release_in_order(r);
    while (r->nheld > 0) {
        struct mpt_slot_meta *m = first_held(r);
        if (!m)
            break;
        if (lost_below(r, now_ns, &bound) && mpt_seq_before(r->next, bound)) {
            /* Skip the gap up to what the paths prove lost. */
            while (mpt_seq_before(r->next, bound) && r->next != m->seq)
                release_next(r);
        } else if (now_ns - m->arrival_ns >= r->hold_ns) {
            r->stats.timeouts++;
            while (r->next != m->seq)
                release_next(r);
        } else {
            break;
        }
        if (r->next != m->seq)
            break; /* the proven-lost range ended before the held packet */
        release_in_order(r);
    }
}

int64_t mpt_reorder_deadline(const struct mpt_reorder *r)
{
    const struct mpt_slot_meta *m;
    if (r->nheld == 0)
        return -1;
    m = first_held(r);
    return m ? m->arrival_ns + r->hold_ns : -1;
}

void mpt_reorder_input(struct mpt_reorder *r, uint64_t seq, int path, const uint8_t *data,
                       uint32_t len, int64_t now_ns)
{
    struct mpt_slot_meta *m;

    if (len > r->slot_size) {
        r->stats.too_big++;
        return;
    }
    if (path >= 0 && path < MPT_MAX_PATHS) {
        if (!r->has_data[path] || mpt_seq_before(r->frontier[path], seq))
            r->frontier[path] = seq;
        r->has_data[path] = 1;
        r->seen[path] = 1;
        r->last_seen[path] = now_ns;
    }
    if (!r->started) {
        r->started = 1;
        r->next = seq;
    }
    if (mpt_seq_before(seq, r->next)) {
        m = &r->meta[slot_of(r, seq)];
        if (r->next - seq <= r->nslots && m->seq == seq && m->state == MPT_SLOT_DELIVERED)
            r->stats.duplicates++;
        else
            r->stats.late++;
        return;
    }
    if (seq - r->next >= r->nslots) {
        /* Out of window: give up the oldest gaps to make room. */
        r->stats.overflows++;
        if (seq - r->next >= 2 * (uint64_t)r->nslots)
            jump(r, seq - r->nslots + 1);
        while (seq - r->next >= r->nslots)
            release_next(r);
        release_in_order(r);
    }
    if (seq == r->next) {
        /* The common case: in order, delivered straight from the caller's
         * buffer without a copy. */
        m = &r->meta[slot_of(r, seq)];
        m->seq = seq;
        m->state = MPT_SLOT_DELIVERED;
        r->stats.delivered++;
        r->next++;
        r->deliver(r->ctx, data, len);
        release_in_order(r);
        if (r->nheld)
            mpt_reorder_tick(r, now_ns);
        return;
    }
    m = &r->meta[slot_of(r, seq)];
    if (m->state == MPT_SLOT_HELD && m->seq == seq) {
        r->stats.duplicates++;
        return;
    }
    memcpy(r->data + (size_t)slot_of(r, seq) * r->slot_size, data, len);
    m->seq = seq;
    m->len = len;
    m->arrival_ns = now_ns;
    m->state = MPT_SLOT_HELD;
    r->nheld++;
    r->stats.held++;
    mpt_reorder_tick(r, now_ns);
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
