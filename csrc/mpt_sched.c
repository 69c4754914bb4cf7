#include "mpt_sched.h"

/* Virtual times are rebased once they grow this large so doubles keep
 * byte precision forever. */
#define VTIME_REBASE 1e12

void mpt_sched_init(struct mpt_sched *s)
{
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        s->weight[i] = 0;
        s->vtime[i] = 0;
        s->active[i] = 0;
    }
}

static int min_active(const struct mpt_sched *s, int skip)
{
    int best = -1;
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        if (i == skip || !s->active[i])
            continue;
        if (best < 0 || s->vtime[i] < s->vtime[best])
            best = i;
    }
    return best;
}

void mpt_sched_set(struct mpt_sched *s, int idx, double weight, int active)
{
    int was_active, m;
    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return;
    was_active = s->active[idx];
    s->weight[idx] = weight;
    s->active[idx] = (active && weight > 0) ? 1 : 0;
    if (s->active[idx] && !was_active) {
        /* A joining path starts level with the others: it must not get a
         * burst to "catch up" for the time it was out. */
        m = min_active(s, idx);
        s->vtime[idx] = m >= 0 ? s->vtime[m] : 0;
    }
}

int mpt_sched_pick(struct mpt_sched *s, uint32_t bytes)
{
    int best = min_active(s, -1);
    if (best < 0)
        return -1;
    s->vtime[best] += (double)bytes / s->weight[best];
    if (s->vtime[best] > VTIME_REBASE) {
        double base = s->vtime[min_active(s, -1)];
        for (int i = 0; i < MPT_MAX_PATHS; i++)
            s->vtime[i] = s->vtime[i] > base ? s->vtime[i] - base : 0;
    }
    return best;
}
