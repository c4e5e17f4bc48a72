/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* Hidden Markov tasks: a chain over H hidden states (T (H, H) row-major, initial law pi (H))
 * emits one token per step through E (H, V), E[h*V + v] = P(token v | state h).  The exact
 * posterior of every token given the visible ones, by forward-backward over the hidden states
 * with per-step normalisation (no underflow at any length, nor for emission probabilities
 * down to the smallest subnormal: tiny columns are scaled by a power of two).  Sampling:
 * chain.h, rg_source. */
#ifndef RG_HMM_H
#define RG_HMM_H

#include <stdint.h>

/* Doubles of workspace rg_hmm_posterior needs for n sequences of length L. */
int64_t rg_hmm_work_size(int64_t H, int64_t V, int64_t n, int64_t L);

/* out (n, L, V): P(x_t = v | the visible tokens of sequence i), one-hot at visible positions
 * (mask 0).  Tokens at visible positions must lie in [0, V) (unchecked: the caller validates);
 * values at masked positions are ignored.  work: rg_hmm_work_size doubles.  The GEMMs need n,
 * L*H and L*V below 2^31.
 * RG_ERR_ZERO_PROB: the visible tokens of sequence *bad_seq are impossible (first seen at
 * *bad_pos). */
int rg_hmm_posterior(const double *T, const double *pi, const double *E, int64_t H, int64_t V,
                     const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                     double *out, double *work, int64_t *bad_seq, int64_t *bad_pos);

/* Sum over masked positions of -log posterior(true token), and their count, in chunks of
 * sequences with one workspace allocation.  tokens hold the true tokens everywhere, in [0, V)
 * (unchecked). */
int rg_hmm_bayes_nll(const double *T, const double *pi, const double *E, int64_t H, int64_t V,
                     const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                     double *nll_sum, int64_t *count, int64_t *bad_seq, int64_t *bad_pos);

#endif
