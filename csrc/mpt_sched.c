#include "mpt_sched.h"

#include <math.h>

/* Virtual times are rebased once they grow this large so doubles keep
 * byte precision forever. */
#define VTIME_REBASE 1e12
/* Default bucket: this much time at the path's rate. */
#define DEFAULT_BURST_S 0.002
/* Larger buckets are cut to this (bytes). */
#define MAX_BURST 1e9

static double finite_or_zero(double x)
{
    return isfinite(x) && x > 0 ? x : 0;
}

/* A rate in bits/s: 0 (none) for garbage, else within the sane range. */
static double sane_rate(double bps)
{
    bps = finite_or_zero(bps);
    if (bps > 0 && bps < MPT_SCHED_MIN_RATE_BPS)
        return MPT_SCHED_MIN_RATE_BPS;
    return bps > (double)MPT_SCHED_MAX_RATE_BPS ? (double)MPT_SCHED_MAX_RATE_BPS : bps;
}

void mpt_sched_init(struct mpt_sched *s)
{
    s->mode = MPT_SCHED_WEIGHTED;
    s->overflow = 1;
    s->n = 0;
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        struct mpt_sched_path *p = &s->path[i];
        s->order[i] = -1;
        s->tier[i] = 0;
        p->weight = 0;
        p->vtime = 0;
        p->step_weight = 0;
        p->cap_bps = 0;
        p->burst_bytes = 0;
        p->capacity_bps = 0;
        p->delay_us = 0;
        p->ns_per_byte = 0;
        p->burst_ns = 0;
        p->debt_ns = 0;
        p->paced_at = 0;
        p->overflow_ns = 0;
        p->overhead = 0;
        p->tier_mask = 0;
        p->active = 0;
    }
}

/* ---- pacing -------------------------------------------------------------- */

/* ns since the bucket's last charge; 0 if the clock went backwards. */
static double elapsed_ns(const struct mpt_sched_path *p, int64_t now)
{
    if (now <= p->paced_at)
        return 0;
    return (double)((uint64_t)now - (uint64_t)p->paced_at);
}

/* Does a packet of `bytes` fit path p's bucket at now?  If not, *when is the
 * first ns it does.  Fits iff debt_now + cost <= max(burst, cost), which is
 * elapsed >= debt + min(0, cost - burst): computed the same way here and for
 * *when, so the retry time is exact. */
static int fits(const struct mpt_sched_path *p, uint32_t bytes, int64_t now, int64_t *when)
{
    double cost, need;
    int64_t wait;

    if (p->ns_per_byte <= 0)
        return 1;
    cost = (double)(bytes + p->overhead) * p->ns_per_byte;
    need = p->debt_ns + (cost > p->burst_ns ? 0 : cost - p->burst_ns);
    if (elapsed_ns(p, now) >= need)
        return 1;
    /* need > elapsed >= 0; the first whole ns at or after it */
    if (need >= 9e18) {
        *when = INT64_MAX;
        return 0;
    }
    wait = (int64_t)need;
    if ((double)wait < need)
        wait++;
    *when = p->paced_at > INT64_MAX - wait ? INT64_MAX : p->paced_at + wait;
    return 0;
}

static void charge(struct mpt_sched_path *p, uint32_t bytes, int64_t now)
{
    double el;

    if (p->ns_per_byte <= 0)
        return;
    el = elapsed_ns(p, now);
    p->debt_ns = (el >= p->debt_ns ? 0 : p->debt_ns - el)
                 + (double)(bytes + p->overhead) * p->ns_per_byte;
    if (now > p->paced_at)
        p->paced_at = now;
}

/* Put path p on rate_bps (0 = unpaced).  Debt owed at the old rate is kept
 * as the same number of bytes at the new one. */
static void set_pacing(struct mpt_sched_path *p, double rate_bps)
{
    double nspb = rate_bps > 0 ? 8e9 / rate_bps : 0;
    double burst;

    if (nspb != p->ns_per_byte) {
        if (p->ns_per_byte > 0 && nspb > 0)
            p->debt_ns *= nspb / p->ns_per_byte;
        else
            p->debt_ns = 0;
        p->ns_per_byte = nspb;
    }
    burst = p->burst_bytes;
    if (burst <= 0) {
        burst = rate_bps / 8 * DEFAULT_BURST_S;
        if (burst < MPT_SCHED_MIN_BURST)
            burst = MPT_SCHED_MIN_BURST;
    }
    p->burst_ns = burst * nspb;
}

/* ---- the schedule -------------------------------------------------------- */

/* The rate the path is known to carry: min(cap, measured), 0 = unknown. */
static double known_rate(const struct mpt_sched *s, const struct mpt_sched_path *p)
{
    double r = p->cap_bps;
    if (s->mode == MPT_SCHED_AUTO && p->capacity_bps > 0 && (r <= 0 || p->capacity_bps < r))
        r = p->capacity_bps;
    return r;
}

static double delay_key(const struct mpt_sched_path *p)
{
    return p->delay_us > 0 ? p->delay_us : INFINITY;
}

