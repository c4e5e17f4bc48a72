"""Measures of a representation: the effective-rank family and linear CKA (kernel drift).

Every function takes anything ``numpy.asarray`` accepts with samples along the rows,
``(n_samples, n_features)`` as in scikit-learn, or stacks of such matrices; the stream
functions also take a list of per-layer arrays.  float32 and float64 are read in place,
whatever their strides; integer and float16 inputs are converted to float64 when that is exact
(otherwise ValueError); bool, complex and object arrays raise TypeError.  A torch tensor is
detached (``requires_grad`` is fine) and moved to the CPU; bfloat16, which NumPy lacks, is
widened to float32 (exactly).  All arithmetic is float64.  The work runs in C with the GIL
released (see ``csrc/rank.h`` and ``csrc/cka.h`` for the algorithms and their accuracy).

Edge cases (the same everywhere):

- an all-zero spectrum (zero or constant data, a single sample when centring) gives 0 for
  every rank measure (0.0 erank, participation and stable rank; numerical rank 0);
- NaN or Inf anywhere raises ValueError naming the argument;
- linear CKA is NaN when a representation is constant (zero after centring), and for the
  debiased estimator when a self-HSIC estimate is <= 0; the debiased estimator needs n >= 4
  (ValueError otherwise); representations with different sample counts raise ValueError.
"""
import numbers
import re
import sys
from dataclasses import dataclass

import numpy as np

from . import _core
from ._util import as_bool_mask, as_count, as_flag, check_memory, split_map

__all__ = ["block_updates", "effective_rank", "singular_values", "rank_profile", "MaskedRankProfile",
           "linear_cka", "drift_profile", "cka_matrix", "relevance_decomposition"]

MEASURES = ("erank", "participation", "stable", "numerical")
LEVELS = ("position", "pooled", "stream")


def _from_torch(x):
    """A torch tensor as a NumPy array (detached, on the CPU, bfloat16 widened to float32,
    which is exact); anything else unchanged, so the C core converts and checks it."""
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is None or not isinstance(x, torch.Tensor):
        return x
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.resolve_conj().resolve_neg().numpy()


def _tol(tol):
    if tol is None:
        return -1.0
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise TypeError("tol must be a real number or None, got %s" % type(tol).__name__)
    tol = float(tol)
    if not (np.isfinite(tol) and tol >= 0.0):
        raise ValueError("tol must be a finite number >= 0 or None, got %r" % tol)
    return tol


def _measure(measure):
    if not isinstance(measure, str) or measure not in MEASURES:
        raise ValueError("measure must be one of %s, got %r" % (", ".join(MEASURES), measure))
    return measure


def _as_result(values, measure):
    if measure == "numerical":
        values = values.astype(np.int64)
    return values[()] if values.ndim == 0 else values


def _threads(n_threads):
    """n_threads as a positive int; None means rgflow's count (:func:`rgflow.get_num_threads`).
    Errors name ``n_threads``."""
    if n_threads is None:
        from .runtime import get_num_threads
        return get_num_threads()
    return as_count(n_threads, "n_threads")


def _rank(X, measure, center, squared, tol, n_threads, name="X"):
    """_core.rank over the stack, split along its first axis over n_threads threads (views, no
    copies; every matrix is computed by the same code, so the result is independent of
    n_threads).  Errors name the argument ``name``."""
    n_threads = _threads(n_threads)
    args = (measure, bool(center), bool(squared), _tol(tol), name)
    X = _from_torch(X)
    if n_threads > 1:
        X = np.asarray(X)
    if n_threads == 1 or X.ndim < 3 or X.shape[0] < 2:
        return _core.rank(X, *args)[0]
    per_row = int(np.prod(X.shape[1:-2], dtype=np.int64))  # matrices per index of axis 0

    def part(a, b):
        try:
            return _core.rank(X[a:b], *args)[0]
        except ValueError as exc:  # name the matrix by its index in the whole stack
            shift = lambda m: "matrix %d" % (int(m.group(1)) + a * per_row)  # noqa
            raise ValueError(re.sub(r"matrix (\d+)", shift, str(exc), count=1)) from None

    return split_map(part, X.shape[0], n_threads)


