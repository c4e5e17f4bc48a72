/* Residual MLP on the concatenated stream (see DESIGN.md, "Model"), llm.c style: one float32
 * parameter arena with named offsets, gradient and AdamW arenas of the same layout, one
 * activation workspace per batch size, a forward/backward function pair per layer kind, and a
 * fused training loop.
 *
 *   z_0[b, p, :] = tok_emb[x[b, p]] + pos_emb[p]                   (B, L, d) = (B, D)
 *   block k:     z <- z + fc2(gelu(fc1(LN_k(z))))                   LN_k omitted if !block_ln
 *   y = LN_f(z_K) viewed as (B*L, d);  logits = y unembed^T + bias  (B*L, V)
 *   loss = mean over masked positions of -log softmax(logits)[target]
 *
 * All matrices are row-major; Linear weights are PyTorch's (out, in).  Every function returns
 * an RG_* status or nothing; none allocates memory: all scratch (activations, gradient
 * buffers, the training batch) lives in the caller's workspace.
 *
 * The model functions run on a thread pool (pool.h; NULL: the calling thread) and give the
 * same bits for any number of threads: every layer is cut into items by its shapes alone (GEMMs
 * into column or row blocks, row passes into row chunks, parameter-gradient sums into column
 * chunks), each item computed single-threaded in a fixed order. */
#ifndef RG_MLP_H
#define RG_MLP_H

#include <stdint.h>

#include "pool.h"

typedef struct {
    int64_t V;      /* states; token ids lie in [0, V], V being the MASK id */
    int64_t L;      /* sequence length */
    int64_t d;      /* per-position width */
    int64_t m;      /* hidden width */
    int64_t K;      /* depth (number of blocks) */
    int block_ln;   /* 1: pre-LayerNorm blocks; 0: blocks without LN (no ln params) */
} rg_mlp_config;

/* Pointers into a parameter-shaped arena (params, grads, AdamW m or v). */
typedef struct {
    float *tok_emb;   /* (V+1, d) */
    float *pos_emb;   /* (L, d) */
    float *blocks;    /* K blocks of block_stride floats, see rg_mlp_block */
    int64_t block_stride;
    float *lnf_w;     /* (D) */
    float *lnf_b;     /* (D) */
    float *unemb_w;   /* (V, d) */
    float *unemb_b;   /* (V) */
} rg_mlp_view;

typedef struct {
    float *ln_w;  /* (D), NULL if !block_ln */
    float *ln_b;  /* (D), NULL if !block_ln */
    float *fc1_w; /* (m, D) */
    float *fc1_b; /* (m) */
    float *fc2_w; /* (D, m) */
    float *fc2_b; /* (D) */
} rg_mlp_block;

/* Largest matrix dimension (V+1, D = L*d, m, B*L): CBLAS takes 32-bit ints.  Element counts
 * and offsets are int64 and checked against 2^60. */
#define RG_MLP_MAX_DIM 2147483647LL

/* RG_ERR_VALUE if a size is < 1 (V < 2) or a derived size overflows; else fills *n_params. */
int rg_mlp_check_config(const rg_mlp_config *c, int64_t *n_params);

/* Number of tensors in state_dict order: 2 + K*(6 or 4) + 4. */
int64_t rg_mlp_n_tensors(const rg_mlp_config *c);

/* offset[i], size[i] (in floats) of tensor i, state_dict order (n_tensors entries each). */
void rg_mlp_layout(const rg_mlp_config *c, int64_t *offset, int64_t *size);

void rg_mlp_view_of(const rg_mlp_config *c, float *arena, rg_mlp_view *v);
rg_mlp_block rg_mlp_block_of(const rg_mlp_config *c, const rg_mlp_view *v, int64_t k);

/* Reproducible initialisation: tensor i draws from Philox stream (seed, RG_DOMAIN_INIT, i).
 * Embeddings ~ N(0, 1) (nn.Embedding), Linear weight and bias ~ U(-1/sqrt(in), 1/sqrt(in))
 * (nn.Linear), LayerNorm weight 1 and bias 0 (nn.LayerNorm). params: (n_params). */
void rg_mlp_init(const rg_mlp_config *c, float *params, uint64_t seed);

/* Bytes of workspace for batches of up to B sequences; -1 if it overflows. */
int64_t rg_mlp_workspace_bytes(const rg_mlp_config *c, int64_t B);

/* ---- layers: forward / backward pairs ---------------------------------------------------- */

/* out[b, p, :] = tok[x[b, p]] + pos[p].  out (B, L, d), x (B, L), tok (V+1, d), pos (L, d). */
void rg_embedding_forward(float *out, const int32_t *x, const float *tok, const float *pos,
                          int64_t B, int64_t L, int64_t d);
