#include "chain.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "status.h"

int rg_chain_validate(const double *T, int64_t V, double tol,
                      int64_t *bad_row, int64_t *bad_col, double *bad_value)
{
    for (int64_t i = 0; i < V; i++) {
        const double *row = T + i * V;
        double sum = 0.0;
        for (int64_t j = 0; j < V; j++) {
            double x = row[j];
            if (!isfinite(x) || x < 0.0) {
                *bad_row = i; *bad_col = j; *bad_value = x;
                return isfinite(x) ? RG_ERR_VALUE : RG_ERR_NOT_FINITE;
            }
            sum += x;
        }
        if (fabs(sum - 1.0) > tol) {
            *bad_row = i; *bad_col = -1; *bad_value = sum;
            return RG_ERR_VALUE;
        }
    }
    return RG_OK;
}

/* Tarjan's strongly connected components on the graph i -> j iff T[i,j] > 0, iteratively.
 * comp[v] receives the component number; closed[c] = 1 if no edge leaves component c.
 * work: 4*V int64 (index, low, stack, call stack) + V uint8 on-stack flags + V int64 edge
 * cursors.  Returns the number of components. */
static int64_t strongly_connected(const double *T, int64_t V, int64_t *comp, uint8_t *closed,
                                  int64_t *work, uint8_t *onstack)
{
    int64_t *index = work, *low = work + V, *stack = work + 2 * V, *calls = work + 3 * V;
    int64_t *cursor = work + 4 * V;
    int64_t next_index = 0, sp = 0, n_comp = 0;
    for (int64_t v = 0; v < V; v++) { index[v] = -1; onstack[v] = 0; }
    for (int64_t root = 0; root < V; root++) {
        if (index[root] >= 0) continue;
        int64_t depth = 0;
        calls[depth] = root; cursor[root] = 0;
        index[root] = low[root] = next_index++;
        stack[sp++] = root; onstack[root] = 1;
        while (depth >= 0) {
            int64_t v = calls[depth];
            if (cursor[v] < V) {
                int64_t w = cursor[v]++;
                if (!(T[v * V + w] > 0.0)) continue;
                if (index[w] < 0) {
                    index[w] = low[w] = next_index++;
                    stack[sp++] = w; onstack[w] = 1;
                    cursor[w] = 0;
                    calls[++depth] = w;
                } else if (onstack[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            if (low[v] == index[v]) { /* v roots a component */
                int64_t w;
                do {
                    w = stack[--sp]; onstack[w] = 0; comp[w] = n_comp;
                } while (w != v);
                n_comp++;
            }
            depth--;
            if (depth >= 0) {
                int64_t u = calls[depth];
                if (low[v] < low[u]) low[u] = low[v];
            }
        }
    }
    for (int64_t c = 0; c < n_comp; c++) closed[c] = 1;
    for (int64_t i = 0; i < V; i++)
        for (int64_t j = 0; j < V; j++)
            if (T[i * V + j] > 0.0 && comp[i] != comp[j]) closed[comp[i]] = 0;
    return n_comp;
}

/* GTH state reduction on the m x m chain P (row-major, destroyed): its stationary law into x
 * (m), normalised by x[0] = 1 (the caller divides by the sum, *total).  RG_ERR_REDUCIBLE if a
 * censored state has no way back (cannot happen on a closed class). */
static int gth(double *P, int64_t m, double *x, double *total)
{
    /* eliminate states m-1..1; the censored chain on {0..k-1} gets
     * P[i][j] += P[i][k] P[k][j] / S_k with S_k = sum_{j<k} P[k][j] (all terms >= 0). */
    for (int64_t k = m - 1; k >= 1; k--) {
        double s = 0.0;
        for (int64_t j = 0; j < k; j++) s += P[k * m + j];
        if (!(s > 0.0)) return RG_ERR_REDUCIBLE;
        for (int64_t i = 0; i < k; i++) P[i * m + k] /= s;
        RG_BLAS(cblas_dger)(CblasRowMajor, (int)k, (int)k, 1.0, P + k, (int)m, P + k * m, 1,
                            P, (int)m);
    }
    x[0] = 1.0;
    *total = 1.0;
    for (int64_t j = 1; j < m; j++) {
        double acc = 0.0;
        for (int64_t i = 0; i < j; i++) acc += x[i] * P[i * m + j];
        x[j] = acc;
        *total += acc;
    }
    return RG_OK;
}

int rg_chain_stationary(const double *T, int64_t V, double *pi,
                        int64_t *n_closed, int64_t example[2])
{
    int status = RG_OK;
    int64_t *iwork = malloc(sizeof(int64_t) * (size_t)(7 * V));
    uint8_t *bwork = malloc((size_t)(2 * V));
    double *P = NULL;
    if (!iwork || !bwork) { status = RG_ERR_NOMEM; goto exit; }
    int64_t *comp = iwork, *members = iwork + V, *scc_work = iwork + 2 * V;
    uint8_t *closed = bwork, *onstack = bwork + V;

    int64_t n_comp = strongly_connected(T, V, comp, closed, scc_work, onstack);
    /* the closed classes, with one member of each of the first two for the error message */
    int64_t closed_comp = -1;
    *n_closed = 0;
    example[0] = example[1] = -1;
    for (int64_t c = 0; c < n_comp; c++) *n_closed += closed[c];
    for (int64_t v = 0; v < V; v++) {
        if (!closed[comp[v]]) continue;
        if (closed_comp < 0) { closed_comp = comp[v]; example[0] = v; }
        else if (comp[v] != closed_comp && example[1] < 0) example[1] = v;
    }
    if (*n_closed != 1) { status = RG_ERR_REDUCIBLE; goto exit; }

    int64_t m = 0;
    for (int64_t v = 0; v < V; v++)
        if (comp[v] == closed_comp) members[m++] = v;
    P = malloc(sizeof(double) * (size_t)(m * m + m)); /* the class's chain, then x (m) */
    if (!P) { status = RG_ERR_NOMEM; goto exit; }
    for (int64_t a = 0; a < m; a++)
        for (int64_t b = 0; b < m; b++)
            P[a * m + b] = T[members[a] * V + members[b]];
    double total, *x = P + m * m;
    if ((status = gth(P, m, x, &total)) != RG_OK) goto exit;
    for (int64_t v = 0; v < V; v++) pi[v] = 0.0;
    for (int64_t a = 0; a < m; a++) pi[members[a]] = x[a] / total;
exit:
    free(P);
    free(iwork);
    free(bwork);
    return status;
}

/* a + b = *s + *e exactly (Knuth's TwoSum; no FMA involved, so contraction cannot break it). */
static inline void two_sum(double a, double b, double *s, double *e)
{
    double x = a + b, z = x - a;
    *s = x;
    *e = (a - (x - z)) + (b - z);
}

/* log(a / b) for a, b > 0: within about an ulp of the result plus 1e-16 when a / b is a normal
 * number; a difference of logs (less accurate) only when the quotient over- or underflows. */
static double log_ratio(double a, double b)
{
    double r = a / b;
    return isnormal(r) ? log(r) : log(a) - log(b);
}

int rg_chain_reversible(const double *T, int64_t V, double tol, int *reversible)
{
    /* h = log w as an unevaluated sum hi + lo: |log w| reaches ~700 when pi spans 300 orders
     * of magnitude, and plain sums along a path of V states would then round to ~V * 1e-13,
     * more than tol; the double-double keeps the check's rounding at ~1e-16 per pair. */
    double *hi = malloc(sizeof(double) * (size_t)(2 * V));
    int64_t *queue = malloc(sizeof(int64_t) * (size_t)V);
    uint8_t *seen = calloc((size_t)V, 1);
    if (!hi || !queue || !seen) {
        free(hi); free(queue); free(seen);
        return RG_ERR_NOMEM;
    }
    double *lo = hi + V;
    int ok = 1;
    for (int64_t root = 0; root < V && ok; root++) {
        if (seen[root]) continue;
        int64_t head = 0, tail = 0;
        seen[root] = 1; hi[root] = lo[root] = 0.0;
        queue[tail++] = root;
        while (head < tail && ok) {
            int64_t i = queue[head++];
            for (int64_t j = 0; j < V; j++) {
                double a = T[i * V + j], b = T[j * V + i];
                if (j == i || (a == 0.0 && b == 0.0)) continue;
                if (a == 0.0 || b == 0.0) { ok = 0; break; } /* a one-way transition */
                /* w_i T_ij = w_j T_ji  <=>  h_j = h_i + log(T_ij / T_ji) */
                double s, e;
                two_sum(hi[i], log_ratio(a, b), &s, &e);
                e += lo[i];
                if (!seen[j]) { /* tree edge: defines h_j */
                    seen[j] = 1;
                    hi[j] = s + e;
                    lo[j] = e - (hi[j] - s);
                    queue[tail++] = j;
                } else if (!(fabs((s - hi[j]) + (e - lo[j])) <= tol)) {
                    ok = 0; /* (s - hi[j] is exact when the pair balances: Sterbenz) */
                    break;
                }
            }
        }
    }
    free(hi); free(queue); free(seen);
    *reversible = ok;
    return RG_OK;
}

int rg_chain_eigenvalues(const double *T, int64_t V, double tol, double *re, double *im,
                         int *symmetric, int64_t *info)
{
    *info = 0;
    int status = rg_chain_reversible(T, V, tol, symmetric);
    if (status != RG_OK) return status;
    double *A = malloc(sizeof(double) * (size_t)(V * V));
    if (!A) return RG_ERR_NOMEM;
    lapack_int rc;
    if (*symmetric) {
        /* sqrt(T_ij) sqrt(T_ji), not sqrt(T_ij T_ji): the product of two tiny entries would
         * underflow; and A is exactly symmetric since the two factors commute */
        for (int64_t i = 0; i < V; i++)
            for (int64_t j = 0; j < V; j++)
                A[i * V + j] = i == j ? T[i * V + i] : sqrt(T[i * V + j]) * sqrt(T[j * V + i]);
        /* column-major: the same matrix (symmetric), and LAPACKE makes no transposed copy */
        rc = RG_BLAS(LAPACKE_dsyevd)(LAPACK_COL_MAJOR, 'N', 'U', (lapack_int)V, A,
                                     (lapack_int)V, re);
        for (int64_t k = 0; k < V; k++) im[k] = 0.0;
    } else {
        memcpy(A, T, sizeof(double) * (size_t)(V * V));
        rc = RG_BLAS(LAPACKE_dgeev)(LAPACK_ROW_MAJOR, 'N', 'N', (lapack_int)V, A, (lapack_int)V,
                                    re, im, NULL, 1, NULL, 1);
    }
    free(A);
    *info = rc;
    return rc == 0 ? RG_OK : RG_ERR_LAPACK;
}

/* thr[j] = round(2^32 * sum_{k<=j} p_k), forced to 2^32 from the last positive p_j on (V).
 * A row may sum to 1 - 1e-9 (the validation's tolerance): the missing ~4 / 2^32 goes to the
 * last state that has probability, never to trailing zeros (which would then be sampled, and
 * the posterior would refuse the sample as impossible).  Rows whose last entry is positive
 * get the tables they always had. */
static void cdf_row(const double *p, int64_t V, uint64_t *thr)
{
    const double scale = 4294967296.0; /* 2^32 */
    double cdf = 0.0;
    int64_t last = V - 1;
    while (last > 0 && !(p[last] > 0.0)) last--;
    for (int64_t j = 0; j < V; j++) {
        cdf += p[j];
        double t = nearbyint(cdf * scale);
        thr[j] = j >= last || t >= scale ? (uint64_t)1 << 32 : (uint64_t)t;
    }
}

void rg_sampler_thresholds(const double *T, const double *init, int64_t V, uint64_t *thr)
{
    for (int64_t r = 0; r <= V; r++) cdf_row(r < V ? T + r * V : init, V, thr + r * V);
}

void rg_emission_thresholds(const double *E, int64_t H, int64_t V, uint64_t *emit)
{
    for (int64_t h = 0; h < H; h++) cdf_row(E + h * V, V, emit + h * V);
}

/* First j with u < row[j]: a branch-free count for small V, binary search beyond. */
static inline int32_t draw_state(const uint64_t *row, int64_t V, uint64_t u)
{
    if (V <= 32) {
        int32_t count = 0;
        for (int64_t j = 0; j < V - 1; j++) count += (u >= row[j]);
        return count;
    }
    int64_t lo = 0, hi = V - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (u < row[mid]) hi = mid; else lo = mid + 1;
    }
    return (int32_t)lo;
}

void rg_sample_sequence(const uint64_t *thr, int64_t V, rg_rng *rng, int64_t L, int32_t *out)
{
    int32_t x = draw_state(thr + V * V, V, rg_rng_u32(rng));
    out[0] = x;
    for (int64_t t = 1; t < L; t++) {
        x = draw_state(thr + (int64_t)x * V, V, rg_rng_u32(rng));
        out[t] = x;
    }
}

/* Sampling is bound by the Philox arithmetic and by the latency of each draw (the next row
 * depends on the current state).  Both go away when RG_LANES sequences advance together:
 * Philox in structure-of-arrays form vectorises across lanes, and the draws of different
 * lanes are independent.  The words each sequence consumes are exactly those of its scalar
 * stream (word k = Philox(index, domain, block k/4)[k%4]), so the output is the same as
 * rg_sample_sequence's, whatever the vector width the CPU offers. */
#define RG_LANES 16

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define RG_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RG_VECTOR_CLONES
#endif

/* Guide table: for each threshold row and each of the 256 buckets of the top 8 bits of u,
 * the state drawn for every u in the bucket, or RG_GUIDE_AMBIGUOUS when a threshold falls
 * inside the bucket (at most V - 1 of 256 buckets), where the full search decides.  Most draws
 * are then one load.  Used for V <= RG_GUIDE_MAX_V. */
#define RG_GUIDE_MAX_V 32
#define RG_GUIDE_AMBIGUOUS 255

static void build_guide(const uint64_t *thr, int64_t V, uint8_t *guide /* (V+1, 256) */)
{
    for (int64_t r = 0; r <= V; r++)
        for (uint64_t b = 0; b < 256; b++) {
            int32_t lo = draw_state(thr + r * V, V, b << 24);
            int32_t hi = draw_state(thr + r * V, V, ((b + 1) << 24) - 1);
            guide[r * 256 + b] = lo == hi ? (uint8_t)lo : RG_GUIDE_AMBIGUOUS;
        }
}

RG_VECTOR_CLONES
static void sample_lanes(const uint64_t *thr, const uint8_t *guide, int64_t V, uint64_t seed,
                         uint64_t first, int64_t L, int32_t *out /* (RG_LANES, L) */)
{
    /* 64-bit lanes holding 32-bit words: the form in which compilers vectorise Philox's
     * 32x32->64 multiplies (vpmuludq) */
    uint64_t c0[RG_LANES], c1[RG_LANES], w[4][RG_LANES];
    int64_t row[RG_LANES]; /* threshold row of the current state (V: the initial law) */
    const uint64_t lo32 = 0xFFFFFFFFu;
    for (int l = 0; l < RG_LANES; l++) {
        uint64_t index = first + (uint64_t)l;
        c0[l] = index & lo32;
        c1[l] = index >> 32;
        row[l] = V;
    }
    for (int64_t t0 = 0; t0 < L; t0 += 4) {
        /* Philox4x32-10 on every lane: counter (index_lo, index_hi, domain, block) */
        uint64_t *a0 = w[0], *a1 = w[1], *a2 = w[2], *a3 = w[3];
        for (int l = 0; l < RG_LANES; l++) {
            a0[l] = c0[l]; a1[l] = c1[l]; a2[l] = RG_DOMAIN_SAMPLE; a3[l] = (uint64_t)(t0 / 4);
        }
        uint64_t k0 = seed & lo32, k1 = seed >> 32;
        for (int round = 0; round < 10; round++) {
            for (int l = 0; l < RG_LANES; l++) {
                uint64_t p0 = 0xD2511F53u * a0[l];
                uint64_t p1 = 0xCD9E8D57u * a2[l];
                a0[l] = (p1 >> 32) ^ a1[l] ^ k0;
                a1[l] = p1 & lo32;
                a2[l] = (p0 >> 32) ^ a3[l] ^ k1;
                a3[l] = p0 & lo32;
            }
            k0 = (k0 + 0x9E3779B9u) & lo32;
            k1 = (k1 + 0xBB67AE85u) & lo32;
        }
        for (int k = 0; k < 4 && t0 + k < L; k++) {
            int64_t t = t0 + k;
            for (int l = 0; l < RG_LANES; l++) {
                uint64_t u = w[k][l];
                int64_t x = guide[row[l] * 256 + (int64_t)(u >> 24)];
                if (x == RG_GUIDE_AMBIGUOUS) x = draw_state(thr + row[l] * V, V, u);
                out[l * L + t] = (int32_t)x;
                row[l] = x;
            }
        }
    }
}

int rg_chain_sample(const uint64_t *thr, int64_t V, uint64_t seed, uint64_t first,
                    int64_t n, int64_t L, int32_t *out)
{
    int64_t i = 0;
    if (V <= RG_GUIDE_MAX_V && n >= RG_LANES) {
        uint8_t *guide = malloc((size_t)((V + 1) * 256));
        if (!guide) return RG_ERR_NOMEM;
        build_guide(thr, V, guide);
        for (; i + RG_LANES <= n; i += RG_LANES)
            sample_lanes(thr, guide, V, seed, first + (uint64_t)i, L, out + i * L);
        free(guide);
    }
    rg_rng rng;
    for (; i < n; i++) {
        rg_rng_init(&rng, seed, RG_DOMAIN_SAMPLE, first + (uint64_t)i);
        rg_sample_sequence(thr, V, &rng, L, out + i * L);
    }
    return RG_OK;
}

void rg_emit_sequence(const uint64_t *emit, int64_t V, rg_rng *rng, int64_t L,
                      const int32_t *states, int32_t *tokens)
{
    for (int64_t t = 0; t < L; t++)
        tokens[t] = draw_state(emit + (int64_t)states[t] * V, V, rg_rng_u32(rng));
}

int rg_source_sample(const rg_source *src, uint64_t seed, uint64_t first, int64_t n, int64_t L,
                     int32_t *tokens, int32_t *states)
{
    int32_t *hidden = states ? states : tokens;
    int status = rg_chain_sample(src->thr, src->H, seed, first, n, L, hidden);
    if (status != RG_OK || !src->emit) return status;
    rg_rng rng;
    for (int64_t i = 0; i < n; i++) {
        rg_rng_init(&rng, seed, RG_DOMAIN_EMIT, first + (uint64_t)i);
        rg_emit_sequence(src->emit, src->V, &rng, L, hidden + i * L, tokens + i * L);
    }
    return RG_OK;
}

void rg_mask_sequence(rg_rng *rng, const int32_t *tokens, int64_t L, double rate, int64_t span,
                      int32_t mask_id, int32_t *masked, uint8_t *mask)
{
    double p_start = rate / (double)span;
    int64_t n_masked = 0;
    memset(mask, 0, (size_t)L);
    for (int64_t t = 0; t < L; t++) {
        if (rg_rng_uniform(rng) < p_start) {
            for (int64_t s = t; s < t + span && s < L; s++) mask[s] = 1;
            n_masked++;
        }
    }
    if (n_masked == 0) {
        int64_t t = (int64_t)(rg_rng_uniform(rng) * (double)L);
        if (t >= L) t = L - 1;
        for (int64_t s = t; s < t + span && s < L; s++) mask[s] = 1;
    }
    for (int64_t t = 0; t < L; t++) masked[t] = mask[t] ? mask_id : tokens[t];
}

void rg_mask_tokens(const int32_t *tokens, int64_t n, int64_t L, double rate, int64_t span,
                    uint64_t seed, uint64_t first, int32_t mask_id,
                    int32_t *masked, uint8_t *mask)
{
    rg_rng rng;
    for (int64_t i = 0; i < n; i++) {
        rg_rng_init(&rng, seed, RG_DOMAIN_MASK, first + (uint64_t)i);
        rg_mask_sequence(&rng, tokens + i * L, L, rate, span, mask_id, masked + i * L,
                         mask + i * L);
    }
}

int rg_chain_posterior(const double *T, const double *pi, int64_t V,
                       const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                       double *out, double *work, int64_t *bad_seq, int64_t *bad_pos)
{
    const int64_t ld = L * V; /* row stride of out viewed as (n, L*V) */
    /* Forward: out[i, t] = P(x_t | visible x_0..x_t), normalised per step. */
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * ld, pi, sizeof(double) * (size_t)V);
    for (int64_t t = 0; t < L; t++) {
        if (t > 0)
            RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)V,
                                 (int)V, 1.0, out + (t - 1) * V, (int)ld, T, (int)V, 0.0,
                                 out + t * V, (int)ld);
        for (int64_t i = 0; i < n; i++) {
            double *a = out + i * ld + t * V;
            if (mask[i * L + t]) {
                rg_normalize_row(a, V);
                continue;
            }
            int32_t x = tokens[i * L + t];
            if (!(a[x] > 0.0)) { *bad_seq = i; *bad_pos = t; return RG_ERR_ZERO_PROB; }
            memset(a, 0, sizeof(double) * (size_t)V);
            a[x] = 1.0;
        }
    }

    /* Backward: b = P(visible x_{t+1..L-1} | x_t) up to a per-row scale; out[t] *= b. */
    double *b = work, *g = work + n * V;
    for (int64_t k = 0; k < n * V; k++) b[k] = 1.0;
    for (int64_t t = L - 2; t >= 0; t--) {
        /* g = e_{t+1} * b_{t+1}: the evidence at t+1 times what lies beyond it */
        for (int64_t i = 0; i < n; i++) {
            double *gi = g + i * V;
            const double *bi = b + i * V;
            if (mask[i * L + t + 1]) {
                memcpy(gi, bi, sizeof(double) * (size_t)V);
            } else {
                int32_t x = tokens[i * L + t + 1];
                memset(gi, 0, sizeof(double) * (size_t)V);
                gi[x] = bi[x];
            }
        }
        RG_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)V, (int)V,
                             1.0, g, (int)V, T, (int)V, 0.0, b, (int)V);
        for (int64_t i = 0; i < n; i++) {
            double *bi = b + i * V;
            if (!(rg_normalize_row(bi, V) > 0.0)) { *bad_seq = i; *bad_pos = t; return RG_ERR_ZERO_PROB; }
            double *a = out + i * ld + t * V;
            for (int64_t j = 0; j < V; j++) a[j] *= bi[j];
            if (!(rg_normalize_row(a, V) > 0.0)) { *bad_seq = i; *bad_pos = t; return RG_ERR_ZERO_PROB; }
        }
    }
    return RG_OK;
}

