/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* Training the residual MLP (mlp.h): AdamW with PyTorch's semantics and the fused loop that
 * samples each step's batch from the chain (chain.h: the one model-side kernel that sees the
 * data kernel), runs forward and backward, clips and updates, all on the pool with the same
 * bits for any thread count (the optimizer's passes cut the arena into 64 fixed chunks). */
#ifndef RG_TRAIN_H
#define RG_TRAIN_H

#include <stdint.h>

#include "chain.h"
#include "mlp.h"
#include "pool.h"

typedef struct {
    double beta1, beta2;    /* AdamW moment decays, in [0, 1) */
    double eps;             /* AdamW denominator term, > 0 */
    double weight_decay;    /* decoupled, >= 0 */
} rg_adamw_opts;

/* One AdamW step with PyTorch semantics (decoupled decay, bias correction at step t >= 1) on
 * p, m, v (n); the gradient used is grad_scale * g.  Returns 1 if any updated parameter is
 * non-finite, else 0. */
int rg_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                    const rg_adamw_opts *o, int64_t t, double grad_scale);

/* The training batch of step `step`: row b's states are sampled from stream
 * (seed, RG_DOMAIN_TRAIN_SAMPLE, (step << 32) | b), its tokens (if the source emits) from
 * (seed, RG_DOMAIN_TRAIN_EMIT, same index), and it is masked with stream
 * (seed, RG_DOMAIN_TRAIN_MASK, same index), mask id V.
 * tokens, masked (B, L) int32, mask (B, L). */
void rg_train_batch(const rg_source *src, int64_t L, int64_t B, uint64_t seed, uint64_t step,
                    double rate, int64_t span, int32_t *tokens, int32_t *masked, uint8_t *mask);

typedef struct {
    rg_adamw_opts adamw;
    double max_grad_norm;   /* <= 0: no clipping */
    double mask_rate;       /* in [0, 1] */
    int64_t mask_span;      /* >= 1 */
} rg_train_opts;

/* The model's four parameter-shaped arenas (n_params floats each, distinct). */
typedef struct {
    float *params, *grads, *adam_m, *adam_v;
} rg_train_arenas;

/* k training steps s = step0 .. step0+k-1: batch (rg_train_batch with step s), forward,
 * backward, optional clipping, AdamW at t = s + 1 with learning rate lrs[i].  losses (k).
 * *n_done counts completed updates.  RG_ERR_NOT_FINITE if the loss of step s is not finite
 * (*bad = 1, no update applied) or a parameter became non-finite (*bad = 2, update applied);
 * *n_done then locates the step (s = step0 + *n_done for bad = 1, s = step0 + *n_done - 1
 * for bad = 2).  RG_ERR_VALUE if the config or the workspace (for B rows) is invalid, or if
 * src->V is not the model's V. */
int rg_train_steps(rg_pool *pool, const rg_mlp_config *c, const rg_train_arenas *ar, void *ws,
                   int64_t B, const rg_source *src, uint64_t seed, uint64_t step0, int64_t k,
                   const double *lrs, const rg_train_opts *o, double *losses, int64_t *n_done,
                   int *bad);

#endif