/* dtok, dpos are overwritten.  dout (B, L, d), dtok (V+1, d), dpos (L, d). */
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

/* Linear layers are GEMMs (cut into pieces for the pool in mlp.c); a bias gradient is a column
 * sum: dbias[c0..c1) (overwritten) = sums over the N rows of g (N, OC), in row order. */
void rg_colsum(float *dbias, const float *g, int64_t N, int64_t OC, int64_t c0, int64_t c1);

/* Exact GELU x Φ(x), Φ(x) = (1 + erf(x/√2))/2 (to |ΔΦ| <= 2e-7, see mlp.c), of x = inp + bias:
 * out = gelu(x) and deriv = gelu'(x) saved for backward (deriv may alias inp).
 * out, deriv, inp (N, C); bias (C) or NULL. */
void rg_gelu_forward(float *out, float *deriv, const float *inp, const float *bias, int64_t N,
                     int64_t C);
/* dinp (n) = dout * deriv (overwritten; may alias dout). */
void rg_gelu_backward(float *dinp, const float *deriv, const float *dout, int64_t n);

/* out (N, C) = inp (N, C) + bias (C) broadcast (the fc2 GEMM then accumulates the residual
 * branch into out). */
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

/* ---- model ----------------------------------------------------------------------------- */

/* Forward of B sequences x (B, L) with ids in [0, V].  Optional outputs (NULL to skip):
 * logits (B, L, V) raw logits; stream: z_k (B, L, d) written to stream + k * stream_stride for
 * k = 0..K (floats between layers, >= B*D).  If targets (B, L) and mask (B, L) are given, the
 * cross-entropy sums go to *nll_sum, *count and the workspace is ready for rg_mlp_backward. */
int rg_mlp_forward(rg_pool *pool, const rg_mlp_config *c, const float *params, void *ws,
                   int64_t B, const int32_t *x, float *logits, float *stream, int64_t stream_stride,
                   const int32_t *targets, const uint8_t *mask, double *nll_sum,
                   int64_t *count);

/* Gradient of the mean masked CE; needs the preceding rg_mlp_forward on the same ws, x (B, L),
 * targets (B, L), mask (B, L), and its count (> 0).  grads (n_params) is overwritten entirely
 * (each gradient tensor is written once: no zeroing pass over the arena). */
int rg_mlp_backward(rg_pool *pool, const rg_mlp_config *c, const float *params,
                    float *grads, void *ws, int64_t B, const int32_t *x, const int32_t *targets, const uint8_t *mask,
                    int64_t count);

/* Sum of squares of g (n), in double. */
double rg_sumsq(const float *g, int64_t n);

/* One AdamW step with PyTorch semantics (decoupled decay, bias correction at step t >= 1) on
 * p, m, v (n); the gradient used is grad_scale * g.  Returns 1 if any updated parameter is
 * non-finite, else 0. */
int rg_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                    double beta1, double beta2, double eps, double weight_decay, int64_t t,
                    double grad_scale);

/* The training batch of step `step`: row b is sampled from stream
 * (seed, RG_DOMAIN_TRAIN_SAMPLE, (step << 32) | b) and masked with stream
 * (seed, RG_DOMAIN_TRAIN_MASK, (step << 32) | b), mask id V.
 * thr: rg_sampler_thresholds of the chain; tokens, masked (B, L) int32, mask (B, L). */
void rg_mlp_train_batch(const uint64_t *thr, int64_t V, int64_t L, int64_t B, uint64_t seed,
                        uint64_t step, double rate, int64_t span, int32_t *tokens,
                        int32_t *masked, uint8_t *mask);

typedef struct {
    double beta1, beta2, eps, weight_decay;
    double max_grad_norm;   /* <= 0: no clipping */
    double mask_rate;
    int64_t mask_span;
} rg_train_opts;

/* k training steps s = step0 .. step0+k-1: batch (rg_mlp_train_batch with step s), forward,
 * backward, optional clipping, AdamW at t = s + 1 with learning rate lrs[i].  losses (k).
 * *n_done counts completed updates.  RG_ERR_NOT_FINITE if the loss of step s is not finite
 * (*bad = 1, no update applied) or a parameter became non-finite (*bad = 2, update applied);
 * *n_done then locates the step (s = step0 + *n_done for bad = 1, s = step0 + *n_done - 1
 * for bad = 2). */
int rg_mlp_train_steps(rg_pool *pool, const rg_mlp_config *c, float *params, float *grads,
                       float *adam_m, float *adam_v, void *ws, int64_t B, const uint64_t *thr,
                       uint64_t seed, uint64_t step0, int64_t k, const double *lrs, const rg_train_opts *o,
                       double *losses, int64_t *n_done, int *bad);

#endif
