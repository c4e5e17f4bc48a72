#include "mlp.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "blas.h"
#include "chain.h"
#include "rng.h"
#include "status.h"

#define LN_EPS 1e-5

/* ------------------------------------------------------------------------------------------ */
/* Layout                                                                                      */

static int64_t block_floats(const rg_mlp_config *c)
{
    int64_t D = c->L * c->d;
    return (c->block_ln ? 2 * D : 0) + 2 * c->m * D + c->m + D;
}

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

int rg_mlp_check_config(const rg_mlp_config *c, int64_t *n_params)
{
    if (c->V < 2 || c->L < 1 || c->d < 1 || c->m < 1 || c->K < 0) return RG_ERR_VALUE;
    if (c->V + 1 > RG_MLP_MAX_DIM || c->m > RG_MLP_MAX_DIM) return RG_ERR_VALUE;
    int64_t D = mul_checked(c->L, c->d);
    if (D < 0 || D > RG_MLP_MAX_DIM) return RG_ERR_VALUE;
    int64_t mD = mul_checked(c->m, D);
    if (mD < 0) return RG_ERR_VALUE;
    int64_t blk = add_checked(add_checked(mul_checked(mD, 2), c->m), D);
    if (c->block_ln) blk = add_checked(blk, 2 * D);
    int64_t n = add_checked(mul_checked(c->V + 1, c->d), D);
    n = add_checked(n, mul_checked(blk, c->K));
    n = add_checked(n, 2 * D);
    n = add_checked(n, add_checked(mul_checked(c->V, c->d), c->V));
    if (blk < 0 || n < 0) return RG_ERR_VALUE;
    *n_params = n;
    return RG_OK;
}

int64_t rg_mlp_n_tensors(const rg_mlp_config *c)
{
    return 2 + c->K * (c->block_ln ? 6 : 4) + 4;
}

void rg_mlp_layout(const rg_mlp_config *c, int64_t *offset, int64_t *size)
{
    const int64_t V = c->V, d = c->d, D = c->L * c->d, m = c->m;
    int64_t i = 0, off = 0;
#define PUT(n) do { offset[i] = off; size[i] = (n); off += (n); i++; } while (0)
    PUT((V + 1) * d);
    PUT(D);
    for (int64_t k = 0; k < c->K; k++) {
        if (c->block_ln) { PUT(D); PUT(D); }
        PUT(m * D); PUT(m); PUT(D * m); PUT(D);
    }
    PUT(D); PUT(D); PUT(V * d); PUT(V);
#undef PUT
}

void rg_mlp_view_of(const rg_mlp_config *c, float *arena, rg_mlp_view *v)
{
    const int64_t d = c->d, D = c->L * c->d;
    v->tok_emb = arena;
    v->pos_emb = v->tok_emb + (c->V + 1) * d;
    v->blocks = v->pos_emb + D;
    v->block_stride = block_floats(c);
    v->lnf_w = v->blocks + c->K * v->block_stride;
    v->lnf_b = v->lnf_w + D;
    v->unemb_w = v->lnf_b + D;
    v->unemb_b = v->unemb_w + c->V * d;
}

rg_mlp_block rg_mlp_block_of(const rg_mlp_config *c, const rg_mlp_view *v, int64_t k)
{
    const int64_t D = c->L * c->d, m = c->m;
    rg_mlp_block b;
    float *p = v->blocks + k * v->block_stride;
    b.ln_w = b.ln_b = NULL;
    if (c->block_ln) { b.ln_w = p; b.ln_b = p + D; p += 2 * D; }
    b.fc1_w = p;
    b.fc1_b = b.fc1_w + m * D;
    b.fc2_w = b.fc1_b + m;
    b.fc2_b = b.fc2_w + D * m;
    return b;
}