def effective_rank(X, measure="erank", center=True, squared=False, tol=None, n_threads=None):
    """Effective rank (or a related measure) of X, or of every matrix of a stack.

    Parameters
    ----------
    X : array_like, shape (n_samples, n_features) or (..., n_samples, n_features)
        float32/float64 with any strides (read in place), or exactly convertible reals.
    measure : {"erank", "participation", "stable", "numerical"}
        From the singular values s of the (column-centred) matrix:
        ``erank`` = exp(entropy of p), p = s / sum(s) (Roy & Vetterli 2007; with
        ``squared=True`` p = s**2 / sum(s**2)); ``participation`` = (sum s^2)^2 / sum s^4;
        ``stable`` = sum s^2 / max(s)^2; ``numerical`` = #{s > tol}.
    center : bool
        Subtract the column means first (default).  Centred data with n samples has at most
        n - 1 non-zero singular values.
    squared : bool
        For ``erank`` only: entropy of the normalised squared singular values.
    tol : float or None
        For ``numerical`` only: absolute threshold in the units of X; None means
        ``max(s) * max(n_samples, n_features) * eps`` as in ``numpy.linalg.matrix_rank``.
    n_threads : int or None
        Split a stack along its first axis over this many threads (the C kernel releases the
        GIL; each matrix runs single-threaded OpenBLAS, so the result does not depend on it).
        None: :func:`rgflow.get_num_threads`.

    Returns
    -------
    float (int for ``numerical``) for a 2-D X, else a float64 (int64) array of shape ``...``.
    An all-zero spectrum (zero or constant X, or a single sample) gives 0.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((1000, 4))
    >>> bool(3.9 < effective_rank(X) <= 4.0)    # close to the 4 features
    True
    >>> round(float(effective_rank(np.outer(np.arange(5.0), [1.0, 2.0, 3.0]))), 12)  # rank one
    1.0
    """
    return _effective_rank(X, measure, center, squared, tol, n_threads, "X")


def _effective_rank(X, measure, center, squared, tol, n_threads, name):
    """:func:`effective_rank` with errors naming the caller's argument ``name``."""
    if squared and measure != "erank":
        raise ValueError("squared applies to measure='erank' only")
    return _as_result(_rank(X, _measure(measure), center, squared, tol, n_threads, name),
                      measure)


def singular_values(X, center=True):
    """Singular values of the (column-centred) matrix X, or of every matrix of a stack.

    X : array_like, shape (..., n_samples, n_features).  Returns float64 of shape
    ``(..., min(n_samples, n_features))``, descending.  Values below about
    ``eps * max(s) * n`` are noise (as for any SVD); when centring with n_samples <= n_features
    the last value is exactly 0 (the centred rows sum to zero).

    >>> import numpy as np
    >>> singular_values(np.diag([3.0, 4.0]), center=False)
    array([4., 3.])
    """
    values, _ = _core.rank(_from_torch(X), "spectrum", bool(center), False, -1.0)
    return values


@dataclass
class MaskedRankProfile:
    """Rank profiles of masked and visible positions apart (see :func:`rank_profile`).

    masked, visible : float64 (depth+1,); masked_detail, visible_detail : float64
    (depth+1, length) per-position values (NaN where a position was skipped), or None unless
    ``detail=True``.
    """
    masked: np.ndarray
    visible: np.ndarray
    masked_detail: np.ndarray = None
    visible_detail: np.ndarray = None


