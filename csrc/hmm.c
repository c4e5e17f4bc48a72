#include "hmm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "chain.h"
#include "status.h"

/* Rows of the final token GEMM per call, so that its M stays far below 2^31. */
#define TOKEN_ROWS ((int64_t)1 << 16)

int64_t rg_hmm_work_size(int64_t H, int64_t V, int64_t n, int64_t L)
{
    return n * (L + 2) * H + V;
}

/* scale[x] = 2^k bringing the largest E[h, x] to [2^-74, 2) when it lies below 2^-500, else 1.
 * A normalised forward row times a column that small can underflow to zero in every state
 * (e.g. P(state) 1e-200 times E 1e-200), and the visible tokens would be called impossible.
 * The scale is a power of two, so it cancels exactly in the row's normalisation: columns at or
 * above 2^-500 (scale 1) give the bits they always gave, smaller ones the same posterior
 * without the underflow. */
static void column_scales(const double *E, int64_t H, int64_t V, double *scale)
{
    for (int64_t x = 0; x < V; x++) {
        double top = 0.0;
        for (int64_t h = 0; h < H; h++) top = E[h * V + x] > top ? E[h * V + x] : top;
        int k = top > 0.0 && top < 0x1p-500 ? -ilogb(top) : 0;
        scale[x] = ldexp(1.0, k < 1000 ? k : 1000);
    }
}

/* Row *= the evidence of token x: E[h, x] for every state h, times the column's scale. */
static inline void times_emission(double *row, const double *E, const double *scale,
                                  int64_t H, int64_t V, int32_t x)
{
    for (int64_t h = 0; h < H; h++) row[h] *= E[h * V + x] * scale[x];
}

/* G (n, L, H) = P(h_t | visible tokens of sequence i), by forward-backward; b, g (n, H);
 * scale (V) from column_scales. */
static int smooth(const double *T, const double *pi, const double *E, const double *scale,
                  int64_t H, int64_t V, const int32_t *tokens, const uint8_t *mask, int64_t n,
                  int64_t L, double *G, double *b, double *g, int64_t *bad_seq, int64_t *bad_pos)
{
    const int64_t ld = L * H; /* row stride of G viewed as (n, L*H) */
    /* Forward: G[i, t] = P(h_t | visible x_0..x_t). */
    for (int64_t i = 0; i < n; i++) memcpy(G + i * ld, pi, sizeof(double) * (size_t)H);
    for (int64_t t = 0; t < L; t++) {
        if (t > 0)
            RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)H,
                                 (int)H, 1.0, G + (t - 1) * H, (int)ld, T, (int)H, 0.0,
                                 G + t * H, (int)ld);
        for (int64_t i = 0; i < n; i++) {
            double *a = G + i * ld + t * H;
            if (!mask[i * L + t]) times_emission(a, E, scale, H, V, tokens[i * L + t]);
            if (!(rg_normalize_row(a, H) > 0.0)) { *bad_seq = i; *bad_pos = t; return RG_ERR_ZERO_PROB; }
        }
    }

    /* Backward: b = P(visible x_{t+1..L-1} | h_t) up to a per-row scale; G[t] *= b. */
    for (int64_t k = 0; k < n * H; k++) b[k] = 1.0;
    for (int64_t t = L - 1; t >= 0; t--) {
        for (int64_t i = 0; i < n; i++) {
            double *a = G + i * ld + t * H;
            for (int64_t h = 0; h < H; h++) a[h] *= b[i * H + h];
            if (!(rg_normalize_row(a, H) > 0.0)) { *bad_seq = i; *bad_pos = t; return RG_ERR_ZERO_PROB; }
        }
        if (t == 0) break;
        /* g = e_t * b_t: the evidence at t times what lies beyond it; b_{t-1} = T g */
        memcpy(g, b, sizeof(double) * (size_t)(n * H));
        for (int64_t i = 0; i < n; i++)
            if (!mask[i * L + t])
                times_emission(g + i * H, E, scale, H, V, tokens[i * L + t]);
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)H, (int)H,
                             1.0, g, (int)H, T, (int)H, 0.0, b, (int)H);
        for (int64_t i = 0; i < n; i++)
            if (!(rg_normalize_row(b + i * H, H) > 0.0)) {
                *bad_seq = i; *bad_pos = t - 1;
                return RG_ERR_ZERO_PROB;
            }
    }
    return RG_OK;
}

int rg_hmm_posterior(const double *T, const double *pi, const double *E, int64_t H, int64_t V,
                     const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                     double *out, double *work, int64_t *bad_seq, int64_t *bad_pos)
{
    double *G = work, *b = work + n * L * H, *g = b + n * H, *scale = g + n * H;
    column_scales(E, H, V, scale);
    int status = smooth(T, pi, E, scale, H, V, tokens, mask, n, L, G, b, g, bad_seq, bad_pos);
    if (status != RG_OK) return status;
    /* P(x_t = v) = sum_h P(h_t = h) E[h, v], then one-hot where the token is visible */
    for (int64_t r = 0; r < n * L; r += TOKEN_ROWS) {
        const int64_t m = n * L - r < TOKEN_ROWS ? n * L - r : TOKEN_ROWS;
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)V, (int)H,
                             1.0, G + r * H, (int)H, E, (int)V, 0.0, out + r * V, (int)V);
    }
    for (int64_t k = 0; k < n * L; k++) {
        if (mask[k]) continue;
        memset(out + k * V, 0, sizeof(double) * (size_t)V);
        out[k * V + tokens[k]] = 1.0;
    }
    return RG_OK;
}

int rg_hmm_bayes_nll(const double *T, const double *pi, const double *E, int64_t H, int64_t V,
                     const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                     double *nll_sum, int64_t *count, int64_t *bad_seq, int64_t *bad_pos)
{
    /* chunk so that the workspace stays near 32 MiB whatever n is */
    int64_t chunk = (int64_t)(4u << 20) / ((L + 2) * H);
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    double *G = malloc(sizeof(double) * (size_t)rg_hmm_work_size(H, V, chunk, L));
    if (!G) return RG_ERR_NOMEM;
    double *b = G + chunk * L * H, *g = b + chunk * H, *scale = g + chunk * H;
    column_scales(E, H, V, scale);
    double sum = 0.0;
    int64_t cnt = 0;
    int status = RG_OK;
    for (int64_t s = 0; s < n; s += chunk) {
        const int64_t m = n - s < chunk ? n - s : chunk;
        status = smooth(T, pi, E, scale, H, V, tokens + s * L, mask + s * L, m, L, G, b, g,
                        bad_seq, bad_pos);
        if (status != RG_OK) { *bad_seq += s; goto exit; }
        for (int64_t k = 0; k < m * L; k++) {
            if (!mask[s * L + k]) continue;
            const int32_t x = tokens[s * L + k];
            double p = 0.0;
            for (int64_t h = 0; h < H; h++) p += G[k * H + h] * E[h * V + x];
            sum -= log(p);
            cnt++;
        }
    }
    *nll_sum = sum;
    *count = cnt;
exit:
    free(G);
    return status;
}
