/* The residual MLP: layout, initialisation, workspace, forward and backward (see mlp.h). */
#include "mlp.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "rng.h"
#include "status.h"
#include "tasks.h"

/* ------------------------------------------------------------------------------------------ */
/* Layout                                                                                      */

/* a * b, or -1 if either is negative or the product exceeds RG_MLP_MAX_DIM^2 / 4 (~2^60). */
static int64_t mul_checked(int64_t a, int64_t b)
{
    if (a < 0 || b < 0) return -1;
    if (a != 0 && b > ((int64_t)1 << 60) / a) return -1;
    return a * b;
}

static int64_t add_checked(int64_t a, int64_t b)
{
    if (a < 0 || b < 0 || a > ((int64_t)1 << 60) - b) return -1;
    return a + b;
}

/* The sizes a shape is written in (DIM_ONE = 0: the absent second dimension of a vector). */
typedef enum { DIM_ONE, DIM_V, DIM_V1, DIM_L, DIM_d, DIM_D, DIM_m } dim;
/* Where a tensor lives: before the blocks, once in every block, after the blocks. */
typedef enum { PART_EMBED, PART_BLOCK, PART_HEAD, N_PARTS } part;

typedef struct {
    const char *name;  /* state_dict name (in a block: after "blocks.<k>."); NULL ends a part */
    int block_ln;      /* present only with block LayerNorms */
    dim shape[2];      /* a vector: {n} (the second dim DIM_ONE) */
    dim fan_in;
    rg_init_kind init;
    size_t field;      /* its pointer in rg_mlp_params (embed, head) or rg_mlp_block (block) */
} tensor_row;

#define IN_P(f) offsetof(rg_mlp_params, f)
#define IN_B(f) offsetof(rg_mlp_block, f)

/* The layout, in state_dict order: the embed rows, the block rows for k = 0..K-1, the head
 * rows.  Read by the sizes, the pointers, the init and (rg_mlp_tensor_at) Python. */
static const tensor_row LAYOUT[N_PARTS][7] = {
    [PART_EMBED] = {
        /* name           ln shape            fan_in   init             pointer */
        {"tok_emb",        0, {DIM_V1, DIM_d}, DIM_ONE, RG_INIT_NORMAL,  IN_P(tok_emb)},
        {"pos_emb",        0, {DIM_L, DIM_d},  DIM_ONE, RG_INIT_NORMAL,  IN_P(pos_emb)},
    }, [PART_BLOCK] = {
        {"ln.weight",      1, {DIM_D},         DIM_ONE, RG_INIT_ONES,    IN_B(ln_w)},
        {"ln.bias",        1, {DIM_D},         DIM_ONE, RG_INIT_ZEROS,   IN_B(ln_b)},
        {"fc1.weight",     0, {DIM_m, DIM_D},  DIM_D,   RG_INIT_UNIFORM, IN_B(fc1_w)},
        {"fc1.bias",       0, {DIM_m},         DIM_D,   RG_INIT_UNIFORM, IN_B(fc1_b)},
        {"fc2.weight",     0, {DIM_D, DIM_m},  DIM_m,   RG_INIT_UNIFORM, IN_B(fc2_w)},
        {"fc2.bias",       0, {DIM_D},         DIM_m,   RG_INIT_UNIFORM, IN_B(fc2_b)},
    }, [PART_HEAD] = {
        {"ln_f.weight",    0, {DIM_D},         DIM_ONE, RG_INIT_ONES,    IN_P(lnf_w)},
        {"ln_f.bias",      0, {DIM_D},         DIM_ONE, RG_INIT_ZEROS,   IN_P(lnf_b)},
        {"unembed.weight", 0, {DIM_V, DIM_d},  DIM_d,   RG_INIT_UNIFORM, IN_P(unemb_w)},
        {"unembed.bias",   0, {DIM_V},         DIM_d,   RG_INIT_UNIFORM, IN_P(unemb_b)},
    },
};

