"""Markov chains with a known spectrum, and the masked-token task on their sequences.

The heavy work (sampling, masking, forward-backward) runs in C with the GIL released; this
module validates arguments and keeps the chain's derived quantities.
"""

import numpy as np

from . import _core
from ._util import (as_bool_mask, as_count, as_mask_rate, as_real, as_seed, check_memory,
                    shape2, split_map)

__all__ = ["MarkovChain", "mask_tokens"]

ROW_SUM_TOL = 1e-9
# |lambda_2| within this of 1 (or of 0) is treated as exactly 1 (or 0) by correlation_length.
SPECTRAL_TOL = 1e-12
# Detailed balance is accepted when pi_i T_ij and pi_j T_ji agree to this relative tolerance on
# every pair (|log of their ratio| <= REVERSIBLE_TOL): the symmetric eigensolver then returns
# the spectrum of T to within REVERSIBLE_TOL / 2 (below SPECTRAL_TOL), while chains built
# reversible in float64 (lazy, random, birth-death) balance to ~1e-15 and pass.
REVERSIBLE_TOL = 1e-12
# Largest accepted xi: at xi ~ 1 / SPECTRAL_TOL, lambda_2 = exp(-1/xi) is within SPECTRAL_TOL of
# 1 and correlation_length reads inf; a factor 10 below keeps the reported xi finite (and
# accurate to ~xi * 1e-16 relative, the rounding of lambda_2).
XI_MAX = 0.1 / SPECTRAL_TOL


def _lam_from_xi(xi):
    """lambda_2 = exp(-1/xi) for xi in [0, XI_MAX]; inf and every xi above XI_MAX are rejected
    alike, since no float64 chain reports such a correlation length (inf itself would be the
    identity, with V closed classes)."""
    xi = as_real(xi, "xi", low=0.0)  # NaN, negative
    if not xi <= XI_MAX:
        raise ValueError("xi must be at most %.0e, got %r: a float64 chain cannot represent a "
                         "longer correlation length (|lambda_2| within %.0e of 1 reads as "
                         "xi = inf)" % (XI_MAX, xi, SPECTRAL_TOL))
    return 0.0 if xi == 0.0 else float(np.exp(-1.0 / xi))


def _n_states(n_states, copies):
    """n_states checked against the C core's limit and memory (``copies`` (V, V) float64
    temporaries) before NumPy allocates the dense matrices."""
    n = as_count(n_states, "n_states", minimum=2)
    if n > _core.MAX_STATES:
        raise ValueError("n_states must lie in [2, %d], got %d" % (_core.MAX_STATES, n))
    check_memory(copies * 8.0 * n * n, "n_states = %d (dense (V, V) float64 matrices)" % n)
    return n


def _default_stationary(stationary, n_states):
    if stationary is None:
        return np.full(n_states, 1.0 / n_states)
    pi = np.asarray(stationary)
    if pi.dtype.kind not in "fiu" or pi.ndim != 1 or pi.shape[0] != n_states:
        raise ValueError("stationary must be a real array of shape (%d,), got %s %s"
                         % (n_states, pi.dtype, pi.shape))
    pi = pi.astype(np.float64)
    if not np.all(np.isfinite(pi)) or np.any(pi <= 0) or abs(pi.sum() - 1.0) > ROW_SUM_TOL:
        raise ValueError("stationary must be positive, finite and sum to 1")
    return pi


