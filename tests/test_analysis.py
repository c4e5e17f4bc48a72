"""Analysis kernels against NumPy references: spectra, the effective-rank family, linear CKA.

Tolerances: measures (erank, participation, stable rank) to a relative 1e-10 of the same
measure computed from ``np.linalg.svd`` of the centred float64 matrix.  Spectra are compared
entrywise within ``1e-10 * s_i + 64 * max(n, f) * eps * s_max``: the second term is the
accuracy floor of any backward-stable SVD (the reference's included), below which singular
values are noise and cannot be matched relatively.
"""
import warnings

import numpy as np
import pytest

import rgflow as rg
from rgflow import _core

EPS = np.finfo(np.float64).eps
RTOL = 1e-10


# ---- references ------------------------------------------------------------------------------

def ref_spectrum(X, center=True):
    X = np.asarray(X, dtype=np.float64)
    if center:
        X = X - X.mean(axis=0)
    return np.linalg.svd(X, compute_uv=False)


def ref_measure(s, measure, squared=False):
    if s[0] == 0:
        return 0.0
    if measure == "erank":
        w = s ** 2 if squared else s
        p = w / w.sum()
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))
    if measure == "participation":
        return float((s ** 2).sum() ** 2 / (s ** 4).sum())
    if measure == "stable":
        return float((s ** 2).sum() / s[0] ** 2)
    raise ValueError(measure)


def ref_hsic(X, Y, debiased):
    """HSIC from the n x n Grams of the raw (uncentred) data, the way CKA libraries do it."""
    K, L = X @ X.T, Y @ Y.T
    n = K.shape[0]
    if not debiased:
        H = np.eye(n) - 1.0 / n
        return np.sum((H @ K @ H) * (H @ L @ H))
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    return (np.sum(K * L) + K.sum() * L.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * K.sum(0) @ L.sum(0)) / (n * (n - 3))


def ref_cka(X, Y, debiased=False):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    return ref_hsic(X, Y, debiased) / np.sqrt(ref_hsic(X, X, debiased) * ref_hsic(Y, Y, debiased))


def ref_cka_matrix(layers, debiased=False):
    L = len(layers)
    return np.array([[ref_cka(layers[i], layers[j], debiased) for j in range(L)]
                     for i in range(L)])


def lambda_min_equilibrated(X, center=True):
    """Smallest eigenvalue of the tall side's Gram scaled to a unit diagonal (rank.h's
    criterion for the scaled Cholesky route)."""
    X = np.asarray(X, np.float64)
    if center:
        X = X - X.mean(axis=0)
    if X.shape[0] < X.shape[1]:
        X = X.T
    G = X.T @ X
    d = np.sqrt(np.diag(G))
    return np.linalg.eigvalsh(G / np.outer(d, d))[0]


def orthonormal_centred(rng, n, k):
    """n x k with orthonormal columns orthogonal to the ones vector."""
    A = rng.standard_normal((n, k))
    A -= A.mean(axis=0)
    return np.linalg.qr(A)[0]


# ---- test matrices -----------------------------------------------------------------------------

def _cases():
    rng = np.random.default_rng(42)
    c = {}
    c["random"] = rng.standard_normal((200, 20))
    c["n<f"] = rng.standard_normal((20, 200))
    c["n<f, k <= 16 (dgemm Gram)"] = rng.standard_normal((12, 100))
    c["n>>f"] = rng.standard_normal((4096, 16))
    c["square"] = rng.standard_normal((60, 60))
    c["low-rank"] = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 50))
    c["rank-deficient"] = np.repeat(rng.standard_normal((100, 10)), 3, axis=1)
    c["low-rank n<f"] = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 90))
    c["column scales 1e-8..1e8"] = rng.standard_normal((500, 17)) * np.logspace(-8, 8, 17)
    c["overall 1e-8"] = 1e-8 * rng.standard_normal((150, 30))
    c["overall 1e8"] = 1e8 * rng.standard_normal((150, 30))
    c["offset 1e6"] = 1e6 + rng.standard_normal((300, 8))
    c["float32"] = rng.standard_normal((300, 24)).astype(np.float32)
    c["float32 n<f"] = rng.standard_normal((24, 300)).astype(np.float32)
    # Gram route at the edge of its criterion: s_min / s_max = 1/31.5 (eigenvalue ratio 1.008e-3)
    s = np.geomspace(1.0, 1 / 31.5, 12)
    c["cond 31.5"] = orthonormal_centred(rng, 400, 12) * s @ np.linalg.qr(
        rng.standard_normal((12, 12)))[0]
    # full rank but ill-conditioned (s from 1 to 1e-8): through the Gram the smallest singular
    # value would carry an error of order its own size, so this must go to the SVD
    s = np.geomspace(1.0, 1e-8, 12)
    c["cond 1e8"] = orthonormal_centred(rng, 400, 12) * s @ np.linalg.qr(
        rng.standard_normal((12, 12)))[0]
    return c


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_measures_match_numpy_svd(name):
    X = CASES[name]
    s_ref = ref_spectrum(X)
    for measure, squared in [("erank", False), ("erank", True), ("participation", False),
                             ("stable", False)]:
        got = rg.effective_rank(X, measure, squared=squared)
        want = ref_measure(s_ref, measure, squared)
        assert abs(got - want) <= RTOL * want, (measure, squared, got, want)
    Xc = np.asarray(X, np.float64) - np.asarray(X, np.float64).mean(axis=0)
    assert rg.effective_rank(X, "numerical") == np.linalg.matrix_rank(Xc)


