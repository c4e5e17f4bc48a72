/* Singular spectra of centred matrices and the effective-rank family (see rank.h). */
#include "rank.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "status.h"

/* Forced inline: the fast loaders below are also compiled for AVX2 and AVX-512
 * (RG_LOAD_CLONES), and a call would run the generic code. */
#if defined(__GNUC__)
#define RG_ROW_INLINE static inline __attribute__((always_inline))
#else
#define RG_ROW_INLINE static inline
#endif

/* f values of a source row (dtype, col_stride bytes apart) into o as float64, exactly (the
 * contiguous cases apart, so that they vectorize). */
RG_ROW_INLINE void convert_row(const char *restrict row, int dtype, int64_t col_stride, int64_t f,
                               double *restrict o)
{
    if (dtype == RG_FLOAT32 && col_stride == 4) {
        const float *restrict r = (const float *)row;
        for (int64_t j = 0; j < f; j++) o[j] = (double)r[j];
    } else if (dtype == RG_FLOAT64 && col_stride == 8) {
        memcpy(o, row, (size_t)f * sizeof(double));
    } else {
        for (int64_t j = 0; j < f; j++) {
            const char *p = row + j * col_stride;
            o[j] = dtype == RG_FLOAT32 ? (double)*(const float *)p : *(const double *)p;
        }
    }
}

/* Rows summed per block before the block sum joins the column total: the rounding error of a
 * mean grows like (RG_SUM_BLOCK + n / RG_SUM_BLOCK) eps instead of n eps. */
#define RG_SUM_BLOCK 128
/* Centred entries outside [2^-RG_SAFE_EXP, 2^RG_SAFE_EXP] are rescaled before the Gram, whose
 * entries (sums of n squares) must neither overflow nor underflow. */
#define RG_SAFE_EXP 300

#define RG_PREFETCH_ROWS 16
#define RG_GEMM_GRAM_MAX 16
#if defined(__GNUC__)
#define RG_PREFETCH(p) __builtin_prefetch(p)
#else
#define RG_PREFETCH(p) ((void)(p))
#endif

/* Multiply out (rows x cols at ld) by 2^-e (exact). In two halves: for subnormal data e is
 * below -1023 and 2^-e alone would overflow to inf (and 2^-1024 would itself be subnormal). */
void rg_scale_pow2(double *out, int64_t rows, int64_t cols, int64_t ld, int e)
{
    const double s1 = ldexp(1.0, -(e / 2)), s2 = ldexp(1.0, -(e - e / 2));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) out[i * ld + j] = out[i * ld + j] * s1 * s2;
}

/* Rows i0 .. i1 - 1 of out (f columns at ld) summed per column into blk, then blk added to
 * sum: one block of the blocked sums (RG_SUM_BLOCK). */
static void add_block_sums(const double *out, int64_t i0, int64_t i1, int64_t f, int64_t ld,
                           double *blk, double *sum)
{
    for (int64_t j = 0; j < f; j++) blk[j] = 0.0;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = 0; j < f; j++) blk[j] += out[i * ld + j];
    for (int64_t j = 0; j < f; j++) sum[j] += blk[j];
}

/* Pass 1: v converted to float64 into out (rows x cols at ld), with per-column sums (blocked),
 * minima and maxima in scratch (sum | lo | hi | nan | blk, f each); x*0 is NaN exactly when x
 * is NaN or Inf.  RG_ERR_NOT_FINITE if v holds one; else the largest magnitude in *amax. */
static int load_scan(const rg_strided_matrix *v, double *out, int64_t ld, double *scratch,
                     double *amax)
{
    const int64_t n = v->rows, f = v->cols;
    /* per-column accumulators, all updated element-wise across a row so the loops vectorize */
    double *sum = scratch, *lo = sum + f, *hi = lo + f, *nan = hi + f, *blk = nan + f;
    for (int64_t j = 0; j < f; j++) {
        sum[j] = nan[j] = 0.0;
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
    }
    for (int64_t i0 = 0; i0 < n; i0 += RG_SUM_BLOCK) {
        const int64_t i1 = i0 + RG_SUM_BLOCK < n ? i0 + RG_SUM_BLOCK : n;
        for (int64_t i = i0; i < i1; i++) {
            const char *row = v->data + i * v->row_stride;
            double *o = out + i * ld;
            /* rows of a strided view (e.g. one position of a (n, length, d) stream) lie pages
             * apart, where hardware prefetchers do not reach: ask for a row well ahead */
            if (i + RG_PREFETCH_ROWS < n)
                RG_PREFETCH(row + RG_PREFETCH_ROWS * v->row_stride);
            convert_row(row, v->dtype, v->col_stride, f, o);
            for (int64_t j = 0; j < f; j++) {
                lo[j] = o[j] < lo[j] ? o[j] : lo[j];
                hi[j] = o[j] > hi[j] ? o[j] : hi[j];
                nan[j] += o[j] * 0.0;
            }
        }
        add_block_sums(out, i0, i1, f, ld, blk, sum);
    }
    *amax = 0.0;
    for (int64_t j = 0; j < f; j++) {
        if (nan[j] != 0.0) return RG_ERR_NOT_FINITE;
        *amax = fmax(*amax, fmax(fabs(lo[j]), fabs(hi[j])));
    }
    return RG_OK;
}

