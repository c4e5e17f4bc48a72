/* The layers cut into work items (see tasks.h). */
#include "tasks.h"

#include <string.h>

#include "layers.h"

rg_cut rg_rows_of(int64_t N, int64_t C)
{
    return (rg_cut){N, rg_chunk_count(N, (RG_ROW_MIN_ELEMS + C - 1) / C, RG_ROW_MAX_CHUNKS), 1};
}

/* The columns of a pass over an (N, C) array (parameter-gradient sums). */
static rg_cut cols_of(int64_t N, int64_t C)
{
    /* whole cache lines (16 floats) per chunk: no two threads write one line of dw, db */
    rg_cut r = {C, rg_chunk_count(C, (RG_ROW_MIN_ELEMS + N - 1) / N, RG_ROW_MAX_CHUNKS), 16};
    r.chunks = rg_chunk_count(C, 64, r.chunks);
    return r;
}

rg_range rg_range_of(rg_cut cut, int64_t i)
{
    return (rg_range){rg_chunk_begin(cut.n, cut.chunks, i, cut.align),
                      rg_chunk_begin(cut.n, cut.chunks, i + 1, cut.align)};
}

/* ---- GEMM ---------------------------------------------------------------------------------- */

static void gemm_item(const void *arg, int64_t i)
{
    const rg_gemm_job *g = arg;
    int64_t len = g->along_n ? g->N : g->M;
    int64_t b0 = rg_chunk_begin(len, g->pieces, i, 16);
    int64_t b1 = rg_chunk_begin(len, g->pieces, i + 1, 16);
    if (b1 <= b0) return;
    const float *A = g->A, *B = g->B;
    float *C = g->C;
    int64_t M = g->M, N = g->N;
    if (g->along_n) {
        N = b1 - b0;
        B += g->tb == CblasNoTrans ? b0 : b0 * g->ldb;
        C += b0;
    } else {
        M = b1 - b0;
        A += g->ta == CblasNoTrans ? b0 * g->lda : b0;
        C += b0 * g->ldc;
    }
    RG_BLAS(cblas_sgemm)(CblasRowMajor, g->ta, g->tb, (int)M, (int)N, (int)g->K, 1.0f, A,
                         (int)g->lda, B, (int)g->ldb, g->beta, C, (int)g->ldc);
}

rg_task rg_gemm_task(rg_gemm_job *g, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
                     int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    g->ta = ta; g->tb = tb; g->M = M; g->N = N; g->K = K;
    g->A = A; g->lda = lda; g->B = B; g->ldb = ldb; g->beta = beta; g->C = C; g->ldc = ldc;
    g->along_n = N > M;
    double flops = 2.0 * (double)M * (double)N * (double)K;
    int64_t by_work = flops >= RG_GEMM_MAX_PIECES * RG_GEMM_MIN_FLOPS
                          ? RG_GEMM_MAX_PIECES : (int64_t)(flops / RG_GEMM_MIN_FLOPS);
    int64_t by_size = rg_chunk_count(g->along_n ? N : M, 32, RG_GEMM_MAX_PIECES);
    g->pieces = by_work < 1 ? 1 : by_work < by_size ? by_work : by_size;
    return (rg_task){gemm_item, g, g->pieces};
}

/* ---- LayerNorm ----------------------------------------------------------------------------- */

static void ln_fwd_item(const void *arg, int64_t i)
{
    const rg_ln_fwd_job *j = arg;
    const rg_range r = rg_range_of(j->rows, i);
    rg_layernorm_forward(j->out + r.b0 * j->C, j->mean + r.b0, j->rstd + r.b0,
                         j->inp + r.b0 * j->C, j->w, j->b, r.b1 - r.b0, j->C);
}

static void ln_bwd_rows_item(const void *arg, int64_t i)
{
    const rg_ln_bwd_job *j = arg;
    const rg_range r = rg_range_of(j->rows, i);
    float *dinp = j->dinp + r.b0 * j->C;
    if (j->zero_dinp) memset(dinp, 0, sizeof(float) * (size_t)((r.b1 - r.b0) * j->C));
    rg_layernorm_backward_input(dinp, j->dout + r.b0 * j->C, j->inp + r.b0 * j->C, j->w,
                                j->mean + r.b0, j->rstd + r.b0, r.b1 - r.b0, j->C);
}

static void ln_bwd_cols_item(const void *arg, int64_t i)
{
    const rg_ln_bwd_job *j = arg;
    const rg_range c = rg_range_of(j->cols, i);
    rg_layernorm_backward_params(j->dw, j->db, j->dout, j->inp, j->mean, j->rstd, j->N, j->C,
                                 c.b0, c.b1);
}

rg_task rg_ln_fwd_task(rg_ln_fwd_job *j, float *out, float *mean, float *rstd,
                       const float *inp, const float *w, const float *b, int64_t N, int64_t C)
{
    *j = (rg_ln_fwd_job){out, mean, rstd, inp, w, b, C, rg_rows_of(N, C)};
    return (rg_task){ln_fwd_item, j, j->rows.chunks};
}