@pytest.mark.parametrize("name", list(CASES))
def test_spectrum_matches_numpy_svd(name):
    X = CASES[name]
    n, f = X.shape
    s_ref, s = ref_spectrum(X), rg.singular_values(X)
    assert s.shape == (min(n, f),)
    floor = 64 * max(n, f) * EPS * s_ref[0]
    np.testing.assert_array_less(np.abs(s - s_ref), RTOL * s_ref + floor)


def test_every_route_is_exercised():
    # route flag: 0 = Gram + dsyevd, 1 = direct SVD (QR + dgesdd), 2 = CholeskyQR2,
    # 3 = scaled Cholesky (singular values of the Gram's Cholesky factor)
    assert _core.rank(CASES["n>>f"])[1] == 0
    assert _core.rank(CASES["n<f"])[1] == 0          # n x n Gram, structural zero set aside
    assert _core.rank(CASES["cond 31.5"])[1] == 0
    assert _core.rank(CASES["cond 1e8"])[1] == 2
    assert _core.rank(CASES["low-rank"])[1] == 1     # rank deficient: Cholesky fails
    # cond 1e16, but from column scales alone, which leave the equilibrated Gram well
    # conditioned: the scaled Cholesky route takes it, and the spectrum tests above hold
    assert _core.rank(CASES["column scales 1e-8..1e8"])[1] == 3
    assert _core.rank(CASES["low-rank n<f"])[1] == 1  # centred n < f: structural zero


@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6, 1e8, 1e10])
@pytest.mark.parametrize("shape", [(2048, 16), (300, 40), (16, 300)])
def test_cholesky_qr2_route_is_as_accurate_as_the_svd(cond, shape):
    """Graded spectra (geometric from 1 to 1/cond), the shapes of position matrices, a squarer
    one and an uncentred wide one (centred wide ones always take dgesdd): whatever route a
    matrix takes, its singular values match NumPy's SVD to an absolute 64 max(n, f) eps s_max
    and the erank family to 1e-12 relative (issue 15's contract)."""
    n, f = shape
    k = min(n, f)
    rng = np.random.default_rng(int(np.log10(cond)) + n)
    s_true = np.geomspace(1.0, 1.0 / cond, k)
    U = np.linalg.qr(rng.standard_normal((max(n, f), k)))[0]
    W = np.linalg.qr(rng.standard_normal((k, k)))[0]
    X = (U * s_true) @ W
    X = X if n >= f else X.T
    center = n >= f
    if center:
        X = X - X.mean(axis=0)
    s_ref = np.linalg.svd(X - X.mean(axis=0) if center else X, compute_uv=False)
    s, route = _core.rank(X, center=center, measure="spectrum")
    np.testing.assert_array_less(np.abs(s - s_ref), 64 * max(n, f) * EPS * s_ref[0])
    for measure, squared in [("erank", False), ("erank", True), ("participation", False),
                             ("stable", False)]:
        got = rg.effective_rank(X, measure, squared=squared, center=center)
        want = ref_measure(s_ref, measure, squared)
        assert abs(got - want) <= 1e-12 * want, (measure, squared, got, want)
    # the route each takes (measured): Gram never (cond >= 100 > 31.6); a Cholesky route up
    # to cond 1e8 at least, the scaled one exactly when the equilibrated Gram's smallest
    # eigenvalue clears 1e-3 (margins for rounding); the SVD where CholeskyQR2's
    # orthogonality test fails
    assert route != 0
    if cond <= 1e6:
        assert route in (2, 3)
    lam = lambda_min_equilibrated(X, center)
    if lam > 1.01e-3:
        assert route == 3
    elif lam < 0.99e-3:
        assert route != 3


def correlated(rng, n, lams, center=True):
    """n x k with orthonormal-times-A^(1/2) columns: its Gram is V diag(lams) V^T for a random
    orthogonal V (so its equilibrated Gram has smallest eigenvalue near min(lams) /
    mean(lams)); orthogonal to the ones vector when center, so centring leaves it as is."""
    k = len(lams)
    Q = orthonormal_centred(rng, n, k) if center else np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = np.linalg.qr(rng.standard_normal((k, k)))[0]
    return Q @ (V * np.sqrt(lams)) @ V.T


def assert_matches_svd(X, center=True, rtol=1e-12):
    """Issue 15's contract against NumPy's SVD of the centred float64 matrix: spectrum within
    64 max(n, f) eps s_max (the accuracy floor of any backward-stable SVD, the reference's
    included), erank (plain and squared), participation and stable rank within rtol relative,
    numerical rank exact (the matrices here keep their values far from its threshold)."""
    n, f = X.shape
    Xc = np.asarray(X, np.float64)
    if center:
        Xc = Xc - Xc.mean(axis=0)
    s_ref = np.linalg.svd(Xc, compute_uv=False)
    s = rg.singular_values(X, center=center)
    np.testing.assert_array_less(np.abs(s - s_ref), 64 * max(n, f) * EPS * s_ref[0])
    for measure, squared in [("erank", False), ("erank", True), ("participation", False),
                             ("stable", False)]:
        got = rg.effective_rank(X, measure, squared=squared, center=center)
        want = ref_measure(s_ref, measure, squared)
        assert abs(got - want) <= rtol * want, (measure, squared, got, want)
    assert rg.effective_rank(X, "numerical", center=center) == np.linalg.matrix_rank(Xc)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2048, 16), (300, 40), (24, 300)])
