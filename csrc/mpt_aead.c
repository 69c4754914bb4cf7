/* Per-packet AEAD through OpenSSL 3 EVP: see mpt_aead.h.
 *
 * Why the per-packet path allocates nothing: set_key fetches the cipher and
 * initialises both contexts with it and the key, which creates the
 * provider's cipher context and key schedule.  Per packet,
 * EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc) keeps that context
 * (no cipher given: nothing is fetched, reset or created) and the provider's
 * init only copies the nonce; update/final work in the context, and the tag
 * moves through an OSSL_PARAM on the stack.
 */
#include "mpt_aead.h"

#include <limits.h>
#include <stdlib.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define NONCE_LEN 12
#define NO_KEY (-1)

struct mpt_aead {
    int cipher;                 /* MPT_CIPHER_*, or NO_KEY */
    EVP_CIPHER *evp;            /* fetched in set_key; NULL for NONE and NO_KEY */
    EVP_CIPHER_CTX *seal_ctx;   /* keyed for encryption */
    EVP_CIPHER_CTX *open_ctx;   /* keyed for decryption */
};

struct mpt_aead *mpt_aead_new(void)
{
    struct mpt_aead *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->cipher = NO_KEY;
    a->seal_ctx = EVP_CIPHER_CTX_new();
    a->open_ctx = EVP_CIPHER_CTX_new();
    if (a->seal_ctx == NULL || a->open_ctx == NULL) {
        mpt_aead_free(a);
        return NULL;
    }
    return a;
}

/* Back to keyless.  Resetting a context frees the provider's context, which
 * wipes the key schedule (OPENSSL_clear_free in the providers). */
static void drop_key(struct mpt_aead *a)
{
    EVP_CIPHER_CTX_reset(a->seal_ctx);
    EVP_CIPHER_CTX_reset(a->open_ctx);
    EVP_CIPHER_free(a->evp);
    a->evp = NULL;
    a->cipher = NO_KEY;
}

void mpt_aead_free(struct mpt_aead *a)
{
    if (a == NULL)
        return;
    EVP_CIPHER_CTX_free(a->seal_ctx);
    EVP_CIPHER_CTX_free(a->open_ctx);
    EVP_CIPHER_free(a->evp);
    OPENSSL_cleanse(a, sizeof(*a));
    free(a);
}

int mpt_aead_set_key(struct mpt_aead *a, int cipher, const uint8_t *key)
{
    const char *name;

    /* Whatever happens, the old key is gone: a failed rekey must not leave
     * the previous key (or plaintext) in use. */
    drop_key(a);
    switch (cipher) {
    case MPT_CIPHER_NONE:
        a->cipher = MPT_CIPHER_NONE;
        return 0;
    case MPT_CIPHER_AES256GCM:
        name = "AES-256-GCM";
        break;
    case MPT_CIPHER_CHACHA20POLY1305:
        name = "ChaCha20-Poly1305";
        break;
    default:
        return -1;
    }
    if (key == NULL)
        return -1;
    a->evp = EVP_CIPHER_fetch(NULL, name, NULL);
    if (a->evp == NULL || EVP_CIPHER_get_key_length(a->evp) != MPT_KEY_LEN
        || EVP_CIPHER_get_iv_length(a->evp) != NONCE_LEN
        || !EVP_CipherInit_ex2(a->seal_ctx, a->evp, key, NULL, 1, NULL)
        || !EVP_CipherInit_ex2(a->open_ctx, a->evp, key, NULL, 0, NULL)) {
        drop_key(a);
        ERR_clear_error();
        return -1;
    }
    a->cipher = cipher;
    return 0;
}

int mpt_aead_cipher(const struct mpt_aead *a)
{
    return a->cipher;
}

/* 4 zero bytes || big-endian seq. */
static void make_nonce(uint8_t nonce[NONCE_LEN], uint64_t seq)
{
    for (int i = 0; i < 4; i++)
        nonce[i] = 0;
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

/* Restart ctx for one packet and feed the aad. */
static int start_packet(EVP_CIPHER_CTX *ctx, int enc, uint64_t seq, const uint8_t *aad,
                        uint32_t aadlen)
{
    uint8_t nonce[NONCE_LEN];
    int outl;

    make_nonce(nonce, seq);
    if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc))
        return -1;
    if (aadlen != 0 && !EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aadlen))
        return -1;
    return 0;
}

/* Lengths EVP can take as int, pointers present where bytes are promised. */
static int args_ok(const uint8_t *aad, uint32_t aadlen, const uint8_t *buf, uint32_t len)
{
    return buf != NULL && (aad != NULL || aadlen == 0) && aadlen <= INT_MAX
           && len <= INT_MAX - MPT_TAG_LEN;
}

int mpt_aead_seal(struct mpt_aead *a, uint64_t seq, const uint8_t *aad, uint32_t aadlen,
                  uint8_t *buf, uint32_t len)
{
    int outl;

    if (a->cipher == MPT_CIPHER_NONE)
        return 0;
    if (a->cipher == NO_KEY || !args_ok(aad, aadlen, buf, len))
        return -1;
    if (start_packet(a->seal_ctx, 1, seq, aad, aadlen) != 0)
        goto fail;
    if (len != 0 && (!EVP_CipherUpdate(a->seal_ctx, buf, &outl, buf, (int)len)
                     || outl != (int)len))
        goto fail;
    /* Both ciphers are stream modes: final emits no bytes, only the tag. */
    if (!EVP_CipherFinal_ex(a->seal_ctx, buf + len, &outl) || outl != 0)
        goto fail;
    OSSL_PARAM tag[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + len, MPT_TAG_LEN),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_CIPHER_CTX_get_params(a->seal_ctx, tag))
        goto fail;
    return 0;
fail:
    ERR_clear_error();
    return -1;
}

int mpt_aead_open(struct mpt_aead *a, uint64_t seq, const uint8_t *aad, uint32_t aadlen,
                  uint8_t *buf, uint32_t len)
{
    uint8_t none[MPT_TAG_LEN];
    int outl;

    if (a->cipher == MPT_CIPHER_NONE)
        return len <= INT_MAX ? (int)len : -1;
    if (a->cipher == NO_KEY || len < MPT_TAG_LEN
        || !args_ok(aad, aadlen, buf, len - MPT_TAG_LEN))
        return -1;
    uint32_t plen = len - MPT_TAG_LEN;
    if (start_packet(a->open_ctx, 0, seq, aad, aadlen) != 0)
        goto fail;
    OSSL_PARAM tag[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + plen, MPT_TAG_LEN),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_CIPHER_CTX_set_params(a->open_ctx, tag))
        goto fail;
    if (plen != 0 && (!EVP_CipherUpdate(a->open_ctx, buf, &outl, buf, (int)plen)
                      || outl != (int)plen))
        goto fail;
    /* Final checks the tag; it emits no bytes, `none` is only somewhere to point. */
    if (!EVP_CipherFinal_ex(a->open_ctx, none, &outl) || outl != 0)
        goto fail;
    return (int)plen;
fail:
    ERR_clear_error();
    return -1;
}
