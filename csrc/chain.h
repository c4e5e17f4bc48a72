/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* Markov chains: validation, stationary law, spectrum, sampling, masking and the exact
 * masked-token posterior.  All matrices are row-major; T[i*V + j] = P(x_{t+1}=j | x_t=i). */
#ifndef RG_CHAIN_H
#define RG_CHAIN_H

#include <stdint.h>
#include "rng.h"

/* Largest state count: token ids (and the mask id V) must fit int32 and the (V, V) matrix
 * must be addressable; 65535 keeps V*V*8 bytes below 2^35. */
#define RG_MAX_STATES 65535

/* T must be finite, non-negative, rows summing to 1 within tol.  On failure, *bad_row and
 * *bad_col (-1 for a row-sum failure) locate the first offending entry, *bad_value holds it (or
 * the row sum). */
int rg_chain_validate(const double *T, int64_t V, double tol,
                      int64_t *bad_row, int64_t *bad_col, double *bad_value);

/* Stationary law pi (V) of T.  Requires exactly one closed communicating class (else
 * RG_ERR_REDUCIBLE with *n_closed and one state of each of the first two closed classes in
 * example[0..1]).  pi is computed by GTH state reduction on that class (no subtractions, so it
 * is accurate to a few ulps even for nearly decomposable chains); transient states get 0. */
int rg_chain_stationary(const double *T, int64_t V, double *pi,
                        int64_t *n_closed, int64_t example[2]);

/* Detailed balance within tol: *reversible = 1 iff T[i,j] > 0 <=> T[j,i] > 0 for all i != j and
 * there are weights w > 0 with |log(w_i T[i,j] / (w_j T[j,i]))| <= tol on every such pair (the
 * products agree to relative ~tol).  w is built in log space along a spanning tree of each
 * connected component (Kolmogorov's criterion then reduces to the non-tree pairs), so no weight
 * underflows however widely the stationary law is spread; a NaN tol accepts nothing. */
int rg_chain_reversible(const double *T, int64_t V, double tol, int *reversible);

/* Eigenvalues of T, unsorted.  If rg_chain_reversible(T, V, tol) holds (*symmetric = 1), they are
 * those of the symmetric S[i,j] = sqrt(T[i,j] T[j,i]), S[i,i] = T[i,i] (= D^1/2 T D^-1/2 for an
 * exactly reversible T, D = diag(w)), by LAPACK dsyevd: real (im = 0), accurate to ~1e-15
 * absolute for any spread of the stationary law; and every eigenvalue of T lies within
 * ~tol/2 of one of them (Bauer-Fike in the D^1/2 basis, where the deviation of T from the
 * reversible matrix D^-1/2 S D^1/2 is entrywise at most ~tol/2 times S).  Otherwise
 * (*symmetric = 0) LAPACK dgeev on T: backward stable, but the eigenvalue error is rounding
 * times the eigenvalue's condition number, which for non-normal T can be huge (up to
 * sqrt(max w / min w) for nearly reversible chains).  *info gets LAPACK's info on failure. */
int rg_chain_eigenvalues(const double *T, int64_t V, double tol, double *re, double *im,
                         int *symmetric, int64_t *info);

/* Inverse-CDF tables for sampling: thr is (V+1) x V, rows 0..V-1 for T, row V for the initial
 * law.  thr[r*V + j] = round(2^32 * sum_{k<=j} p_k), the last column forced to 2^32: a 32-bit
 * uniform u selects the first j with u < thr[j], so probabilities are resolved to 2^-32. */
void rg_sampler_thresholds(const double *T, const double *init, int64_t V, uint64_t *thr);

/* Inverse-CDF tables of the H rows of an emission matrix E (H, V), as above: emit (H, V). */
void rg_emission_thresholds(const double *E, int64_t H, int64_t V, uint64_t *emit);