static int64_t dim_of(const rg_mlp_config *c, dim x)
{
    switch (x) {
    case DIM_V: return c->V;
    case DIM_V1: return c->V + 1;
    case DIM_L: return c->L;
    case DIM_d: return c->d;
    case DIM_D: return mul_checked(c->L, c->d);
    case DIM_m: return c->m;
    default: return 1;
    }
}

static int present(const rg_mlp_config *c, const tensor_row *r)
{
    return c->block_ln || !r->block_ln;
}

/* Floats of a table row (-1 on overflow). */
static int64_t row_floats(const rg_mlp_config *c, const tensor_row *r)
{
    return mul_checked(dim_of(c, r->shape[0]), dim_of(c, r->shape[1]));
}

/* Floats (-1 on overflow) and present tensors of a part (of one block for PART_BLOCK). */
static int64_t part_floats(const rg_mlp_config *c, part where, int64_t *n_tensors)
{
    int64_t n = 0, count = 0;
    for (const tensor_row *r = LAYOUT[where]; r->name; r++)
        if (present(c, r)) {
            n = add_checked(n, row_floats(c, r));
            count++;
        }
    if (n_tensors) *n_tensors = count;
    return n;
}

int rg_mlp_check_config(const rg_mlp_config *c, int64_t *n_params)
{
    if (c->V < 2 || c->L < 1 || c->d < 1 || c->m < 1 || c->K < 0) return RG_ERR_VALUE;
    if (c->V + 1 > RG_MLP_MAX_DIM || c->m > RG_MLP_MAX_DIM) return RG_ERR_VALUE;
    int64_t D = mul_checked(c->L, c->d);
    if (D < 0 || D > RG_MLP_MAX_DIM) return RG_ERR_VALUE;
    int64_t blk = part_floats(c, PART_BLOCK, NULL);
    int64_t n = add_checked(part_floats(c, PART_EMBED, NULL), mul_checked(blk, c->K));
    n = add_checked(n, part_floats(c, PART_HEAD, NULL));
    if (blk < 0 || n < 0) return RG_ERR_VALUE;
    *n_params = n;
    return RG_OK;
}

int64_t rg_mlp_n_tensors(const rg_mlp_config *c)
{
    int64_t embed, block, head;
    part_floats(c, PART_EMBED, &embed);
    part_floats(c, PART_BLOCK, &block);
    part_floats(c, PART_HEAD, &head);
    return embed + c->K * block + head;
}

/* Tensor j (counting present rows) of a part that starts at float `off` of the arena; k is
 * the block number (-1 outside the blocks). */
static void tensor_of_part(const rg_mlp_config *c, part where, int64_t j, int64_t k,
                           int64_t off, rg_mlp_tensor *t)
{
    const tensor_row *r = LAYOUT[where];
    for (;; r++) {
        if (!present(c, r)) continue;
        if (j-- == 0) break;
        off += row_floats(c, r);
    }
    if (k >= 0) snprintf(t->name, sizeof t->name, "blocks.%lld.%s", (long long)k, r->name);
    else snprintf(t->name, sizeof t->name, "%s", r->name);
    t->ndim = r->shape[1] == DIM_ONE ? 1 : 2;
    t->shape[0] = dim_of(c, r->shape[0]);
    t->shape[1] = dim_of(c, r->shape[1]);
    t->offset = off;
    t->size = row_floats(c, r);
    t->fan_in = dim_of(c, r->fan_in);
    t->init = r->init;
}

