/* Per-packet authenticated encryption of tunnel payloads (OpenSSL 3 EVP).
 *
 * The 12-byte nonce is 4 zero bytes followed by the 64-bit tunnel sequence,
 * big-endian, so a key must never seal two packets with the same sequence:
 * the sender never wraps the sequence and rekeys with a fresh key per
 * session.  Each struct holds two cipher contexts, one for sealing and one
 * for opening, so one struct serves both directions of a tunnel; it is used
 * by one thread at a time.  All allocation happens in new/set_key: sealing
 * and opening a packet only re-initialise the contexts with the nonce.
 * A struct without a key (new, or after a failed set_key) refuses to seal
 * or open anything: it never falls back to plaintext.
 */
#ifndef MPT_AEAD_H
#define MPT_AEAD_H

#include <stdint.h>

#define MPT_CIPHER_NONE 0
#define MPT_CIPHER_AES256GCM 1
#define MPT_CIPHER_CHACHA20POLY1305 2
#define MPT_KEY_LEN 32
#define MPT_TAG_LEN 16

struct mpt_aead;

/* NULL on allocation failure. */
struct mpt_aead *mpt_aead_new(void);
/* Frees the contexts, wiping the key schedules; NULL is allowed. */
void mpt_aead_free(struct mpt_aead *a);
/* key is MPT_KEY_LEN bytes (ignored for NONE, may be NULL).  0 ok; -1 unknown
 * cipher, NULL key or OpenSSL failure, which leaves the struct keyless.
 * NONE makes seal/open no-ops with no tag.  May be called again to rekey. */
int mpt_aead_set_key(struct mpt_aead *a, int cipher, const uint8_t *key);
/* The MPT_CIPHER_* in use, or -1 if no key is set. */
int mpt_aead_cipher(const struct mpt_aead *a);
/* Encrypt buf[0..len) in place and write the MPT_TAG_LEN-byte tag at buf+len
 * (the caller guarantees room).  aad is authenticated, not encrypted.
 * 0 ok, -1 failure (no key, len too large, OpenSSL error). */
int mpt_aead_seal(struct mpt_aead *a, uint64_t seq, const uint8_t *aad, uint32_t aadlen,
                  uint8_t *buf, uint32_t len);
/* buf[0..len) is ciphertext followed by the tag (len includes the tag).  On
 * success decrypts in place and returns the plaintext length len-MPT_TAG_LEN;
 * -1 if len < MPT_TAG_LEN, no key, or not authentic (buf contents are then
 * unspecified).  For NONE returns len unchanged. */
int mpt_aead_open(struct mpt_aead *a, uint64_t seq, const uint8_t *aad, uint32_t aadlen,
                  uint8_t *buf, uint32_t len);

#endif
