/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* The residual MLP's layers as forward / backward pairs (llm.c style): plain single-threaded
 * float32 loops over caller-provided buffers, no allocation, no pool.  How each one is cut
 * into work items for the thread pool is in tasks.h; the model that chains them, in mlp.h.
 * Linear layers are GEMMs (tasks.h cuts them); their bias gradient is rg_colsum. */
#ifndef RG_LAYERS_H
#define RG_LAYERS_H

#include <stdint.h>

/* out[b, p, :] = tok[x[b, p]] + pos[p].  out (B, L, d), x (B, L), tok (V+1, d), pos (L, d). */
void rg_embedding_forward(float *out, const int32_t *x, const float *tok, const float *pos,
                          int64_t B, int64_t L, int64_t d);
/* dtok, dpos are overwritten.  dout (B, L, d), dtok (n_tok, d), dpos (L, d). */
void rg_embedding_backward(float *dtok, float *dpos, const float *dout, const int32_t *x,
                           int64_t B, int64_t L, int64_t d, int64_t n_tok);

/* LayerNorm over the last axis, eps 1e-5 (two-pass statistics, 8-lane sums).
 * out, inp (N, C); w, b (C); mean, rstd (N) saved for backward.  No output aliases an input. */
void rg_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int64_t N, int64_t C);
/* dinp (N, C) is accumulated into (+=) from dout (N, C), inp (N, C), w (C), mean, rstd (N). */
void rg_layernorm_backward_input(float *dinp, const float *dout, const float *inp,
                                 const float *w, const float *mean, const float *rstd,
                                 int64_t N, int64_t C);
/* dw, db (C) over columns [c0, c1) (overwritten) = sums over the N rows of dout * xhat, dout. */
void rg_layernorm_backward_params(float *dw, float *db, const float *dout, const float *inp,
                                  const float *mean, const float *rstd, int64_t N, int64_t C,
                                  int64_t c0, int64_t c1);

/* A bias gradient is a column sum: dbias[c0..c1) (overwritten) = sums over the N rows of
 * g (N, C), in row order. */
void rg_colsum(float *dbias, const float *g, int64_t N, int64_t C, int64_t c0, int64_t c1);

/* out (N, C) += bias (C) broadcast over the rows (the bias of a GEMM's output). */
void rg_bias_forward(float *out, const float *bias, int64_t N, int64_t C);

/* Exact GELU x Φ(x), Φ(x) = (1 + erf(x/√2))/2 (to |ΔΦ| <= 2e-7, see layers.c), of
 * x = inp + bias: out = gelu(x) and deriv = gelu'(x) saved for backward (deriv may alias inp).
 * out, deriv, inp (N, C); bias (C). */
void rg_gelu_forward(float *out, float *deriv, const float *inp, const float *bias, int64_t N,
                     int64_t C);
/* dinp (n) = dout * deriv (overwritten; may alias dout). */
void rg_gelu_backward(float *dinp, const float *deriv, const float *dout, int64_t n);

/* out (N, C) = inp (N, C) + bias (C) broadcast (the fc2 GEMM then accumulates the residual
 * branch into out).  Its backward is the identity on the stream plus rg_colsum for bias. */
void rg_residual_forward(float *out, const float *inp, const float *bias, int64_t N, int64_t C);

/* Masked softmax cross-entropy.  logits (N, V) are replaced by probabilities; returns the sum
 * of -log p[target] over rows with mask != 0 in *nll_sum and their number in *count.
 * targets (N) in [0, V) at masked rows (others ignored), mask (N). */
void rg_crossentropy_forward(float *logits, double *nll_sum, int64_t *count,
                             const int32_t *targets, const uint8_t *mask, int64_t N,
                             int64_t V);
/* probs (N, V) -> dlogits in place: (p - onehot(target)) * scale at masked rows, 0 elsewhere
 * (scale = 1/count gives the gradient of the mean). */
void rg_crossentropy_backward(float *probs, const int32_t *targets, const uint8_t *mask,
                              int64_t N, int64_t V, float scale);

#endif