void rg_mlp_tensor_at(const rg_mlp_config *c, int64_t i, rg_mlp_tensor *t)
{
    int64_t n_embed, n_block;
    const int64_t embed = part_floats(c, PART_EMBED, &n_embed);
    const int64_t block = part_floats(c, PART_BLOCK, &n_block);
    const int64_t head = n_embed + c->K * n_block; /* index of the first head tensor */
    if (i < n_embed) {
        tensor_of_part(c, PART_EMBED, i, -1, 0, t);
    } else if (i < head) {
        const int64_t k = (i - n_embed) / n_block;
        tensor_of_part(c, PART_BLOCK, (i - n_embed) % n_block, k, embed + k * block, t);
    } else {
        tensor_of_part(c, PART_HEAD, i - head, -1, embed + c->K * block, t);
    }
}

/* The pointer of table row r in the struct at base: a float * member, by its offset. */
static float **member(void *base, const tensor_row *r)
{
    return (float **)((char *)base + r->field);
}

void rg_mlp_params_of(const rg_mlp_config *c, float *arena, rg_mlp_params *p)
{
    float *q = arena;
    for (const tensor_row *r = LAYOUT[PART_EMBED]; r->name; q += row_floats(c, r), r++)
        *member(p, r) = q;
    p->blocks = q;
    p->block_stride = part_floats(c, PART_BLOCK, NULL);
    q += c->K * p->block_stride;
    for (const tensor_row *r = LAYOUT[PART_HEAD]; r->name; q += row_floats(c, r), r++)
        *member(p, r) = q;
}

rg_mlp_block rg_mlp_block_of(const rg_mlp_config *c, const rg_mlp_params *p, int64_t k)
{
    rg_mlp_block b = {0};
    float *q = p->blocks + k * p->block_stride;
    for (const tensor_row *r = LAYOUT[PART_BLOCK]; r->name; r++)
        if (present(c, r)) {
            *member(&b, r) = q;
            q += row_floats(c, r);
        }
    return b;
}

