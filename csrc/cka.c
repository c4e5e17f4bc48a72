/* Linear CKA between layers (see cka.h). */
#include "cka.h"

#include <math.h>
#include <stdlib.h>

#include "blas.h"
#include "memory.h"
#include "pool.h"
#include "status.h"

/* Sample-space row blocks hold at most this many doubles for all layers together (32 MB). */
#define RG_CKA_BLOCK_DOUBLES ((int64_t)1 << 22)
/* Below this many multiply-adds (~1 ms) a call runs on the calling thread alone. */
#define RG_CKA_POOL_MADDS 4194304.0

static double sumsq(const double *a /* rows x ld */, int64_t rows, int64_t cols, int64_t ld)
{
    double s = 0.0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) s += a[i * ld + j] * a[i * ld + j];
    return s;
}

/* The last layer paired with layer l (pairs (l, l..last) are needed): l + 1 (or l for the
 * last layer) for consecutive pairs only, else every layer. */
static int64_t last_partner(int64_t l, int64_t n_layers, int consecutive)
{
    return consecutive ? (l + 1 < n_layers ? l + 1 : l) : n_layers - 1;
}

/* ---- the work items (pool.h) ----------------------------------------------------------------
 *
 * Items are cut from the shapes alone and each writes its own outputs: a layer's load and row
 * norms, a layer's part of a row block's Grams, a layer's row of C.  The sums over layers (C
 * from the row blocks) stay on the calling thread, in the order of the single-threaded code,
 * so every value is computed by the same calls in the same order on any number of threads.
 *
 * Subnormals: the pool runs items with FTZ and DAZ on, on 1 thread as on N, so the thread
 * count never changes a bit.  The loader and the sums of squares that make C keep subnormals
 * (rg_pool_keep_subnormals): under DAZ a float32 subnormal reads as zero.  Only the Gram and
 * cross-product GEMMs flush, on layers whose largest squared row norm is at least 2^-300
 * (unit_scale below): a flushed value (< 2^-1022) is then over 2^700 times smaller than the
 * layer's largest Gram entry.  float32 input never produces one (its centred entries are
 * multiples of 2^-233).  The unflushed build gave the same bits on every input tried
 * (tests/test_analysis.py has the subnormal-layer case). */

/* CKA squares Gram entries, so it sees fourth powers of a layer's values: a layer whose rows'
 * squared norms lie outside [2^-2E, 2^2E] (E = RG_CKA_SAFE_EXP) is scaled by a power of two
 * to rows of norm about 1 (the loader keeps values only within [2^-300, 2^300], where
 * fourth powers over- or underflow: a layer scaled by 1e-87 gave NaN, one by 1e80 lost 3
 * digits).  CKA does not depend on a layer's scale, and a power of two scales every product
 * and sum exactly, so layers inside the range, not scaled, give the same bits as scaled ones
 * would. */
#define RG_CKA_SAFE_EXP 150

/* X (n x f, rows at ld) and its rows' squared norms d times 2^-k and 2^-2k, k chosen from
 * dmax = max d so that the largest squared norm lands in [1/2, 2). */
static void unit_scale(double *X, int64_t n, int64_t f, int64_t ld, double *d, double dmax)
{
    int e;
    frexp(dmax, &e);
    rg_scale_pow2(X, n, f, ld, e / 2);
    rg_scale_pow2(d, n, 1, 1, 2 * (e / 2));
}

/* Loading: item l copies layer l centred into Z (as rank.h's rg_load_centered, exactly) and
 * its row norms into d.  st: 5 f_l doubles per layer. */
typedef struct {
    const rg_strided_matrix *layers;
    const int64_t *off;
    int64_t n, W;
    int sample;        /* layer-major Z (sample space), else [X_0 | X_1 | ...] */
    double *Z, *d, *st;
    int64_t *status;   /* per layer */
} load_job;

