/* The layers' forward / backward pairs (see layers.h). */
#include "layers.h"

#include <math.h>
#include <string.h>

#define LN_EPS 1e-5

void rg_embedding_forward(float *out, const int32_t *x, const float *tok, const float *pos,
                          int64_t B, int64_t L, int64_t d)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < L; p++) {
            float *o = out + (b * L + p) * d;
            const float *e = tok + (int64_t)x[b * L + p] * d, *q = pos + p * d;
            for (int64_t i = 0; i < d; i++) o[i] = e[i] + q[i];
        }
}

void rg_embedding_backward(float *dtok, float *dpos, const float *dout, const int32_t *x,
                           int64_t B, int64_t L, int64_t d, int64_t n_tok)
{
    memset(dtok, 0, sizeof(float) * (size_t)(n_tok * d));
    memset(dpos, 0, sizeof(float) * (size_t)(L * d));
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < L; p++) {
            const float *g = dout + (b * L + p) * d;
            float *e = dtok + (int64_t)x[b * L + p] * d, *q = dpos + p * d;
            for (int64_t i = 0; i < d; i++) { e[i] += g[i]; q[i] += g[i]; }
        }
}

/* Row reductions with 8 independent float accumulators, folded in double in a fixed order:
 * without -ffast-math a single running sum cannot be vectorised, lanes can (each lane adds
 * C/8 terms, so the rounding error stays at the level of a pairwise sum for C <= 4096).  The
 * result is a deterministic function of the input. */
#define LANES 8

static double fold_lanes(const float *acc)
{
    return (((double)acc[0] + acc[4]) + ((double)acc[2] + acc[6])) +
           (((double)acc[1] + acc[5]) + ((double)acc[3] + acc[7]));
}

/* Σ x[i] */
static double sum_lanes(const float *restrict x, int64_t n)
{
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += x[i + j];
    for (; i < n; i++) acc[i % LANES] += x[i];
    return fold_lanes(acc);
}

/* Σ (x[i] - c)^2 */
static double sumsq_dev_lanes(const float *restrict x, float c, int64_t n)
{
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float t = x[i + j] - c;
            acc[j] += t * t;
        }
    for (; i < n; i++) { float t = x[i] - c; acc[i % LANES] += t * t; }
    return fold_lanes(acc);
}

void rg_layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd,
                          const float *restrict inp, const float *restrict w,
                          const float *restrict b, int64_t N, int64_t C)
{
    for (int64_t r = 0; r < N; r++) {
        const float *x = inp + r * C;
        float *o = out + r * C;
        float fm = (float)(sum_lanes(x, C) / (double)C);
        /* two passes (not E[x^2] - mu^2): no cancellation when |mean| >> std */
        double var = sumsq_dev_lanes(x, fm, C) / (double)C; /* biased, as torch */
        float fr = (float)(1.0 / sqrt(var + LN_EPS));
        for (int64_t i = 0; i < C; i++) o[i] = (x[i] - fm) * fr * w[i] + b[i];
        mean[r] = fm;
        rstd[r] = fr;
    }
}

void rg_layernorm_backward_input(float *restrict dinp, const float *restrict dout,
                                 const float *restrict inp, const float *restrict w,
                                 const float *restrict mean, const float *restrict rstd,
                                 int64_t N, int64_t C)
{
    for (int64_t r = 0; r < N; r++) {
        const float *g = dout + r * C, *x = inp + r * C;
        float *dx = dinp + r * C;
        const float mu = mean[r], rs = rstd[r];
        /* dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w */
        float a1[LANES] = {0}, a2[LANES] = {0};
        int64_t i = 0;
        for (; i + LANES <= C; i += LANES)
            for (int j = 0; j < LANES; j++) {
                float xhat = (x[i + j] - mu) * rs, gw = g[i + j] * w[i + j];
                a1[j] += gw;
                a2[j] += gw * xhat;
            }
        for (; i < C; i++) {
            float xhat = (x[i] - mu) * rs, gw = g[i] * w[i];
            a1[i % LANES] += gw;
            a2[i % LANES] += gw * xhat;
        }
        const float m1 = (float)(fold_lanes(a1) / (double)C);
        const float m2 = (float)(fold_lanes(a2) / (double)C);
        for (i = 0; i < C; i++) {
            float xhat = (x[i] - mu) * rs;
            dx[i] += (g[i] * w[i] - m1 - xhat * m2) * rs;
        }
    }
}

void rg_layernorm_backward_params(float *restrict dw, float *restrict db,
                                  const float *restrict dout, const float *restrict inp,
                                  const float *restrict mean, const float *restrict rstd,
                                  int64_t N, int64_t C, int64_t c0, int64_t c1)
{
    memset(dw + c0, 0, sizeof(float) * (size_t)(c1 - c0));
    memset(db + c0, 0, sizeof(float) * (size_t)(c1 - c0));
    for (int64_t r = 0; r < N; r++) {
        const float *g = dout + r * C, *x = inp + r * C;
        const float mu = mean[r], rs = rstd[r];
        for (int64_t i = c0; i < c1; i++) {
            dw[i] += g[i] * ((x[i] - mu) * rs);
            db[i] += g[i];
        }
    }
}

