/* Linear CKA between layers (see cka.h). */
#include "cka.h"

#include <math.h>
#include <stdlib.h>

#include "blas.h"
#include "memory.h"
#include "status.h"

/* Sample-space row blocks hold at most this many doubles for all layers together (32 MB). */
#define RG_CKA_BLOCK_DOUBLES ((int64_t)1 << 22)

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

/* C_lm for the needed pairs in feature space.  T: max f_l x W scratch. */
static void cross_feature(const double *Z /* n x W */, int64_t n, int64_t W, int64_t nl,
                          const int64_t *off /* nl + 1 */, int consecutive, double *T, double *C)
{
    for (int64_t l = 0; l < nl; l++) {
        const int64_t last = last_partner(l, nl, consecutive);
        const int64_t fl = off[l + 1] - off[l], c0 = off[l], width = off[last + 1] - c0;
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)fl,
                             (blasint)width, (blasint)n, 1.0, Z + c0, (blasint)W, Z + c0,
                             (blasint)W, 0.0, T, (blasint)width);
        for (int64_t m = l; m <= last; m++)
            C[l * nl + m] = sumsq(T + (off[m] - c0), fl, off[m + 1] - off[m], width);
    }
}

/* C_lm for all pairs in sample space, row block by row block, from Z holding the layers one
 * after the other (layer l: n x f_l at Z + n off[l]; contiguous, so each dgemm streams one
 * block of memory).  P: nl * r * n scratch. */
static void cross_sample(const double *Z /* n x W */, int64_t n, int64_t W, int64_t nl,
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
        for (int64_t l = 0; l < nl; l++) {
            const int64_t fl = off[l + 1] - off[l];
            const double *Xb = Z + n * off[l] + b0 * fl;  /* layer-major: layer l is n x fl */
            double *D = PD + l * rb * rb;
            /* dsyrk writes the upper triangle only: zero the strictly lower part once per
             * block size (only the last block can be smaller) */
            for (int64_t i = 1; i < rb && zeroed != rb; i++)
                for (int64_t j = 0; j < i; j++) D[i * rb + j] = 0.0;
            RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)rb,
                                 (blasint)fl, 1.0, Xb, (blasint)fl, 0.0, D, (blasint)rb);
            if (rest > 0)
                RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rb,
                                     (blasint)rest, (blasint)fl, 1.0, Xb, (blasint)fl,
                                     Xb + rb * fl, (blasint)fl, 0.0, PR + l * rb * rest,
                                     (blasint)rest);
        }
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
 * space is cheaper (multiply-add counts of the two routes). */
static int64_t sample_rows(const rg_strided_matrix *layers, int64_t nl, int consecutive,
                           int64_t n, int64_t W)
{
    double feat = 0.0, samp = 0.5 * (double)n * (double)n * (double)W +
                              0.25 * (double)nl * (double)nl * (double)n * (double)n;
    for (int64_t l = 0; l < nl; l++) {
        int64_t width = 0;
        for (int64_t m = l; m <= last_partner(l, nl, consecutive); m++) width += layers[m].cols;
        feat += (double)n * (double)layers[l].cols * (double)width;
    }
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
                  double *out, int *sample_space, int64_t *bad)
{
    const int64_t n = layers[0].rows;
    int64_t W = 0, fmax = 0;
    for (int64_t l = 0; l < nl; l++) {
        W += layers[l].cols;
        if (layers[l].cols > fmax) fmax = layers[l].cols;
    }
    const int64_t r = sample_rows(layers, nl, consecutive, n, W);
    const int64_t scratch = r > 0 ? nl * r * n + nl * nl : fmax * W;
    if (sample_space) *sample_space = r > 0;
    /* one allocation: Z (n W) | d (nl n) | scratch (5 fmax) | C (nl nl) | off (nl + 1) |
     * scratch */
    const size_t nd = (size_t)(n * W + nl * n + 5 * fmax + nl * nl + (nl + 1) + scratch);
    double *ws = rg_alloc_large(nd * sizeof(double));
    if (!ws) return RG_ERR_NOMEM;
    double *Z = ws, *d = Z + n * W, *mean = d + nl * n, *C = mean + 5 * fmax;
    double *S = C + nl * nl + nl + 1;
    int64_t *off = (int64_t *)(C + nl * nl);  /* same size as a double */
    off[0] = 0;
    for (int64_t l = 0; l < nl; l++) off[l + 1] = off[l] + layers[l].cols;
    int status = RG_OK;
    for (int64_t l = 0; l < nl && status == RG_OK; l++) {
        /* sample space: layer-major (layer l is n x f_l at Z + n off[l]); feature space:
         * [X_0 | X_1 | ...] (n x W), so one GEMM spans a layer's partners */
        const int64_t ld = r > 0 ? layers[l].cols : W;
        double *Xl = r > 0 ? Z + n * off[l] : Z + off[l];
        int e;
        status = rg_load_centered(&layers[l], 1, Xl, ld, mean, &e);
        if (status != RG_OK) *bad = l;
        for (int64_t i = 0; status == RG_OK && i < n; i++)
            d[l * n + i] = sumsq(Xl + i * ld, 1, layers[l].cols, ld);
    }
    for (int64_t i = 0; i < nl * nl; i++) C[i] = NAN;
    if (status == RG_OK && r > 0) cross_sample(Z, n, W, nl, off, r, S, C, S + nl * r * n);
    else if (status == RG_OK) cross_feature(Z, n, W, nl, off, consecutive, S, C);
    if (status == RG_OK) hsic_to_cka(C, d, n, nl, consecutive, debiased, out);
    free(ws);
    return status;
}
