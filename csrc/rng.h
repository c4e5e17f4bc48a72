/* Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Random123").
 *
 * A stream is keyed by (seed, domain, index): the key is the 64-bit seed, the counter holds the
 * 64-bit index, a 32-bit domain tag (what the numbers are for) and a 32-bit block number.  Any
 * draw is a pure function of (seed, domain, index, position in stream), so results never depend
 * on chunking or on how many threads run. */
#ifndef RG_RNG_H
#define RG_RNG_H

#include <math.h>
#include <stdint.h>

/* Domain tags: one per use, so that no two uses ever share a stream. */
enum {
    RG_DOMAIN_SAMPLE = 1,      /* chain.sample: index = sequence number */
    RG_DOMAIN_MASK = 2,        /* mask_tokens: index = sequence number */
    RG_DOMAIN_INIT = 3,        /* parameter initialisation: index = tensor number */
    RG_DOMAIN_TRAIN_SAMPLE = 4,/* training batches: index = (step << 32) | row */
    RG_DOMAIN_TRAIN_MASK = 5,
    RG_DOMAIN_CHAIN = 6,       /* random chain construction */
    RG_DOMAIN_EMIT = 7,        /* hidden Markov tasks: tokens from the states sampled under
                                  RG_DOMAIN_SAMPLE with the same index */
    RG_DOMAIN_TRAIN_EMIT = 8   /* the same for RG_DOMAIN_TRAIN_SAMPLE */
};

typedef struct {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t buf[4];
    int pos; /* next unused word of buf; 4 = empty */
} rg_rng;

static inline void rg_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2],
                                    uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static inline void rg_rng_init(rg_rng *r, uint64_t seed, uint32_t domain, uint64_t index)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = (uint32_t)index;
    r->ctr[1] = (uint32_t)(index >> 32);
    r->ctr[2] = domain;
    r->ctr[3] = 0;
    r->pos = 4;
}

static inline uint32_t rg_rng_u32(rg_rng *r)
{
    if (r->pos == 4) {
        rg_philox4x32_10(r->ctr, r->key, r->buf);
        r->ctr[3]++;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline double rg_rng_uniform(rg_rng *r)
{
    uint64_t hi = rg_rng_u32(r) >> 5; /* 27 bits */
    uint64_t lo = rg_rng_u32(r) >> 6; /* 26 bits */
    return (double)((hi << 26) | lo) * (1.0 / 9007199254740992.0);
}

/* Standard normal by Box-Muller.  The second variate is dropped so that every draw consumes a
 * fixed number of words (4) and draw k of a stream is a function of k alone. */
static inline double rg_rng_normal(rg_rng *r)
{
    double u1 = 1.0 - rg_rng_uniform(r); /* (0, 1]: log is finite */
    double u2 = rg_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