def _as_stack(stream):
    """``stream`` as one array: an array (or tensor) as it is, a list or tuple of per-layer
    arrays stacked after checking that every layer has layer 0's shape (naming the one that
    does not, rather than NumPy's "inhomogeneous shape")."""
    if not isinstance(stream, (list, tuple)):
        return np.asarray(_from_torch(stream))
    layers = [np.asarray(_from_torch(x)) for x in stream]
    if not layers:
        raise ValueError("stream must hold at least one layer")
    for l, x in enumerate(layers):
        if x.shape != layers[0].shape:
            raise ValueError("stream[%d] has shape %s but stream[0] has shape %s: every layer "
                             "must hold the same samples (rows) and features"
                             % (l, x.shape, layers[0].shape))
    return np.stack(layers)


def _stream(stream):
    s = _as_stack(stream)
    if s.ndim != 4:
        raise ValueError("stream must have shape (depth+1, n, length, width), got shape %s"
                         % (s.shape,))
    if 0 in s.shape[1:]:
        raise ValueError("stream needs at least one sample, position and feature, got shape %s"
                         % (s.shape,))
    return s


def _positions(positions, length):
    """A slice (view) or an int index array selecting positions."""
    if positions is None:
        return slice(None)
    if isinstance(positions, slice):
        return positions
    p = np.asarray(positions)
    if p.dtype.kind not in "iu" or p.ndim != 1 or p.size == 0:
        raise ValueError("positions must be a non-empty 1-D integer array or a slice")
    if p.min() < -length or p.max() >= length:
        raise ValueError("positions must lie in [-%d, %d)" % (length, length))
    p = p % length
    if p.size > 1 and np.all(np.diff(p) == p[1] - p[0]) and p[1] > p[0]:
        return slice(int(p[0]), int(p[-1]) + 1, int(p[1] - p[0]))  # a view, no copy
    return p


def rank_profile(stream, level="position", positions=None, mask=None, detail=False,
                 measure="erank", n_threads=None, center=True):
    """Rank of the residual stream at every depth.

    Parameters
    ----------
    stream : array_like, shape (depth+1, n, length, width), or a list of depth+1 arrays
        (n, length, width), one per layer
        The residual stream z_0..z_K, e.g. ``model.residual_stream(masked)`` (float32).
        A (layers, n, features) stack of representations already flattened is measured
        layer by layer (``level`` is then ignored, as in :func:`drift_profile`).
    level : {"position", "pooled", "stream"}
        ``position``: the rank of ``stream[l, :, p, :]`` (n x width) for every position p,
        averaged over positions (all of them, or ``positions``); measured in one C call over
        the strided (depth+1, length, n, width) view, without a copy.
        ``pooled``: the rank of the mean over positions (n x width).
        ``stream``: the rank of the flattened stream (n x length*width).
    positions : slice or int array, optional
        Positions to average over (``position`` level only).
    mask : array_like, shape (n, length), bool or 0/1 integers, optional
        ``position`` level only: measure masked and visible positions apart.  For position
        p the masked sample is ``stream[l, mask[:, p], p, :]`` (the sequences whose token p
        was masked) and the visible sample the other rows; a sample with fewer than 2 rows
        is skipped (NaN in the detail) and the curve averages the positions not skipped
        (NaN if all were).  Returns a :class:`MaskedRankProfile`.
    detail : bool
        Also return the per-position values, shape (depth+1, n_positions) (``position``).
    measure : str
        Any measure of :func:`effective_rank` (with its defaults).
    n_threads : int or None
        As in :func:`effective_rank` (split over layers); the result does not depend on it.
    center : bool
        Centre every matrix's columns first (default), as in :func:`effective_rank`.

    Returns
    -------
    float64 (depth+1,); with ``detail`` a tuple (profile, per_position); with ``mask`` a
    MaskedRankProfile.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).standard_normal((3, 256, 8, 4)).astype(np.float32)
    >>> rank_profile(z).shape
    (3,)
    """
    _measure(measure)
    if level not in LEVELS:
        raise ValueError("level must be one of %s, got %r" % (", ".join(LEVELS), level))
    s = _as_stack(stream)
    flat = s.ndim == 3  # (layers, n, features): representations already flattened
    if (level != "position" or flat) and (positions is not None or mask is not None or detail):
        raise ValueError("positions, mask and detail apply to level='position' of a "
                         "(depth+1, n, length, width) stream only")

    def rank(X):  # errors name the user's argument, not the internal view
        return _effective_rank(X, measure, center, False, None, n_threads, "stream")

    if flat:
        return rank(s)
    s = _stream(s)

    if level == "pooled":
        check_memory(8.0 * s.shape[0] * s.shape[1] * s.shape[3],
                     "stream pooled over positions (float64)")
        return rank(s.mean(axis=2, dtype=np.float64))
    if level == "stream":
        depth1, n, length, width = s.shape
        return rank(s.reshape(depth1, n, length * width))
    sel = _positions(positions, s.shape[2])
    if mask is None:
        per = rank(s[:, :, sel, :].transpose(0, 2, 1, 3))
        per = np.asarray(per, dtype=np.float64)
        prof = per.mean(axis=1)
        return (prof, per) if detail else prof
    m = as_bool_mask(_from_torch(mask), (s.shape[1], s.shape[2]))
    idx = np.arange(s.shape[2])[sel]
    out = np.full((2, s.shape[0], idx.size), np.nan)
    for k, p in enumerate(idx):
        # rows differ per position, so each position is one batched call over the layers
        for g, rows in enumerate((m[:, p], ~m[:, p])):
            if rows.sum() >= 2:
                out[g, :, k] = rank(s[:, rows, p, :])
    curves = [np.nanmean(o, axis=1) if np.any(~np.isnan(o)) else np.full(s.shape[0], np.nan)
              for o in out]
    return MaskedRankProfile(curves[0], curves[1], out[0] if detail else None,
                             out[1] if detail else None)


