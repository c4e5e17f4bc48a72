/* AdamW and the fused training loop (see train.h). */
#include "train.h"

#include <math.h>

#include "chain.h"
#include "rng.h"
#include "status.h"
#include "tasks.h"

/* The parameter arena is cut into ARENA_CHUNKS fixed chunks for the optimizer's passes (the
 * gradient norm's partial sums are then added in chunk order). */
#define ARENA_CHUNKS 64

/* Sum of squares of g (n), in double. */
static double rg_sumsq(const float *g, int64_t n)
{
    /* blocks of float partial sums (vectorisable) folded into a double total */
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
        int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
        float s = 0.0f;
        for (int64_t i = i0; i < i1; i++) s += g[i] * g[i];
        total += s;
    }
    return total;
}

int rg_adamw_update(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                    const rg_adamw_opts *o, int64_t t, double grad_scale)
{
    /* torch.optim.AdamW (single tensor path): p *= 1 - lr*wd; m = lerp(m, g, 1-b1);
     * v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
    const float decay = (float)(1.0 - lr * o->weight_decay), w1 = (float)(1.0 - o->beta1);
    const float b2 = (float)o->beta2, w2 = (float)(1.0 - o->beta2), fe = (float)o->eps;
    const float step_size = (float)(lr / (1.0 - pow(o->beta1, (double)t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(o->beta2, (double)t));
    const float gs = (float)grad_scale;
    const int scale = grad_scale != 1.0;
    float bad = 0.0f; /* p - p is 0 for finite p and NaN otherwise: a branch-free check */
    for (int64_t i = 0; i < n; i++) {
        float gi = scale ? g[i] * gs : g[i];
        float pi = p[i] * decay;
        float mi = m[i] + w1 * (gi - m[i]);
        float vi = b2 * v[i] + w2 * (gi * gi);
        pi -= step_size * (mi / (sqrtf(vi) / bc2_sqrt + fe));
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        bad += pi - pi;
    }
    return bad != 0.0f;
}

/* ---- the optimizer's passes over the arena, by fixed chunks -------------------------------- */

typedef struct {
    const rg_train_arenas *ar;
    int64_t n, t;
    double lr, scale;
    const rg_adamw_opts *o;
    int bad[ARENA_CHUNKS];
    double sumsq[ARENA_CHUNKS];
} adamw_job;

/* chunk boundaries on multiples of 16 floats (one cache line) */
static rg_range arena_chunk(const adamw_job *j, int64_t i)
{
    return rg_range_of((rg_cut){j->n, ARENA_CHUNKS, 16}, i);
}

static void sumsq_item(const void *arg, int64_t i)
{
    adamw_job *j = (adamw_job *)arg; /* writes its own slot */
    const rg_range r = arena_chunk(j, i);
    j->sumsq[i] = rg_sumsq(j->ar->grads + r.b0, r.b1 - r.b0);
}

static void adamw_item(const void *arg, int64_t i)
{
    adamw_job *j = (adamw_job *)arg; /* writes its own slot */
    const rg_range r = arena_chunk(j, i);
    const rg_train_arenas *a = j->ar;
    j->bad[i] = r.b0 < r.b1 ? rg_adamw_update(a->params + r.b0, a->grads + r.b0,
                                              a->adam_m + r.b0, a->adam_v + r.b0, r.b1 - r.b0,
                                              j->lr, j->o, j->t, j->scale)
                            : 0;
}

/* torch.nn.utils.clip_grad_norm_: the factor max / (norm + 1e-6) on the gradient, clamped
 * to 1; 1 without clipping. */