void rg_mlp_init(const rg_mlp_config *c, float *params, uint64_t seed)
{
    const int64_t nt = rg_mlp_n_tensors(c);
    rg_mlp_tensor t;
    rg_rng rng;
    for (int64_t i = 0; i < nt; i++) {
        rg_mlp_tensor_at(c, i, &t);
        float *p = params + t.offset;
        rg_rng_init(&rng, seed, RG_DOMAIN_INIT, (uint64_t)i);
        double bound = 1.0 / sqrt((double)t.fan_in);
        for (int64_t j = 0; j < t.size; j++) {
            switch (t.init) {
            case RG_INIT_NORMAL: p[j] = (float)rg_rng_normal(&rng); break;
            case RG_INIT_UNIFORM:
                p[j] = (float)(bound * (2.0 * rg_rng_uniform(&rng) - 1.0));
                break;
            case RG_INIT_ONES: p[j] = 1.0f; break;
            case RG_INIT_ZEROS: p[j] = 0.0f; break;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Workspace                                                                                   */

/* Buffers cut one after the other from a 64-byte aligned base, each rounded up to 64 bytes;
 * with base NULL only the bytes are counted. */
typedef struct {
    char *next;     /* NULL when measuring */
    int64_t used;   /* bytes, with the alignment slack; -1 after an overflow */
} carver;

static void *take(carver *cv, int64_t count, int64_t item_bytes)
{
    int64_t bytes = add_checked(mul_checked(count, item_bytes), 63);
    if (bytes < 0 || cv->used < 0) {
        cv->used = -1;
        return NULL;
    }
    bytes -= bytes % 64;
    cv->used = add_checked(cv->used, bytes);
    void *p = cv->next;
    if (cv->next) cv->next += bytes;
    return p;
}

static int64_t carve(const rg_mlp_config *c, int64_t B, void *base, rg_mlp_acts *a)
{
    const int64_t D = c->L * c->d, K = c->K, m = c->m, BL = mul_checked(B, c->L);
    const int64_t BD = mul_checked(B, D), Bm = mul_checked(B, m), n_ln = c->block_ln ? K : 0;
    carver cv = {base ? (char *)(((uintptr_t)base + 63) & ~(uintptr_t)63) : NULL, 64};
    a->z = take(&cv, mul_checked(K + 1, BD), 4);
    a->xn = take(&cv, mul_checked(n_ln, BD), 4);
    a->ln_mean = take(&cv, mul_checked(n_ln, B), 4);
    a->ln_rstd = take(&cv, mul_checked(n_ln, B), 4);
    a->pre = take(&cv, mul_checked(K, Bm), 4);
    a->h = take(&cv, mul_checked(K, Bm), 4);
    a->y = take(&cv, BD, 4);
    a->f_mean = take(&cv, B, 4);
    a->f_rstd = take(&cv, B, 4);
    a->logits = take(&cv, mul_checked(BL, c->V), 4);
    a->dz = take(&cv, BD, 4);
    a->dx = take(&cv, BD, 4);
    a->dh = take(&cv, Bm, 4);
    a->tokens = take(&cv, BL, 4);
    a->masked = take(&cv, BL, 4);
    a->mask = take(&cv, BL, 1);
    return cv.used;
}

int64_t rg_mlp_workspace_bytes(const rg_mlp_config *c, int64_t B)
{
    rg_mlp_acts a;
    if (B < 1) return -1;
    return carve(c, B, NULL, &a);
}

int rg_mlp_acts_of(const rg_mlp_config *c, int64_t B, void *ws, rg_mlp_acts *a)
{
    return carve(c, B, ws, a) < 0 ? RG_ERR_VALUE : RG_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Forward                                                                                     */

/* z_{k+1} = z_k + fc2(gelu(fc1(LN_k(z_k)))) over the B rows of the workspace. */
static void block_forward(rg_pool *pool, const rg_mlp_config *c, const rg_mlp_block *W,
                          const rg_mlp_acts *a, int64_t k, int64_t B)
{
    const int64_t D = c->L * c->d, m = c->m, BD = B * D;
    const float *zk = a->z + k * BD, *in = zk;
    float *pre = a->pre + k * B * m, *h = a->h + k * B * m, *znext = a->z + (k + 1) * BD;
    rg_task t;
    rg_gemm_job g;
    if (c->block_ln) {
        rg_ln_fwd_job lj;
        float *xn = a->xn + k * BD;
        t = rg_ln_fwd_task(&lj, xn, a->ln_mean + k * B, a->ln_rstd + k * B, zk, W->ln_w,
                           W->ln_b, B, D);
        rg_pool_run(pool, &t, 1);
        in = xn;
    }
    /* pre (B, m) = in (B, D) fc1_w^T */
    t = rg_gemm_task(&g, CblasNoTrans, CblasTrans, B, m, D, in, D, W->fc1_w, D, 0.0f, pre, m);
    rg_pool_run(pool, &t, 1);
    rg_block_rows_job rj;
    t = rg_block_rows_task(&rj, h, pre, znext, W->fc1_b, zk, W->fc2_b, B, m, D);
    rg_pool_run(pool, &t, 1);
    /* z_{k+1} (B, D) += h (B, m) fc2_w^T */
    t = rg_gemm_task(&g, CblasNoTrans, CblasTrans, B, D, m, h, m, W->fc2_w, m, 1.0f, znext, D);
    rg_pool_run(pool, &t, 1);
}

/* y = LN_f(z_K); logits (B*L, V) = y (B*L, d) unemb_w^T + unemb_b (the bias by cj). */
static void head_forward(rg_pool *pool, const rg_mlp_config *c, const rg_mlp_params *P,
                         const rg_mlp_acts *a, int64_t B, rg_ce_job *cj)
{
    const int64_t L = c->L, d = c->d, D = L * d, V = c->V;
    rg_task t;
    rg_ln_fwd_job lj;
    rg_gemm_job g;
    t = rg_ln_fwd_task(&lj, a->y, a->f_mean, a->f_rstd, a->z + c->K * B * D, P->lnf_w,
                       P->lnf_b, B, D);
    rg_pool_run(pool, &t, 1);
    /* the unembedding is shared over positions */
    t = rg_gemm_task(&g, CblasNoTrans, CblasTrans, B * L, V, d, a->y, d, P->unemb_w, d, 0.0f,
                     a->logits, V);
    rg_pool_run(pool, &t, 1);
    t = rg_ce_task(cj, RG_CE_BIAS);
    rg_pool_run(pool, &t, 1);
}

int rg_mlp_forward(rg_pool *pool, const rg_mlp_config *c, const float *params, void *ws,
                   int64_t B, const int32_t *x, float *logits, float *stream,
                   int64_t stream_stride, const int32_t *targets, const uint8_t *mask,
                   double *nll_sum, int64_t *count)
{
    const int64_t L = c->L, BD = B * L * c->d;
    rg_mlp_params P;
    rg_mlp_acts a;
    rg_ce_job cj;
    rg_mlp_params_of(c, (float *)params, &P);
    if (rg_mlp_acts_of(c, B, ws, &a) != RG_OK) return RG_ERR_VALUE;
    rg_ce_job_init(&cj, a.logits, P.unemb_b, targets, mask, B * L, c->V, 0.0f);

    rg_embedding_forward(a.z, x, P.tok_emb, P.pos_emb, B, L, c->d);
    for (int64_t k = 0; k < c->K; k++) {
        const rg_mlp_block W = rg_mlp_block_of(c, &P, k);
        block_forward(pool, c, &W, &a, k, B);
    }
    head_forward(pool, c, &P, &a, B, &cj);
    if (stream)
        for (int64_t k = 0; k <= c->K; k++)
            memcpy(stream + k * stream_stride, a.z + k * BD, sizeof(float) * (size_t)BD);
    if (logits) memcpy(logits, a.logits, sizeof(float) * (size_t)(B * L * c->V));
    if (targets && mask) {
        rg_task t = rg_ce_task(&cj, RG_CE_FORWARD);
        rg_pool_run(pool, &t, 1);
        rg_ce_sums(&cj, nll_sum, count);
    }
    return RG_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Backward                                                                                    */

/* From the probabilities in a->logits: the unembedding's gradients and dz = d LN_f input. */
static void head_backward(rg_pool *pool, const rg_mlp_config *c, const rg_mlp_params *P,
                          const rg_mlp_params *G, const rg_mlp_acts *a, int64_t B,
                          rg_ce_job *cj)
{
    const int64_t L = c->L, d = c->d, D = L * d, V = c->V;
    rg_task t[3];
    rg_gemm_job g1, g2;
    rg_colsum_job cs;
    rg_ln_bwd_job lj;
    t[0] = rg_ce_task(cj, RG_CE_BACKWARD);
    rg_pool_run(pool, t, 1);
    /* dW (V, d) = dlogits^T y; db = column sums; dy (B*L, d) = dlogits W */
    t[0] = rg_gemm_task(&g1, CblasTrans, CblasNoTrans, V, d, B * L, a->logits, V, a->y, d,
                        0.0f, G->unemb_w, d);
    t[1] = rg_colsum_task(&cs, G->unemb_b, a->logits, B * L, V);
    t[2] = rg_gemm_task(&g2, CblasNoTrans, CblasNoTrans, B * L, d, V, a->logits, V,
                        P->unemb_w, d, 0.0f, a->dx, d);
    rg_pool_run(pool, t, 3);
    int n = rg_ln_bwd_tasks(t, &lj, a->dz, 1, G->lnf_w, G->lnf_b, a->dx, a->z + c->K * B * D,
                            P->lnf_w, a->f_mean, a->f_rstd, B, D);
    rg_pool_run(pool, t, n);
}

/* Block k backward: its parameter gradients into dW, and dz (the gradient of z_{k+1} on
 * entry) becomes that of z_k. */
static void block_backward(rg_pool *pool, const rg_mlp_config *c, const rg_mlp_block *W,
                           const rg_mlp_block *dW, const rg_mlp_acts *a, int64_t k, int64_t B)
{
    const int64_t D = c->L * c->d, m = c->m, BD = B * D;
    const float *zk = a->z + k * BD, *pre = a->pre + k * B * m, *h = a->h + k * B * m;
    const float *in = c->block_ln ? a->xn + k * BD : zk;
    rg_task t[3];
    rg_gemm_job g1, g2;
    rg_colsum_job cs;
    /* z_{k+1} = z_k + fc2_b + h fc2_w^T: dz passes through, the branch adds to it below.
     * dfc2_w (D, m) = dz^T h; dfc2_b = column sums of dz; dh (B, m) = dz fc2_w */
    t[0] = rg_gemm_task(&g1, CblasTrans, CblasNoTrans, D, m, B, a->dz, D, h, m, 0.0f,
                        dW->fc2_w, m);
    t[1] = rg_colsum_task(&cs, dW->fc2_b, a->dz, B, D);
    t[2] = rg_gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, m, D, a->dz, D, W->fc2_w, m, 0.0f,
                        a->dh, m);
    rg_pool_run(pool, t, 3);
    rg_gelu_bwd_job gj;
    t[0] = rg_gelu_bwd_task(&gj, a->dh, pre, B, m);
    rg_pool_run(pool, t, 1);
    /* dfc1_w (m, D) = dh^T in; dfc1_b = column sums of dh; d(in) (B, D) = dh fc1_w, into
     * dx for the LayerNorm, or accumulated straight into dz without one */
    t[0] = rg_gemm_task(&g1, CblasTrans, CblasNoTrans, m, D, B, a->dh, m, in, D, 0.0f,
                        dW->fc1_w, D);
    t[1] = rg_colsum_task(&cs, dW->fc1_b, a->dh, B, m);
    t[2] = c->block_ln ? rg_gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, D, m, a->dh, m,
                                      W->fc1_w, D, 0.0f, a->dx, D)
                       : rg_gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, D, m, a->dh, m,
                                      W->fc1_w, D, 1.0f, a->dz, D);
    rg_pool_run(pool, t, 3);
    if (c->block_ln) {
        rg_ln_bwd_job lj;
        int n = rg_ln_bwd_tasks(t, &lj, a->dz, 0, dW->ln_w, dW->ln_b, a->dx, zk, W->ln_w,
                                a->ln_mean + k * B, a->ln_rstd + k * B, B, D);
        rg_pool_run(pool, t, n);
    }
}

int rg_mlp_backward(rg_pool *pool, const rg_mlp_config *c, const float *params, float *grads,
                    void *ws, int64_t B, const int32_t *x, const int32_t *targets,
                    const uint8_t *mask, int64_t count)
{
    rg_mlp_params P, G;
    rg_mlp_acts a;
    rg_ce_job cj;
    if (count < 1) return RG_ERR_VALUE;
    rg_mlp_params_of(c, (float *)params, &P);
    rg_mlp_params_of(c, grads, &G);
    if (rg_mlp_acts_of(c, B, ws, &a) != RG_OK) return RG_ERR_VALUE;
    rg_ce_job_init(&cj, a.logits, NULL, targets, mask, B * c->L, c->V,
                   (float)(1.0 / (double)count));

    head_backward(pool, c, &P, &G, &a, B, &cj);
    for (int64_t k = c->K - 1; k >= 0; k--) {
        const rg_mlp_block W = rg_mlp_block_of(c, &P, k), dW = rg_mlp_block_of(c, &G, k);
        block_backward(pool, c, &W, &dW, &a, k, B);
    }
    rg_embedding_backward(G.tok_emb, G.pos_emb, a.dz, x, B, c->L, c->d, c->V + 1);
    return RG_OK;
}