static void load_item(const void *arg, int64_t l)
{
    const load_job *j = arg;
    const unsigned fp = rg_pool_keep_subnormals();
    const int64_t n = j->n, f = j->layers[l].cols, ld = j->sample ? f : j->W;
    double *X = j->sample ? j->Z + n * j->off[l] : j->Z + j->off[l];
    int e;
    int status = rg_load_centered(&j->layers[l], 1, X, ld, j->st + 5 * j->off[l], &e);
    double dmax = 0.0;
    for (int64_t i = 0; status == RG_OK && i < n; i++) {
        j->d[l * n + i] = sumsq(X + i * ld, 1, f, ld);
        dmax = fmax(dmax, j->d[l * n + i]);
    }
    if (status == RG_OK && dmax > 0.0 &&
        (dmax > ldexp(1.0, 2 * RG_CKA_SAFE_EXP) || dmax < ldexp(1.0, -2 * RG_CKA_SAFE_EXP)))
        unit_scale(X, n, f, ld, j->d + l * n, dmax);
    j->status[l] = status;
    rg_pool_restore_fp(fp);
}

/* Feature space: C_lm for the needed pairs, one GEMM X_l^T [X_l | X_{l+1} ...] per layer
 * into a T of its own.  Items are lanes (as many as threads, bounded by memory), each with a
 * T of tsize doubles, which claim layers in order until none is left: a layer's GEMM and sums
 * are the same in any lane, so the lanes change memory and speed only. */
typedef struct {
    const double *Z;
    const int64_t *off;
    int64_t n, W, nl, tsize;
    int consecutive;
    double *T, *C;
    int64_t *next;     /* atomic: the next unclaimed layer */
} feature_job;

static void feature_item(const void *arg, int64_t lane)
{
    const feature_job *j = arg;
    const int64_t nl = j->nl, W = j->W, n = j->n, *off = j->off;
    double *T = j->T + lane * j->tsize;
    int64_t l;
    while ((l = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED)) < nl) {
        const int64_t last = last_partner(l, nl, j->consecutive);
        const int64_t fl = off[l + 1] - off[l], c0 = off[l], width = off[last + 1] - c0;
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)fl,
                             (blasint)width, (blasint)n, 1.0, j->Z + c0, (blasint)W,
                             j->Z + c0, (blasint)W, 0.0, T, (blasint)width);
        const unsigned fp = rg_pool_keep_subnormals();
        for (int64_t m = l; m <= last; m++)
            j->C[l * nl + m] = sumsq(T + (off[m] - c0), fl, off[m + 1] - off[m], width);
        rg_pool_restore_fp(fp);
    }
}

/* The T of the widest layer's GEMM (f_l times its partners' widths). */
static int64_t feature_tsize(const int64_t *off, int64_t nl, int consecutive)
{
    int64_t t = 0;
    for (int64_t l = 0; l < nl; l++) {
        const int64_t s = (off[l + 1] - off[l]) * (off[last_partner(l, nl, consecutive) + 1] -
                                                   off[l]);
        if (s > t) t = s;
    }
    return t;
}

/* Feature-space lanes for n_threads threads: at most one per layer, and more than one only
 * while their T fit in 1/8 of Z (n W doubles). */
static int64_t feature_lanes(int64_t tsize, int64_t nl, int64_t n, int64_t W, int n_threads)
{
    int64_t k = n_threads < nl ? n_threads : nl;
    const int64_t fit = tsize > 0 ? n * W / 8 / tsize : k;
    if (k > fit) k = fit;
    return k < 1 ? 1 : k;
}

/* Sample space, one row block: the nl layers' blocks right of the diagonal (dgemm; items
 * 0..nl-1 when there are any, claimed first as the larger), then their diagonal blocks
 * (dsyrk), each into its own slice of P. */
typedef struct {
    const double *Z;
    const int64_t *off;
    int64_t n, nl, b0, rb, rest;
    double *PD, *PR;
    int zero_lower;    /* zero the diagonal blocks' strictly lower triangles */
} block_job;

static void block_item(const void *arg, int64_t i)
{
    const block_job *j = arg;
    const int64_t rb = j->rb, rest = j->rest, nl = j->nl;
    const int right = rest > 0 && i < nl;
    const int64_t l = rest > 0 && !right ? i - nl : i, fl = j->off[l + 1] - j->off[l];
    const double *Xb = j->Z + j->n * j->off[l] + j->b0 * fl; /* layer l is n x fl */
    if (right) {
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rb,
                             (blasint)rest, (blasint)fl, 1.0, Xb, (blasint)fl, Xb + rb * fl,
                             (blasint)fl, 0.0, j->PR + l * rb * rest, (blasint)rest);
        return;
    }
    double *D = j->PD + l * rb * rb;
    /* dsyrk writes the upper triangle only */
    for (int64_t r = 1; r < rb && j->zero_lower; r++)
        for (int64_t c = 0; c < r; c++) D[r * rb + c] = 0.0;
    RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)rb, (blasint)fl,
                         1.0, Xb, (blasint)fl, 0.0, D, (blasint)rb);
}