/* Pass 2: the columns of out (n x f at ld) minus their means, sum / n clamped into [lo, hi]
 * (the mean of a constant column is that constant exactly, so constant data centres to exact
 * zeros).  sum and hi are overwritten; returns the largest centred magnitude. */
static double center_columns(double *out, int64_t n, int64_t f, int64_t ld, double *sum,
                             const double *lo, double *hi)
{
    double *mean = sum;
    for (int64_t j = 0; j < f; j++) {
        double m = sum[j] / (double)n;
        mean[j] = lo[j] == hi[j] ? lo[j] : m < lo[j] ? lo[j] : m > hi[j] ? hi[j] : m;
        hi[j] = 0.0;
    }
    for (int64_t i = 0; i < n; i++) {
        double *o = out + i * ld;
        for (int64_t j = 0; j < f; j++) {
            o[j] -= mean[j];
            const double a = fabs(o[j]);
            hi[j] = a > hi[j] ? a : hi[j];
        }
    }
    double cmax = 0.0;
    for (int64_t j = 0; j < f; j++) cmax = fmax(cmax, hi[j]);
    return cmax;
}

/* The reference loader: pass 1 converts into out with the statistics, pass 2 centres in place.
 * Taken by matrices holding NaN/Inf (it names them) or magnitudes above 2^(2 RG_SAFE_EXP)
 * (scaled before their sums could overflow); load_span does the rest with the same
 * arithmetic. */
static int load_centered_ref(const rg_strided_matrix *v, int center, double *out /* rows x ld */,
                             int64_t ld, double *scratch /* 5 cols */, int *exponent)
{
    const int64_t n = v->rows, f = v->cols;
    double *sum = scratch, *lo = sum + f, *hi = lo + f, *blk = hi + 2 * f, amax;
    int status = load_scan(v, out, ld, scratch, &amax);
    if (status != RG_OK) return status;
    *exponent = 0;
    if (amax == 0.0) return RG_OK;
    int e = 0;
    if (amax > ldexp(1.0, 2 * RG_SAFE_EXP)) {
        /* sums of n such values may overflow: scale first (rare), then the same blocked
         * sums, so the means are those of unscaled data times 2^-e exactly */
        frexp(amax, &e);
        rg_scale_pow2(out, n, f, ld, e);
        for (int64_t j = 0; j < f; j++) {
            sum[j] = 0.0;
            lo[j] = ldexp(lo[j], -e);
            hi[j] = ldexp(hi[j], -e);
        }
        for (int64_t i0 = 0; i0 < n; i0 += RG_SUM_BLOCK)
            add_block_sums(out, i0, i0 + RG_SUM_BLOCK < n ? i0 + RG_SUM_BLOCK : n, f, ld, blk,
                           sum);
    }
    double cmax = amax;
    if (center) {
        cmax = center_columns(out, n, f, ld, sum, lo, hi);
        if (cmax == 0.0) return RG_OK;  /* constant data: exactly zero */
    } else if (e != 0) {
        cmax = ldexp(amax, -e);
    }
    if (cmax > ldexp(1.0, RG_SAFE_EXP) || cmax < ldexp(1.0, -RG_SAFE_EXP)) {
        int e2;
        frexp(cmax, &e2);
        rg_scale_pow2(out, n, f, ld, e2);
        e += e2;
    }
    *exponent = e;
    return RG_OK;
}

/* The loops below are also compiled for AVX2 and AVX-512 and picked at load time (ifunc):
 * -std=c99 implies -ffp-contract=off, so every version does the same IEEE operations in the
 * same order (each column's sums run over rows, vectorisation goes across columns) and gives
 * identical bits; no-trapping-math only lets GCC if-convert the min/max selects. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__)
#define RG_LOAD_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), \
                                      optimize("no-trapping-math")))
#else
#define RG_LOAD_CLONES
#endif

/* Every cache line of the bytes [p, p + span] (span may be negative) asked for ahead. */
static inline void prefetch_span(const char *p, int64_t span)
{
    const char *a = span < 0 ? p + span : p, *b = span < 0 ? p : p + span;
    for (; a < b; a += 64) RG_PREFETCH(a);
    RG_PREFETCH(b);
}

/* Fast pass 1: per-column blocked sums (as load_scan: RG_SUM_BLOCK rows per block, the same
 * order), minima and maxima of v's columns, in matrices of w columns: matrix q (columns q w ..
 * q w + w - 1) converted to float64 into out + q qstride (rows at ld), or, if out is NULL,
 * each row in turn into buf (v->cols doubles).  A NaN shows as a NaN sum, an Inf as an
 * infinite minimum or maximum; the caller sends such matrices to the reference loader. */
