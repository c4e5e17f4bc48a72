/* Legend (every kernel header): V states (token ids 0..V-1, V = MASK), L sequence length,
 * d per-position width, D = L*d stream width, m hidden width, K blocks (stream layers
 * z_0..z_K), B batch (sequences), N rows and C columns of a row pass; analysis: n samples,
 * f features, n_layers representations ("layers" is never L). */

/* Singular spectra of column-centred representation matrices and the effective-rank family.
 *
 * Inputs are strided views of float32 or float64 data (strides in bytes), so a (layers,
 * positions, n, d) view of a (layers, n, positions, d) stream is measured without a copy.  Every
 * matrix is copied into a float64 workspace, centred there (and scaled by an exact power of two
 * if its range could overflow or underflow the Gram): two passes over the source (column sums,
 * minima and maxima, then conversion and centring; interleaved matrices such as a stream's
 * positions are loaded together, 512 kB at a time, so the source is read row by row).  Its
 * spectrum comes from the first of four routes that applies (k = min(n, f); M the tall side, A
 * or A^T; G = M^T M its k x k Gram, dgemm for k <= 16, else dsyrk; L = chol(G), dpotrf, taken
 * first for every matrix without a structural zero; D = diag(G)^(1/2)):
 *   1. RG_ROUTE_GRAM: the eigenvalues of G (dsyevd), when it is well conditioned: every kept
 *      eigenvalue >= RG_GRAM_MIN_RATIO * the largest.  The Gram squares the condition number:
 *      an eigenvalue is known to about c*eps*lambda_max, so a singular value s carries a
 *      relative error ~ c*eps/(2 (s/s_max)^2); at the ratio 1e-3 that is ~c*5.5e-14, within
 *      the 1e-12 relative contract of the measures for c up to ~18 (c ~ 1 measured: 1e-14 at
 *      worst on random matrices at the criterion's edge; the criterion means
 *      cond(X_centred) <= 31.6).  Tried only when max_i G_ii / min_i L_ii^2 <= 1/ratio, a
 *      lower bound of cond(G) (G_ii <= lambda_max, each pivot L_ii^2 >= lambda_min), so an
 *      ill-conditioned matrix does not pay for the eigenvalues.
 *   2. RG_ROUTE_CHOLESKY ("scaled Cholesky"): the singular values of L (dgesdd of the k x k
 *      triangle), when the equilibrated Gram A = D^-1 G D^-1 (unit diagonal) has
 *      lambda_min(A) >= RG_SCALED_MIN_RATIO, tested by Cholesky-factoring A - ratio*I
 *      (Sylvester's inertia: it factors exactly when that matrix is positive definite, up to
 *      the factorisation's backward error <= ~k^3 eps, far below the ratio).  Scaling a
 *      column scales the Gram's errors with it: the computed Gram is G + D F D with
 *      |F_ij| <= ~n eps (each entry an inner product of two columns), and Cholesky adds an
 *      error of the same form (Demmel 1989), so L L^T = D (A + F') D and every eigenvalue of
 *      L L^T is within a relative ||F'||_2 / lambda_min(A) of the true one (Demmel and
 *      Veselic, SIMAX 13, 1992): relative errors ~c*eps/ratio = c*1.1e-13 in s^2, the Gram
 *      route's bound, however ill-conditioned G is (measured: <= 4e-15 on the measures near
 *      the criterion).  dgesdd of L then adds its absolute error ~eps ||L|| = eps s_max.
 *      Takes matrices whose ill-conditioning comes from column scales (units of different
 *      magnitude; the benchmark's graded stream) and, in a trained network's stream, the
 *      layers whose dozens of collapsed directions leave lambda_min(A) ~ 3e-3.  About
 *      n k^2 + 2 k^3 / 3 flops plus the k x k SVD.
 *   3. RG_ROUTE_CHOLQR2: CholeskyQR2 from L (its inverse, dtrtri; Q = M L^-T in one dgemm,
 *      or dtrmm for k > 16; Q's Gram; Cholesky again) and dgesdd of the k x k triangular
 *      product; accepted when ||Q^T Q - I||_F <= 0.5 after the first pass (cond(M) up to
 *      ~1e7).  Its Q is then orthonormal to O(eps), so the values carry a backward error
 *      ~eps ||M|| and an absolute error ~eps s_max, as dgesdd's do (Yamamoto et al., ETNA 44,
 *      2015).  About 3 n k^2 flops in Level-3 BLAS.
 *   4. RG_ROUTE_SVD: a direct SVD of the centred matrix: Householder QR (dgeqrf) and dgesdd
 *      of the k x k triangular factor, or dgesdd alone when M is less than twice as tall as
 *      wide (dgesdd's own choice: its built-in QR path was ~2x slower on 2048 x 16).  For
 *      rank-deficient or worse conditioned matrices (Cholesky fails, or CholeskyQR2's test),
 *      and every centred matrix with n <= f (its tall side then has rank <= n - 1: a
 *      structural zero, which Cholesky cannot factor; those try the Gram route first).
 * With centring and n <= f the centred matrix has rank <= n-1: its smallest singular value is 0
 * in exact arithmetic, is set to exactly 0 and is not "kept" for the criterion. */
