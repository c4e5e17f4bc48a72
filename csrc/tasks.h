/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* How each layer (layers.h) is cut into work items for the thread pool (pool.h).  Every cut is
 * a function of the shapes only, never of the thread count, and every item writes its own
 * outputs in a fixed order: which thread runs an item cannot change a bit.
 *
 * A job struct holds a layer call's arguments and its cut; the caller owns it (on its stack)
 * and gets back the rg_task to run, alone or with other tasks of the same phase. */
#ifndef RG_TASKS_H
#define RG_TASKS_H

#include <stdint.h>

#include "blas.h"
#include "pool.h"

/* GEMMs are cut along the larger output dimension (a piece then repacks only the smaller
 * operand) into at most RG_GEMM_MAX_PIECES pieces of >= RG_GEMM_MIN_FLOPS, boundaries on 16s. */
#define RG_GEMM_MAX_PIECES 4
#define RG_GEMM_MIN_FLOPS (2.0 * 1024 * 1024)
/* Row passes are cut into at most RG_ROW_MAX_CHUNKS chunks of >= RG_ROW_MIN_ELEMS elements;
 * column passes (parameter-gradient sums) likewise, in whole cache lines of columns. */
#define RG_ROW_MAX_CHUNKS 8
#define RG_ROW_MIN_ELEMS 16384

/* The cut of [0, n) into `chunks` ranges, boundaries on multiples of `align`; range i is
 * [b0, b1). */
typedef struct {
    int64_t n, chunks, align;
} rg_cut;
typedef struct {
    int64_t b0, b1;
} rg_range;

rg_cut rg_rows_of(int64_t N, int64_t C); /* the rows of a pass over an (N, C) array */
rg_range rg_range_of(rg_cut cut, int64_t i);

/* C (M, N) = op(A) (M, K) op(B) (K, N) + beta C, row-major. */
typedef struct {
    enum CBLAS_TRANSPOSE ta, tb;
    int64_t M, N, K, lda, ldb, ldc, pieces;
    float beta;
    const float *A, *B;
    float *C;
    int along_n; /* pieces are column blocks of C (else row blocks) */
} rg_gemm_job;
rg_task rg_gemm_task(rg_gemm_job *g, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
                     int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* LayerNorm forward by row chunks. */
typedef struct {
    float *out, *mean, *rstd;
    const float *inp, *w, *b;
    int64_t C;
    rg_cut rows;
} rg_ln_fwd_job;
rg_task rg_ln_fwd_task(rg_ln_fwd_job *j, float *out, float *mean, float *rstd,
                       const float *inp, const float *w, const float *b, int64_t N, int64_t C);

/* LayerNorm backward: dinp by row chunks (accumulated, or overwritten if zero_dinp) and the
 * dw, db column sums by column chunks: two tasks of one phase, written to t[0..1]; returns 2. */
typedef struct {
    float *dinp, *dw, *db;
    const float *dout, *inp, *w, *mean, *rstd;
    int64_t N, C;
    int zero_dinp;
    rg_cut rows, cols;
} rg_ln_bwd_job;
int rg_ln_bwd_tasks(rg_task *t, rg_ln_bwd_job *j, float *dinp, int zero_dinp, float *dw,
                    float *db, const float *dout, const float *inp, const float *w,
                    const float *mean, const float *rstd, int64_t N, int64_t C);

/* dbias (C) = column sums of g (N, C), by column chunks. */
typedef struct {
    float *dbias;
    const float *g;
    int64_t N, C;
    rg_cut cols;
} rg_colsum_job;
rg_task rg_colsum_task(rg_colsum_job *j, float *dbias, const float *g, int64_t N, int64_t C);

/* The row pass of a block's forward, by row chunks: h = gelu(pre + b1) (gelu' kept in pre)
 * and z_{k+1} = z_k + b2, the residual that the fc2 GEMM then accumulates into.
 * h, pre (N, m); znext, zk (N, D). */
typedef struct {
    float *h, *pre, *znext;
    const float *b1, *zk, *b2;
    int64_t m, D;
    rg_cut rows;
} rg_block_rows_job;
rg_task rg_block_rows_task(rg_block_rows_job *j, float *h, float *pre, float *znext,
                           const float *b1, const float *zk, const float *b2, int64_t N,
                           int64_t m, int64_t D);

/* Backward through GELU, by row chunks: dh (N, m) *= deriv (N, m). */
typedef struct {
    float *dh;
    const float *deriv;
    int64_t m;
    rg_cut rows;
} rg_gelu_bwd_job;
rg_task rg_gelu_bwd_task(rg_gelu_bwd_job *j, float *dh, const float *deriv, int64_t N,
                         int64_t m);

/* The head on logits (N, V), by row chunks: the unembedding bias, the cross-entropy forward
 * (partial sums per chunk, added in chunk order by rg_ce_sums) or its backward (scale). */
typedef struct {
    float *logits;
    const float *bias;
    const int32_t *targets;
    const uint8_t *mask;
    int64_t V;
    float scale;
    rg_cut rows;
    double nll[RG_ROW_MAX_CHUNKS];
    int64_t count[RG_ROW_MAX_CHUNKS];
} rg_ce_job;
typedef enum { RG_CE_BIAS, RG_CE_FORWARD, RG_CE_BACKWARD } rg_ce_pass;
void rg_ce_job_init(rg_ce_job *j, float *logits, const float *bias, const int32_t *targets,
                    const uint8_t *mask, int64_t N, int64_t V, float scale);
rg_task rg_ce_task(rg_ce_job *j, rg_ce_pass pass);
/* The forward's sums over the chunks, in chunk order. */
void rg_ce_sums(const rg_ce_job *j, double *nll_sum, int64_t *count);

#endif