def test_scaled_cholesky_route_on_graded_matrices(shape, dtype):
    """Column scales from 1 to 1e-6 on a well-conditioned core (the benchmark's "graded"
    stream, ten times steeper; a representation whose units differ in scale): the Gram's
    condition number reaches ~1e12, its equilibrated form stays well conditioned, and the
    scaled Cholesky route takes it.  Wide matrices are measured uncentred (centred, their
    tall side is rank deficient and takes the direct route).  Also through strided views."""
    n, f = shape
    center = n >= f
    rng = np.random.default_rng(n + f)
    k = min(n, f)
    core = correlated(rng, max(n, f), rng.uniform(0.5, 1.5, k), center=center)
    X = core * np.logspace(0, -6, k)
    X = (X if n >= f else X.T).astype(dtype)
    assert lambda_min_equilibrated(X, center) > 0.1
    assert _core.rank(X, center=center)[1] == 3
    assert_matches_svd(X, center)
    big = np.zeros((2 * n, 3 * f), dtype)
    big[::2, 1::3] = X
    view = big[::2, 1::3]                                  # both strides non-unit
    assert rg.effective_rank(view, center=center) == rg.effective_rank(X, center=center)
    assert rg.effective_rank(view[::-1], center=center) == rg.effective_rank(
        np.ascontiguousarray(X[::-1]), center=center)


@pytest.mark.parametrize("lam_min", [4e-3, 2.5e-4])
def test_scaled_cholesky_route_threshold(lam_min):
    """Either side of the scaled route's criterion (lambda_min of the equilibrated Gram >=
    1e-3, rank.h): correlated columns with some eigenvalues small (as a trained network's
    stream has dozens of collapsed directions), then column scales 1..1e-4.  Above it the
    scaled route is taken, below it CholeskyQR2; both meet the contract."""
    rng = np.random.default_rng(int(1 / lam_min))
    lams = np.concatenate([rng.uniform(0.7, 1.3, 24), np.full(8, lam_min)])
    X = correlated(rng, 2048, lams) * np.logspace(0, -4, 32)
    lam = lambda_min_equilibrated(X)
    assert (lam > 1.5e-3) if lam_min > 1e-3 else (lam < 0.7e-3), lam
    assert _core.rank(X)[1] == (3 if lam_min > 1e-3 else 2)
    assert_matches_svd(X)
    assert_matches_svd(X.astype(np.float32))


def test_rank_deficient_tall_matrices_take_the_direct_route():
    """A tall matrix with few distinct rows (the embedding layer of a network: at each
    position at most V + 1 different vectors), centred: Cholesky fails and the direct route
    (Householder QR, then dgesdd of the triangular factor) takes it; its zeros must stay at
    SVD level for the numerical rank to be exact."""
    rng = np.random.default_rng(15)
    rows = rng.standard_normal((9, 16)).astype(np.float32)
    X = rows[rng.integers(0, 9, 2048)]
    assert _core.rank(X)[1] == 1
    assert rg.effective_rank(X, "numerical") == 8
    assert_matches_svd(X)
    Y = rng.standard_normal((500, 6)) @ rng.standard_normal((6, 60))   # rank 6, n > 2 f
    assert _core.rank(Y)[1] == 1
    assert_matches_svd(Y)


def test_mixed_routes_are_independent_of_grouping_and_threads():
    """A stream whose positions take every route (well conditioned, graded, correlated,
    rank deficient): the batched strided call gives each matrix the bits it gets alone,
    whatever the grouping of interleaved positions and the thread count."""
    rng = np.random.default_rng(16)
    n, length, d = 512, 7, 16
    z = rng.standard_normal((3, n, length, d)).astype(np.float32)
    z[:, :, 1, :] *= np.logspace(0, -5, d).astype(np.float32)                # scaled Cholesky
    z[:, :, 2, :] = correlated(rng, n, np.r_[np.ones(12), np.full(4, 1e-9)])  # CholeskyQR2
    z[:, :, 3, :] = z[:, rng.integers(0, 5, n), 3, :]                        # rank deficient
    view = z.transpose(0, 2, 1, 3)
    routes = _core.rank(view)[1]
    assert set(routes[0].tolist()) == {0, 1, 2, 3}, routes
    loop = np.array([[rg.effective_rank(np.ascontiguousarray(z[l, :, p, :]))
                      for p in range(length)] for l in range(3)])
    np.testing.assert_array_equal(rg.effective_rank(view, n_threads=1), loop)
    np.testing.assert_array_equal(rg.effective_rank(view, n_threads=2), loop)
    np.testing.assert_array_equal(rg.effective_rank(view[:, 2:5]), loop[:, 2:5])
    spectra = rg.singular_values(view)
    np.testing.assert_array_equal(spectra[1, 2], rg.singular_values(z[1, :, 2, :]))
    for p in range(length):
        assert_matches_svd(z[0, :, p, :])


def test_uncentred():
    X = CASES["offset 1e6"]
    s = rg.singular_values(X, center=False)
    s_ref = ref_spectrum(X, center=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=64 * 300 * EPS * s_ref[0])
    assert abs(rg.effective_rank(X, center=False) - ref_measure(s_ref, "erank")) <= 1e-10