static RG_LOAD_CLONES void scan_columns(const rg_strided_matrix *v, int64_t w,
                                        double *restrict sum, double *restrict lo,
                                        double *restrict hi, double *restrict blk, double *out,
                                        int64_t ld, int64_t qstride, double *restrict buf)
{
    const int64_t n = v->rows, width = v->cols, cs = v->col_stride;
    /* a row is converted a matrix at a time into its place in out, or whole into buf */
    const int64_t step = out ? w : width;
    for (int64_t j = 0; j < width; j++) {
        sum[j] = 0.0;
        lo[j] = INFINITY;
        hi[j] = -INFINITY;
    }
    for (int64_t i0 = 0; i0 < n; i0 += RG_SUM_BLOCK) {
        const int64_t i1 = i0 + RG_SUM_BLOCK < n ? i0 + RG_SUM_BLOCK : n;
        for (int64_t j = 0; j < width; j++) blk[j] = 0.0;
        for (int64_t i = i0; i < i1; i++) {
            const char *row = v->data + i * v->row_stride;
            if (i + RG_PREFETCH_ROWS < n)
                prefetch_span(row + RG_PREFETCH_ROWS * v->row_stride, (width - 1) * cs);
            for (int64_t c0 = 0; c0 < width; c0 += step) {
                double *restrict x = out ? out + (c0 / w) * qstride + i * ld : buf;
                double *restrict l = lo + c0, *restrict h = hi + c0, *restrict b = blk + c0;
                convert_row(row + c0 * cs, v->dtype, cs, step, x);
                for (int64_t j = 0; j < step; j++) {
                    l[j] = x[j] < l[j] ? x[j] : l[j];
                    h[j] = x[j] > h[j] ? x[j] : h[j];
                    b[j] += x[j];
                }
            }
        }
        for (int64_t j = 0; j < width; j++) sum[j] += blk[j];
    }
}

/* Fast pass 2: the span's g matrices of f columns each (columns q f .. q f + f - 1 of v) into
 * out (matrix q at out + q qstride, rows at ld), converted and minus mean (per column, g f);
 * cabs: each column's largest centred magnitude.  With in_place, out already holds the
 * values (pass 1 stored them) and v is not read. */
static RG_LOAD_CLONES void convert_center(const rg_strided_matrix *v, int64_t g, int64_t f,
                                          const double *restrict mean, double *restrict out,
                                          int64_t ld, int64_t qstride, double *restrict cabs,
                                          int in_place)
{
    const int64_t n = v->rows, cs = v->col_stride;
    for (int64_t c = 0; c < g * f; c++) cabs[c] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const char *row = v->data + i * v->row_stride;
        if (!in_place && i + RG_PREFETCH_ROWS < n)
            prefetch_span(row + RG_PREFETCH_ROWS * v->row_stride, (g * f - 1) * cs);
        for (int64_t q = 0; q < g; q++) {
            double *restrict o = out + q * qstride + i * ld;
            const double *restrict m = mean + q * f;
            double *restrict a = cabs + q * f;
            /* (converted exactly, so x - m has the bits it would have from the source) */
            if (!in_place) convert_row(row + q * f * cs, v->dtype, cs, f, o);
            for (int64_t j = 0; j < f; j++) {
                const double x = o[j] - m[j], ax = fabs(x);
                o[j] = x;
                a[j] = ax > a[j] ? ax : a[j];
            }
        }
    }
}

/* Up to this many bytes of float64 output, load_span converts in pass 1 and centres in place
 * in pass 2 (the output stays cached between the passes, and the source is read once);
 * above it, pass 1 only reads and pass 2 converts again from the source (fewer bytes moved
 * when nothing stays cached). */
#define RG_IN_PLACE_BYTES ((int64_t)1 << 20)

/* exps[q] of a matrix that load_span left to the reference loader */
#define RG_EXP_REFERENCE INT32_MIN

/* The g matrices v, v + gstride, ... (they may share rows, as the positions of a stream do)
 * loaded centred (if center) into out (matrix q at out + q qstride, rows at ld) in two passes
 * over the source: statistics, then conversion and centring.  The arithmetic is the
 * reference loader's (the same blocked sums in the same order, the same clamped means, the
 * same subtraction), so each matrix's bits do not depend on g.  exps[q] gets matrix q's
 * exponent (as rg_load_centered's) or RG_EXP_REFERENCE if it holds NaN/Inf or magnitudes
 * above 2^(2 RG_SAFE_EXP): the caller then loads it with load_centered_ref.  When the g
 * matrices' rows are contiguous spans (gstride = f elements) each pass reads the rows once
 * for all of them.  st: 5 g f doubles (cabs, written only in pass 2, is pass 1's row buffer
 * when pass 1 stores nothing). */
static void load_span(const rg_strided_matrix *v, int64_t g, int64_t gstride, int center,
                      double *out, int64_t ld, int64_t qstride, double *st, int *exps)
{
    const int64_t n = v->rows, f = v->cols, gf = g * f;
    const int64_t esize = v->dtype == RG_FLOAT32 ? 4 : 8;
    double *sum = st, *lo = sum + gf, *hi = lo + gf, *blk = hi + gf, *cabs = blk + gf;
    const int wide = g == 1 || (v->col_stride == esize && gstride == f * esize);
    const int in_place = g * n * f * 8 <= RG_IN_PLACE_BYTES;
    double *dest = in_place ? out : NULL;
    rg_strided_matrix w = *v;
    if (wide) {
        w.cols = gf;
        scan_columns(&w, f, sum, lo, hi, blk, dest, ld, qstride, cabs);
    } else {
        for (int64_t q = 0; q < g; q++) {
            rg_strided_matrix vq = *v;
            vq.data += q * gstride;
            scan_columns(&vq, f, sum + q * f, lo + q * f, hi + q * f, blk + q * f,
                         dest ? dest + q * qstride : NULL, ld, 0, cabs);
        }
    }
    const double big = ldexp(1.0, 2 * RG_SAFE_EXP);
    for (int64_t q = 0; q < g; q++) {
        exps[q] = 0;
        for (int64_t c = q * f; c < q * f + f; c++)
            if (isnan(sum[c]) || !(fabs(lo[c]) <= big && fabs(hi[c]) <= big))
                exps[q] = RG_EXP_REFERENCE;
    }
    for (int64_t c = 0; c < gf; c++) {
        const double m = sum[c] / (double)n;
        sum[c] = !center ? 0.0 : lo[c] == hi[c] ? lo[c] : m < lo[c] ? lo[c] : m > hi[c] ? hi[c]
                                                                                     : m;
    }
    if (wide) {
        convert_center(&w, g, f, sum, out, ld, qstride, cabs, in_place);
    } else {
        for (int64_t q = 0; q < g; q++) {
            rg_strided_matrix vq = *v;
            vq.data += q * gstride;
            convert_center(&vq, 1, f, sum + q * f, out + q * qstride, ld, 0, cabs + q * f,
                           in_place);
        }
    }
    for (int64_t q = 0; q < g; q++) {
        if (exps[q] == RG_EXP_REFERENCE) continue;
        double cmax = 0.0;
        for (int64_t c = q * f; c < q * f + f; c++) cmax = fmax(cmax, cabs[c]);
        if (cmax != 0.0 && (cmax > ldexp(1.0, RG_SAFE_EXP) || cmax < ldexp(1.0, -RG_SAFE_EXP))) {
            frexp(cmax, &exps[q]);
            rg_scale_pow2(out + q * qstride, n, f, ld, exps[q]);
        }
    }
}