def linear_cka(X, Y, debiased=False):
    """Linear CKA between two representations of the same samples.

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X, Y; with
    ``debiased=True`` the same ratio of unbiased HSIC estimates (Song et al. 2012; Nguyen et
    al. 2021), which is ~0 for independent representations at any n.  Computed in feature
    space (~n (f^2 + f g + g^2) multiply-adds) or sample space (~n^2 (f+g) / 2), whichever is
    cheaper; the sample-space form builds the Grams in row blocks of bounded memory (<= 32 MB)
    and never holds a whole n x n matrix.

    Parameters
    ----------
    X : array_like (n, f);  Y : array_like (n, g), the same n (else ValueError).
    debiased : bool.  Needs n >= 4 (else ValueError).

    Returns
    -------
    float in [0, 1] (debiased: may be slightly negative); NaN when X or Y is constant (or,
    debiased, when a self-HSIC estimate is <= 0).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).standard_normal((100, 5))
    >>> round(linear_cka(X, 3.0 * X), 12)
    1.0
    """
    out, _ = _core.cka((_from_torch(X), _from_torch(Y)), False, as_flag(debiased, "debiased"),
                       ("X", "Y"))
    return float(out[0, 1])


def _layers(stream, level):
    """The (layers, n, features) array the CKA kernel takes and the layers' names."""
    s = _as_stack(stream)
    # the kernel copies every layer to float64 (and pooling makes one more copy)
    if s.ndim >= 3:
        per_layer = s.shape[1] * (s.shape[3] if s.ndim == 4 and level == "pooled"
                                  else float(np.prod(s.shape[2:], dtype=np.float64)))
        check_memory(8.0 * s.shape[0] * per_layer, "stream (a float64 copy of every layer)")
    if s.ndim == 3:
        layers = s  # already (layers, n, features)
    elif level not in ("stream", "pooled"):
        raise ValueError("level must be 'stream' or 'pooled', got %r" % (level,))
    else:
        s = _stream(s)
        layers = (s.reshape(s.shape[0], s.shape[1], s.shape[2] * s.shape[3])
                  if level == "stream" else s.mean(axis=2, dtype=np.float64))
    # named only once the shape is valid: a (2**31, 2) array must not get 2**31 names
    return layers, tuple("stream[%d]" % l for l in range(layers.shape[0]))