def test_known_values():
    f = 7
    X = np.vstack([np.eye(f), -np.eye(f)])          # centred, all singular values sqrt(2)
    assert abs(rg.effective_rank(X) - f) <= 1e-12 * f
    assert abs(rg.effective_rank(X, "participation") - f) <= 1e-12 * f
    assert abs(rg.effective_rank(X, "stable") - f) <= 1e-12 * f
    assert rg.effective_rank(X, "numerical") == f
    u = np.random.default_rng(0).standard_normal(50)
    R1 = np.outer(u, [1.0, -2.0, 0.5, 3.0])
    assert abs(rg.effective_rank(R1) - 1.0) <= 1e-10
    assert rg.effective_rank(R1, "numerical") == 1
    # an absolute tolerance in the units of X, whatever the internal scaling
    D = np.vstack([np.diag([4.0, 2.0, 1.0]), -np.diag([4.0, 2.0, 1.0])])  # s = sqrt(2)*(4,2,1)
    assert rg.effective_rank(D, "numerical", tol=2.0) == 2
    assert rg.effective_rank(1e-200 * D, "numerical", tol=2e-200) == 2


def test_edge_cases_documented():
    for X in (np.zeros((10, 4)), np.full((10, 4), 3.7), np.full((10, 4), 0.1), np.ones((1, 5)),
              np.arange(5.0)[None, :]):
        for m in ("erank", "participation", "stable"):
            assert rg.effective_rank(X, m) == 0.0
        assert rg.effective_rank(X, "numerical") == 0
        assert np.all(rg.singular_values(X) == 0.0)
    # constant columns next to varying ones do not add noise singular values
    X = np.column_stack([np.full(20, 0.1), np.arange(20.0)])
    assert rg.singular_values(X)[1] == 0.0
    assert rg.effective_rank(X) == 1.0
    # a single sample, uncentred, is a rank-one matrix
    assert abs(rg.effective_rank(np.array([[1.0, 2.0, 3.0]]), center=False) - 1.0) < 1e-15


def test_invalid_inputs():
    X = np.random.default_rng(0).standard_normal((10, 3))
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[4, 1] = bad
        with pytest.raises(ValueError, match="X contains NaN or Inf"):
            rg.effective_rank(Y)
        with pytest.raises(ValueError, match="Y contains NaN or Inf"):
            rg.linear_cka(X, Y)
        S = np.stack([X, X, Y])
        with pytest.raises(ValueError, match="matrix 2"):
            rg.effective_rank(S)
    with pytest.raises(TypeError, match="X must be a real"):
        rg.effective_rank(X.astype(complex))
    with pytest.raises(TypeError, match="X must be a real"):
        rg.effective_rank(X > 0)
    with pytest.raises(TypeError, match="X must be a real"):
        rg.effective_rank(X.astype(object))
    with pytest.raises(TypeError, match="X must be a real"):
        rg.effective_rank(X.astype(np.longdouble))
    with pytest.raises(ValueError, match="2\\*\\*53"):
        rg.effective_rank(np.array([[2 ** 60, 1], [3, 4]], dtype=np.int64))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        rg.effective_rank(np.ones(5))
    with pytest.raises(ValueError, match="at least one sample"):
        rg.effective_rank(np.ones((0, 5)))
    with pytest.raises(ValueError, match="measure"):
        rg.effective_rank(X, "bogus")
    with pytest.raises(ValueError, match="tol"):
        rg.effective_rank(X, "numerical", tol=-1.0)
    with pytest.raises(ValueError, match="same samples"):
        rg.linear_cka(X, X[:9])
    with pytest.raises(ValueError, match="at least 4 samples"):
        rg.linear_cka(X[:3], X[:3], debiased=True)
    with pytest.raises(ValueError, match="must be a 2-D"):
        rg.linear_cka(X[None], X)
    # a flag is a bool: "no" or 1 would pass silently as true
    stream = np.stack([X, X[::-1], X * 2])
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="debiased must be a bool"):
            rg.linear_cka(X, X, debiased=bad)
        with pytest.raises(TypeError, match="debiased must be a bool"):
            rg.cka_matrix(stream, debiased=bad)
        with pytest.raises(TypeError, match="debiased must be a bool"):
            rg.drift_profile(stream, debiased=bad)
        with pytest.raises(TypeError, match="block_ln must be a bool"):
            rg.ResidualMLP(4, 5, 3, 8, 2, block_ln=bad)
    assert rg.linear_cka(X, X[::-1], debiased=np.bool_(True)) == \
        rg.linear_cka(X, X[::-1], debiased=True)
    # exact conversions are accepted and give the float64 answer
    I = np.arange(30).reshape(10, 3) ** 2
    assert rg.effective_rank(I) == rg.effective_rank(I.astype(np.float64))
    assert rg.effective_rank(I.astype(np.int16)) == rg.effective_rank(I.astype(np.float64))
    assert rg.effective_rank(np.zeros((0, 4, 3))).shape == (0,)


