/* Path scheduler: which path carries the next packet.
 *
 * weighted (MPT_SCHED_WEIGHTED): smooth weighted scheduling over bytes.
 *   Each path keeps a virtual finish time; a packet goes to the active path
 *   with the smallest one, which then advances by bytes / weight.  Over any
 *   window the bytes each path carries follow the weights to within one
 *   packet, whatever the packet sizes, and consecutive packets interleave
 *   (3:1 gives A A A B, not long runs).
 *
 * auto (MPT_SCHED_AUTO): the active paths are ranked by measured delay into
 *   tiers (delays within MPT_SCHED_SAME_DELAY_US of the tier's lowest share
 *   a tier; unknown delay ranks last).  A packet goes to the first tier that
 *   has a path with room, and inside a tier by the same smooth weighting,
 *   with capacity as the weight: traffic fills the lowest-delay path and
 *   spills to the next only once that one is full, while equal links share.
 *   A path's rate is min(rate cap, measured capacity); a path with neither
 *   is assumed to carry its weight's share of the known total
 *   (weight * known_bps / known_weight); when no active path has either,
 *   the paths are unpaced (all traffic goes to the first tier, split there
 *   by weight) until the control plane reports a capacity.
 *
 * Pacing, both modes: a path with a rate is a token bucket of burst_bytes
 *   refilled continuously at the rate; a packet fits if the bucket holds its
 *   bytes (a packet larger than the bucket fits a full bucket).  Kept as
 *   debt in nanoseconds so the time a bucket has room again is exact.  In
 *   weighted mode a path without room is skipped for that packet (the
 *   others take it by their weights, and the skipped path gets no credit
 *   for it later); in auto mode it is "full" and the packet spills.  When no
 *   active path has room, pick says when the first will: MPT_SCHED_WAIT.
 *
 * Overflow (auto only, while the control plane allows it: while an estimate
 *   is still growing from nothing): measured capacities are estimates, so a
 *   packet that has waited MPT_SCHED_OVERFLOW_NS for room is not dropped
 *   but sent on the path mpt_sched_overflow chooses: among the paths no configured
 *   rate holds back, in proportion to their rates (each has a virtual clock
 *   that advances by the packet's time at its rate, and never lags now).
 *   The load beyond the estimates then meets the links' own limits, which
 *   is how the estimates learn to grow, and a TCP flow is limited by the
 *   links, not by our guess of them.  Rates set with `rate =` stay hard.
 *
 * No allocation, O(paths) per pick; time is an argument (CLOCK_MONOTONIC
 * ns), so the tests are deterministic.  Not thread-safe: the caller locks.
 */
#ifndef MPT_SCHED_H
#define MPT_SCHED_H

#include <stdint.h>

#define MPT_MAX_PATHS 16

#define MPT_SCHED_WEIGHTED 0
#define MPT_SCHED_AUTO 1

#define MPT_SCHED_NONE -1        /* no path is active */
#define MPT_SCHED_WAIT -2        /* every active path is out of tokens */

#define MPT_SCHED_SAME_DELAY_US 1000  /* auto: delays this close share a tier */
#define MPT_SCHED_OVERFLOW_NS 2000000  /* auto: a packet waits this long, then overflows */
#define MPT_SCHED_MIN_BURST 3000      /* bytes: default bucket is 2 ms, at least this */
#define MPT_SCHED_MIN_RATE_BPS 1000   /* rates below are raised to this */
#define MPT_SCHED_MAX_OVERHEAD 256    /* bytes a path may add per packet */
#define MPT_SCHED_MAX_RATE_BPS 1000000000000000  /* and above cut to this (1 Pbit/s) */

struct mpt_sched_path {
    double weight;        /* configured weight (> 0 while active) */
    double vtime;         /* virtual finish time */
    double step_weight;   /* vtime advances by bytes / step_weight */
    double cap_bps;       /* rate cap, 0 = none */
    double burst_bytes;   /* bucket size asked for, 0 = default */
    double capacity_bps;  /* measured capacity, 0 = unknown */
    double delay_us;      /* measured delay, 0 = unknown */
    double ns_per_byte;   /* pacing rate in force, 0 = unpaced */
    double burst_ns;      /* bucket size in ns at that rate */
    double debt_ns;       /* bucket: ns of sending owed as of paced_at */
    int64_t paced_at;
    int64_t overflow_ns;  /* auto overflow: this path's virtual clock */
    uint16_t tier_mask;   /* auto: the paths in its tier */
    uint32_t overhead;    /* bytes the path adds to each packet (mpt_sched_set_overhead) */
    uint8_t active;
};

struct mpt_sched {
    int mode;
    int overflow;                      /* auto: overflow allowed (mpt_sched_set_overflow) */
    int n;                             /* active paths, in order[] */
    int8_t order[MPT_MAX_PATHS];       /* weighted: by index; auto: by delay */
    uint8_t tier[MPT_MAX_PATHS];       /* tier of order[k], ascending */
    struct mpt_sched_path path[MPT_MAX_PATHS];
};

void mpt_sched_init(struct mpt_sched *s);
/* MPT_SCHED_WEIGHTED or MPT_SCHED_AUTO (anything else: weighted). */
void mpt_sched_set_mode(struct mpt_sched *s, int mode);
/* weight <= 0 or active == 0 takes the path out of the schedule. */
void mpt_sched_set(struct mpt_sched *s, int idx, double weight, int active);
/* Cap and pace path idx at rate_bps (bits/s of the bytes pick is given;
 * 0 = no cap), bucket of burst_bytes (0 = 2 ms worth, at least
 * MPT_SCHED_MIN_BURST).  Both modes. */
void mpt_sched_set_rate(struct mpt_sched *s, int idx, double rate_bps, double burst_bytes);
/* Auto mode inputs: measured capacity (bits/s, 0 = unknown) and delay
 * (one-way or RTT/2, microseconds, 0 = unknown). */
void mpt_sched_set_measure(struct mpt_sched *s, int idx, double capacity_bps, double delay_us);
/* The path for a packet of `bytes` at now_ns (its tokens are taken), or
 * MPT_SCHED_NONE, or MPT_SCHED_WAIT with *retry_ns (if not NULL) set to the
 * first time a path has room for it (absolute ns; exact: a pick of the same
 * size then succeeds, one ns earlier it does not). */
int mpt_sched_pick(struct mpt_sched *s, uint32_t bytes, int64_t now_ns, int64_t *retry_ns);
/* Auto mode, after pick said MPT_SCHED_WAIT for long enough: the path to
 * send the packet on anyway (no tokens taken), or MPT_SCHED_WAIT if every
 * active path is held by its configured rate (or not auto mode). */
int mpt_sched_overflow(struct mpt_sched *s, uint32_t bytes, int64_t now_ns);
/* What path idx adds to every packet it carries (its outer UDP and IP
 * headers, 0 by default, at most MPT_SCHED_MAX_OVERHEAD): its bucket, its
 * weight share and its overflow turns count a packet of `bytes` as
 * bytes + overhead, so a rate is one of IP packets on the link. */
void mpt_sched_set_overhead(struct mpt_sched *s, int idx, uint32_t bytes);
/* Allow overflow (on, the default) or not (off: a packet with no room waits,
 * then is dropped, as with configured rates). */
void mpt_sched_set_overflow(struct mpt_sched *s, int on);

#endif