def drift_profile(stream, level="stream", debiased=False, n_threads=None):
    """Kernel drift between consecutive layers: 1 - linear CKA(z_l, z_{l+1}).

    Parameters
    ----------
    stream : array_like, shape (depth+1, n, length, width), or (layers, n, features) for
        representations already flattened (then ``level`` is ignored); or a list of per-layer
        arrays of one shape, (n, length, width) or (n, features).
    level : {"stream", "pooled"}
        ``stream``: z_l flattened to (n, length*width); ``pooled``: mean over positions.
    debiased : bool
        Use the debiased CKA (n >= 4).
    n_threads : int or None
        Threads of rgflow's C pool for the one kernel call (the GIL is released): the layers'
        loads and their Grams (or feature-space cross products) are its work items, each run
        with single-threaded OpenBLAS, and the sums over layers run in a fixed order, so the
        result is the same, bit for bit, for any thread count.  None:
        :func:`rgflow.get_num_threads`.

    Returns float64 (depth,); each layer's Gram-side quantities are computed once.

    >>> import numpy as np
    >>> z = np.random.default_rng(0).standard_normal((4, 64, 8, 4))
    >>> drift_profile(z).shape
    (3,)
    """
    n_threads = _threads(n_threads)
    layers, names = _layers(stream, level)
    out, _ = _core.cka(tuple(layers), True, as_flag(debiased, "debiased"), names, n_threads)
    return 1.0 - np.diagonal(out, offset=1).copy()