void rg_mlp_init(const rg_mlp_config *c, float *params, uint64_t seed)
{
    const int64_t D = c->L * c->d;
    int64_t nt = rg_mlp_n_tensors(c);
    /* Kind and fan-in of each tensor, in layout order: 0 normal, 1 uniform(+-1/sqrt(fan_in)),
     * 2 ones, 3 zeros. */
    int64_t i = 0, off = 0;
    rg_rng rng;
    for (int64_t t = 0; t < nt; t++) {
        int kind;
        int64_t n, fan_in = 1;
        int64_t per = c->block_ln ? 6 : 4, j = t - 2;
        if (t == 0) { kind = 0; n = (c->V + 1) * c->d; }
        else if (t == 1) { kind = 0; n = D; }
        else if (j < c->K * per) {
            int64_t r = j % per + (c->block_ln ? 0 : 2);
            switch (r) {
            case 0: kind = 2; n = D; break;                    /* ln.weight */
            case 1: kind = 3; n = D; break;                    /* ln.bias */
            case 2: kind = 1; n = c->m * D; fan_in = D; break; /* fc1.weight */
            case 3: kind = 1; n = c->m; fan_in = D; break;     /* fc1.bias */
            case 4: kind = 1; n = D * c->m; fan_in = c->m; break; /* fc2.weight */
            default: kind = 1; n = D; fan_in = c->m; break;    /* fc2.bias */
            }
        } else {
            int64_t r = j - c->K * per;
            if (r == 0) { kind = 2; n = D; }
            else if (r == 1) { kind = 3; n = D; }
            else if (r == 2) { kind = 1; n = c->V * c->d; fan_in = c->d; }
            else { kind = 1; n = c->V; fan_in = c->d; }
        }
        float *p = params + off;
        rg_rng_init(&rng, seed, RG_DOMAIN_INIT, (uint64_t)t);
        double bound = 1.0 / sqrt((double)fan_in);
        for (i = 0; i < n; i++) {
            switch (kind) {
            case 0: p[i] = (float)rg_rng_normal(&rng); break;
            case 1: p[i] = (float)(bound * (2.0 * rg_rng_uniform(&rng) - 1.0)); break;
            case 2: p[i] = 1.0f; break;
            default: p[i] = 0.0f; break;
            }
        }
        off += n;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Workspace                                                                                   */

typedef struct {
    float *z;        /* (K+1, B, D) residual stream z_0..z_K */
    float *xn;       /* (K, B, D) LN_k(z_{k}) (block_ln only) */
    float *ln_mean;  /* (K, B) */
    float *ln_rstd;  /* (K, B) */
    float *pre;      /* (K, B, m) fc1 output, then gelu' of fc1 output + bias */
    float *h;        /* (K, B, m) GELU output */
    float *y;        /* (B, D) LN_f(z_K) */
    float *f_mean;   /* (B) */
    float *f_rstd;   /* (B) */
    float *logits;   /* (B*L, V) logits, then probabilities, then dlogits */
    float *dz;       /* (B, D) running gradient of the stream */
    float *dx;       /* (B, D) gradient of an LN output */
    float *dh;       /* (B, m) gradient of h, then of pre (in place) */
    int32_t *tokens; /* (B, L) training targets */
    int32_t *masked; /* (B, L) training inputs */
    uint8_t *mask;   /* (B, L) */
} acts;

#define ALIGN_FLOATS 16 /* 64-byte alignment of every buffer */

/* Lays the buffers out from base (NULL: only measure); returns bytes used or -1 on overflow. */
static int64_t carve(const rg_mlp_config *c, int64_t B, void *base, acts *a)
{
    const int64_t D = c->L * c->d, K = c->K, m = c->m, BL = mul_checked(B, c->L);
    const int64_t BD = mul_checked(B, D), Bm = mul_checked(B, m);
    int64_t n_ln = c->block_ln ? K : 0;
    int64_t sizes[16] = {
        mul_checked(K + 1, BD), mul_checked(n_ln, BD), mul_checked(n_ln, B),
        mul_checked(n_ln, B), mul_checked(K, Bm), mul_checked(K, Bm), BD, B, B,
        mul_checked(BL, c->V), BD, BD, Bm,
        BL, BL, (BL + 3) / 4, /* int32, int32, bytes in float units */
    };
    float **slots[13] = {&a->z, &a->xn, &a->ln_mean, &a->ln_rstd, &a->pre, &a->h, &a->y,
                         &a->f_mean, &a->f_rstd, &a->logits, &a->dz, &a->dx, &a->dh};
    uintptr_t start = (uintptr_t)base;
    float *p = (float *)((start + 63) & ~(uintptr_t)63);
    int64_t used = 64; /* alignment slack */
    for (int i = 0; i < 16; i++) {
        if (sizes[i] < 0) return -1;
        int64_t n = add_checked(sizes[i], ALIGN_FLOATS - 1);
        if (n < 0) return -1;
        n -= n % ALIGN_FLOATS;
        if (base) {
            if (i < 13) *slots[i] = p;
            else if (i == 13) a->tokens = (int32_t *)p;
            else if (i == 14) a->masked = (int32_t *)p;
            else a->mask = (uint8_t *)p;
            p += n;
        }
        used = add_checked(used, mul_checked(n, 4));
        if (used < 0) return -1;
    }
    return used;
}

int64_t rg_mlp_workspace_bytes(const rg_mlp_config *c, int64_t B)
{
    acts a;
    if (B < 1) return -1;
    return carve(c, B, NULL, &a);
}

/* ------------------------------------------------------------------------------------------ */
/* Layers                                                                                      */

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

void rg_layernorm_backward(float *restrict dinp, float *restrict dw, float *restrict db,
                           const float *restrict dout, const float *restrict inp,
                           const float *restrict w, const float *restrict mean,
                           const float *restrict rstd, int64_t N, int64_t C)
{
    memset(dw, 0, sizeof(float) * (size_t)C);
    memset(db, 0, sizeof(float) * (size_t)C);
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
            dw[i] += g[i] * xhat;
            db[i] += g[i];
            dx[i] += (g[i] * w[i] - m1 - xhat * m2) * rs;
        }
    }
}