int rg_chain_bayes_nll(const double *T, const double *pi, int64_t V,
                       const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t L,
                       double *nll_sum, int64_t *count, int64_t *bad_seq, int64_t *bad_pos)
{
    /* chunk so that the posterior workspace stays near 32 MiB whatever n is */
    int64_t chunk = (int64_t)(4u << 20) / (L * V + 2 * V);
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    double *post = malloc(sizeof(double) * (size_t)(chunk * (L * V + 2 * V)));
    if (!post) return RG_ERR_NOMEM;
    double *work = post + chunk * L * V;
    double sum = 0.0;
    int64_t cnt = 0;
    int status = RG_OK;
    for (int64_t s = 0; s < n; s += chunk) {
        int64_t m = n - s < chunk ? n - s : chunk;
        status = rg_chain_posterior(T, pi, V, tokens + s * L, mask + s * L, m, L, post, work,
                                    bad_seq, bad_pos);
        if (status != RG_OK) { *bad_seq += s; goto exit; }
        for (int64_t i = 0; i < m; i++)
            for (int64_t t = 0; t < L; t++) {
                int64_t k = (s + i) * L + t;
                if (!mask[k]) continue;
                sum -= log(post[(i * L + t) * V + tokens[k]]);
                cnt++;
            }
    }
    *nll_sum = sum;
    *count = cnt;
exit:
    free(post);
    return status;
}