def test_layouts_give_identical_numbers():
    rng = np.random.default_rng(1)
    big = rng.standard_normal((120, 40))
    X = big[::2, ::3]                                   # non-contiguous, both axes
    ref = rg.effective_rank(np.ascontiguousarray(X))
    assert rg.effective_rank(X) == ref
    assert rg.effective_rank(np.asfortranarray(X)) == ref
    R = X[::-1, ::-1]                                   # negative strides
    assert rg.effective_rank(R) == rg.effective_rank(np.ascontiguousarray(R))
    assert rg.effective_rank(X.astype(">f8")) == ref   # byte-swapped: converted exactly
    X32 = X.astype(np.float32)
    assert rg.effective_rank(X32) == rg.effective_rank(X32.astype(np.float64))
    assert rg.effective_rank(np.asfortranarray(X32)) == rg.effective_rank(X32.astype(np.float64))
    Y = rng.standard_normal((60, 9))
    c = rg.linear_cka(X, Y)
    assert rg.linear_cka(np.asfortranarray(X), Y[::-1][::-1]) == c
    assert rg.linear_cka(X32, Y) == rg.linear_cka(X32.astype(np.float64), Y)


def test_batched_equals_loop():
    rng = np.random.default_rng(2)
    stream = rng.standard_normal((3, 50, 4, 6)).astype(np.float32)  # (layers, n, positions, d)
    view = stream.transpose(0, 2, 1, 3)                             # (layers, positions, n, d)
    for measure in ("erank", "participation", "stable", "numerical"):
        got = rg.effective_rank(view, measure)
        assert got.shape == (3, 4)
        loop = np.array([[rg.effective_rank(stream[l, :, p, :], measure) for p in range(4)]
                         for l in range(3)])
        np.testing.assert_array_equal(got, loop)
        np.testing.assert_array_equal(rg.effective_rank(view, measure, n_threads=2), loop)
    np.testing.assert_array_equal(rg.rank_profile(stream, n_threads=3),
                                  rg.effective_rank(view).mean(axis=1))
    # interleaved matrices loaded in cache-sized groups (512 kB: 2 of these per group)
    big = rng.standard_normal((2, 2048, 12, 16)).astype(np.float32)
    np.testing.assert_array_equal(
        rg.effective_rank(big.transpose(0, 2, 1, 3)),
        [[rg.effective_rank(np.ascontiguousarray(big[l, :, p, :])) for p in range(12)]
         for l in range(2)])
    s = rg.singular_values(view)
    assert s.shape == (3, 4, 6)
    np.testing.assert_array_equal(s[2, 1], rg.singular_values(stream[2, :, 1, :]))


def test_rank_profile_levels():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 80, 6, 5)).astype(np.float32)
    z[2] *= np.linspace(0.01, 1, 5)                # make the layers differ
    per = np.array([[rg.effective_rank(z[l, :, p, :]) for p in range(6)] for l in range(4)])
    np.testing.assert_array_equal(rg.rank_profile(z), per.mean(axis=1))
    prof, detail = rg.rank_profile(z, detail=True)
    np.testing.assert_array_equal(detail, per)
    np.testing.assert_array_equal(rg.rank_profile(z, positions=[1, 3, 5]),
                                  per[:, [1, 3, 5]].mean(axis=1))
    np.testing.assert_array_equal(rg.rank_profile(z, positions=[4, 0]),
                                  per[:, [4, 0]].mean(axis=1))
    pooled = [rg.effective_rank(z[l].astype(np.float64).mean(axis=1)) for l in range(4)]
    np.testing.assert_allclose(rg.rank_profile(z, level="pooled"), pooled, rtol=1e-12)
    flat = [rg.effective_rank(z[l].reshape(80, 30)) for l in range(4)]
    np.testing.assert_array_equal(rg.rank_profile(z, level="stream"), flat)
    np.testing.assert_array_equal(rg.rank_profile(z, level="stream", measure="numerical"),
                                  [30, 30, 30, 30])
    with pytest.raises(ValueError, match="level"):
        rg.rank_profile(z, level="bogus")
    with pytest.raises(ValueError, match="stream must have shape"):
        rg.rank_profile(z[0, 0])  # 2-D: neither a stream nor a stack of layers


def test_rank_profile_masked():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 40, 5, 4))
    mask = rng.random((40, 5)) < 0.3
    mask[:, 4] = False
    mask[0, 4] = True                               # position 4: one masked row -> skipped
    res = rg.rank_profile(z, mask=mask, detail=True)
    for g, rows_of in ((res.masked_detail, lambda p: mask[:, p]),
                       (res.visible_detail, lambda p: ~mask[:, p])):
        for p in range(5):
            rows = rows_of(p)
            if rows.sum() < 2:
                assert np.all(np.isnan(g[:, p]))
            else:
                np.testing.assert_array_equal(
                    g[:, p], [rg.effective_rank(z[l][rows, p, :]) for l in range(3)])
    np.testing.assert_array_equal(res.masked, np.nanmean(res.masked_detail, axis=1))
    assert np.all(np.isnan(res.masked_detail[:, 4])) and not np.any(np.isnan(res.masked))
    np.testing.assert_array_equal(res.visible, res.visible_detail.mean(axis=1))


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_against_nxn_reference(debiased):
    rng = np.random.default_rng(5)
    for n, f, g in [(200, 6, 9), (30, 50, 70), (12, 3, 40)]:   # feature, sample, sample space
        X = rng.standard_normal((n, f)) + 2.0
        Y = X[:, :1] * rng.standard_normal(g) + rng.standard_normal((n, g))
        got = rg.linear_cka(X, Y, debiased=debiased)
        assert abs(got - ref_cka(X, Y, debiased)) <= 1e-10, (n, f, g)