void rg_colsum(float *dbias, const float *g, int64_t N, int64_t C, int64_t c0, int64_t c1)
{
    memset(dbias + c0, 0, sizeof(float) * (size_t)(c1 - c0));
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = c0; j < c1; j++) dbias[j] += g[r * C + j];
}

void rg_bias_forward(float *out, const float *bias, int64_t N, int64_t C)
{
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < C; j++) out[r * C + j] += bias[j];
}

/* GELU.  libm's erff is a scalar call that dominated the elementwise time, and 1 + erff(x/√2)
 * loses all relative accuracy for x << 0; instead Φ(x) = erfc(-x/√2)/2 is evaluated with the
 * branch-free helpers below, which vectorise.  Accuracy (float32 arithmetic, |x| <= 12, vs
 * double erfc): |ΔΦ| <= 1.9e-7, relative error of gelu <= 2.3e-6 where |gelu| > 1e-6. */
/* e^x for x in about [-87, 88] (clamped), Cephes expf polynomial with Cody-Waite reduction:
 * ~1 ulp, branch-free so loops over it vectorise (no libm call). */
/* FP-exception flags are never inspected here, so these loops may be compiled without
 * -ftrapping-math: that only lets GCC if-convert the selects below (and so vectorise); the
 * values computed are unchanged. */
#if defined(__GNUC__) && !defined(__clang__)
#define RG_VECTOR_SELECTS __attribute__((optimize("no-trapping-math")))
#else
#define RG_VECTOR_SELECTS
#endif

static inline RG_VECTOR_SELECTS float rg_vexpf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln 2) via the 1.5 * 2^23 trick (exact under round-to-nearest) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

/* Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2, with erfc from Numerical Recipes' Chebyshev
 * fit (relative error < 1.2e-7 for all z >= 0).  Working with erfc on the side where it is small
 * avoids the cancellation of 1 + erf(x) in the left tail. */
static inline RG_VECTOR_SELECTS float rg_vphi(float x)
{
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float q = 0.17087277f;
    q = q * t - 0.82215223f;
    q = q * t + 1.48851587f;
    q = q * t - 1.13520398f;
    q = q * t + 0.27886807f;
    q = q * t - 0.18628806f;
    q = q * t + 0.09678418f;
    q = q * t + 0.37409196f;
    q = q * t + 1.00002368f;
    q = q * t - 1.26551223f;
    float half_erfc = 0.5f * t * rg_vexpf(q - z * z);
    float upper = 1.0f - half_erfc; /* both arms computed: a plain select vectorises */
    return x < 0.0f ? half_erfc : upper;
}

#define INV_SQRT2PI 0.39894228040143267794f

/* The loops are also compiled for AVX-512 and AVX2 and picked at load time (ifunc): -std=c99
 * implies -ffp-contract=off, so every version does the same IEEE operations and gives
 * identical bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RG_CLONES
#endif

RG_CLONES RG_VECTOR_SELECTS
void rg_gelu_forward(float *out, float *deriv, const float *inp, const float *bias, int64_t N,
                     int64_t C)
{
    for (int64_t r = 0; r < N; r++) {
        const float *in = inp + r * C;
        float *o = out + r * C, *g = deriv + r * C;
        for (int64_t j = 0; j < C; j++) {
            float x = in[j] + bias[j];
            float phi = rg_vphi(x), pdf = INV_SQRT2PI * rg_vexpf(-0.5f * x * x);
            o[j] = x * phi;
            g[j] = phi + x * pdf; /* gelu'(x) = Φ(x) + x φ(x) */
        }
    }
}

void rg_gelu_backward(float *dinp, const float *deriv, const float *dout, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dinp[i] = dout[i] * deriv[i];
}

void rg_residual_forward(float *out, const float *inp, const float *bias, int64_t N, int64_t C)
{
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < C; j++) out[r * C + j] = inp[r * C + j] + bias[j];
}

void rg_crossentropy_forward(float *logits, double *nll_sum, int64_t *count,
                             const int32_t *targets, const uint8_t *mask, int64_t N,
                             int64_t V)
{
    double nll = 0.0;
    int64_t cnt = 0;
    for (int64_t r = 0; r < N; r++) {
        float *z = logits + r * V;
        float mx = z[0];
        for (int64_t j = 1; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        /* -log p = log s - (z_t - max), taken before exp: exp(z_t - max) underflows to 0
         * when the true token's logit is ~100 below the largest */
        const float zt = mask[r] ? z[targets[r]] - mx : 0.0f;
        float s = 0.0f;
        for (int64_t j = 0; j < V; j++) { z[j] = expf(z[j] - mx); s += z[j]; }
        float inv = 1.0f / s;
        if (mask[r]) {
            nll += log((double)s) - (double)zt;
            cnt++;
        }
        for (int64_t j = 0; j < V; j++) z[j] *= inv;
    }
    *nll_sum = nll;
    *count = cnt;
}

void rg_crossentropy_backward(float *probs, const int32_t *targets, const uint8_t *mask,
                              int64_t N, int64_t V, float scale)
{
    for (int64_t r = 0; r < N; r++) {
        float *p = probs + r * V;
        if (!mask[r]) { memset(p, 0, sizeof(float) * (size_t)V); continue; }
        for (int64_t j = 0; j < V; j++) p[j] *= scale;
        p[targets[r]] -= scale;
    }
}