/* What the samplers draw: a chain over H states (thr: (H+1, H) from rg_sampler_thresholds)
 * whose states are the tokens (emit = NULL, V = H), or a hidden Markov task (hmm.h) whose
 * state h emits token v with probability E[h, v] (emit: rg_emission_thresholds, V tokens). */
typedef struct {
    const uint64_t *thr, *emit;
    int64_t H, V;
} rg_source;

/* One sequence of length L from the stream rng. */
void rg_sample_sequence(const uint64_t *thr, int64_t V, rg_rng *rng, int64_t L, int32_t *out);

/* n sequences; sequence i uses stream (seed, RG_DOMAIN_SAMPLE, first + i), so any split of the
 * index range over calls or threads gives the same tokens. out: (n, L). */
int rg_chain_sample(const uint64_t *thr, int64_t V, uint64_t seed, uint64_t first,
                    int64_t n, int64_t L, int32_t *out);

/* tokens[t] drawn from emission row states[t], one word of rng each (L); in place when
 * tokens == states. */
void rg_emit_sequence(const uint64_t *emit, int64_t V, rg_rng *rng, int64_t L,
                      const int32_t *states, int32_t *tokens);

/* n token sequences (n, L) of a source: the states exactly as rg_chain_sample, then, if the
 * source emits, tokens from stream (seed, RG_DOMAIN_EMIT, first + i).  states (n, L) receives
 * the hidden states when not NULL (it must be NULL for a chain). */
int rg_source_sample(const rg_source *src, uint64_t seed, uint64_t first, int64_t n, int64_t L,
                     int32_t *tokens, int32_t *states);

/* Mask one sequence: each position starts a span of `span` masked positions with probability
 * rate/span (span = 1: independent Bernoulli(rate) per position); if nothing was masked, one
 * span start is drawn uniformly.  masked = tokens with masked positions set to mask_id;
 * mask[t] = 1 where masked. */
void rg_mask_sequence(rg_rng *rng, const int32_t *tokens, int64_t L, double rate, int64_t span,
                      int32_t mask_id, int32_t *masked, uint8_t *mask);

/* n sequences (n, L); sequence i uses stream (seed, RG_DOMAIN_MASK, first + i). */
void rg_mask_tokens(const int32_t *tokens, int64_t n, int64_t L, double rate, int64_t span,
                    uint64_t seed, uint64_t first, int32_t mask_id,
                    int32_t *masked, uint8_t *mask);

/* Scale a row (n) of a forward-backward message to sum 1; returns the sum (0: the row was all
 * zero and stays so).  Shared by the chain and hidden-Markov posteriors. */
static inline double rg_normalize_row(double *row, int64_t n)
{
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) s += row[j];
    if (s > 0.0) {
        const double inv = 1.0 / s;
        for (int64_t j = 0; j < n; j++) row[j] *= inv;
    }
    return s;
}

/* Exact posterior of every position given the visible ones (mask[i*L+t] == 0), by
 * forward-backward with per-step normalisation.  Chains of n sequences are processed together,
 * one dgemm per step.  tokens at visible positions must lie in [0, V) (unchecked: the caller
 * validates); values at masked positions are ignored.  out: (n, L, V), one-hot at visible
 * positions.  work: 2*n*V doubles.
 * RG_ERR_ZERO_PROB: the visible tokens of sequence *bad_seq are impossible (first seen at
 * *bad_pos). */
int rg_chain_posterior(const double *T, const double *pi, int64_t V,
                       const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                       double *out, double *work, int64_t *bad_seq, int64_t *bad_pos);

/* Sum over masked positions of -log posterior(true token), and their count, computed in chunks
 * with one workspace allocation.  tokens must hold the true tokens everywhere, in [0, V)
 * (unchecked).  A true token with posterior 0 contributes +inf. */
int rg_chain_bayes_nll(const double *T, const double *pi, int64_t V,
                       const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                       double *nll_sum, int64_t *count, int64_t *bad_seq, int64_t *bad_pos);

#endif