/* C_lm for all pairs in sample space, row block by row block, from Z holding the layers one
 * after the other (layer l: n x f_l at Z + n off[l]; contiguous, so each dgemm streams one
 * block of memory): the layers' Gram blocks on the pool, then the sums over layers here.
 * P: nl * r * n scratch. */
static void cross_sample(rg_pool *pool, const double *Z, int64_t n, int64_t nl,
                         const int64_t *off /* nl + 1 */, int64_t r, double *P, double *C,
                         double *M /* nl x nl */)
{
    for (int64_t i = 0; i < nl * nl; i++) C[i] = 0.0;
    int64_t zeroed = 0;  /* the block size whose diagonal blocks hold zeros below */
    for (int64_t b0 = 0; b0 < n; b0 += r) {
        const int64_t rb = b0 + r < n ? r : n - b0, rest = n - b0 - rb;
        /* per layer: the diagonal block (rb x rb, both triangles) then the block right of it
         * (rb x rest, counted twice for symmetry) */
        double *PD = P, *PR = P + nl * rb * rb;
        /* the lower triangles are zeroed once per block size (only the last block can be
         * smaller) */
        block_job job = {Z, off, n, nl, b0, rb, rest, PD, PR, zeroed != rb};
        const rg_task task = {block_item, &job, rest > 0 ? 2 * nl : nl};
        rg_pool_run(pool, &task, 1);
        /* the diagonal blocks hold their upper triangles: the sum over a whole block is
         * twice theirs less the diagonal's */
        zeroed = rb;
        RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)nl,
                             (blasint)(rb * rb), 2.0, PD, (blasint)(rb * rb), 1.0, C,
                             (blasint)nl);
        for (int64_t l = 0; l < nl; l++)
            for (int64_t m = l; m < nl; m++) {
                double dd = 0.0;
                for (int64_t i = 0; i < rb; i++)
                    dd += PD[l * rb * rb + i * rb + i] * PD[m * rb * rb + i * rb + i];
                C[l * nl + m] -= dd;
            }
        if (rest > 0) {
            RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)nl,
                                 (blasint)(rb * rest), 1.0, PR, (blasint)(rb * rest), 0.0, M,
                                 (blasint)nl);
            for (int64_t l = 0; l < nl; l++)
                for (int64_t m = l; m < nl; m++) C[l * nl + m] += 2.0 * M[l * nl + m];
        }
    }
}

/* Rows per sample-space block (the block holds r rows of every Gram), or 0 when the feature
 * space is cheaper (multiply-add counts of the two routes); *work: the cheaper count. */
static int64_t sample_rows(const rg_strided_matrix *layers, int64_t nl, int consecutive,
                           int64_t n, int64_t W, double *work)
{
    double feat = 0.0, samp = 0.5 * (double)n * (double)n * (double)W +
                              0.25 * (double)nl * (double)nl * (double)n * (double)n;
    for (int64_t l = 0; l < nl; l++) {
        int64_t width = 0;
        for (int64_t m = l; m <= last_partner(l, nl, consecutive); m++) width += layers[m].cols;
        feat += (double)n * (double)layers[l].cols * (double)width;
    }
    *work = samp < feat ? samp : feat;
    if (!(samp < feat)) return 0;
    int64_t r = RG_CKA_BLOCK_DOUBLES / (nl * n);
    if (r < 16) r = 16;
    return r > n ? n : r;
}