/* Order the active paths (auto: by delay, stable) and cut them into tiers. */
static void build_order(struct mpt_sched *s)
{
    double anchor = 0;
    int n = 0, t = 0;

    for (int i = 0; i < MPT_MAX_PATHS; i++)
        if (s->path[i].active)
            s->order[n++] = (int8_t)i;
    for (int k = n; k < MPT_MAX_PATHS; k++)
        s->order[k] = -1;
    s->n = n;
    if (s->mode != MPT_SCHED_AUTO) {
        for (int k = 0; k < MPT_MAX_PATHS; k++)
            s->tier[k] = 0;
        return;
    }
    for (int k = 1; k < n; k++) {
        int8_t v = s->order[k];
        int j = k;
        while (j > 0 && delay_key(&s->path[s->order[j - 1]]) > delay_key(&s->path[v])) {
            s->order[j] = s->order[j - 1];
            j--;
        }
        s->order[j] = v;
    }
    for (int k = 0; k < n; k++) {
        double d = delay_key(&s->path[s->order[k]]);
        if (k == 0)
            anchor = d;
        else if (d > anchor + MPT_SCHED_SAME_DELAY_US) {
            t++;
            anchor = d;
        }
        s->tier[k] = (uint8_t)t;
    }
    for (int k = n; k < MPT_MAX_PATHS; k++)
        s->tier[k] = (uint8_t)(t + 1);
}

/* Auto: inside a tier, paths share by rate (or by weight if unpaced).  A
 * tier whose membership changed starts level, so no path gets a burst from
 * a lead or lag it built up elsewhere. */
static void auto_tiers(struct mpt_sched *s)
{
    int k = 0;
    while (k < s->n) {
        int end = k, all_paced = 1;
        double rate_sum = 0, weight_sum = 0, vmax = 0;
        uint16_t mask = 0;
        int changed = 0;

        while (end < s->n && s->tier[end] == s->tier[k]) {
            const struct mpt_sched_path *p = &s->path[s->order[end]];
            mask |= (uint16_t)(1u << s->order[end]);
            if (p->ns_per_byte > 0)
                rate_sum += 8e9 / p->ns_per_byte;
            else
                all_paced = 0;
            weight_sum += p->weight;
            end++;
        }
        for (int j = k; j < end; j++) {
            struct mpt_sched_path *p = &s->path[s->order[j]];
            p->step_weight = all_paced ? (8e9 / p->ns_per_byte) / rate_sum : p->weight / weight_sum;
            if (p->tier_mask != mask)
                changed = 1;
            if (j == k || p->vtime > vmax)
                vmax = p->vtime;
        }
        for (int j = k; j < end; j++) {
            struct mpt_sched_path *p = &s->path[s->order[j]];
            if (changed)
                p->vtime = vmax;
            p->tier_mask = mask;
        }
        k = end;
    }
}

/* Recompute everything derived from the inputs: pacing rates, order,
 * tiers, vtime steps.  Called by every setter (control plane rate), so
 * pick stays a plain walk over order[]. */
static void refresh(struct mpt_sched *s)
{
    double known_bps = 0, known_weight = 0;

    if (s->mode == MPT_SCHED_AUTO) {
        for (int i = 0; i < MPT_MAX_PATHS; i++) {
            const struct mpt_sched_path *p = &s->path[i];
            double r = known_rate(s, p);
            if (p->active && r > 0) {
                known_bps += r;
                known_weight += p->weight;
            }
        }
    }
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        struct mpt_sched_path *p = &s->path[i];
        double r = known_rate(s, p);
        if (r <= 0 && known_bps > 0 && p->active)
            r = p->weight * known_bps / known_weight;
        set_pacing(p, r);
        p->step_weight = p->weight;
        if (!p->active)
            p->tier_mask = 0;
    }
    build_order(s);
    if (s->mode == MPT_SCHED_AUTO)
        auto_tiers(s);
}

void mpt_sched_set_mode(struct mpt_sched *s, int mode)
{
    mode = mode == MPT_SCHED_AUTO ? MPT_SCHED_AUTO : MPT_SCHED_WEIGHTED;
    if (mode == s->mode)
        return;
    /* virtual times mean different things in the two modes */
    s->mode = mode;
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        s->path[i].vtime = 0;
        s->path[i].tier_mask = 0;
    }
    refresh(s);
}

static int min_active(const struct mpt_sched *s, int skip)
{
    int best = -1;
    for (int i = 0; i < MPT_MAX_PATHS; i++) {
        if (i == skip || !s->path[i].active)
            continue;
        if (best < 0 || s->path[i].vtime < s->path[best].vtime)
            best = i;
    }
    return best;
}

