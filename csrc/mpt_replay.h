/* Anti-replay window over the 64-bit tunnel sequence.
 *
 * Remembers which of the MPT_REPLAY_WINDOW newest sequence numbers
 * (top-65535 .. top) have been accepted; anything further behind the newest
 * is TOO_OLD.  The window is wide because multipath reorders a lot: at
 * 1 Gbit/s with 50 ms between the fastest and slowest path, packets arrive
 * thousands of sequence numbers late.  Sequences are plain unsigned 64-bit
 * numbers starting at 0 per session and never wrap (they are the AEAD
 * nonce), so after top = 2^64-1 nothing is new any more.  The bitmap is a
 * ring indexed by seq mod MPT_REPLAY_WINDOW; a forward jump clears at most
 * the whole ring, so any jump costs O(window) and not O(distance).
 */
#ifndef MPT_REPLAY_H
#define MPT_REPLAY_H

#include <stdint.h>

#define MPT_REPLAY_WINDOW 65536

struct mpt_replay {
    uint64_t top;       /* newest accepted sequence; valid once started */
    uint32_t started;   /* 0 after reset: every sequence is new */
    uint32_t pad;
    uint64_t bits[MPT_REPLAY_WINDOW / 64];
};

#define MPT_REPLAY_NEW 0
#define MPT_REPLAY_SEEN 1
#define MPT_REPLAY_TOO_OLD 2

/* A fresh session: nothing seen, sequence 0 is new. */
void mpt_replay_reset(struct mpt_replay *r);
/* What seq is, without recording it (use before the costly decrypt). */
int mpt_replay_check(const struct mpt_replay *r, uint64_t seq);
/* Record seq (call only after the packet authenticated); returns what check
 * would have said; only NEW records anything. */
int mpt_replay_update(struct mpt_replay *r, uint64_t seq);

#endif