void rg_matmul_forward(float *out, const float *inp, const float *W, const float *bias,
                       int64_t N, int64_t C, int64_t OC, int accumulate)
{
    RG_BLAS(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C,
                         1.0f, inp, (int)C, W, (int)C, accumulate ? 1.0f : 0.0f, out, (int)OC);
    if (bias)
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = 0; j < OC; j++) out[r * OC + j] += bias[j];
}

/* dbias (OC) = column sums of g (N, OC). */
static void colsum(float *dbias, const float *g, int64_t N, int64_t OC)
{
    memset(dbias, 0, sizeof(float) * (size_t)OC);
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = 0; j < OC; j++) dbias[j] += g[r * OC + j];
}

void rg_matmul_backward(float *dinp, float *dW, float *dbias, const float *dout,
                        const float *inp, const float *W, int64_t N, int64_t C, int64_t OC,
                        int accumulate_dinp)
{
    /* dW (OC, C) = dout^T (OC, N) inp (N, C) */
    RG_BLAS(cblas_sgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C, (int)N,
                         1.0f, dout, (int)OC, inp, (int)C, 0.0f, dW, (int)C);
    /* dinp (N, C) = dout (N, OC) W (OC, C) */
    if (dinp)
        RG_BLAS(cblas_sgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C,
                             (int)OC, 1.0f, dout, (int)OC, W, (int)C,
                             accumulate_dinp ? 1.0f : 0.0f, dinp, (int)C);
    if (dbias) colsum(dbias, dout, N, OC);
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

/* The loops are also compiled for AVX2 and picked at load time (ifunc): -std=c99 implies
 * -ffp-contract=off, so both versions do the same IEEE operations and give identical bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RG_CLONES __attribute__((target_clones("avx2", "default")))
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
            float x = in[j] + (bias ? bias[j] : 0.0f);
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

void rg_residual_backward(float *dbias, const float *dout, int64_t N, int64_t C)
{
    colsum(dbias, dout, N, C);
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
        float s = 0.0f;
        for (int64_t j = 0; j < V; j++) { z[j] = expf(z[j] - mx); s += z[j]; }
        float inv = 1.0f / s;
        if (mask[r]) {
            /* -log p = log s - (z_t - max), from the unnormalised value for accuracy */
            nll += log((double)s) - log((double)z[targets[r]]);
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

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                       */

int rg_mlp_forward(const rg_mlp_config *c, const float *params, void *ws, int64_t B,
                   const int32_t *x, float *logits, float *stream, int64_t stream_stride,
                   const int32_t *targets, const uint8_t *mask, double *nll_sum,
                   int64_t *count)
{
    const int64_t L = c->L, d = c->d, D = L * d, m = c->m, V = c->V, BD = B * D;
    rg_mlp_view P;
    acts a;
    rg_mlp_view_of(c, (float *)params, &P);
    if (carve(c, B, ws, &a) < 0) return RG_ERR_VALUE;

    rg_embedding_forward(a.z, x, P.tok_emb, P.pos_emb, B, L, d);
    for (int64_t k = 0; k < c->K; k++) {
        rg_mlp_block W = rg_mlp_block_of(c, &P, k);
        const float *zk = a.z + k * BD, *in = zk;
        float *pre = a.pre + k * B * m, *h = a.h + k * B * m, *znext = a.z + (k + 1) * BD;
        if (c->block_ln) {
            float *xn = a.xn + k * BD;
            rg_layernorm_forward(xn, a.ln_mean + k * B, a.ln_rstd + k * B, zk, W.ln_w, W.ln_b,
                                 B, D);
            in = xn;
        }
        rg_matmul_forward(pre, in, W.fc1_w, NULL, B, D, m, 0);
        rg_gelu_forward(h, pre, pre, W.fc1_b, B, m); /* pre now holds gelu'(pre + b1) */
        rg_residual_forward(znext, zk, W.fc2_b, B, D);
        rg_matmul_forward(znext, h, W.fc2_w, NULL, B, m, D, 1); /* z_{k+1} += fc2(h) */
    }
    const float *zK = a.z + c->K * BD;
    rg_layernorm_forward(a.y, a.f_mean, a.f_rstd, zK, P.lnf_w, P.lnf_b, B, D);
    /* shared unembedding over positions: one (B*L, d) x (d, V) product */
    rg_matmul_forward(a.logits, a.y, P.unemb_w, P.unemb_b, B * L, d, V, 0);

    if (stream)
        for (int64_t k = 0; k <= c->K; k++)
            memcpy(stream + k * stream_stride, a.z + k * BD, sizeof(float) * (size_t)BD);
    if (logits) memcpy(logits, a.logits, sizeof(float) * (size_t)(B * L * V));
    if (targets && mask)
        rg_crossentropy_forward(a.logits, nll_sum, count, targets, mask, B * L, V);
    return RG_OK;
}

int rg_mlp_backward(const rg_mlp_config *c, const float *params, float *grads, void *ws,
                    int64_t B, const int32_t *x, const int32_t *targets, const uint8_t *mask,
                    int64_t count)
{
    const int64_t L = c->L, d = c->d, D = L * d, m = c->m, V = c->V, BD = B * D;
    rg_mlp_view P, G;
    acts a;
    if (count < 1) return RG_ERR_VALUE;
    rg_mlp_view_of(c, (float *)params, &P);
    rg_mlp_view_of(c, grads, &G);
    if (carve(c, B, ws, &a) < 0) return RG_ERR_VALUE;

    rg_crossentropy_backward(a.logits, targets, mask, B * L, V, (float)(1.0 / (double)count));
    rg_matmul_backward(a.dx, G.unemb_w, G.unemb_b, a.logits, a.y, P.unemb_w, B * L, d, V, 0);
    memset(a.dz, 0, sizeof(float) * (size_t)BD);
    rg_layernorm_backward(a.dz, G.lnf_w, G.lnf_b, a.dx, a.z + c->K * BD, P.lnf_w, a.f_mean,
                          a.f_rstd, B, D);
    for (int64_t k = c->K - 1; k >= 0; k--) {
        rg_mlp_block W = rg_mlp_block_of(c, &P, k), dW = rg_mlp_block_of(c, &G, k);
        const float *zk = a.z + k * BD, *pre = a.pre + k * B * m, *h = a.h + k * B * m;
        /* z_{k+1} = z_k + fc2_b + h fc2_w^T: dz passes through, the branch adds to it below */
        rg_residual_backward(dW.fc2_b, a.dz, B, D);
        rg_matmul_backward(a.dh, dW.fc2_w, NULL, a.dz, h, W.fc2_w, B, m, D, 0);
        rg_gelu_backward(a.dh, pre, a.dh, B * m);
        if (c->block_ln) {
            rg_matmul_backward(a.dx, dW.fc1_w, dW.fc1_b, a.dh, a.xn + k * BD, W.fc1_w, B, D, m,
                               0);
            rg_layernorm_backward(a.dz, dW.ln_w, dW.ln_b, a.dx, zk, W.ln_w, a.ln_mean + k * B,
                                  a.ln_rstd + k * B, B, D);
        } else {
            rg_matmul_backward(a.dz, dW.fc1_w, dW.fc1_b, a.dh, zk, W.fc1_w, B, D, m, 1);
        }
    }
    rg_embedding_backward(G.tok_emb, G.pos_emb, a.dz, x, B, L, d, V + 1);
    return RG_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Optimiser and training loop                                                                 */

double rg_sumsq(const float *g, int64_t n)
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
                    double beta1, double beta2, double eps, double weight_decay, int64_t t,
                    double grad_scale)
{
    /* torch.optim.AdamW (single tensor path): p *= 1 - lr*wd; m = lerp(m, g, 1-b1);
     * v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
    const float decay = (float)(1.0 - lr * weight_decay), w1 = (float)(1.0 - beta1);
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2), fe = (float)eps;
    const float step_size = (float)(lr / (1.0 - pow(beta1, (double)t)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)t));
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

/* A minimal persistent thread pool for the optimizer update, the one large elementwise pass
 * per step (4 arenas read, 3 written: memory-bound, so a second core nearly halves it).
 * Created once per rg_mlp_train_steps call; workers sleep on a condition variable between
 * steps so they never compete with OpenBLAS's threads during the GEMMs.  AdamW is elementwise,
 * so the result is bit-identical for any thread count. */
#define RG_POOL_MAX 64

typedef struct rg_pool rg_pool;
typedef void (*rg_pool_fn)(void *ctx, int tid, int nt);

struct rg_pool {
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    unsigned gen;  /* incremented to launch a job */
    int pending;   /* workers still running the current job */
    int stop;
    int nt;        /* threads including the caller */
    rg_pool_fn fn;
    void *ctx;
    pthread_t th[RG_POOL_MAX];
};

typedef struct { rg_pool *pool; int tid; } rg_pool_arg;

static void *pool_worker(void *arg)
{
    rg_pool_arg *w = arg;
    rg_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->stop) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) { pthread_mutex_unlock(&p->mu); return NULL; }
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        p->fn(p->ctx, w->tid, p->nt);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Starts nt - 1 workers (args: nt slots); on any failure the pool runs with fewer. */
static void pool_init(rg_pool *p, rg_pool_arg *args, int nt)
{
    p->gen = 0; p->pending = 0; p->stop = 0; p->nt = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    if (nt > RG_POOL_MAX) nt = RG_POOL_MAX;
    for (int t = 1; t < nt; t++) {
        args[t].pool = p;
        args[t].tid = t;
        if (pthread_create(&p->th[t], NULL, pool_worker, &args[t]) != 0) break;
        p->nt = t + 1;
    }
}

static void pool_run(rg_pool *p, rg_pool_fn fn, void *ctx)
{
    if (p->nt == 1) { fn(ctx, 0, 1); return; }
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->ctx = ctx; p->pending = p->nt - 1; p->gen++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->nt);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void pool_destroy(rg_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->nt; t++) pthread_join(p->th[t], NULL);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
}