int rg_load_centered(const rg_strided_matrix *v, int center, double *out /* rows x ld */,
                     int64_t ld, double *scratch /* 5 cols */, int *exponent)
{
    load_span(v, 1, 0, center, out, ld, 0, scratch, exponent);
    if (*exponent == RG_EXP_REFERENCE)
        return load_centered_ref(v, center, out, ld, scratch, exponent);
    return RG_OK;
}

double rg_spectrum_measure(const double *s /* k */, int64_t k, int measure, int squared,
                           double tol, int64_t n, int64_t f)
{
    const double smax = k > 0 ? s[0] : 0.0;
    if (!(smax > 0.0)) return 0.0;
    switch (measure) {
    case RG_MEASURE_ERANK: {
        /* weights relative to s_max keep every sum O(k) */
        double total = 0.0, h = 0.0;
        for (int64_t i = 0; i < k; i++) {
            double t = s[i] / smax;
            total += squared ? t * t : t;
        }
        for (int64_t i = 0; i < k; i++) {
            double t = s[i] / smax;
            double p = (squared ? t * t : t) / total;
            if (p > 0.0) h -= p * log(p);
        }
        return exp(h);
    }
    case RG_MEASURE_PARTICIPATION: {
        double a = 0.0, b = 0.0;
        for (int64_t i = 0; i < k; i++) {
            double q = (s[i] / smax) * (s[i] / smax);
            a += q;
            b += q * q;
        }
        return a * a / b;
    }
    case RG_MEASURE_STABLE: {
        double a = 0.0;
        for (int64_t i = 0; i < k; i++) a += (s[i] / smax) * (s[i] / smax);
        return a;
    }
    case RG_MEASURE_NUMERICAL: {
        if (tol < 0.0) tol = smax * (double)(n > f ? n : f) * DBL_EPSILON;
        int64_t r = 0;
        for (int64_t i = 0; i < k; i++) r += s[i] > tol;
        return (double)r;
    }
    default:
        return NAN;
    }
}

/* LAPACK workspace sizes (queried, not guessed) for every route: dsyevd of the k x k Gram,
 * dgesdd of a k x k factor or of the tall side (max(n, f) x k) and dgeqrf of the tall side
 * (with its k Householder scalars), k = min(n, f). */
static int lapack_sizes(int64_t n, int64_t f, int64_t *lwork, int64_t *liwork)
{
    const int64_t k = n < f ? n : f, m = n < f ? f : n;
    double wq = 0.0, dummy = 0.0;
    lapack_int iq = 0;
    lapack_int info = RG_BLAS(LAPACKE_dsyevd_work)(LAPACK_COL_MAJOR, 'N', 'L', (lapack_int)k,
                                                    &dummy, (lapack_int)k, &dummy, &wq, -1,
                                                    &iq, -1);
    if (info != 0) return RG_ERR_LAPACK;
    int64_t lw = (int64_t)wq, liw = iq;
    for (int pass = 0; pass < 2; pass++) {  /* dgesdd of the k x k factor, then of m x k */
        const int64_t rows = pass ? m : k;
        info = RG_BLAS(LAPACKE_dgesdd_work)(LAPACK_COL_MAJOR, 'N', (lapack_int)rows,
                                            (lapack_int)k, &dummy, (lapack_int)rows, &dummy,
                                            &dummy, 1, &dummy, 1, &wq, -1, &iq);
        if (info != 0) return RG_ERR_LAPACK;
        if ((int64_t)wq > lw) lw = (int64_t)wq;
    }
    info = RG_BLAS(LAPACKE_dgeqrf_work)(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)k, &dummy,
                                        (lapack_int)m, &dummy, &wq, -1);
    if (info != 0) return RG_ERR_LAPACK;
    if ((int64_t)wq + k > lw) lw = (int64_t)wq + k;
    if (8 * k > liw) liw = 8 * k;  /* dgesdd's iwork is 8 min(m, n), not reported by the query */
    *lwork = lw + 1;
    *liwork = liw + 1;
    return RG_OK;
}

