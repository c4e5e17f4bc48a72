/* Linear CKA between layers (see cka.h). */
#include "cka.h"

#include <math.h>
#include <stdlib.h>

#include "blas.h"
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

/* C_lm for the needed pairs in feature space.  T: max f_l x W scratch. */
static void cross_feature(const double *Z /* n x W */, int64_t n, int64_t W, int64_t L,
                          const int64_t *off /* L + 1 */, int consecutive, double *T, double *C)
{
    for (int64_t l = 0; l < L; l++) {
        const int64_t last = consecutive ? (l + 1 < L ? l + 1 : l) : L - 1;
        const int64_t fl = off[l + 1] - off[l], c0 = off[l], width = off[last + 1] - c0;
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (blasint)fl,
                             (blasint)width, (blasint)n, 1.0, Z + c0, (blasint)W, Z + c0,
                             (blasint)W, 0.0, T, (blasint)width);
        for (int64_t m = l; m <= last; m++)
            C[l * L + m] = sumsq(T + (off[m] - c0), fl, off[m + 1] - off[m], width);
    }
}

/* C_lm for all pairs in sample space, row block by row block.  P: L * r * n scratch. */
static void cross_sample(const double *Z /* n x W */, int64_t n, int64_t W, int64_t L,
                         const int64_t *off /* L + 1 */, int64_t r, double *P, double *C,
                         double *M /* L x L */)
{
    for (int64_t i = 0; i < L * L; i++) C[i] = 0.0;
    for (int64_t b0 = 0; b0 < n; b0 += r) {
        const int64_t rb = b0 + r < n ? r : n - b0, rest = n - b0 - rb;
        /* per layer: the diagonal block (rb x rb, both triangles) then the block right of it
         * (rb x rest, counted twice for symmetry) */
        double *PD = P, *PR = P + L * rb * rb;
        for (int64_t l = 0; l < L; l++) {
            const double *Xb = Z + b0 * W + off[l];
            const int64_t fl = off[l + 1] - off[l];
            RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rb,
                                 (blasint)rb, (blasint)fl, 1.0, Xb, (blasint)W, Xb, (blasint)W,
                                 0.0, PD + l * rb * rb, (blasint)rb);
            if (rest > 0)
                RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rb,
                                     (blasint)rest, (blasint)fl, 1.0, Xb, (blasint)W,
                                     Xb + rb * W, (blasint)W, 0.0, PR + l * rb * rest,
                                     (blasint)rest);
        }
        RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)L,
                             (blasint)(rb * rb), 1.0, PD, (blasint)(rb * rb), 1.0, C,
                             (blasint)L);
        if (rest > 0) {
            RG_BLAS(cblas_dsyrk)(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)L,
                                 (blasint)(rb * rest), 1.0, PR, (blasint)(rb * rest), 0.0, M,
                                 (blasint)L);
            for (int64_t l = 0; l < L; l++)
                for (int64_t m = l; m < L; m++) C[l * L + m] += 2.0 * M[l * L + m];
        }
    }
}

int rg_cka_layers(const rg_view *layers /* L */, int64_t L, int consecutive, int debiased,
                  double *out /* L x L */, int *sample_space, int64_t *bad)
{
    const int64_t n = layers[0].rows;
    int64_t W = 0, fmax = 0;
    for (int64_t l = 0; l < L; l++) {
        W += layers[l].cols;
        if (layers[l].cols > fmax) fmax = layers[l].cols;
    }
    /* multiply-add counts of the two routes */
    double feat = 0.0, samp = 0.5 * (double)n * (double)n * (double)W +
                              0.25 * (double)L * (double)L * (double)n * (double)n;
    for (int64_t l = 0; l < L; l++) {
        const int64_t last = consecutive ? (l + 1 < L ? l + 1 : l) : L - 1;
        int64_t width = 0;
        for (int64_t m = l; m <= last; m++) width += layers[m].cols;
        feat += (double)n * (double)layers[l].cols * (double)width;
    }
    const int use_sample = samp < feat;
    int64_t r = 0, scratch;
    if (use_sample) {
        r = RG_CKA_BLOCK_DOUBLES / (L * n);
        if (r < 16) r = 16;
        if (r > n) r = n;
        scratch = L * r * n + L * L;
    } else {
        scratch = fmax * W;
    }
    if (sample_space) *sample_space = use_sample;
    /* one allocation: Z (n W) | d (L n) | scratch (5 fmax) | C (L L) | off (L + 1) | scratch */
    const size_t nd = (size_t)(n * W + L * n + 5 * fmax + L * L + (L + 1) + scratch);
    double *ws = malloc(nd * sizeof(double));
    if (!ws) return RG_ERR_NOMEM;
    double *Z = ws, *d = Z + n * W, *mean = d + L * n, *C = mean + 5 * fmax;
    double *S = C + L * L + L + 1;
    int64_t *off = (int64_t *)(C + L * L);  /* same size as a double */
    off[0] = 0;
    for (int64_t l = 0; l < L; l++) off[l + 1] = off[l] + layers[l].cols;
    int status = RG_OK;
    for (int64_t l = 0; l < L; l++) {
        int e;
        status = rg_load_centered(&layers[l], 1, Z + off[l], W, mean, &e);
        if (status != RG_OK) { *bad = l; goto exit; }
        for (int64_t i = 0; i < n; i++) d[l * n + i] = sumsq(Z + i * W + off[l], 1,
                                                             layers[l].cols, W);
    }
    for (int64_t i = 0; i < L * L; i++) C[i] = NAN;
    if (use_sample)
        cross_sample(Z, n, W, L, off, r, S, C, S + L * r * n);
    else
        cross_feature(Z, n, W, L, off, consecutive, S, C);

    /* HSIC values (biased: C itself) for the needed pairs, then CKA */
    for (int64_t i = 0; i < L * L; i++) out[i] = NAN;
    const double dn = (double)n;
    for (int64_t l = 0; l < L; l++) {
        const int64_t last = consecutive ? (l + 1 < L ? l + 1 : l) : L - 1;
        for (int64_t m = l; m <= last; m++) {
            double h = C[l * L + m];
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
            out[l * L + m] = h;  /* HSIC for now; diagonal kept for normalisation */
        }
    }
    for (int64_t l = 0; l < L; l++)
        for (int64_t m = l + 1; m < L; m++) {
            const double a = out[l * L + l], b = out[m * L + m], h = out[l * L + m];
            out[l * L + m] = out[m * L + l] = (a > 0.0 && b > 0.0) ? h / sqrt(a * b) : NAN;
        }
    for (int64_t l = 0; l < L; l++) out[l * L + l] = out[l * L + l] > 0.0 ? 1.0 : NAN;
exit:
    free(ws);
    return status;
}