typedef struct {
    float *p, *m, *v;
    const float *g;
    int64_t n, t;
    double lr, beta1, beta2, eps, wd, scale;
    int bad[RG_POOL_MAX];
} adamw_job;

static void adamw_part(void *ctx, int tid, int nt)
{
    adamw_job *j = ctx;
    /* contiguous ranges aligned to 16 floats (one cache line) */
    int64_t per = ((j->n + nt - 1) / nt + 15) / 16 * 16;
    int64_t i0 = per * tid, i1 = i0 + per < j->n ? i0 + per : j->n;
    j->bad[tid] = i0 < i1 ? rg_adamw_update(j->p + i0, j->g + i0, j->m + i0, j->v + i0,
                                            i1 - i0, j->lr, j->beta1, j->beta2, j->eps, j->wd,
                                            j->t, j->scale)
                          : 0;
}

void rg_mlp_train_batch(const uint64_t *thr, int64_t V, int64_t L, int64_t B, uint64_t seed,
                        uint64_t step, double rate, int64_t span, int32_t *tokens,
                        int32_t *masked, uint8_t *mask)
{
    rg_rng rng;
    for (int64_t b = 0; b < B; b++) {
        uint64_t index = (step << 32) | (uint64_t)b;
        rg_rng_init(&rng, seed, RG_DOMAIN_TRAIN_SAMPLE, index);
        rg_sample_sequence(thr, V, &rng, L, tokens + b * L);
        rg_rng_init(&rng, seed, RG_DOMAIN_TRAIN_MASK, index);
        rg_mask_sequence(&rng, tokens + b * L, L, rate, span, (int32_t)V, masked + b * L,
                         mask + b * L);
    }
}