def block_updates(stream):
    """Relative size of each block's update, ``||z_{k+1} - z_k|| / ||z_k||`` (Frobenius norms
    of the flattened stream, centred over sequences; NaN where ``z_k`` is constant).

    stream : (depth+1, n, length, width) or (layers, n, features). Returns float64 (depth,).

    >>> import numpy as np
    >>> z = np.random.default_rng(0).standard_normal((3, 16, 4, 2))
    >>> z[2] = 2 * z[1]
    >>> round(float(block_updates(z)[1]), 12)
    1.0
    """
    s = np.asarray(stream)
    if s.ndim not in (3, 4) or s.shape[0] < 2 or s.shape[1] < 1:
        raise ValueError("stream must be (depth+1, n, length, width) or (layers, n, features) "
                         "with at least 2 layers, got shape %s" % (s.shape,))
    flat = s.reshape(s.shape[0], s.shape[1], -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((flat ** 2).sum(axis=(1, 2)))
    steps = np.sqrt((np.diff(flat, axis=0) ** 2).sum(axis=(1, 2)))
    return np.divide(steps, norms[:-1], out=np.full(len(steps), np.nan),
                     where=norms[:-1] > 0)


def cka_matrix(stream, level="stream", debiased=False, n_threads=None):
    """Linear CKA between every pair of layers.

    Same arguments as :func:`drift_profile`.  Returns float64 (depth+1, depth+1), symmetric,
    with 1 on the diagonal (NaN for a constant layer).  Every layer's Gram (or feature-space
    cross product) is computed once.  The kernel counts the multiply-adds of both forms for
    all pairs -- feature space ~n f^2 (L+1) L / 2, sample space ~n^2 f L / 2 (each Gram's upper
    triangle once, reused by every pair) -- and takes the cheaper; sample space builds the
    Grams in row blocks (<= 32 MB), never a whole n x n matrix.

    ``n_threads`` (int or None: :func:`rgflow.get_num_threads`) threads of rgflow's C pool
    share the work, as in :func:`drift_profile`: per layer, its load and its part of every row
    block (sample space) or its cross products (feature space), each with single-threaded
    OpenBLAS; the sums over layers run in a fixed order, so the result is the same, bit for
    bit, for any thread count.  Sample space needs no memory beyond one thread's; feature
    space gives each thread (up to one per layer) its own cross-product scratch while these
    fit in 1/8 of the float64 copy of the layers.

    >>> import numpy as np
    >>> z = np.random.default_rng(0).standard_normal((4, 64, 8, 4))
    >>> cka_matrix(z).shape
    (4, 4)
    """
    n_threads = _threads(n_threads)
    layers, names = _layers(stream, level)
    out, _ = _core.cka(tuple(layers), False, as_flag(debiased, "debiased"), names, n_threads)
    return out


# relevance decomposition: a residual whose norm is below this fraction of the
# representation's is rounding noise, and counts as rank 0
RESIDUAL_ZERO = 1e-10


def relevance_decomposition(stream, log_posterior, mask):
    """Split the representation of masked tokens, layer by layer and position by position,
    into the part linearly explained by the exact Bayes log-posterior (the sufficient
    statistic of the task) and the rest.

    For each position p, the rows are the sequences whose token p is masked; the
    representations ``stream[l, rows, p, :]`` are regressed (least squares, with intercept) on
    ``log_posterior[rows, p, :]``. Positions with fewer than V + 2 such rows are skipped.

    Parameters
    ----------
    stream : (depth+1, n, length, width) residual stream.
    log_posterior : (n, length, V) log of the exact posterior of each token.
    mask : (n, length) bool, True at masked positions.

    Returns
    -------
    dict of (depth+1,) lists: ``relevant_variance`` and ``irrelevant_variance``, the
    variance per masked token (summed over width) explained by the log-posterior and left in
    the residual, in absolute units; ``relevant_share``, the variance explained by the
    log-posterior summed over positions over the total variance (0 where there is none, as
    at layer 0, where every masked token has the same embedding); ``irrelevant_rank``, the
    effective rank of the regression residual (degrees of freedom the task does not need; 0
    where the residual's norm is below 1e-10 of the representation's), averaged over positions; ``total_rank``, the effective rank of the masked representations
    themselves, averaged over positions.
    """
    s = np.asarray(stream)
    m = np.asarray(mask, dtype=bool)
    logp = np.asarray(log_posterior, dtype=np.float64)
    n_layers, V = s.shape[0], logp.shape[2]
    explained, total = np.zeros(n_layers), np.zeros(n_layers)
    irrelevant, full, n_rows = [], [], 0
    for p in range(s.shape[2]):
        rows = np.flatnonzero(m[:, p])
        if rows.size < V + 2:
            continue
        n_rows += rows.size
        P = logp[rows, p, :]
        P = P - P.mean(axis=0)
        X = s[:, rows, p, :].astype(np.float64)                  # (depth+1, n_p, width)
        X -= X.mean(axis=1, keepdims=True)
        flat = X.transpose(1, 0, 2).reshape(rows.size, -1)
        coef, *_ = np.linalg.lstsq(P, flat, rcond=None)
        fitted = (P @ coef).reshape(rows.size, n_layers, -1).transpose(1, 0, 2)
        resid = X - fitted
        var_x, var_r = (X ** 2).sum(axis=(1, 2)), (resid ** 2).sum(axis=(1, 2))
        explained += (fitted ** 2).sum(axis=(1, 2))
        total += var_x
        # a residual at rounding level (relative norm < 1e-10) is zero, not full-rank noise
        rank_r = np.atleast_1d(effective_rank(resid, center=False))
        irrelevant.append(np.where(var_r <= RESIDUAL_ZERO ** 2 * var_x, 0.0, rank_r))
        full.append(effective_rank(X, center=False))
    if not irrelevant:
        raise ValueError("no position has enough masked rows (V + 2) for the decomposition")
    share = np.divide(explained, total, out=np.zeros(n_layers), where=total > 0)
    return {"relevant_share": share.tolist(),
            "irrelevant_rank": np.mean(irrelevant, axis=0).tolist(),
            "total_rank": np.mean(full, axis=0).tolist(),
            "relevant_variance": (explained / n_rows).tolist(),
            "irrelevant_variance": ((total - explained) / n_rows).tolist()}