/* G (k x k, column-major lower triangle) = the Gram of the smaller side of A (n x f,
 * row-major).  For k <= RG_GEMM_GRAM_MAX OpenBLAS's dgemm beats its dsyrk (~2x at k = 16,
 * n = 2048) despite doing both triangles; above it dsyrk's halved flops win.  Row-major upper
 * triangle == column-major lower triangle. */
static void gram(const double *A, int64_t n, int64_t f, double *G)
{
    const int64_t k = n < f ? n : f;
    const CBLAS_TRANSPOSE t1 = f <= n ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE t2 = f <= n ? CblasNoTrans : CblasTrans;
    const blasint kk = (blasint)k, inner = (blasint)(f <= n ? n : f);
    if (k <= RG_GEMM_GRAM_MAX)
        RG_BLAS(cblas_dgemm)(CblasRowMajor, t1, t2, kk, kk, inner, 1.0, A, (blasint)f, A,
                             (blasint)f, 0.0, G, kk);
    else
        RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, t1, kk, inner, 1.0, A, (blasint)f, 0.0,
                             G, kk);
}

/* The singular values of the k x k matrix P (column-major, destroyed) into s, descending, by
 * dgesdd (values only).  Returns 1 on success. */
static int factor_svd(double *P, int64_t k, double *s, double *work, int64_t lwork,
                      lapack_int *iwork)
{
    const lapack_int kk = (lapack_int)k;
    return RG_BLAS(LAPACKE_dgesdd_work)(LAPACK_COL_MAJOR, 'N', kk, kk, P, kk, s, NULL, 1, NULL,
                                        1, work, (lapack_int)lwork, iwork) == 0;
}

/* The lower triangle of L (k x k, column-major) into P with zeros above. */
static void lower_part(const double *L, int64_t k, double *P)
{
    for (int64_t j = 0; j < k; j++)
        for (int64_t i = 0; i < k; i++) P[j * k + i] = i >= j ? L[j * k + i] : 0.0;
}

/* Singular values of the tall side M of A (n x f row-major: M = A if f <= n, else A^T; k =
 * min(n, f) columns) by CholeskyQR2, from L1 = chol(M^T M) (G, kept) and its inverse (P,
 * column-major lower with zeros above; destroyed): Q = M L1^-T (into T), L2 = chol(Q^T Q),
 * and M = Q L2^-T (L1 L2)^T, so the singular values of M are those of P = L1 L2 (k x k, by
 * dgesdd).  Q is formed with the explicit inverse of L1 in one dgemm (OpenBLAS's dtrsm is ~5x
 * slower on these tall-skinny shapes); the check below measures the orthogonality that
 * results, whatever its source.  Accepted when ||Q^T Q - I||_F <= RG_CHOLQR_ORTH: the first
 * pass is then orthogonal enough for the second to leave Q orthonormal to O(eps) (Yamamoto et
 * al., ETNA 44, 2015; in exact arithmetic Q^T Q = I, and its rounding grows like
 * eps cond(M)^2), so the values carry a backward error ~eps ||M||, as an SVD's do.  Returns 1
 * on success, 0 if the second Cholesky factorisation fails or the test does (cond(M) beyond
 * ~1e7, measured: the caller then takes the SVD).  T: n x f; G2: k x k. */
#define RG_CHOLQR_ORTH 0.5
static int cholqr2_spectrum(const double *A, int64_t n, int64_t f, double *T, const double *G,
                            double *G2, double *P, double *s, double *work, int64_t lwork,
                            lapack_int *iwork)
{
    const int64_t k = n < f ? n : f;
    const lapack_int kk = (lapack_int)k;
    /* Q = M R1^-1: row-major T = A R1^-1 when f <= n; when n < f, A holds M^T and
     * T = R1^-T A holds Q^T (P read row-major is R1^-1 = L1^-T) */
    if (k > RG_GEMM_GRAM_MAX) {
        /* dtrmm on a copy: half dgemm's flops, faster from k = 32 on (measured) */
        memcpy(T, A, sizeof(double) * (size_t)(n * f));
        RG_BLAS(cblas_dtrmm)(CblasRowMajor, f <= n ? CblasRight : CblasLeft, CblasUpper,
                             f <= n ? CblasNoTrans : CblasTrans, CblasNonUnit, (blasint)n,
                             (blasint)f, 1.0, P, (blasint)k, T, (blasint)f);
    } else if (f <= n) {
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)n,
                             (blasint)f, (blasint)f, 1.0, A, (blasint)f, P, (blasint)k, 0.0,
                             T, (blasint)f);
    } else {
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)n, (blasint)f,
                             (blasint)n, 1.0, P, (blasint)k, A, (blasint)f, 0.0, T,
                             (blasint)f);
    }
    gram(T, n, f, G2);
    double dev = 0.0;
    for (int64_t j = 0; j < k; j++)            /* lower triangle, off-diagonal entries twice */
        for (int64_t i = j; i < k; i++) {
            const double e = G2[j * k + i] - (i == j ? 1.0 : 0.0);
            dev += (i == j ? 1.0 : 2.0) * e * e;
        }
    if (!(dev <= RG_CHOLQR_ORTH * RG_CHOLQR_ORTH)) return 0;
    if (RG_BLAS(LAPACKE_dpotrf_work)(LAPACK_COL_MAJOR, 'L', kk, G2, kk) != 0) return 0;
    /* P = L1 L2: L2 with its upper part zeroed, multiplied from the left by L1 */
    lower_part(G2, k, P);
    RG_BLAS(cblas_dtrmm)(CblasColMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit,
                         (blasint)k, (blasint)k, 1.0, G, (blasint)k, P, (blasint)k);
    return factor_svd(P, k, s, work, lwork, iwork);
}