class MarkovChain:
    """A finite Markov chain with a unique stationary law.

    Parameters
    ----------
    transition : array_like, shape (V, V)
        Row-stochastic matrix, ``transition[i, j] = P(x_{t+1} = j | x_t = i)``: finite,
        non-negative, rows summing to 1 within 1e-9, 2 <= V <= 65535, exactly one closed
        communicating class.
    stationary : array_like, shape (V,), optional
        The stationary law if known exactly (it is checked against ``transition``); computed by
        GTH state reduction otherwise.

    Examples
    --------
    >>> chain = MarkovChain([[0.9, 0.1], [0.2, 0.8]])
    >>> chain.stationary.round(4)
    array([0.6667, 0.3333])
    >>> round(chain.correlation_length, 4)   # lambda_2 = 0.7
    2.8037
    """

    def __init__(self, transition, stationary=None):
        _core.chain_check(transition, ROW_SUM_TOL)
        T = np.array(transition, dtype=np.float64, order="C", copy=True)
        pi = _core.chain_stationary(T)  # also proves the stationary law is unique
        if stationary is not None:
            given = np.array(stationary, dtype=np.float64, copy=True) \
                if np.asarray(stationary).dtype.kind in "fiu" else None
            if given is None or given.shape != pi.shape:
                raise ValueError("stationary must be a real array of shape (%d,)" % len(pi))
            if not np.all(np.isfinite(given)) or np.any(given < 0) \
                    or abs(given.sum() - 1.0) > ROW_SUM_TOL:
                raise ValueError("stationary must be finite, non-negative and sum to 1")
            residual = np.abs(given @ T - given).max()
            if residual > 1e-9:
                raise ValueError("stationary is not stationary for transition: "
                                 "max |pi T - pi| = %.3g" % residual)
            pi = given
        T.setflags(write=False)
        pi.setflags(write=False)
        self._T = T
        self._pi = pi
        self._eigenvalues = None

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def lazy(cls, n_states, xi, stationary=None):
        """``lam * I + (1 - lam) * 1 pi^T`` with ``lam = exp(-1/xi)``.

        Every non-trivial eigenvalue equals ``lam``, so the correlation length is exactly
        ``xi``, in [0, ``XI_MAX`` = 1e11] (beyond, float64 cannot tell ``lam`` from 1).
        ``xi = 0`` gives i.i.d. tokens drawn from ``stationary`` (uniform by default).

        >>> MarkovChain.lazy(n_states=8, xi=1.0).correlation_length
        1.0...
        """
        n = _n_states(n_states, 4)
        lam = _lam_from_xi(xi)
        pi = _default_stationary(stationary, n)
        T = lam * np.eye(n) + (1.0 - lam) * np.outer(np.ones(n), pi)
        return cls(T, stationary=pi)

    @classmethod
    def random(cls, n_states, xi, seed=0, stationary=None):
        """A random reversible chain whose second-largest eigenvalue modulus is ``exp(-1/xi)``.

        Built as ``T = a (b I + (1 - b) S) + (1 - a) 1 pi^T`` with ``S`` a random chain
        reversible w.r.t. ``pi`` (so its spectrum is real and, with probability one, simple),
        ``a, b`` in [0, 1] chosen so that every non-trivial eigenvalue is non-negative and the
        largest is exactly ``exp(-1/xi)``, ``xi`` in [0, ``XI_MAX`` = 1e11]. ``pi`` is drawn from
        Dirichlet(5, ..., 5) unless given.

        >>> chain = MarkovChain.random(n_states=8, xi=7.0, seed=3)
        >>> abs(chain.correlation_length - 7.0) < 1e-9
        True
        """
        n = _n_states(n_states, 8)
        lam = _lam_from_xi(xi)
        rng = np.random.default_rng(as_seed(seed))
        pi = _default_stationary(stationary, n) if stationary is not None \
            else rng.dirichlet(np.full(n, 5.0))
        G = rng.exponential(size=(n, n))
        G = np.triu(G, 1) + np.triu(G, 1).T                 # symmetric, zero diagonal
        off = G * pi[None, :]
        c = off.sum(axis=1).max()
        S = off / c
        S[np.diag_indices(n)] = 1.0 - S.sum(axis=1)          # reversible w.r.t. pi, >= 0
        root = np.sqrt(pi)
        mu = np.linalg.eigvalsh(root[:, None] * S / root[None, :])  # ascending; mu[-1] = 1
        mu2 = mu[-2]
        if (1.0 + mu2) / 2.0 >= lam:
            a, b = lam / ((1.0 + mu2) / 2.0), 0.5
        else:
            a, b = 1.0, (lam - mu2) / (1.0 - mu2)
        inner = b * np.eye(n) + (1.0 - b) * S
        T = a * inner + (1.0 - a) * np.outer(np.ones(n), pi)
        T = np.maximum(T, 0.0)
        T /= T.sum(axis=1, keepdims=True)
        return cls(T, stationary=pi if np.abs(pi @ T - pi).max() <= 1e-12 else None)

    # -- properties ---------------------------------------------------------------------------

    @property
    def n_states(self):
        """Number of states V."""
        return self._T.shape[0]

    @property
    def transition(self):
        """(V, V) float64 read-only transition matrix."""
        return self._T

    @property
    def stationary(self):
        """(V,) float64 read-only stationary law pi (pi T = pi)."""
        return self._pi

    @property
    def reversible(self):
        """True if ``transition`` satisfies detailed balance within ``REVERSIBLE_TOL`` = 1e-12.

        That is: ``T[i, j] > 0`` exactly when ``T[j, i] > 0``, and ``pi_i T[i, j]`` and
        ``pi_j T[j, i]`` agree to relative 1e-12 for every pair. The check builds the weights
        pi in log space along a spanning tree of the transition graph, so neither their spread
        nor underflow matters and its own rounding stays ~1e-16 per pair; birth-death chains
        (whose graph is a path) always pass, a chain with transient states never does.
        Decides how ``eigenvalues`` are computed.
        """
        self._spectrum()
        return self._reversible

    @property
    def eigenvalues(self):
        """(V,) complex128 eigenvalues of ``transition``, by decreasing modulus.

        Ties in modulus are ordered by decreasing real part, then imaginary part.

        If the chain is ``reversible``, they are the eigenvalues of the symmetric matrix
        ``D^1/2 T D^-1/2`` (D = diag(pi); formed as ``sqrt(T[i, j] T[j, i])`` off the diagonal,
        with no division by a tiny pi) from LAPACK dsyevd: real (zero imaginary part), accurate
        to ~1e-15 however widely pi is spread, and within ``REVERSIBLE_TOL / 2`` of the exact
        spectrum of ``transition``. Otherwise LAPACK dgeev on ``transition``: backward stable,
        but its error is rounding times each eigenvalue's condition number, which can be huge
        for non-normal T. That is the limit for non-reversible chains: accurate when T is well
        conditioned (e.g. close to normal), unreliable when it is as non-normal as a reversible
        chain with a widely spread pi (dgeev gives a birth-death chain whose pi spans 100
        orders of magnitude xi = 11.77 instead of 6.0756, and imaginary parts up to 0.34).
        """
        self._spectrum()
        return self._eigenvalues

    def _spectrum(self):
        if self._eigenvalues is None:
            ev, reversible = _core.chain_eigenvalues(self._T, REVERSIBLE_TOL)
            order = np.lexsort((-ev.imag, -ev.real, -np.abs(ev)))
            ev = ev[order]
            ev.setflags(write=False)
            self._eigenvalues, self._reversible = ev, reversible

    @property
    def correlation_length(self):
        """xi = -1 / ln|lambda_2|: inf when |lambda_2| = 1, 0 when lambda_2 = 0.

        |lambda_2| within 1e-12 of 1 or 0 counts as exactly 1 or 0 (rounding in the
        eigensolver). lambda_2 is the second of ``eigenvalues``, so its accuracy is theirs."""
        mod = abs(self.eigenvalues[1])
        if mod >= 1.0 - SPECTRAL_TOL:
            return float("inf")
        if mod <= SPECTRAL_TOL:
            return 0.0
        return float(-1.0 / np.log(mod))

    @property
    def entropy_rate(self):
        """-sum_i pi_i sum_j T_ij ln T_ij, in nats per token."""
        T = self._T
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(T > 0, np.log(np.where(T > 0, T, 1.0)), 0.0)
        return float(-(self._pi @ (T * logs).sum(axis=1)))

    @property
    def unigram_entropy(self):
        """H(pi) in nats: the masked-token loss of a model that ignores its input."""
        p = self._pi[self._pi > 0]
        return float(-(p * np.log(p)).sum())

    def __repr__(self):
        return "MarkovChain(n_states=%d, correlation_length=%.4g)" % (
            self.n_states, self.correlation_length)

    # -- sampling and inference ---------------------------------------------------------------

    def sample(self, n, length, seed=0, n_threads=1):
        """Sample ``n`` sequences of ``length`` tokens, starting from the stationary law.

        Sequence i is a function of (seed, i) alone: ``sample(10, L, s)[:5] ==
        sample(5, L, s)``, and the result does not depend on ``n_threads``.

        Returns
        -------
        tokens : (n, length) int32 array with values in [0, V).

        >>> chain = MarkovChain.lazy(4, xi=2.0)
        >>> chain.sample(n=3, length=5, seed=0).shape
        (3, 5)
        """
        seed = as_seed(seed)
        n_threads = as_count(n_threads, "n_threads")
        n = as_count(n, "n")
        length = as_count(length, "length")
        if n < 2 * n_threads:
            n_threads = 1
        return split_map(lambda a, b: _core.chain_sample(self._T, self._pi, b - a, length, seed,
                                                         first=a), n, n_threads)

    def posterior(self, masked_tokens, mask):
        """Exact posterior of every token given the visible ones (forward-backward).

        Parameters
        ----------
        masked_tokens : (n, length) integer array; visible positions hold states in [0, V),
            masked positions may hold anything in [0, V] (the mask id V, usually).
        mask : (n, length) bool array, True where the token is hidden.

        Returns
        -------
        (n, length, V) float64: rows sum to 1; one-hot at visible positions.

        Raises ValueError if the visible tokens of a sequence are impossible under the chain.

        >>> chain = MarkovChain.lazy(3, xi=1.0)
        >>> tokens = chain.sample(2, 6, seed=0)
        >>> masked, mask = mask_tokens(tokens, rate=0.3, seed=1, mask_id=3)
        >>> chain.posterior(masked, mask).shape
        (2, 6, 3)
        """
        shape = shape2(masked_tokens)
        if shape is not None:  # the output, checked before the C core copies the inputs
            check_memory(8.0 * shape[0] * shape[1] * (self.n_states + 1),
                         "posterior of masked_tokens: n * length * V = %d x %d x %d float64"
                         % (shape[0], shape[1], self.n_states))
        return _core.chain_posterior(self._T, self._pi, masked_tokens, mask)

    def bayes_loss(self, tokens, mask):
        """Mean cross-entropy (nats) of the true tokens at masked positions under the exact
        posterior given the visible ones: the floor for any model on this masked batch.

        Parameters
        ----------
        tokens : (n, length) integer array of true tokens in [0, V).
        mask : (n, length) bool array, True where hidden; at least one True.

        >>> chain = MarkovChain.lazy(8, xi=1.0)
        >>> tokens = chain.sample(256, 32, seed=0)
        >>> _, mask = mask_tokens(tokens, rate=0.15, seed=1, mask_id=8)
        >>> 0 < chain.bayes_loss(tokens, mask) < chain.unigram_entropy
        True
        """
        total, count = _core.chain_bayes_nll(self._T, self._pi, tokens, mask)
        if count == 0:
            raise ValueError("mask hides no token: the loss over masked positions is undefined")
        return total / count

    def adjacent_loss(self, tokens, mask):
        """Mean cross-entropy (nats) at masked positions of the adjacent-token lookup rule:
        the exact prediction from the two neighbouring tokens alone, each used when visible,
        ``p(j) ∝ T[left, j] T[j, right]`` (``pi_j`` for a hidden left neighbour, 1 for a
        hidden right one). A trained network must beat it: the rule is Bayes-optimal wherever
        both neighbours are visible, and only hidden neighbours leave it room. Arguments as
        for :meth:`bayes_loss` (a 0/1 integer mask is accepted too).

        >>> chain = MarkovChain.lazy(4, xi=7.0)
        >>> x = chain.sample(512, 8, seed=3); hide = x * 0; hide[:, 3:5] = 1
        >>> chain.bayes_loss(x, hide.astype(bool)) < chain.adjacent_loss(x, hide)
        True
        """
        return float(np.mean(self.adjacent_nll(tokens, mask)))

    def adjacent_nll(self, tokens, mask):
        """Per-token cross-entropy (nats) of the adjacent-token rule (see
        :meth:`adjacent_loss`): a (count,) float64 array over the masked positions in row-major
        order (``np.nonzero(mask)``).

        >>> chain = MarkovChain.lazy(4, xi=1.0)
        >>> x = chain.sample(3, 5, seed=0); hide = np.zeros((3, 5), bool); hide[:, 2] = True
        >>> chain.adjacent_nll(x, hide).shape
        (3,)
        """
        tokens, mask = _tokens_and_mask(tokens, mask, self.n_states)
        rows, pos = np.nonzero(mask)
        if rows.size == 0:
            raise ValueError("mask hides no token: the loss over masked positions is undefined")
        n, length = tokens.shape
        T, pi = self._T, self._pi
        has_left = pos > 0
        has_left[has_left] = ~mask[rows[has_left], pos[has_left] - 1]
        has_right = pos < length - 1
        has_right[has_right] = ~mask[rows[has_right], pos[has_right] + 1]
        left = np.where(has_left, tokens[rows, np.maximum(pos - 1, 0)], 0)
        right = np.where(has_right, tokens[rows, np.minimum(pos + 1, length - 1)], 0)
        score = np.where(has_left[:, None], T[left], pi[None, :])
        score = score * np.where(has_right[:, None], T[:, right].T, 1.0)
        truth = score[np.arange(rows.size), tokens[rows, pos]] / score.sum(axis=1)
        return -np.log(truth)