#ifndef RG_RANK_H
#define RG_RANK_H

#include <stdint.h>

#define RG_GRAM_MIN_RATIO 1e-3
/* the scaled Cholesky route's criterion: lambda_min(D^-1 G D^-1) >= this */
#define RG_SCALED_MIN_RATIO 1e-3

enum { RG_ROUTE_GRAM = 0, RG_ROUTE_SVD = 1, RG_ROUTE_CHOLQR2 = 2, RG_ROUTE_CHOLESKY = 3 };
#define RG_MAX_BATCH_DIMS 32

enum { RG_FLOAT32 = 0, RG_FLOAT64 = 1 };

/* One strided matrix: element (i, j) at data + i*row_stride + j*col_stride (bytes). */
typedef struct {
    const char *data;
    int dtype;                        /* RG_FLOAT32 or RG_FLOAT64 */
    int64_t rows, cols;               /* n samples, f features */
    int64_t row_stride, col_stride;   /* bytes */
} rg_strided_matrix;

/* A stack of equally shaped matrices: batch index (b_0, ..., b_{nb-1}) selects
 * base.data + sum_k b_k * batch_stride[k]. */
typedef struct {
    rg_strided_matrix base;
    int nbatch;
    int64_t batch_shape[RG_MAX_BATCH_DIMS];
    int64_t batch_stride[RG_MAX_BATCH_DIMS];  /* bytes */
} rg_stack;

enum {
    RG_MEASURE_ERANK = 0,          /* exp(entropy of s / sum s), or of s^2 / sum s^2 if squared */
    RG_MEASURE_PARTICIPATION = 1,  /* (sum s^2)^2 / sum s^4 */
    RG_MEASURE_STABLE = 2,         /* sum s^2 / s_max^2 */
    RG_MEASURE_NUMERICAL = 3,      /* #{s_i > tol} */
    RG_MEASURE_SPECTRUM = 4        /* the singular values themselves */
};

/* Copy v into out (rows x cols at leading dimension ld) and centre its columns if center (the
 * mean of a constant column is exact, so constant data centres to exact zeros).  If the
 * largest centred magnitude falls outside [2^-300, 2^300] (where a Gram could overflow or
 * underflow) the result is scaled by the exact power of two 2^-(*exponent); otherwise
 * *exponent = 0.  scratch: 5 * cols doubles.  RG_ERR_NOT_FINITE if v holds NaN or Inf. */
int rg_load_centered(const rg_strided_matrix *v, int center, double *out /* rows x ld */, int64_t ld,
                     double *scratch /* 5 cols */, int *exponent);

/* out (rows x cols at ld) times 2^-e, exactly for normal results (in two factors, so that e
 * below -1023 does not overflow the factor). */
void rg_scale_pow2(double *out, int64_t rows, int64_t cols, int64_t ld, int e);

/* A measure of a spectrum s (k values, descending, >= 0).  An all-zero spectrum gives 0 for
 * every measure.  tol < 0 selects numpy.linalg.matrix_rank's s_max * max(n, f) * eps. */
double rg_spectrum_measure(const double *s /* k */, int64_t k, int measure, int squared,
                           double tol, int64_t n, int64_t f);

/* Measure every matrix of the stack, with one workspace allocation per call: 2 n*f + 3 k*k +
 * 5f + 2k doubles plus LAPACK work (queried; about max(n, f) + 10k doubles), k = min(n, f), plus at
 * most 512 kB when the innermost batch axis interleaves rows (as positions do in a stream: up to
 * 512 kB of such matrices are then loaded together, row by row).
 * out: one double per matrix (batch order, row-major) or, for RG_MEASURE_SPECTRUM, min(n, f)
 * singular values per matrix, descending.  tol is in the units of the input (< 0: default).
 * route (optional, one byte per matrix) records the route (RG_ROUTE_*).  *bad gets the batch index of the
 * offending matrix on RG_ERR_NOT_FINITE or RG_ERR_LAPACK. */
int rg_rank_batch(const rg_stack *s, int center, int measure, int squared, double tol,
                  double *out, uint8_t *route, int64_t *bad);

#endif