/* The direct route: singular values of the tall side M of A (n x f row-major, destroyed) by
 * Householder QR (dgeqrf) and dgesdd of its k x k triangular factor R, or by dgesdd alone
 * when M is less than twice as tall as wide (as dgesdd itself chooses).  M is column-major
 * already when n < f (row-major n x f is column-major f x n); else it is transposed into T.
 * G2: k x k. */
static int direct_spectrum(double *A, int64_t n, int64_t f, double *T, double *G2, double *s,
                           double *work, int64_t lwork, lapack_int *iwork)
{
    const int64_t k = n < f ? n : f, rows = f <= n ? n : f;
    double *M = A;
    if (f <= n) {
        for (int64_t i0 = 0; i0 < n; i0 += 64)  /* in row blocks: both sides stay cached */
            for (int64_t j = 0; j < f; j++)
                for (int64_t i = i0; i < (i0 + 64 < n ? i0 + 64 : n); i++)
                    T[j * n + i] = A[i * f + j];
        M = T;
    }
    if (rows < 2 * k)
        return RG_BLAS(LAPACKE_dgesdd_work)(LAPACK_COL_MAJOR, 'N', (lapack_int)rows,
                                            (lapack_int)k, M, (lapack_int)rows, s, NULL, 1,
                                            NULL, 1, work, (lapack_int)lwork, iwork) == 0;
    double *tau = work, *w2 = work + k;
    if (RG_BLAS(LAPACKE_dgeqrf_work)(LAPACK_COL_MAJOR, (lapack_int)rows, (lapack_int)k, M,
                                     (lapack_int)rows, tau, w2, (lapack_int)(lwork - k)) != 0)
        return 0;
    for (int64_t j = 0; j < k; j++)  /* R: the upper triangle, zeros below */
        for (int64_t i = 0; i < k; i++) G2[j * k + i] = i <= j ? M[j * rows + i] : 0.0;
    return factor_svd(G2, k, s, work, lwork, iwork);
}

/* Eigenvalues of the Gram G2 (destroyed) into s as singular values (descending), if the
 * kept ones pass the Gram test (every kept eigenvalue >= RG_GRAM_MIN_RATIO * the largest;
 * kept: all but the smallest when structural_zero).  Returns 1 if accepted. */
static int gram_values(double *G2, int64_t k, int structural_zero, double *s, double *work,
                       int64_t lwork, lapack_int *iwork, int64_t liwork)
{
    lapack_int info = RG_BLAS(LAPACKE_dsyevd_work)(LAPACK_COL_MAJOR, 'N', 'L', (lapack_int)k,
                                                    G2, (lapack_int)k, s, work,
                                                    (lapack_int)lwork, iwork,
                                                    (lapack_int)liwork);
    /* s holds the eigenvalues ascending; the kept ones are s[structural_zero .. k-1] */
    if (info != 0) return 0;
    const double lmax = s[k - 1];
    const int64_t first = structural_zero ? 1 : 0;
    /* an all-zero matrix passes with lmax = 0 (no rounding there) */
    if (!(first >= k || s[first] >= RG_GRAM_MIN_RATIO * lmax)) return 0;
    for (int64_t i = 0; i < k / 2; i++) {
        double t = s[i];
        s[i] = s[k - 1 - i];
        s[k - 1 - i] = t;
    }
    for (int64_t i = 0; i < k; i++) s[i] = sqrt(s[i] > 0.0 ? s[i] : 0.0);
    if (structural_zero) s[k - 1] = 0.0;
    return 1;
}

/* Whether lambda_min(A) >= RG_SCALED_MIN_RATIO for the equilibrated Gram A = D^-1 G D^-1,
 * D = diag(G)^(1/2) (G: its strictly lower part read from the strict upper triangle of Gu,
 * column-major, its diagonal from dg): A - RG_SCALED_MIN_RATIO I is formed in W and
 * Cholesky-factored, which succeeds exactly when it is positive definite (up to the
 * factorisation's backward error, <= ~k^2 eps ||A|| <= k^3 eps, far below the ratio).
 * Sylvester's inertia, so the test is tight where a bound from the inverse is not (many small
 * eigenvalues, as in a trained network's stream).  k^3 / 3 flops. */
static int scaled_test(const double *Gu, const double *dg, int64_t k, double *W)
{
    for (int64_t j = 0; j < k; j++) {
        W[j * k + j] = 1.0 - RG_SCALED_MIN_RATIO;
        for (int64_t i = j + 1; i < k; i++)
            W[j * k + i] = Gu[i * k + j] / (sqrt(dg[i]) * sqrt(dg[j]));
    }
    return RG_BLAS(LAPACKE_dpotrf_work)(LAPACK_COL_MAJOR, 'L', (lapack_int)k, W,
                                        (lapack_int)k) == 0;
}

/* G's strictly lower part mirrored into its upper triangle and its diagonal into dg: dpotrf
 * ('L') leaves both, so the Gram stays at hand for the scaled test without a third k x k
 * buffer being touched on the Gram route. */
