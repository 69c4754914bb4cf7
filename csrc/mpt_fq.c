/* Flow-fair queue of packet slots (mpt_fq.h). */
#include "mpt_fq.h"

/* With at least two slots per queue, the longest queue of a full backlog
 * holds at least two packets, so the drop that makes room never empties it. */
_Static_assert(MPT_FQ_SLOTS >= 2 * MPT_FQ_QUEUES, "slots per queue");
_Static_assert(MPT_FQ_SLOTS < MPT_FQ_END, "slot indices fit 16 bits");

void mpt_fq_init(struct mpt_fq *f)
{
    f->n = 0;
    f->turn = f->last = MPT_FQ_END;
    for (uint32_t i = 0; i < MPT_FQ_SLOTS; i++)
        f->next[i] = (uint16_t)(i + 1 < MPT_FQ_SLOTS ? i + 1 : MPT_FQ_END);
    f->free = 0;
    for (uint32_t k = 0; k < MPT_FQ_QUEUES; k++) {
        f->q[k].head = f->q[k].tail = f->q[k].next = MPT_FQ_END;
        f->q[k].n = 0;
    }
}

/* Take the head packet of queue k off it and free its slot (the queue's
 * place in the turn order is the caller's business). */
static uint16_t take_head(struct mpt_fq *f, uint32_t k)
{
    struct mpt_fq_queue *q = &f->q[k];
    uint16_t s = q->head;
    q->head = f->next[s];
    if (--q->n == 0)
        q->tail = MPT_FQ_END;
    f->next[s] = f->free;
    f->free = s;
    f->n--;
    return s;
}

static void append_turn(struct mpt_fq *f, uint32_t k)
{
    f->q[k].next = MPT_FQ_END;
    if (f->last == MPT_FQ_END)
        f->turn = (uint16_t)k;
    else
        f->q[f->last].next = (uint16_t)k;
    f->last = (uint16_t)k;
}

int mpt_fq_push(struct mpt_fq *f, uint32_t queue, int *dropped)
{
    uint32_t k = queue % MPT_FQ_QUEUES;
    struct mpt_fq_queue *q = &f->q[k];
    uint16_t s;
    *dropped = -1;
    if (f->free == MPT_FQ_END) {
        uint32_t fat = 0;
        for (uint32_t j = 1; j < MPT_FQ_QUEUES; j++)
            if (f->q[j].n > f->q[fat].n)
                fat = j;
        *dropped = take_head(f, fat);   /* it keeps >= 1 packet: keeps its turn */
    }
    s = f->free;
    f->free = f->next[s];
    f->next[s] = MPT_FQ_END;
    if (q->n++ == 0) {
        q->head = s;
        append_turn(f, k);
    } else {
        f->next[q->tail] = s;
    }
    q->tail = s;
    f->n++;
    return s;
}

int mpt_fq_peek(const struct mpt_fq *f)
{
    return f->turn == MPT_FQ_END ? -1 : f->q[f->turn].head;
}

void mpt_fq_pop(struct mpt_fq *f)
{
    uint16_t k = f->turn;
    if (k == MPT_FQ_END)
        return;
    take_head(f, k);
    f->turn = f->q[k].next;
    if (f->turn == MPT_FQ_END)
        f->last = MPT_FQ_END;
    f->q[k].next = MPT_FQ_END;
    if (f->q[k].n)
        append_turn(f, k);
}
