#include "mlp.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blas.h"
#include "chain.h"
#include "pool.h"
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

void rg_colsum(float *dbias, const float *g, int64_t N, int64_t OC, int64_t c0, int64_t c1)
{
    memset(dbias + c0, 0, sizeof(float) * (size_t)(c1 - c0));
    for (int64_t r = 0; r < N; r++)
        for (int64_t j = c0; j < c1; j++) dbias[j] += g[r * OC + j];
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

/* ------------------------------------------------------------------------------------------ */
/* Work items: how each layer is cut for the pool.  Every cut is a function of the shapes      */
/* only (see pool.h), and every item writes its own outputs in a fixed order.                  */

/* GEMMs are cut along the larger output dimension (a piece then repacks only the smaller
 * operand) into at most GEMM_MAX_PIECES pieces of >= GEMM_MIN_FLOPS, boundaries on 16s. */
#define GEMM_MAX_PIECES 4
#define GEMM_MIN_FLOPS (2.0 * 1024 * 1024)
/* Row passes are cut into at most ROW_MAX_CHUNKS chunks of >= ROW_MIN_ELEMS elements. */
#define ROW_MAX_CHUNKS 8
#define ROW_MIN_ELEMS 16384

typedef struct {
    enum CBLAS_TRANSPOSE ta, tb;
    int64_t M, N, K, lda, ldb, ldc, pieces;
    float beta;
    const float *A, *B;
    float *C;
    int along_n; /* pieces are column blocks of C (else row blocks) */
} gemm_job;

static void gemm_item(const void *arg, int64_t i)
{
    const gemm_job *g = arg;
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

/* C (M, N) = op(A) (M, K) op(B) (K, N) + beta C, row-major, as a task on *g. */
static rg_task gemm_task(gemm_job *g, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
                         int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                         const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    g->ta = ta; g->tb = tb; g->M = M; g->N = N; g->K = K;
    g->A = A; g->lda = lda; g->B = B; g->ldb = ldb; g->beta = beta; g->C = C; g->ldc = ldc;
    g->along_n = N > M;
    double flops = 2.0 * (double)M * (double)N * (double)K;
    int64_t by_work = flops >= GEMM_MAX_PIECES * GEMM_MIN_FLOPS
                          ? GEMM_MAX_PIECES : (int64_t)(flops / GEMM_MIN_FLOPS);
    int64_t by_size = rg_chunk_count(g->along_n ? N : M, 32, GEMM_MAX_PIECES);
    g->pieces = by_work < 1 ? 1 : by_work < by_size ? by_work : by_size;
    rg_task t = {gemm_item, g, g->pieces};
    return t;
}

/* Row (or column) ranges of a pass over an (N, C) array. */
typedef struct {
    int64_t n, chunks;
} range_cut;

static range_cut rows_of(int64_t N, int64_t C)
{
    range_cut r = {N, rg_chunk_count(N, (ROW_MIN_ELEMS + C - 1) / C, ROW_MAX_CHUNKS)};
    return r;
}

static range_cut cols_of(int64_t N, int64_t C)
{
    range_cut r = {C, rg_chunk_count(C, (ROW_MIN_ELEMS + N - 1) / N, ROW_MAX_CHUNKS)};
    r.chunks = rg_chunk_count(C, 64, r.chunks); /* whole cache lines of columns */
    return r;
}

static void range_of(range_cut r, int64_t i, int64_t *b0, int64_t *b1)
{
    *b0 = rg_chunk_begin(r.n, r.chunks, i, 1);
    *b1 = rg_chunk_begin(r.n, r.chunks, i + 1, 1);
}

/* LayerNorm forward over a row chunk. */
typedef struct {
    float *out, *mean, *rstd;
    const float *inp, *w, *b;
    int64_t C;
    range_cut rows;
} ln_fwd_job;

static void ln_fwd_item(const void *arg, int64_t i)
{
    const ln_fwd_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    rg_layernorm_forward(j->out + r0 * j->C, j->mean + r0, j->rstd + r0, j->inp + r0 * j->C,
                         j->w, j->b, r1 - r0, j->C);
}

static rg_task ln_fwd_task(ln_fwd_job *j, float *out, float *mean, float *rstd,
                           const float *inp, const float *w, const float *b, int64_t N,
                           int64_t C)
{
    ln_fwd_job v = {out, mean, rstd, inp, w, b, C, rows_of(N, C)};
    *j = v;
    rg_task t = {ln_fwd_item, j, j->rows.chunks};
    return t;
}

/* LayerNorm backward: dinp rows (+=) and the dw, db column sums, two tasks of one phase. */
typedef struct {
    float *dinp, *dw, *db;
    const float *dout, *inp, *w, *mean, *rstd;
    int64_t N, C;
    int zero_dinp; /* the rows are overwritten rather than accumulated */
    range_cut rows, cols;
} ln_bwd_job;

static void ln_bwd_rows_item(const void *arg, int64_t i)
{
    const ln_bwd_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    if (j->zero_dinp) memset(j->dinp + r0 * j->C, 0, sizeof(float) * (size_t)((r1 - r0) * j->C));
    rg_layernorm_backward_input(j->dinp + r0 * j->C, j->dout + r0 * j->C, j->inp + r0 * j->C,
                                j->w, j->mean + r0, j->rstd + r0, r1 - r0, j->C);
}

static void ln_bwd_cols_item(const void *arg, int64_t i)
{
    const ln_bwd_job *j = arg;
    int64_t c0, c1;
    range_of(j->cols, i, &c0, &c1);
    rg_layernorm_backward_params(j->dw, j->db, j->dout, j->inp, j->mean, j->rstd, j->N, j->C,
                                 c0, c1);
}

static int ln_bwd_tasks(rg_task *t, ln_bwd_job *j, float *dinp, int zero_dinp, float *dw,
                        float *db, const float *dout, const float *inp, const float *w,
                        const float *mean, const float *rstd, int64_t N, int64_t C)
{
    ln_bwd_job v = {dinp, dw, db, dout, inp, w, mean, rstd, N, C, zero_dinp, rows_of(N, C),
                    cols_of(N, C)};
    *j = v;
    t[0].fn = ln_bwd_rows_item; t[0].arg = j; t[0].n = j->rows.chunks;
    t[1].fn = ln_bwd_cols_item; t[1].arg = j; t[1].n = j->cols.chunks;
    return 2;
}

/* dbias (OC) = column sums of g (N, OC), by column chunks. */
typedef struct {
    float *dbias;
    const float *g;
    int64_t N, OC;
    range_cut cols;
} colsum_job;

static void colsum_item(const void *arg, int64_t i)
{
    const colsum_job *j = arg;
    int64_t c0, c1;
    range_of(j->cols, i, &c0, &c1);
    rg_colsum(j->dbias, j->g, j->N, j->OC, c0, c1);
}

static rg_task colsum_task(colsum_job *j, float *dbias, const float *g, int64_t N, int64_t OC)
{
    colsum_job v = {dbias, g, N, OC, cols_of(N, OC)};
    *j = v;
    rg_task t = {colsum_item, j, j->cols.chunks};
    return t;
}

/* Forward row pass of a block: h = gelu(pre + b1) (gelu' kept in pre) and z_{k+1} = z_k + b2,
 * the residual that the fc2 GEMM then accumulates into. */
typedef struct {
    float *h, *pre, *znext;
    const float *b1, *zk, *b2;
    int64_t m, D;
    range_cut rows;
} block_rows_job;

static void block_rows_item(const void *arg, int64_t i)
{
    const block_rows_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    rg_gelu_forward(j->h + r0 * j->m, j->pre + r0 * j->m, j->pre + r0 * j->m, j->b1, r1 - r0,
                    j->m);
    rg_residual_forward(j->znext + r0 * j->D, j->zk + r0 * j->D, j->b2, r1 - r0, j->D);
}

/* Backward row pass through GELU: dh *= gelu'. */
typedef struct {
    float *dh;
    const float *deriv;
    int64_t m;
    range_cut rows;
} gelu_bwd_job;

static void gelu_bwd_item(const void *arg, int64_t i)
{
    const gelu_bwd_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    rg_gelu_backward(j->dh + r0 * j->m, j->deriv + r0 * j->m, j->dh + r0 * j->m,
                     (r1 - r0) * j->m);
}

/* Softmax cross-entropy, forward (partial sums per chunk, added in chunk order) or backward. */
typedef struct {
    float *logits;
    const float *bias;
    const int32_t *targets;
    const uint8_t *mask;
    int64_t V;
    float scale;
    range_cut rows;
    double nll[ROW_MAX_CHUNKS];
    int64_t count[ROW_MAX_CHUNKS];
} ce_job;

static void logits_bias_item(const void *arg, int64_t i)
{
    const ce_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        for (int64_t v = 0; v < j->V; v++) j->logits[r * j->V + v] += j->bias[v];
}

static void ce_fwd_item(const void *arg, int64_t i)
{
    ce_job *j = (ce_job *)arg; /* each item writes its own partial-sum slot */
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    rg_crossentropy_forward(j->logits + r0 * j->V, &j->nll[i], &j->count[i], j->targets + r0,
                            j->mask + r0, r1 - r0, j->V);
}

static void ce_bwd_item(const void *arg, int64_t i)
{
    const ce_job *j = arg;
    int64_t r0, r1;
    range_of(j->rows, i, &r0, &r1);
    rg_crossentropy_backward(j->logits + r0 * j->V, j->targets + r0, j->mask + r0, r1 - r0,
                             j->V, j->scale);
}

static rg_task ce_task(ce_job *j, rg_item_fn fn)
{
    rg_task t = {fn, j, j->rows.chunks};
    return t;
}

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                       */

int rg_mlp_forward(rg_pool *pool, const rg_mlp_config *c, const float *params, void *ws,
                   int64_t B, const int32_t *x, float *logits, float *stream,
                   int64_t stream_stride, const int32_t *targets, const uint8_t *mask,
                   double *nll_sum, int64_t *count)
{
    const int64_t L = c->L, d = c->d, D = L * d, m = c->m, V = c->V, BD = B * D;
    rg_mlp_view P;
    acts a;
    rg_task t[3];
    gemm_job g;
    rg_mlp_view_of(c, (float *)params, &P);
    if (carve(c, B, ws, &a) < 0) return RG_ERR_VALUE;

    rg_embedding_forward(a.z, x, P.tok_emb, P.pos_emb, B, L, d);
    for (int64_t k = 0; k < c->K; k++) {
        rg_mlp_block W = rg_mlp_block_of(c, &P, k);
        const float *zk = a.z + k * BD, *in = zk;
        float *pre = a.pre + k * B * m, *h = a.h + k * B * m, *znext = a.z + (k + 1) * BD;
        if (c->block_ln) {
            ln_fwd_job lj;
            float *xn = a.xn + k * BD;
            t[0] = ln_fwd_task(&lj, xn, a.ln_mean + k * B, a.ln_rstd + k * B, zk, W.ln_w,
                               W.ln_b, B, D);
            rg_pool_run(pool, t, 1);
            in = xn;
        }
        /* pre (B, m) = in (B, D) fc1_w^T */
        t[0] = gemm_task(&g, CblasNoTrans, CblasTrans, B, m, D, in, D, W.fc1_w, D, 0.0f, pre, m);
        rg_pool_run(pool, t, 1);
        block_rows_job rj = {h, pre, znext, W.fc1_b, zk, W.fc2_b, m, D, rows_of(B, D + m)};
        t[0].fn = block_rows_item; t[0].arg = &rj; t[0].n = rj.rows.chunks;
        rg_pool_run(pool, t, 1);
        /* z_{k+1} (B, D) += h (B, m) fc2_w^T */
        t[0] = gemm_task(&g, CblasNoTrans, CblasTrans, B, D, m, h, m, W.fc2_w, m, 1.0f, znext,
                         D);
        rg_pool_run(pool, t, 1);
    }
    ln_fwd_job lj;
    t[0] = ln_fwd_task(&lj, a.y, a.f_mean, a.f_rstd, a.z + c->K * BD, P.lnf_w, P.lnf_b, B, D);
    rg_pool_run(pool, t, 1);
    /* shared unembedding over positions: logits (B*L, V) = y (B*L, d) unemb_w^T + unemb_b */
    t[0] = gemm_task(&g, CblasNoTrans, CblasTrans, B * L, V, d, a.y, d, P.unemb_w, d, 0.0f,
                     a.logits, V);
    rg_pool_run(pool, t, 1);
    ce_job cj = {a.logits, P.unemb_b, targets, mask, V, 0.0f, rows_of(B * L, V), {0}, {0}};
    t[0] = ce_task(&cj, logits_bias_item);
    rg_pool_run(pool, t, 1);

    if (stream)
        for (int64_t k = 0; k <= c->K; k++)
            memcpy(stream + k * stream_stride, a.z + k * BD, sizeof(float) * (size_t)BD);
    if (logits) memcpy(logits, a.logits, sizeof(float) * (size_t)(B * L * V));
    if (targets && mask) {
        t[0] = ce_task(&cj, ce_fwd_item);
        rg_pool_run(pool, t, 1);
        double nll = 0.0;
        int64_t cnt = 0;
        for (int64_t i = 0; i < cj.rows.chunks; i++) { nll += cj.nll[i]; cnt += cj.count[i]; }
        *nll_sum = nll;
        *count = cnt;
    }
    return RG_OK;
}

int rg_mlp_backward(rg_pool *pool, const rg_mlp_config *c, const float *params, float *grads,
                    void *ws, int64_t B, const int32_t *x, const int32_t *targets,
                    const uint8_t *mask, int64_t count)
{
    const int64_t L = c->L, d = c->d, D = L * d, m = c->m, V = c->V, BD = B * D;
    rg_mlp_view P, G;
    acts a;
    rg_task t[4];
    gemm_job g1, g2;
    colsum_job cs;
    ln_bwd_job lj;
    if (count < 1) return RG_ERR_VALUE;
    rg_mlp_view_of(c, (float *)params, &P);
    rg_mlp_view_of(c, grads, &G);
    if (carve(c, B, ws, &a) < 0) return RG_ERR_VALUE;

    ce_job cj = {a.logits, NULL, targets, mask, V, (float)(1.0 / (double)count),
                 rows_of(B * L, V), {0}, {0}};
    t[0] = ce_task(&cj, ce_bwd_item);
    rg_pool_run(pool, t, 1);
    /* unembedding: dW (V, d) = dlogits^T y; db = column sums; dy (B*L, d) = dlogits W */
    t[0] = gemm_task(&g1, CblasTrans, CblasNoTrans, V, d, B * L, a.logits, V, a.y, d, 0.0f,
                     G.unemb_w, d);
    t[1] = colsum_task(&cs, G.unemb_b, a.logits, B * L, V);
    t[2] = gemm_task(&g2, CblasNoTrans, CblasNoTrans, B * L, d, V, a.logits, V, P.unemb_w, d,
                     0.0f, a.dx, d);
    rg_pool_run(pool, t, 3);
    int n = ln_bwd_tasks(t, &lj, a.dz, 1, G.lnf_w, G.lnf_b, a.dx, a.z + c->K * BD, P.lnf_w,
                         a.f_mean, a.f_rstd, B, D);
    rg_pool_run(pool, t, n);
    for (int64_t k = c->K - 1; k >= 0; k--) {
        rg_mlp_block W = rg_mlp_block_of(c, &P, k), dW = rg_mlp_block_of(c, &G, k);
        const float *zk = a.z + k * BD, *pre = a.pre + k * B * m, *h = a.h + k * B * m;
        const float *in = c->block_ln ? a.xn + k * BD : zk;
        /* z_{k+1} = z_k + fc2_b + h fc2_w^T: dz passes through, the branch adds to it below.
         * dfc2_w (D, m) = dz^T h; dfc2_b = column sums of dz; dh (B, m) = dz fc2_w */
        t[0] = gemm_task(&g1, CblasTrans, CblasNoTrans, D, m, B, a.dz, D, h, m, 0.0f,
                         dW.fc2_w, m);
        t[1] = colsum_task(&cs, dW.fc2_b, a.dz, B, D);
        t[2] = gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, m, D, a.dz, D, W.fc2_w, m, 0.0f,
                         a.dh, m);
        rg_pool_run(pool, t, 3);
        gelu_bwd_job gj = {a.dh, pre, m, rows_of(B, m)};
        t[0].fn = gelu_bwd_item; t[0].arg = &gj; t[0].n = gj.rows.chunks;
        rg_pool_run(pool, t, 1);
        /* dfc1_w (m, D) = dh^T in; dfc1_b = column sums of dh; d(in) (B, D) = dh fc1_w, into
         * dx for the LayerNorm, or accumulated straight into dz without one */
        t[0] = gemm_task(&g1, CblasTrans, CblasNoTrans, m, D, B, a.dh, m, in, D, 0.0f,
                         dW.fc1_w, D);
        t[1] = colsum_task(&cs, dW.fc1_b, a.dh, B, m);
        t[2] = c->block_ln ? gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, D, m, a.dh, m,
                                       W.fc1_w, D, 0.0f, a.dx, D)
                           : gemm_task(&g2, CblasNoTrans, CblasNoTrans, B, D, m, a.dh, m,
                                       W.fc1_w, D, 1.0f, a.dz, D);
        rg_pool_run(pool, t, 3);
        if (c->block_ln) {
            n = ln_bwd_tasks(t, &lj, a.dz, 0, dW.ln_w, dW.ln_b, a.dx, zk, W.ln_w,
                             a.ln_mean + k * B, a.ln_rstd + k * B, B, D);
            rg_pool_run(pool, t, n);
        }
    }
    rg_embedding_backward(G.tok_emb, G.pos_emb, a.dz, x, B, L, d, V + 1);
    return RG_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Optimiser and training loop                                                                 */

/* The parameter arena is cut into ARENA_CHUNKS fixed chunks for the optimizer's passes (the
 * gradient norm's partial sums are then added in chunk order). */
#define ARENA_CHUNKS 64

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

typedef struct {
    float *p, *m, *v;
    const float *g;
    int64_t n, t;
    double lr, beta1, beta2, eps, wd, scale;
    int bad[ARENA_CHUNKS];
    double sumsq[ARENA_CHUNKS];
} adamw_job;

/* chunk boundaries on multiples of 16 floats (one cache line) */
static void arena_chunk(const adamw_job *j, int64_t i, int64_t *i0, int64_t *i1)
{
    *i0 = rg_chunk_begin(j->n, ARENA_CHUNKS, i, 16);
    *i1 = rg_chunk_begin(j->n, ARENA_CHUNKS, i + 1, 16);
}

static void sumsq_item(const void *arg, int64_t i)
{
    adamw_job *j = (adamw_job *)arg; /* writes its own slot */
    int64_t i0, i1;
    arena_chunk(j, i, &i0, &i1);
    j->sumsq[i] = rg_sumsq(j->g + i0, i1 - i0);
}

static void adamw_item(const void *arg, int64_t i)
{
    adamw_job *j = (adamw_job *)arg; /* writes its own slot */
    int64_t i0, i1;
    arena_chunk(j, i, &i0, &i1);
    j->bad[i] = i0 < i1 ? rg_adamw_update(j->p + i0, j->g + i0, j->m + i0, j->v + i0, i1 - i0,
                                          j->lr, j->beta1, j->beta2, j->eps, j->wd, j->t,
                                          j->scale)
                        : 0;
}

/* Batch sampling, one item per row chunk (each row has its own Philox streams). */
typedef struct {
    const uint64_t *thr;
    int64_t V, L, B;
    uint64_t seed, step;
    double rate;
    int64_t span;
    int32_t *tokens, *masked;
    uint8_t *mask;
    range_cut rows;
} batch_job;

static void batch_rows(const batch_job *j, int64_t b0, int64_t b1)
{
    rg_rng rng;
    for (int64_t b = b0; b < b1; b++) {
        uint64_t index = (j->step << 32) | (uint64_t)b;
        rg_rng_init(&rng, j->seed, RG_DOMAIN_TRAIN_SAMPLE, index);
        rg_sample_sequence(j->thr, j->V, &rng, j->L, j->tokens + b * j->L);
        rg_rng_init(&rng, j->seed, RG_DOMAIN_TRAIN_MASK, index);
        rg_mask_sequence(&rng, j->tokens + b * j->L, j->L, j->rate, j->span, (int32_t)j->V,
                         j->masked + b * j->L, j->mask + b * j->L);
    }
}

static void batch_item(const void *arg, int64_t i)
{
    const batch_job *j = arg;
    int64_t b0, b1;
    range_of(j->rows, i, &b0, &b1);
    batch_rows(j, b0, b1);
}

void rg_mlp_train_batch(const uint64_t *thr, int64_t V, int64_t L, int64_t B, uint64_t seed,
                        uint64_t step, double rate, int64_t span, int32_t *tokens,
                        int32_t *masked, uint8_t *mask)
{
    batch_job j = {thr, V, L, B, seed, step, rate, span, tokens, masked, mask, {B, 1}};
    batch_rows(&j, 0, B);
}

int rg_mlp_train_steps(rg_pool *pool, const rg_mlp_config *c, float *params, float *grads,
                       float *adam_m, float *adam_v, void *ws, int64_t B, const uint64_t *thr,
                       uint64_t seed, uint64_t step0, int64_t k, const double *lrs,
                       const rg_train_opts *o, double *losses, int64_t *n_done, int *bad)
{
    int64_t n_params;
    acts a;
    rg_task t[1];
    *n_done = 0;
    *bad = 0;
    if (rg_mlp_check_config(c, &n_params) != RG_OK || carve(c, B, ws, &a) < 0)
        return RG_ERR_VALUE;
    adamw_job job = {params, adam_m, adam_v, grads, n_params, 0, 0.0, o->beta1, o->beta2,
                     o->eps, o->weight_decay, 1.0, {0}, {0}};
    batch_job bj = {thr, c->V, c->L, B, seed, 0, o->mask_rate, o->mask_span, a.tokens,
                    a.masked, a.mask, rows_of(B, 4 * c->L)};
    for (int64_t i = 0; i < k; i++) {
        uint64_t s = step0 + (uint64_t)i;
        double nll = 0.0;
        int64_t count = 0;
        bj.step = s;
        t[0].fn = batch_item; t[0].arg = &bj; t[0].n = bj.rows.chunks;
        rg_pool_run(pool, t, 1);
        rg_mlp_forward(pool, c, params, ws, B, a.masked, NULL, NULL, 0, a.tokens, a.mask, &nll,
                       &count);
        double loss = count > 0 ? nll / (double)count : NAN;
        losses[i] = loss;
        if (!isfinite(loss)) { *bad = 1; return RG_ERR_NOT_FINITE; }
        rg_mlp_backward(pool, c, params, grads, ws, B, a.masked, a.tokens, a.mask, count);
        double scale = 1.0;
        if (o->max_grad_norm > 0.0) {
            /* torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), clamped to 1 */
            t[0].fn = sumsq_item; t[0].arg = &job; t[0].n = ARENA_CHUNKS;
            rg_pool_run(pool, t, 1);
            double total = 0.0;
            for (int q = 0; q < ARENA_CHUNKS; q++) total += job.sumsq[q];
            double coef = o->max_grad_norm / (sqrt(total) + 1e-6);
            if (coef < 1.0) scale = coef;
        }
        job.lr = lrs[i];
        job.t = (int64_t)s + 1;
        job.scale = scale;
        t[0].fn = adamw_item; t[0].arg = &job; t[0].n = ARENA_CHUNKS;
        rg_pool_run(pool, t, 1);
        int nonfinite = 0;
        for (int q = 0; q < ARENA_CHUNKS; q++) nonfinite |= job.bad[q];
        *n_done = i + 1;
        if (nonfinite) { *bad = 2; return RG_ERR_NOT_FINITE; }
    }
    return RG_OK;
}