static double clip_scale(rg_pool *pool, adamw_job *job, double max_grad_norm)
{
    if (!(max_grad_norm > 0.0)) return 1.0;
    rg_task t = {sumsq_item, job, ARENA_CHUNKS};
    rg_pool_run(pool, &t, 1);
    double total = 0.0;
    for (int q = 0; q < ARENA_CHUNKS; q++) total += job->sumsq[q];
    double coef = max_grad_norm / (sqrt(total) + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

/* AdamW at step t over the whole arena; 1 if a parameter became non-finite. */
static int adamw_step(rg_pool *pool, adamw_job *job, double lr, int64_t t, double scale)
{
    job->lr = lr;
    job->t = t;
    job->scale = scale;
    rg_task task = {adamw_item, job, ARENA_CHUNKS};
    rg_pool_run(pool, &task, 1);
    int nonfinite = 0;
    for (int q = 0; q < ARENA_CHUNKS; q++) nonfinite |= job->bad[q];
    return nonfinite;
}

/* ---- the training batch -------------------------------------------------------------------- */

/* Batch sampling, one item per row chunk (each row has its own Philox streams). */
typedef struct {
    const rg_source *src;
    int64_t L;
    uint64_t seed, step;
    double rate;
    int64_t span;
    int32_t *tokens, *masked;
    uint8_t *mask;
    rg_cut rows;
} batch_job;

static void batch_rows(const batch_job *j, int64_t b0, int64_t b1)
{
    rg_rng rng;
    for (int64_t b = b0; b < b1; b++) {
        uint64_t index = (j->step << 32) | (uint64_t)b;
        int32_t *tokens = j->tokens + b * j->L;
        rg_rng_init(&rng, j->seed, RG_DOMAIN_TRAIN_SAMPLE, index);
        rg_sample_sequence(j->src->thr, j->src->H, &rng, j->L, tokens);
        if (j->src->emit) {
            rg_rng_init(&rng, j->seed, RG_DOMAIN_TRAIN_EMIT, index);
            rg_emit_sequence(j->src->emit, j->src->V, &rng, j->L, tokens, tokens);
        }
        rg_rng_init(&rng, j->seed, RG_DOMAIN_TRAIN_MASK, index);
        rg_mask_sequence(&rng, tokens, j->L, j->rate, j->span, (int32_t)j->src->V,
                         j->masked + b * j->L, j->mask + b * j->L);
    }
}

static void batch_item(const void *arg, int64_t i)
{
    const batch_job *j = arg;
    const rg_range r = rg_range_of(j->rows, i);
    batch_rows(j, r.b0, r.b1);
}

void rg_train_batch(const rg_source *src, int64_t L, int64_t B, uint64_t seed, uint64_t step,
                    double rate, int64_t span, int32_t *tokens, int32_t *masked, uint8_t *mask)
{
    batch_job j = {src, L, seed, step, rate, span, tokens, masked, mask, {B, 1, 1}};
    batch_rows(&j, 0, B);
}

/* ---- the loop ------------------------------------------------------------------------------ */

int rg_train_steps(rg_pool *pool, const rg_mlp_config *c, const rg_train_arenas *ar, void *ws,
                   int64_t B, const rg_source *src, uint64_t seed, uint64_t step0, int64_t k,
                   const double *lrs, const rg_train_opts *o, double *losses, int64_t *n_done,
                   int *bad)
{
    int64_t n_params;
    rg_mlp_acts a;
    *n_done = 0;
    *bad = 0;
    if (rg_mlp_check_config(c, &n_params) != RG_OK || rg_mlp_acts_of(c, B, ws, &a) != RG_OK ||
        src->V != c->V)
        return RG_ERR_VALUE;
    adamw_job job = {ar, n_params, 0, 0.0, 1.0, &o->adamw, {0}, {0}};
    batch_job bj = {src, c->L, seed, 0, o->mask_rate, o->mask_span, a.tokens, a.masked,
                    a.mask, rg_rows_of(B, 4 * c->L)};
    for (int64_t i = 0; i < k; i++) {
        const uint64_t s = step0 + (uint64_t)i;
        double nll = 0.0;
        int64_t count = 0;
        bj.step = s;
        rg_task t = {batch_item, &bj, bj.rows.chunks};
        rg_pool_run(pool, &t, 1);
        int status = rg_mlp_forward(pool, c, ar->params, ws, B, a.masked, NULL, NULL, 0,
                                    a.tokens, a.mask, &nll, &count);
        if (status != RG_OK) return status;
        losses[i] = count > 0 ? nll / (double)count : NAN;
        if (!isfinite(losses[i])) { *bad = 1; return RG_ERR_NOT_FINITE; }
        status = rg_mlp_backward(pool, c, ar->params, ar->grads, ws, B, a.masked, a.tokens,
                                 a.mask, count);
        if (status != RG_OK) return status;
        double scale = clip_scale(pool, &job, o->max_grad_norm);
        int nonfinite = adamw_step(pool, &job, lrs[i], (int64_t)s + 1, scale);
        *n_done = i + 1;
        if (nonfinite) { *bad = 2; return RG_ERR_NOT_FINITE; }
    }
    return RG_OK;
}