static void mirror_lower(double *G /* k x k */, int64_t k, double *dg /* k */)
{
    for (int64_t j = 0; j < k; j++) dg[j] = G[j * k + j];
    for (int64_t j0 = 0; j0 < k; j0 += 32)  /* in 32 x 32 tiles: both sides cached */
        for (int64_t i0 = j0; i0 < k; i0 += 32)
            for (int64_t j = j0; j < (j0 + 32 < k ? j0 + 32 : k); j++)
                for (int64_t i = (i0 > j + 1 ? i0 : j + 1); i < (i0 + 32 < k ? i0 + 32 : k); i++)
                    G[i * k + j] = G[j * k + i];
}

/* The routes through the Gram's Cholesky factor, cheapest first: the Gram route, the scaled
 * Cholesky route, CholeskyQR2.  A Gram that passes the Gram test is positive definite, so when
 * Cholesky fails, so would all three.  Returns 1 when a route filled s (its id in *route), 0
 * when none applies (the caller takes the direct route), -1 on a LAPACK failure. */
static int cholesky_routes(const double *A, int64_t n, int64_t f, double *T, double *G,
                           double *G2, double *P, double *dg, double *s, double *work,
                           int64_t lwork, lapack_int *iwork, int64_t liwork, uint8_t *route)
{
    const int64_t k = n < f ? n : f;
    const lapack_int kk = (lapack_int)k;
    mirror_lower(G, k, dg);
    memcpy(G2, G, sizeof(double) * (size_t)(k * k));  /* the copy dsyevd destroys */
    if (RG_BLAS(LAPACKE_dpotrf_work)(LAPACK_COL_MAJOR, 'L', kk, G, kk) != 0) return 0;
    /* max_i G_ii / min_i L_ii^2 <= lambda_max / lambda_min (G_ii <= lambda_max, each pivot
     * L_ii^2 >= lambda_min): beyond 1 / RG_GRAM_MIN_RATIO the Gram test fails, and its
     * eigenvalues are not computed */
    double gmax = 0.0, pmin = INFINITY;
    for (int64_t i = 0; i < k; i++) {
        gmax = fmax(gmax, dg[i]);
        pmin = fmin(pmin, G[i * k + i] * G[i * k + i]);
    }
    if (gmax * RG_GRAM_MIN_RATIO <= pmin && gram_values(G2, k, 0, s, work, lwork, iwork, liwork)) {
        *route = RG_ROUTE_GRAM;
        return 1;
    }
    /* the scaled Cholesky route: singular values of L (T holds k x k scratch) */
    if (scaled_test(G, dg, k, T)) {
        lower_part(G, k, G2);
        if (factor_svd(G2, k, s, work, lwork, iwork)) {
            *route = RG_ROUTE_CHOLESKY;
            return 1;
        }
    }
    lower_part(G, k, P);
    if (RG_BLAS(LAPACKE_dtrtri_work)(LAPACK_COL_MAJOR, 'L', 'N', kk, P, kk) != 0) return -1;
    if (!cholqr2_spectrum(A, n, f, T, G, G2, P, s, work, lwork, iwork)) return 0;
    *route = RG_ROUTE_CHOLQR2;
    return 1;
}

/* Singular values of the scaled centred matrix A (n x f, row-major, destroyed) into s (k,
 * descending), by the cheapest accurate route (*route: RG_ROUTE_*; see rank.h).  T: n x f
 * scratch; G, G2, P: k x k scratch; dg: k.  structural_zero: the smallest value is 0 by construction
 * (the Cholesky routes then cannot apply: the tall side is rank deficient). */
static int spectrum(double *A /* n x f */, int64_t n, int64_t f, int structural_zero,
                    double *T /* n x f */, double *G /* k x k */, double *G2, double *P,
                    double *dg /* k */, double *s /* k */, double *work, int64_t lwork,
                    lapack_int *iwork, int64_t liwork, uint8_t *route)
{
    const int64_t k = n < f ? n : f;
    gram(A, n, f, G);
    if (structural_zero) {
        if (gram_values(G, k, 1, s, work, lwork, iwork, liwork)) {
            *route = RG_ROUTE_GRAM;
            return RG_OK;
        }
    } else {
        const int done = cholesky_routes(A, n, f, T, G, G2, P, dg, s, work, lwork, iwork,
                                         liwork, route);
        if (done < 0) return RG_ERR_LAPACK;
        if (done) return RG_OK;
    }
    if (!direct_spectrum(A, n, f, T, G2, s, work, lwork, iwork)) return RG_ERR_LAPACK;
    *route = RG_ROUTE_SVD;
    if (structural_zero) s[k - 1] = 0.0;
    return RG_OK;
}

/* Interleaved stacks: when the innermost batch axis steps by less than a row (the positions of
 * a (n, length, d) stream), the matrices of that axis share every row's memory.  Loading such
 * a group together reads memory sequentially, instead of one scattered row per page for each
 * matrix.  Up to this many doubles (512 kB: cached between the passes and for the Gram; 2 MB
 * and 1 MB groups measured 3-20% slower on the benchmark's positions) are loaded together,
 * and at most RG_GROUP_COLUMNS columns (their statistics: 5 doubles each). */
#define RG_GROUP_DOUBLES ((int64_t)1 << 16)
#define RG_GROUP_COLUMNS 4096

/* Matrices loaded together: grp consecutive matrices of the innermost batch axis when it
 * steps by less than a row (gstride bytes apart) and several fit in RG_GROUP_DOUBLES; else 1. */
