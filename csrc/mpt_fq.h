/* Flow-fair queue of packet slots: the order in which the pacing backlog
 * (mpt_send.c) offers its waiting packets to the scheduler.
 *
 * Packets are kept in MPT_FQ_QUEUES queues, one per hash of the inner flow
 * (the caller chooses the queue); the queues that hold something take
 * turns, one packet per turn (round robin).  Within a queue the order is
 * FIFO, so a flow's packets leave in the order they came.  A sparse flow
 * (a ping, a DNS query, a game's updates) therefore waits behind at most
 * one packet of each busy flow, not behind the whole backlog of a bulk
 * flow: the bulk flow's queue can be deep enough for TCP without the
 * latency of everything else growing with it.
 *
 * When every slot is taken, room is made by dropping the oldest packet of
 * the longest queue (the flow that caused the shortage pays for it).
 *
 * Only indices: the caller keeps each slot's packet and arrival time in
 * its own arrays of MPT_FQ_SLOTS.  No allocation, O(1) per operation
 * except the drop on a full queue (O(MPT_FQ_QUEUES)).  Not thread-safe.
 */
#ifndef MPT_FQ_H
#define MPT_FQ_H

#include <stdint.h>

#define MPT_FQ_SLOTS 1024
#define MPT_FQ_QUEUES 64
#define MPT_FQ_END 0xFFFF      /* end of a list */

struct mpt_fq_queue {
    uint16_t head, tail;       /* slots, oldest first */
    uint16_t next;             /* next queue taking a turn */
    uint16_t n;                /* packets in it */
};

struct mpt_fq {
    uint32_t n;                          /* packets queued in all */
    uint16_t free;                       /* free slots, a stack */
    uint16_t turn, last;                 /* queues with packets, in turn order */
    uint16_t next[MPT_FQ_SLOTS];         /* a slot's successor (queue or free list) */
    struct mpt_fq_queue q[MPT_FQ_QUEUES];
};

void mpt_fq_init(struct mpt_fq *f);
/* A slot at the tail of queue (taken modulo MPT_FQ_QUEUES) for a new
 * packet.  If every slot was taken, the head of the longest queue is
 * dropped first and *dropped set to its slot (read what it held before
 * writing the new packet: the new one may reuse it); else *dropped = -1. */
int mpt_fq_push(struct mpt_fq *f, uint32_t queue, int *dropped);
/* The slot whose turn it is (the head of the first queue in turn order),
 * or -1 if nothing is queued. */
int mpt_fq_peek(const struct mpt_fq *f);
/* Remove the packet mpt_fq_peek returned; its queue's turn ends (it goes
 * to the back of the turn order if it holds more). */
void mpt_fq_pop(struct mpt_fq *f);

#endif