def _tokens_and_mask(tokens, mask, n_states):
    """(n, length) int64 tokens in [0, n_states) and a bool mask of the same shape, or
    TypeError/ValueError naming the argument."""
    t = np.asarray(tokens)
    if t.dtype.kind not in "iu":
        raise TypeError("tokens must be an integer array, got dtype %s" % t.dtype)
    if t.ndim != 2:
        raise ValueError("tokens must have shape (n, length), got %s" % (t.shape,))
    if t.size and (t.min() < 0 or t.max() >= n_states):
        raise ValueError("tokens must lie in [0, %d), got values in [%d, %d]"
                         % (n_states, t.min(), t.max()))
    return t.astype(np.int64), as_bool_mask(mask, t.shape)


def mask_tokens(tokens, rate=0.15, seed=0, mask_id=None, span=1):
    """Hide tokens for the masked-token task.

    Each position starts a span of ``span`` hidden tokens with probability ``rate / span``
    (``span = 1``: each token is hidden independently with probability ``rate``); a sequence
    with nothing hidden gets one span at a uniformly drawn start. Sequence i's mask depends on
    (seed, i) alone.

    Parameters
    ----------
    tokens : (n, length) integer array with values in [0, mask_id).
    rate : float in [0, 1].
    seed : int or numpy.random.Generator.
    mask_id : int, the id written at hidden positions (the chain's ``n_states``).
    span : int >= 1.

    Returns
    -------
    masked : (n, length) int32, tokens with hidden positions set to ``mask_id``.
    mask : (n, length) bool, True where hidden.

    >>> tokens = np.zeros((2, 4), dtype=np.int32)
    >>> masked, mask = mask_tokens(tokens, rate=0.5, seed=0, mask_id=8)
    >>> bool((masked[mask] == 8).all()) and bool(mask.any(axis=1).all())
    True
    """
    if mask_id is None:
        raise TypeError("mask_id is required (the chain's n_states)")
    rate = as_mask_rate(rate, "rate")
    span = as_count(span, "span")
    mask_id = as_count(mask_id, "mask_id")
    return _core.mask_tokens(tokens, rate, span, as_seed(seed), mask_id)