int rg_ln_bwd_tasks(rg_task *t, rg_ln_bwd_job *j, float *dinp, int zero_dinp, float *dw,
                    float *db, const float *dout, const float *inp, const float *w,
                    const float *mean, const float *rstd, int64_t N, int64_t C)
{
    *j = (rg_ln_bwd_job){dinp, dw, db, dout, inp, w, mean, rstd, N, C, zero_dinp,
                         rg_rows_of(N, C), cols_of(N, C)};
    t[0].fn = ln_bwd_rows_item; t[0].arg = j; t[0].n = j->rows.chunks;
    t[1].fn = ln_bwd_cols_item; t[1].arg = j; t[1].n = j->cols.chunks;
    return 2;
}

/* ---- bias gradients, the block's row passes ------------------------------------------------ */

static void colsum_item(const void *arg, int64_t i)
{
    const rg_colsum_job *j = arg;
    const rg_range c = rg_range_of(j->cols, i);
    rg_colsum(j->dbias, j->g, j->N, j->C, c.b0, c.b1);
}


static void block_rows_item(const void *arg, int64_t i)
{
    const rg_block_rows_job *j = arg;
    const rg_range r = rg_range_of(j->rows, i);
    const int64_t m = j->m, D = j->D;
    rg_gelu_forward(j->h + r.b0 * m, j->pre + r.b0 * m, j->pre + r.b0 * m, j->b1, r.b1 - r.b0,
                    m);
    rg_residual_forward(j->znext + r.b0 * D, j->zk + r.b0 * D, j->b2, r.b1 - r.b0, D);
}


static void gelu_bwd_item(const void *arg, int64_t i)
{
    const rg_gelu_bwd_job *j = arg;
    const rg_range r = rg_range_of(j->rows, i);
    float *dh = j->dh + r.b0 * j->m;
    rg_gelu_backward(dh, j->deriv + r.b0 * j->m, dh, (r.b1 - r.b0) * j->m);
}


rg_task rg_colsum_task(rg_colsum_job *j, float *dbias, const float *g, int64_t N, int64_t C)
{
    *j = (rg_colsum_job){dbias, g, N, C, cols_of(N, C)};
    return (rg_task){colsum_item, j, j->cols.chunks};
}


rg_task rg_block_rows_task(rg_block_rows_job *j, float *h, float *pre, float *znext,
                           const float *b1, const float *zk, const float *b2, int64_t N,
                           int64_t m, int64_t D)
{
    *j = (rg_block_rows_job){h, pre, znext, b1, zk, b2, m, D, rg_rows_of(N, D + m)};
    return (rg_task){block_rows_item, j, j->rows.chunks};
}


rg_task rg_gelu_bwd_task(rg_gelu_bwd_job *j, float *dh, const float *deriv, int64_t N,
                         int64_t m)
{
    *j = (rg_gelu_bwd_job){dh, deriv, m, rg_rows_of(N, m)};
    return (rg_task){gelu_bwd_item, j, j->rows.chunks};
}

/* ---- the head: unembedding bias and cross-entropy ------------------------------------------ */

static void ce_item(const void *arg, int64_t i, rg_ce_pass pass)
{
    rg_ce_job *j = (rg_ce_job *)arg; /* the forward writes its own partial-sum slot */
    const rg_range r = rg_range_of(j->rows, i);
    float *logits = j->logits + r.b0 * j->V;
    if (pass == RG_CE_BIAS)
        rg_bias_forward(logits, j->bias, r.b1 - r.b0, j->V);
    else if (pass == RG_CE_FORWARD)
        rg_crossentropy_forward(logits, &j->nll[i], &j->count[i], j->targets + r.b0,
                                j->mask + r.b0, r.b1 - r.b0, j->V);
    else
        rg_crossentropy_backward(logits, j->targets + r.b0, j->mask + r.b0, r.b1 - r.b0, j->V,
                                 j->scale);
}

static void ce_bias_item(const void *arg, int64_t i) { ce_item(arg, i, RG_CE_BIAS); }
static void ce_fwd_item(const void *arg, int64_t i) { ce_item(arg, i, RG_CE_FORWARD); }
static void ce_bwd_item(const void *arg, int64_t i) { ce_item(arg, i, RG_CE_BACKWARD); }

void rg_ce_job_init(rg_ce_job *j, float *logits, const float *bias, const int32_t *targets,
                    const uint8_t *mask, int64_t N, int64_t V, float scale)
{
    memset(j, 0, sizeof *j);
    j->logits = logits;
    j->bias = bias;
    j->targets = targets;
    j->mask = mask;
    j->V = V;
    j->scale = scale;
    j->rows = rg_rows_of(N, V);
}

rg_task rg_ce_task(rg_ce_job *j, rg_ce_pass pass)
{
    rg_item_fn fn = pass == RG_CE_BIAS ? ce_bias_item
                    : pass == RG_CE_FORWARD ? ce_fwd_item : ce_bwd_item;
    return (rg_task){fn, j, j->rows.chunks};
}

void rg_ce_sums(const rg_ce_job *j, double *nll_sum, int64_t *count)
{
    double nll = 0.0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < j->rows.chunks; i++) { nll += j->nll[i]; cnt += j->count[i]; }
    *nll_sum = nll;
    *count = cnt;
}