void mpt_sched_set(struct mpt_sched *s, int idx, double weight, int active)
{
    struct mpt_sched_path *p;
    int was_active, m;

    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return;
    p = &s->path[idx];
    was_active = p->active;
    p->active = (active && weight > 0 && isfinite(weight)) ? 1 : 0;
    p->weight = p->active ? weight : 0;
    if (p->active && !was_active) {
        /* A joining path starts level with the others: it must not get a
         * burst to "catch up" for the time it was out. */
        m = min_active(s, idx);
        p->vtime = m >= 0 ? s->path[m].vtime : 0;
    }
    refresh(s);
}

void mpt_sched_set_rate(struct mpt_sched *s, int idx, double rate_bps, double burst_bytes)
{
    struct mpt_sched_path *p;

    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return;
    p = &s->path[idx];
    burst_bytes = finite_or_zero(burst_bytes);
    p->cap_bps = sane_rate(rate_bps);
    p->burst_bytes = burst_bytes > MAX_BURST ? MAX_BURST : burst_bytes;
    refresh(s);
}

void mpt_sched_set_measure(struct mpt_sched *s, int idx, double capacity_bps, double delay_us)
{
    struct mpt_sched_path *p;

    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return;
    p = &s->path[idx];
    p->capacity_bps = sane_rate(capacity_bps);
    p->delay_us = finite_or_zero(delay_us);
    refresh(s);
}

/* Rebase a tier's virtual times on its smallest. */
static void rebase(struct mpt_sched *s, int k, int end)
{
    double base = s->path[s->order[k]].vtime;
    for (int j = k + 1; j < end; j++)
        if (s->path[s->order[j]].vtime < base)
            base = s->path[s->order[j]].vtime;
    for (int j = k; j < end; j++) {
        struct mpt_sched_path *p = &s->path[s->order[j]];
        p->vtime = p->vtime > base ? p->vtime - base : 0;
    }
}

int mpt_sched_pick(struct mpt_sched *s, uint32_t bytes, int64_t now_ns, int64_t *retry_ns)
{
    int64_t soonest = INT64_MAX;
    int k = 0;

    if (s->n == 0)
        return MPT_SCHED_NONE;
    while (k < s->n) {
        uint32_t full = 0;
        int best = -1, end = k;

        for (; end < s->n && s->tier[end] == s->tier[k]; end++) {
            int i = s->order[end];
            int64_t when;
            if (!fits(&s->path[i], bytes, now_ns, &when)) {
                full |= 1u << i;
                if (when < soonest)
                    soonest = when;
            } else if (best < 0 || s->path[i].vtime < s->path[best].vtime) {
                best = i;
            }
        }
        if (best >= 0) {
            struct mpt_sched_path *b = &s->path[best];
            /* a path skipped for want of tokens gets no credit for it */
            for (int j = k; j < end; j++) {
                struct mpt_sched_path *p = &s->path[s->order[j]];
                if ((full >> s->order[j]) & 1u && p->vtime < b->vtime)
                    p->vtime = b->vtime;
            }
            charge(b, bytes, now_ns);
            b->vtime += (double)(bytes + b->overhead) / b->step_weight;
            if (b->vtime > VTIME_REBASE)
                rebase(s, k, end);
            return best;
        }
        k = end;
    }
    if (retry_ns)
        *retry_ns = soonest;
    return MPT_SCHED_WAIT;
}

/* A path whose pace is its measured capacity (not a configured rate): in
 * auto mode that is an estimate, and overflow may exceed it. */
static int soft(const struct mpt_sched_path *p)
{
    return p->cap_bps <= 0 || (p->capacity_bps > 0 && p->capacity_bps < p->cap_bps);
}

int mpt_sched_overflow(struct mpt_sched *s, uint32_t bytes, int64_t now_ns)
{
    int best = -1;
    int64_t best_at = 0;

    if (s->mode != MPT_SCHED_AUTO || !s->overflow)
        return MPT_SCHED_WAIT;
    for (int k = 0; k < s->n; k++) {
        struct mpt_sched_path *p = &s->path[s->order[k]];
        int64_t at;
        if (!soft(p))
            continue;
        at = p->overflow_ns > now_ns ? p->overflow_ns : now_ns;
        if (best < 0 || at < best_at) {
            best = s->order[k];
            best_at = at;
        }
    }
    if (best < 0)
        return MPT_SCHED_WAIT;
    {
        struct mpt_sched_path *b = &s->path[best];
        /* unpaced (rate unknown): counted as 1 Gbit/s, just to take turns */
        double nspb = b->ns_per_byte > 0 ? b->ns_per_byte : 8.0;
        double step = (double)(bytes + b->overhead) * nspb;
        b->overflow_ns = best_at + (step < 1e12 ? (int64_t)step : (int64_t)1e12);
    }
    return best;
}

void mpt_sched_set_overhead(struct mpt_sched *s, int idx, uint32_t bytes)
{
    if (idx < 0 || idx >= MPT_MAX_PATHS)
        return;
    s->path[idx].overhead = bytes > MPT_SCHED_MAX_OVERHEAD ? MPT_SCHED_MAX_OVERHEAD : bytes;
}

void mpt_sched_set_overflow(struct mpt_sched *s, int on)
{
    s->overflow = on != 0;
}
