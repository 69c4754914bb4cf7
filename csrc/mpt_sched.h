/* Smooth weighted scheduling over bytes.
 *
 * Each path keeps a virtual finish time; a packet goes to the active path
 * with the smallest one, which then advances by bytes / weight.  Over any
 * window the bytes each path carries follow the weights to within one
 * packet, whatever the packet sizes, and consecutive packets interleave
 * (3:1 gives A A A B, not long runs).
 */
#ifndef MPT_SCHED_H
#define MPT_SCHED_H

#include <stdint.h>

#define MPT_MAX_PATHS 16

struct mpt_sched {
    double weight[MPT_MAX_PATHS];
    double vtime[MPT_MAX_PATHS];
    uint8_t active[MPT_MAX_PATHS];
};

void mpt_sched_init(struct mpt_sched *s);
/* weight <= 0 or active == 0 takes the path out of the schedule. */
void mpt_sched_set(struct mpt_sched *s, int idx, double weight, int active);
/* Index of the path for a packet of this many bytes, or -1 if none is active. */
int mpt_sched_pick(struct mpt_sched *s, uint32_t bytes);

#endif