/* HSIC values (biased: C itself) of the needed pairs, then CKA, into out.  d: nl x n. */
static void hsic_to_cka(const double *C, const double *d, int64_t n, int64_t nl,
                        int consecutive, int debiased, double *out)
{
    const double dn = (double)n;
    for (int64_t i = 0; i < nl * nl; i++) out[i] = NAN;
    for (int64_t l = 0; l < nl; l++)
        for (int64_t m = l; m <= last_partner(l, nl, consecutive); m++) {
            double h = C[l * nl + m];
            if (debiased) {
                double dd = 0.0, Fl = 0.0, Fm = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    dd += d[l * n + i] * d[m * n + i];
                    Fl += d[l * n + i];
                    Fm += d[m * n + i];
                }
                h = (h - dd + Fl * Fm / ((dn - 1.0) * (dn - 2.0)) - 2.0 * dd / (dn - 2.0)) /
                    (dn * (dn - 3.0));
            }
            out[l * nl + m] = h;  /* HSIC for now; diagonal kept for normalisation */
        }
    for (int64_t l = 0; l < nl; l++)
        for (int64_t m = l + 1; m < nl; m++) {
            const double a = out[l * nl + l], b = out[m * nl + m], h = out[l * nl + m];
            out[l * nl + m] = out[m * nl + l] = (a > 0.0 && b > 0.0) ? h / sqrt(a * b) : NAN;
        }
    for (int64_t l = 0; l < nl; l++) out[l * nl + l] = out[l * nl + l] > 0.0 ? 1.0 : NAN;
}

int rg_cka_layers(const rg_strided_matrix *layers, int64_t nl, int consecutive, int debiased,
                  int n_threads, double *out, int *sample_space, int64_t *bad)
{
    const int64_t n = layers[0].rows;
    int64_t W = 0;
    for (int64_t l = 0; l < nl; l++) W += layers[l].cols;
    double work;
    const int64_t r = sample_rows(layers, nl, consecutive, n, W, &work);
    if (sample_space) *sample_space = r > 0;
    /* small problems run on the calling thread (through rg_pool_run all the same) */
    if (n_threads < 1 || work + (double)n * (double)W < RG_CKA_POOL_MADDS) n_threads = 1;
    if (n_threads > RG_POOL_MAX) n_threads = RG_POOL_MAX;
    /* the layers' column offsets, then one allocation: Z (n W) | d (nl n) | loader scratch
     * (5 W) | C (nl nl) | status (nl) | scratch (P and M, or the lanes' T) */
    int64_t *off = malloc((size_t)(nl + 1) * sizeof *off);
    if (!off) return RG_ERR_NOMEM;
    off[0] = 0;
    for (int64_t l = 0; l < nl; l++) off[l + 1] = off[l] + layers[l].cols;
    const int64_t tsize = r > 0 ? 0 : feature_tsize(off, nl, consecutive);
    const int64_t lanes = r > 0 ? 0 : feature_lanes(tsize, nl, n, W, n_threads);
    const int64_t scratch = r > 0 ? nl * r * n + nl * nl : lanes * tsize;
    const size_t nd = (size_t)(n * W + nl * n + 5 * W + nl * nl + nl + scratch);
    double *ws = rg_alloc_large(nd * sizeof(double));
    if (!ws) {
        free(off);
        return RG_ERR_NOMEM;
    }
    double *Z = ws, *d = Z + n * W, *st = d + nl * n, *C = st + 5 * W;
    int64_t *status_of = (int64_t *)(C + nl * nl);  /* same size as a double */
    double *S = C + nl * nl + nl;
    rg_pool pool;
    if (n_threads > 1) rg_pool_init(&pool, n_threads);
    rg_pool *p = n_threads > 1 ? &pool : NULL;

    load_job lj = {layers, off, n, W, r > 0, Z, d, st, status_of};
    const rg_task load = {load_item, &lj, nl};
    rg_pool_run(p, &load, 1);
    int status = RG_OK;
    for (int64_t l = 0; l < nl && status == RG_OK; l++)
        if ((status = (int)status_of[l]) != RG_OK) *bad = l;  /* the first in layer order */
    for (int64_t i = 0; i < nl * nl; i++) C[i] = NAN;
    if (status == RG_OK && r > 0) {
        cross_sample(p, Z, n, nl, off, r, S, C, S + nl * r * n);
    } else if (status == RG_OK) {
        int64_t next = 0;
        feature_job fj = {Z, off, n, W, nl, tsize, consecutive, S, C, &next};
        const rg_task task = {feature_item, &fj, lanes};
        rg_pool_run(p, &task, 1);
    }
    if (status == RG_OK) hsic_to_cka(C, d, n, nl, consecutive, debiased, out);
    if (p) rg_pool_destroy(p);
    free(ws);
    free(off);
    return status;
}