@pytest.mark.parametrize("debiased", [False, True])
def test_drift_and_matrix_against_reference(debiased):
    rng = np.random.default_rng(6)
    for n, length, width in [(150, 3, 2), (20, 4, 5)]:        # feature space, sample space
        z = np.cumsum(rng.standard_normal((5, n, length, width)), axis=0).astype(np.float32)
        layers = [z[l].reshape(n, -1) for l in range(5)]
        M = rg.cka_matrix(z, debiased=debiased)
        np.testing.assert_allclose(M, ref_cka_matrix(layers, debiased), rtol=0, atol=1e-10)
        d = rg.drift_profile(z, debiased=debiased)
        np.testing.assert_allclose(d, 1.0 - np.diagonal(M, 1), rtol=0, atol=1e-12)
        pooled = [z[l].astype(np.float64).mean(axis=1) for l in range(5)]
        np.testing.assert_allclose(rg.cka_matrix(z, level="pooled", debiased=debiased),
                                   ref_cka_matrix(pooled, debiased), rtol=0, atol=1e-10)
    # both routes really ran
    assert _core.cka(tuple(rng.standard_normal((3, 150, 6))))[1] == 0
    assert _core.cka(tuple(rng.standard_normal((3, 20, 20))))[1] == 1


def test_cka_sample_space_in_several_row_blocks():
    # L * n large enough that the row block (2^22 / (L n), floored at 16) is smaller than n
    rng = np.random.default_rng(7)
    layers = rng.standard_normal((300, 40, 60))
    M, sample = _core.cka(tuple(layers), debiased=True)
    assert sample == 1
    ref = [ref_cka(layers[a], layers[b], True) for a, b in [(0, 1), (5, 250), (299, 3)]]
    np.testing.assert_allclose([M[0, 1], M[5, 250], M[299, 3]], ref, rtol=0, atol=1e-10)


def cka_thread_cases():
    """Streams on both routes, big enough (> 4M multiply-adds) that the pool runs: (name,
    stream, sample_space of the matrix, of the drift)."""
    rng = np.random.default_rng(21)
    walk = lambda shape: np.cumsum(rng.standard_normal(shape), axis=0)  # noqa: E731
    return [("sample, 2 row blocks (664 + 37 rows)", walk((9, 701, 97)).astype(np.float32),
             1, 0),
            ("sample, drift too", walk((5, 301, 397)), 1, 1),
            ("feature", walk((5, 4096, 16)).astype(np.float32), 0, 0),
            ("feature, 4-d stream", walk((6, 1001, 13, 7)), 0, 0)]


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_threads_give_identical_bits(debiased):
    for name, z, matrix_route, drift_route in cka_thread_cases():
        layers = tuple(z.reshape(z.shape[0], z.shape[1], -1))
        assert _core.cka(layers, False)[1] == matrix_route, name
        assert _core.cka(layers, True)[1] == drift_route, name
        levels = ("stream", "pooled") if z.ndim == 4 else ("stream",)
        for level in levels:
            M = rg.cka_matrix(z, level=level, debiased=debiased, n_threads=1)
            d = rg.drift_profile(z, level=level, debiased=debiased, n_threads=1)
            assert np.all(np.isfinite(M)) and np.all(np.isfinite(d)), name
            for t in (2, 3, 100, None):  # more than the pool's 64 threads: capped
                np.testing.assert_array_equal(
                    rg.cka_matrix(z, level=level, debiased=debiased, n_threads=t), M, name)
                np.testing.assert_array_equal(
                    rg.drift_profile(z, level=level, debiased=debiased, n_threads=t), d, name)
    # and against the n x n reference, on threads
    z = cka_thread_cases()[1][1]
    M = rg.cka_matrix(z, debiased=debiased, n_threads=3)
    np.testing.assert_allclose([M[0, 1], M[4, 2]], [ref_cka(z[0], z[1], debiased),
                                                    ref_cka(z[4], z[2], debiased)],
                               rtol=0, atol=1e-10)


def test_cka_keeps_subnormal_inputs_on_threads():
    """The pool flushes subnormals (pool.h), but CKA's loader copies the data with them kept:
    a float32 layer of subnormals (DAZ would read it as zeros) gives the CKA of its exact
    float64 values, on both routes and any thread count."""
    rng = np.random.default_rng(22)
    for shape in [(4, 300, 500), (4, 3000, 24)]:  # sample space, feature space
        z = np.cumsum(rng.standard_normal(shape), axis=0).astype(np.float32)
        z[1] *= np.float32(1e-40)
        assert np.all(np.abs(z[1]) < np.finfo(np.float32).tiny)
        for t in (1, 2):
            M = rg.cka_matrix(z, n_threads=t)
            assert np.all(np.isfinite(M)) and M[0, 1] > 0.5
            np.testing.assert_array_equal(M, rg.cka_matrix(z.astype(np.float64), n_threads=t))
            np.testing.assert_array_equal(rg.drift_profile(z, n_threads=t),
                                          rg.drift_profile(z.astype(np.float64), n_threads=1))


