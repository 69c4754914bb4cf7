/* Anti-replay window: see mpt_replay.h. */
#include "mpt_replay.h"

#include <string.h>

#define RING_MASK ((uint32_t)MPT_REPLAY_WINDOW - 1)

_Static_assert((MPT_REPLAY_WINDOW & (MPT_REPLAY_WINDOW - 1)) == 0 && MPT_REPLAY_WINDOW >= 64,
               "the ring is indexed by masking: the window must be a power of two >= 64");

void mpt_replay_reset(struct mpt_replay *r)
{
    memset(r, 0, sizeof(*r));
}

static int bit_is_set(const uint64_t *bits, uint64_t seq)
{
    uint32_t pos = (uint32_t)seq & RING_MASK;
    return (int)((bits[pos >> 6] >> (pos & 63)) & 1);
}

/* Clear ring positions [pos, pos+n) with pos + n <= MPT_REPLAY_WINDOW:
 * a partial first word, whole words, a partial last word. */
static void clear_run(uint64_t *bits, uint32_t pos, uint32_t n)
{
    uint32_t off = pos & 63;
    if (off != 0 && n != 0) {
        uint32_t take = n < 64 - off ? n : 64 - off; /* <= 63: the shift is defined */
        bits[pos >> 6] &= ~(((UINT64_C(1) << take) - 1) << off);
        pos += take;
        n -= take;
    }
    for (; n >= 64; pos += 64, n -= 64)
        bits[pos >> 6] = 0;
    if (n != 0)
        bits[pos >> 6] &= ~((UINT64_C(1) << n) - 1);
}

/* Move the newest sequence forward to seq (> top): the ring positions of
 * top+1 .. seq still hold sequences that have just fallen out of the window. */
static void advance(struct mpt_replay *r, uint64_t seq)
{
    uint64_t distance = seq - r->top;
    if (distance >= MPT_REPLAY_WINDOW) {
        memset(r->bits, 0, sizeof(r->bits));
    } else {
        uint32_t pos = (uint32_t)(r->top + 1) & RING_MASK;
        uint32_t n = (uint32_t)distance;
        uint32_t first = MPT_REPLAY_WINDOW - pos; /* room before the ring wraps */
        if (n <= first) {
            clear_run(r->bits, pos, n);
        } else {
            clear_run(r->bits, pos, first);
            clear_run(r->bits, 0, n - first);
        }
    }
    r->top = seq;
}

int mpt_replay_check(const struct mpt_replay *r, uint64_t seq)
{
    if (!r->started || seq > r->top)
        return MPT_REPLAY_NEW;
    if (r->top - seq >= MPT_REPLAY_WINDOW) /* seq <= top: no wrap-around */
        return MPT_REPLAY_TOO_OLD;
    return bit_is_set(r->bits, seq) ? MPT_REPLAY_SEEN : MPT_REPLAY_NEW;
}

int mpt_replay_update(struct mpt_replay *r, uint64_t seq)
{
    int verdict = mpt_replay_check(r, seq);
    if (verdict != MPT_REPLAY_NEW)
        return verdict;
    if (!r->started) {
        memset(r->bits, 0, sizeof(r->bits));
        r->top = seq;
        r->started = 1;
    } else if (seq > r->top) {
        advance(r, seq);
    }
    uint32_t pos = (uint32_t)seq & RING_MASK;
    r->bits[pos >> 6] |= UINT64_C(1) << (pos & 63);
    return MPT_REPLAY_NEW;
}