static int64_t group_size(const rg_stack *st, int64_t *gstride)
{
    *gstride = 0;
    if (st->nbatch == 0) return 1;
    const int64_t n = st->base.rows, f = st->base.cols;
    const int64_t g = st->batch_shape[st->nbatch - 1];
    const int64_t gs = st->batch_stride[st->nbatch - 1];
    const int64_t rs = st->base.row_stride;
    int64_t fit = RG_GROUP_DOUBLES / (n * f);
    if (fit > RG_GROUP_COLUMNS / f) fit = RG_GROUP_COLUMNS / f;
    if (!(g > 1 && fit > 1 && (gs < 0 ? -gs : gs) < (rs < 0 ? -rs : rs))) return 1;
    *gstride = gs;
    return g < fit ? g : fit;
}

/* The workspace of rg_rank_batch, one allocation: A (grp n f) | T (n f) | G, G2, P (k k
 * each) | scratch (5 grp f) | dg, s (k each) | work (lwork) | iwork (liwork) | exps (grp). */
typedef struct {
    double *A0, *T, *G, *G2, *P, *stats, *dg, *s, *work;  /* A0 is the allocation */
    lapack_int *iwork;
    int *exps;
    int64_t lwork, liwork;
} rank_ws;

static int rank_ws_alloc(int64_t n, int64_t f, int64_t grp, rank_ws *w)
{
    const int64_t k = n < f ? n : f, nt = n * f;
    int status = lapack_sizes(n, f, &w->lwork, &w->liwork);
    if (status != RG_OK) return status;
    const size_t nd = (size_t)(grp * n * f + nt + 3 * k * k + 5 * grp * f + 2 * k + w->lwork);
    double *ws = malloc(nd * sizeof(double) + (size_t)w->liwork * sizeof(lapack_int) +
                        (size_t)grp * sizeof(int));
    if (!ws) return RG_ERR_NOMEM;
    w->A0 = ws;
    w->T = w->A0 + grp * n * f;
    w->G = w->T + nt;
    w->G2 = w->G + k * k;
    w->P = w->G2 + k * k;
    w->stats = w->P + k * k;
    w->dg = w->stats + 5 * grp * f;
    w->s = w->dg + k;
    w->work = w->s + k;
    w->iwork = (lapack_int *)(w->work + w->lwork);
    w->exps = (int *)(w->iwork + w->liwork);
    return RG_OK;
}

/* The spectrum of the loaded matrix A (n x f, scaled by 2^-e) measured into out (one value,
 * or its k singular values for RG_MEASURE_SPECTRUM). */
static int measure_matrix(double *A, int64_t n, int64_t f, int e, int center, int measure,
                          int squared, double tol, const rank_ws *w, double *out,
                          uint8_t *route)
{
    const int64_t k = n < f ? n : f;
    /* centring with n <= f leaves rank <= n - 1 */
    int status = spectrum(A, n, f, center && n <= f, w->T, w->G, w->G2, w->P, w->dg, w->s,
                          w->work, w->lwork, w->iwork, w->liwork, route);
    if (status != RG_OK) return status;
    if (measure == RG_MEASURE_SPECTRUM) {
        for (int64_t i = 0; i < k; i++) out[i] = ldexp(w->s[i], e);
    } else {
        /* the measures are scale-free; only an explicit tolerance needs the scale */
        double t = tol < 0.0 ? tol : ldexp(tol, -e);
        out[0] = rg_spectrum_measure(w->s, k, measure, squared, t, n, f);
    }
    return RG_OK;
}

int rg_rank_batch(const rg_stack *st, int center, int measure, int squared, double tol,
                  double *out, uint8_t *route, int64_t *bad)
{
    const int64_t n = st->base.rows, f = st->base.cols, k = n < f ? n : f, last = st->nbatch - 1;
    int64_t count = 1, gstride, idx[RG_MAX_BATCH_DIMS] = {0};
    for (int d = 0; d < st->nbatch; d++) count *= st->batch_shape[d];
    if (count == 0) return RG_OK;
    const int64_t grp = group_size(st, &gstride);
    rank_ws w;
    int status = rank_ws_alloc(n, f, grp, &w);
    if (status != RG_OK) return status;
    for (int64_t b = 0; b < count && status == RG_OK; b++) {
        rg_strided_matrix v = st->base;
        for (int d = 0; d < st->nbatch; d++) v.data += idx[d] * st->batch_stride[d];
        /* matrix q of its group (grp consecutive matrices of the last axis, loaded at q = 0) */
        const int64_t q = grp > 1 ? idx[last] % grp : 0;
        if (q == 0) {
            const int64_t left = grp > 1 ? st->batch_shape[last] - idx[last] : 1;
            load_span(&v, left < grp ? left : grp, gstride, center, w.A0, f, n * f, w.stats,
                      w.exps);
        }
        double *A = w.A0 + q * n * f;
        int e = w.exps[q];
        if (e == RG_EXP_REFERENCE) status = load_centered_ref(&v, center, A, f, w.stats, &e);
        uint8_t r = RG_ROUTE_GRAM;
        if (status == RG_OK)
            status = measure_matrix(A, n, f, e, center, measure, squared, tol, &w,
                                    out + (measure == RG_MEASURE_SPECTRUM ? b * k : b), &r);
        if (status != RG_OK) *bad = b;
        if (route && status == RG_OK) route[b] = r;
        for (int d = last; d >= 0; d--) {
            if (++idx[d] < st->batch_shape[d]) break;
            idx[d] = 0;
        }
    }
    free(w.A0);
    return status;
}
