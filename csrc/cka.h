/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* Linear CKA between layers, biased and debiased, without n x n matrices when n > f.
 *
 * Every layer X_l (n x f_l, float32/float64, any strides) is copied into one float64 workspace
 * Z (n x W doubles, W = sum f_l) and column-centred there (a layer of extreme range is also
 * scaled by a power of two: CKA is invariant to each layer's scale): side by side,
 * [X_0 | X_1 | ...], for the feature-space route, one layer after the other for the
 * sample-space route (each GEMM then streams one contiguous block).  The workspace is asked
 * for transparent huge pages (memory.h): faulting in ~137 MB page by page cost ~10% of a
 * 13 x 2048 x 512 call.  With
 * K_l = X_l X_l^T (doubly centred, since X_l is centred):
 *   C_lm  = <K_l, K_m>_F = ||X_l^T X_m||_F^2
 *   d_l   = diag(K_l) (row norms squared),  F_l = 1^T d_l = ||X_l||_F^2
 * biased:   CKA_lm = C_lm / sqrt(C_ll C_mm)
 * debiased: HSIC_u(l, m) = [C_lm - d_l.d_m + F_l F_m / ((n-1)(n-2)) - 2 d_l.d_m / (n-2)]
 *                          / (n (n-3))
 *   the unbiased HSIC of Song et al. (2012) with K~ = K - diag(K): since K 1 = 0 for centred
 *   X, K~_l 1 = -d_l, 1^T K~_l 1 = -F_l and tr(K~_l K~_m) = <K_l, K_m> - d_l.d_m, so only d
 *   and C are needed.
 *   CKA_lm = HSIC_u(l, m) / sqrt(HSIC_u(l, l) HSIC_u(m, m)).
 * C comes from whichever is cheaper (multiply-adds):
 *   feature space: one GEMM X_l^T [X_l | X_{l+1} ...] per layer, n f_l (needed widths);
 *   sample space: the upper triangle of every K_l once, n^2 W / 2 in all, in row blocks of r
 *     rows held for all layers at once (n_layers r n doubles, <= 32 MB unless r hits its floor
 *     of 16): the r x r diagonal block by dsyrk (its upper triangle), the block right of it by
 *     dgemm, with <K_l, K_m> summed over blocks by dsyrks of the flattened blocks
 *     (n_layers^2 n^2 / 4; a diagonal block counts twice, less its diagonal).
 * Threads (pool.h): the layers' loads, the sample-space route's per-layer Gram blocks of each
 * row block (a dgemm and a dsyrk per layer, into that layer's slice of the block scratch: no
 * extra memory) and the feature-space route's per-layer GEMMs (in lanes, one per thread up to
 * one per layer, each with its own T of max_l f_l x (partners' widths) doubles, while the
 * lanes' T fit in 1/8 of Z) are work items; the sums over layers that make C run on the
 * calling thread in the single-threaded order.  Every value comes from the same calls in the
 * same order on any number of threads: the same bits (cka.c states what the pool's flushing
 * of subnormals means here).
 * Undefined values are NaN: a layer that is constant (zero after centring) for the biased
 * estimator, HSIC_u(l, l) <= 0 for the debiased one. */
#ifndef RG_CKA_H
#define RG_CKA_H

#include <stdint.h>
#include "rank.h"

/* CKA between n_layers representations (all with the same row count n; debiased needs
 * n >= 4).  consecutive: only the pairs (l, l) and (l, l+1) are needed (drift profile); else
 * all.  n_threads: threads of a pool (pool.h) started for the call (capped at RG_POOL_MAX;
 * calls below ~4M multiply-adds run on the calling thread); the result does not depend on it.
 * out: n_layers x n_layers, symmetric; entries not computed are NaN.  *sample_space
 * (optional) reports the route; *bad gets the layer holding a NaN/Inf on RG_ERR_NOT_FINITE. */
int rg_cka_layers(const rg_strided_matrix *layers /* n_layers */, int64_t n_layers,
                  int consecutive, int debiased, int n_threads,
                  double *out /* n_layers x n_layers */, int *sample_space, int64_t *bad);

#endif