int rg_mlp_train_steps(const rg_mlp_config *c, float *params, float *grads, float *adam_m,
                       float *adam_v, void *ws, int64_t B, const uint64_t *thr, uint64_t seed,
                       uint64_t step0, int64_t k, const double *lrs, const rg_train_opts *o,
                       double *losses, int64_t *n_done, int *bad)
{
    int64_t n_params;
    acts a;
    *n_done = 0;
    *bad = 0;
    if (rg_mlp_check_config(c, &n_params) != RG_OK || carve(c, B, ws, &a) < 0)
        return RG_ERR_VALUE;
    /* the pool pays off only for arenas well beyond the caches */
    int nt = n_params >= (1 << 20) && o->n_threads > 1 ? o->n_threads : 1;
    rg_pool pool;
    rg_pool_arg pool_args[RG_POOL_MAX];
    pool_init(&pool, pool_args, nt);
    adamw_job job = {params, adam_m, adam_v, grads, n_params, 0, 0.0, o->beta1, o->beta2,
                     o->eps, o->weight_decay, 1.0, {0}};
    int status = RG_OK;
    for (int64_t i = 0; i < k; i++) {
        uint64_t s = step0 + (uint64_t)i;
        double nll = 0.0;
        int64_t count = 0;
        rg_mlp_train_batch(thr, c->V, c->L, B, seed, s, o->mask_rate, o->mask_span, a.tokens,
                           a.masked, a.mask);
        rg_mlp_forward(c, params, ws, B, a.masked, NULL, NULL, 0, a.tokens, a.mask, &nll,
                       &count);
        double loss = count > 0 ? nll / (double)count : NAN;
        losses[i] = loss;
        if (!isfinite(loss)) { *bad = 1; status = RG_ERR_NOT_FINITE; break; }
        rg_mlp_backward(c, params, grads, ws, B, a.masked, a.tokens, a.mask, count);
        double scale = 1.0;
        if (o->max_grad_norm > 0.0) {
            /* torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), clamped to 1 */
            double norm = sqrt(rg_sumsq(grads, n_params));
            double coef = o->max_grad_norm / (norm + 1e-6);
            if (coef < 1.0) scale = coef;
        }
        job.lr = lrs[i];
        job.t = (int64_t)s + 1;
        job.scale = scale;
        pool_run(&pool, adamw_part, &job);
        int nonfinite = 0;
        for (int t = 0; t < pool.nt; t++) nonfinite |= job.bad[t];
        *n_done = i + 1;
        if (nonfinite) { *bad = 2; status = RG_ERR_NOT_FINITE; break; }
    }
    pool_destroy(&pool);
    return status;
}