def test_cka_n_threads_errors():
    z = np.random.default_rng(23).standard_normal((3, 40, 5, 4))
    for f in (rg.cka_matrix, rg.drift_profile):
        for bad in (0, -1):
            with pytest.raises(ValueError, match="^n_threads must be >= 1, got %d$" % bad):
                f(z, n_threads=bad)
        for bad in (1.5, "2", True, np.float64(2.0)):
            with pytest.raises(TypeError, match="^n_threads must be an int, got"):
                f(z, n_threads=bad)
        np.testing.assert_array_equal(f(z, n_threads=np.int64(2)), f(z, n_threads=1))
    layers = tuple(z.reshape(3, 40, -1))
    with pytest.raises(ValueError, match="^n_threads must be positive, got 0$"):
        _core.cka(layers, n_threads=0)
    with pytest.raises(TypeError, match="^n_threads must be an integer, got float$"):
        _core.cka(layers, n_threads=1.5)
    # NaN in several layers: the first is named, whichever thread loaded it
    big = np.cumsum(np.random.default_rng(24).standard_normal((6, 701, 97)), axis=0)
    big[4, 3, 5] = big[2, 600, 7] = np.inf
    for t in (1, 2, 3):
        with pytest.raises(ValueError, match=r"^stream\[2\] contains NaN or Inf"):
            rg.cka_matrix(big, n_threads=t)


def test_cka_known_values():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((100, 6))
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    for debiased in (False, True):
        assert abs(rg.linear_cka(X, -3.5 * X @ Q, debiased) - 1.0) <= 1e-12
        assert abs(rg.linear_cka(X, X + 7.0, debiased) - 1.0) <= 1e-12   # centring
    # constant representations: NaN by convention
    assert np.isnan(rg.linear_cka(X, np.ones((100, 2))))
    assert np.isnan(rg.linear_cka(np.zeros((100, 2)), X, debiased=True))
    assert np.isnan(rg.linear_cka(X[:1], X[:1]))                      # a single sample


def test_cka_independent_gaussians():
    """E[biased CKA] ~ sqrt(f g) / n; both estimators fluctuate with sd ~ sqrt(2) / n."""
    rng = np.random.default_rng(9)
    f = g = 8
    for n in (100, 400, 3000):
        X, Y = rng.standard_normal((n, f)), rng.standard_normal((n, g))
        sd = np.sqrt(2.0) / n
        biased = rg.linear_cka(X, Y)
        expect = np.sqrt(f * g) / (n * np.sqrt((1 + f / n) * (1 + g / n)))
        assert abs(biased - expect) <= 5 * sd, (n, biased, expect)
        assert abs(rg.linear_cka(X, Y, debiased=True)) <= 5 * sd, n
    assert rg.linear_cka(X, Y) < 0.01                                  # -> 0 as n grows


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    X = np.random.default_rng(10).standard_normal((30, 4)).astype(np.float32)
    assert rg.effective_rank(torch.from_numpy(X)) == rg.effective_rank(X)
    assert rg.linear_cka(torch.from_numpy(X), X) == rg.linear_cka(X, X)


