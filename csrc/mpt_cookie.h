/* Handshake cookies: proof that a handshake's source address can receive;
 * and the keyed hash that picks a handshake source's rate-limit bucket.
 *
 * A flood of handshakes from forged source addresses would use up the
 * server's handshake rate limit and lock real clients out.  Under load, the
 * server answers an init it has no room for with a cookie (mpt/handshake.py:
 * "cookie reply") instead of passing it on; the client appends that cookie to
 * the inits it sends from then on, and an init whose cookie matches its
 * source address and port skips the limit that forged sources share.  A
 * forger never sees the cookies for the addresses it forges.
 *
 * cookie = SipHash-2-4 with 128-bit output (Aumasson and Bernstein), keyed
 * with a random secret, over the source address and port.  The secret
 * changes every MPT_COOKIE_ROTATE_S and the previous one still counts, so a
 * cookie is good for at least that long; nothing is kept per client.
 *
 * Limits of the scheme: the server sends at most a bounded number of cookie
 * replies per second (mpt_receive.c), so above that rate of forged inits a
 * client's init gets its cookie only with that share; and a forger who can
 * receive at many addresses gets cookies for them all (the per-source
 * buckets group IPv6 sources by /64, keyed, so that this costs it addresses
 * it really holds). */
#ifndef MPT_COOKIE_H
#define MPT_COOKIE_H

#include <stdint.h>
#include <stddef.h>

#define MPT_COOKIE_LEN 16
#define MPT_COOKIE_ROTATE_S 120

/* What the datapath reads of a handshake body (mpt/handshake.py has the
 * layouts): an init is magic "MPTH", version 1, kind 1, the sender's index
 * (2), the cipher (1), a nonce (16), ... MPT_HS_INIT_LEN bytes in all, and
 * may carry a cookie after that.  A cookie reply is magic, version, kind 3,
 * the init's nonce and the cookie. */
#define MPT_HS_INIT_LEN 73
#define MPT_HS_NONCE_OFFSET 9
#define MPT_HS_NONCE_LEN 16
#define MPT_HS_COOKIE_REPLY_LEN 38
#define MPT_HS_NOT_INIT 0
#define MPT_HS_INIT 1                /* without a cookie */
#define MPT_HS_INIT_COOKIE 2         /* with one: its last MPT_COOKIE_LEN bytes */
#define MPT_HS_COOKIE_REPLY 3        /* kind 3, MPT_HS_COOKIE_REPLY_LEN bytes */
#define MPT_HS_COOKIE_NONCE_OFFSET 6

struct mpt_cookie_jar {
    uint8_t secret[2][16];
    uint8_t source_key[16];   /* keys mpt_cookie_source_slot */
    int32_t current;          /* index of the secret new cookies use */
    int32_t keyed;            /* mpt_cookie_init succeeded: else no cookies at all */
    int64_t rotated_ns;       /* when secret[current] was drawn */
};

/* Draw the secrets (getrandom; may wait for the kernel's pool at boot).
 * Returns 0, or -1 if the kernel gives no randomness: then the jar makes no
 * cookie and accepts none. */
int mpt_cookie_init(struct mpt_cookie_jar *j, int64_t now_ns);
/* The rate-limit bucket (0..nslots-1) of a source address: a keyed hash of
 * the IPv4 address or the IPv6 /64, the port left out. */
uint32_t mpt_cookie_source_slot(const struct mpt_cookie_jar *j, const void *addr,
                                uint32_t addrlen, uint32_t nslots);
/* The cookie for a source address (a struct sockaddr_in or sockaddr_in6 of
 * addrlen bytes) at time now_ns.  Returns 0, or -1 if the address is not
 * one of those or the jar has no secrets (out untouched). */
int mpt_cookie_make(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                    int64_t now_ns, uint8_t out[MPT_COOKIE_LEN]);
/* 1 if `cookie` is the one of this address under the current or the
 * previous secret, else 0. */
int mpt_cookie_check(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                     int64_t now_ns, const uint8_t cookie[MPT_COOKIE_LEN]);
/* Which of the MPT_HS_* a handshake body of len bytes is (its length and
 * first bytes only; nothing is verified). */
int mpt_hs_kind(const uint8_t *body, size_t len);
/* The cookie reply to an init (body of len bytes) from addr: writes
 * MPT_HS_COOKIE_REPLY_LEN bytes to out; returns 0, or -1 if there is none
 * to give (not an init, or an address mpt_cookie_make refuses). */
int mpt_cookie_reply(struct mpt_cookie_jar *j, const void *addr, uint32_t addrlen,
                     int64_t now_ns, const uint8_t *body, size_t len,
                     uint8_t out[MPT_HS_COOKIE_REPLY_LEN]);
/* SipHash-2-4, 64-bit (out_len 8) or 128-bit (out_len 16) output. */
void mpt_siphash(const uint8_t key[16], const uint8_t *in, size_t len, uint8_t *out,
                 size_t out_len);

#endif