def test_torch_tensors_requiring_grad_and_bfloat16():
    """Activations straight from a torch model: detached, bfloat16 widened exactly."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    z = rng.standard_normal((3, 40, 5, 4)).astype(np.float32)
    # values bfloat16 holds exactly, so widening to float32 must give the same numbers
    zb = torch.from_numpy(z).to(torch.bfloat16)
    exact = zb.float().numpy()
    assert not np.array_equal(exact, z)  # the rounding happened: the test can tell them apart
    grad = torch.from_numpy(z).requires_grad_(True)
    X, Xg, Xb = z[0, :, 0, :], grad[0, :, 0, :], zb[0, :, 0, :]
    assert rg.effective_rank(Xg) == rg.effective_rank(X)
    assert rg.effective_rank(Xb) == rg.effective_rank(exact[0, :, 0, :])
    assert rg.effective_rank(Xb) != rg.effective_rank(X)
    np.testing.assert_array_equal(rg.singular_values(Xb), rg.singular_values(exact[0, :, 0, :]))
    assert rg.linear_cka(Xg, Xb) == rg.linear_cka(X, exact[0, :, 0, :])
    for stream, ref in ((grad, z), (zb, exact)):
        np.testing.assert_array_equal(rg.rank_profile(stream), rg.rank_profile(ref))
        np.testing.assert_array_equal(rg.drift_profile(stream), rg.drift_profile(ref))
        np.testing.assert_array_equal(rg.cka_matrix(stream), rg.cka_matrix(ref))
    # a list of per-layer tensors, as forward hooks collect them
    layers = [grad[l] for l in range(3)]
    np.testing.assert_array_equal(rg.drift_profile(layers), rg.drift_profile(z))
    mask = torch.from_numpy(rng.random((40, 5)) < 0.3)
    np.testing.assert_array_equal(rg.rank_profile(grad, mask=mask).masked,
                                  rg.rank_profile(z, mask=mask.numpy()).masked)


def test_stream_errors_name_the_argument():
    z = np.random.default_rng(13).standard_normal((3, 40, 5, 4))
    z[2, 7, 1, 3] = np.nan
    for level in ("position", "pooled", "stream"):
        with pytest.raises(ValueError, match="^stream contains NaN or Inf"):
            rg.rank_profile(z, level=level)
    with pytest.raises(ValueError, match="^stream contains NaN or Inf"):
        rg.rank_profile(z, mask=np.ones((40, 5), dtype=bool))
    with pytest.raises(ValueError, match="^stream\\[2\\] contains NaN or Inf"):
        rg.drift_profile(z)
    with pytest.raises(ValueError, match="^stream\\[2\\] contains NaN or Inf"):
        rg.cka_matrix(z)
    # layers with unequal sample counts: the layer is named, not NumPy's "inhomogeneous shape"
    layers = [z[0], z[1], z[2, :39]]
    for f in (rg.drift_profile, rg.cka_matrix, rg.rank_profile):
        with pytest.raises(ValueError, match=r"^stream\[2\] has shape \(39, 5, 4\) but "
                                             r"stream\[0\] has shape \(40, 5, 4\)"):
            f(layers)
    with pytest.raises(ValueError, match="at least one layer"):
        rg.drift_profile([])


@pytest.mark.parametrize("shape", [(5, 300, 4, 6), (5, 40, 8, 64)])  # sample, feature space
def test_cka_does_not_depend_on_a_layers_scale(shape):
    # CKA sees fourth powers of a layer's values: a layer scaled by 1e-87 once gave NaN, one
    # by 1e80 an error of 0.08.  Powers of two scale every product exactly, so the results
    # must not move by a bit.
    z = np.random.default_rng(17).standard_normal(shape)
    z[1:] += 0.7 * z[:-1]
    ref_matrix, ref_drift = rg.cka_matrix(z), rg.drift_profile(z, debiased=True)
    for e in (-900, -500, -290, -266, 266, 500, 1000):
        scaled = z.copy()
        scaled[2] *= 2.0 ** e
        scaled[4] *= 2.0 ** (e // 2)
        np.testing.assert_array_equal(rg.cka_matrix(scaled), ref_matrix, err_msg="2^%d" % e)
        np.testing.assert_array_equal(rg.drift_profile(scaled, debiased=True), ref_drift,
                                      err_msg="2^%d" % e)


@pytest.mark.parametrize("shape", [(2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0), (0, 0, 0, 0)])
def test_empty_streams_raise_without_warnings(shape):
    # a stream without positions once warned "Mean of empty slice" and gave NaN profiles
    z = np.zeros(shape, dtype=np.float32)
    calls = [lambda lvl=lvl: rg.rank_profile(z, level=lvl)
             for lvl in ("position", "pooled", "stream")]
    calls += [lambda: rg.drift_profile(z), lambda: rg.cka_matrix(z, level="pooled")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in calls:
            with pytest.raises(ValueError, match=r"^stream needs at least one sample, position "
                                                 r"and feature, got shape \(%s\)"
                                                 % ", ".join(map(str, shape))):
                call()


def test_plots_headless():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    from rgflow import plot

    rng = np.random.default_rng(11)
    profiles = [np.linspace(8, 2, 5) + 0.1 * rng.standard_normal(5) for _ in range(4)]
    ax = plot.plot_rank_profiles(profiles, labels=["a", "a", "b", "b"])
    assert isinstance(ax, Axes) and len(ax.collections) == 2  # a band per label
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] \
        == ["a (2 seeds)", "b (2 seeds)"]
    ax = plot.plot_rank_profiles(profiles, labels=["a", "a", "b", "b"], band="sd")
    assert len(ax.collections) == 2 and "± 1 SD" in ax.get_legend().get_title().get_text()
    ax = plot.plot_drift([0.1, 0.5, 0.02])
    assert isinstance(ax, Axes) and len(ax.patches) == 3
    fig, given = plt.subplots()
    assert plot.plot_cka_matrix(np.eye(3), ax=given) is given
    assert len(given.images) == 1
    with pytest.raises(ValueError):
        plot.plot_rank_profiles(profiles, labels=["a"])
    plt.close("all")


def test_rank_profile_takes_flat_stacks_and_0_1_masks():
    """A (layers, n, features) stack is measured layer by layer, as drift_profile and
    cka_matrix take it; a 0/1 integer mask means what the bool mask means."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((3, 64, 6, 4))
    flat = z.reshape(3, 64, 24)
    np.testing.assert_array_equal(rg.rank_profile(flat), rg.rank_profile(z, "stream"))
    np.testing.assert_array_equal(rg.rank_profile(flat, measure="stable"),
                                  [rg.effective_rank(x, "stable") for x in flat])
    with pytest.raises(ValueError, match="positions, mask and detail"):
        rg.rank_profile(flat, mask=np.ones((64, 6), bool))
    mask = rng.random((64, 6)) < 0.4
    a = rg.rank_profile(z, mask=mask)
    b = rg.rank_profile(z, mask=mask.astype(np.uint8))
    np.testing.assert_array_equal(a.masked, b.masked)
    with pytest.raises(TypeError, match="mask must be a boolean"):
        rg.rank_profile(z, mask=mask * 2)
    with pytest.raises(ValueError, match="mask must have shape"):
        rg.rank_profile(z, mask=mask[:, :5])


def test_block_updates_against_per_layer_norms(rng):
    z = rng.standard_normal((4, 30, 5, 3)).astype(np.float32)
    z[2] = z[1]  # an identity block
    z[3, :, :, :] = 7.0 + z[2] * 0  # a constant layer after it: its update is defined
    got = rg.analysis.block_updates(z)
    ref = []
    for k in range(3):
        a = z[k].reshape(30, -1).astype(np.float64)
        b = z[k + 1].reshape(30, -1).astype(np.float64)
        a0, b0 = a - a.mean(0), b - b.mean(0)
        ref.append(np.linalg.norm(b0 - a0) / np.linalg.norm(a0))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[1] == 0.0
    z[0] = 1.0  # constant z_0: its update has no relative size
    assert np.isnan(rg.analysis.block_updates(z)[0])
    with pytest.raises(ValueError, match="stream"):
        rg.analysis.block_updates(z[:1])
