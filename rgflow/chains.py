"""Markov chains with a known spectrum, hidden-Markov tasks built on them, and the
masked-token task on their sequences.

The heavy work (sampling, masking, forward-backward) runs in C with the GIL released; this
module validates arguments and keeps the derived quantities.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import _core
from ._util import (as_bool_mask, as_count, as_flag, as_mask_rate, as_real, as_seed, check_memory,
                    shape2, split_map)

__all__ = ["MarkovChain", "HiddenMarkovTask", "mask_tokens", "relevant_context",
           "ContextInfluence"]

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

    def _source(self):
        """(transition, initial law, emission or None): what the C samplers draw from."""
        return self._T, self._pi, None

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
        return _core.chain_posterior(self._T, self._pi, None, masked_tokens, mask)

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
        total, count = _core.chain_bayes_nll(self._T, self._pi, None, tokens, mask)
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
        T = self._T
        return _adjacent_nll(tokens, mask, self.n_states, T, self._pi, T, None)


class HiddenMarkovTask:
    """A hidden Markov task: a chain over H hidden states, started from its stationary law,
    emits one token per step, token v from state h with probability ``emission[h, v]``.

    With noise in the emission, the exact posterior of a masked token depends on every
    visible token, with weights that decay faster for less noise and shorter xi
    (:func:`relevant_context` measures it; the visible tokens in between pin the hidden state,
    so at V = 8 the decay length is 0.4-1.4 tokens for noise 0.1-0.3 and xi 1-15, and
    approaches xi only as the noise nears 1), which a plain Markov chain's does not (its
    posterior depends on the nearest visible tokens only).
    Sampling, the posterior and the Bayes floor run in C, like :class:`MarkovChain`'s;
    ``train``, ``run`` and the sweeps take either.

    Parameters
    ----------
    transition : array_like, shape (H, H)
        The hidden chain's transition matrix, validated as by :class:`MarkovChain`.
    emission : array_like, shape (H, V)
        Row-stochastic (rows summing to 1 within 1e-9), finite, non-negative; 2 <= V <= 65535
        tokens.
    stationary : array_like, shape (H,), optional
        The hidden chain's stationary law if known exactly.

    Examples
    --------
    >>> task = HiddenMarkovTask.noisy(n_states=4, xi=7.0, noise=0.3)
    >>> task.n_hidden, task.n_states, round(task.correlation_length, 6)
    (4, 4, 7.0)
    >>> task.sample(n=2, length=5, seed=0).shape
    (2, 5)
    """

    def __init__(self, transition, emission, stationary=None):
        self._init(MarkovChain(transition, stationary=stationary), emission, None)

    def _init(self, hidden, emission, noise):
        E = np.asarray(emission)
        if E.dtype.kind not in "fiu":
            raise TypeError("emission must be a real array, got dtype %s" % E.dtype)
        H = hidden.n_states
        if E.ndim != 2 or E.shape[0] != H:
            raise ValueError("emission must have shape (%d, n_states) (one row per hidden "
                             "state), got %s" % (H, E.shape))
        if not 2 <= E.shape[1] <= _core.MAX_STATES:
            raise ValueError("emission must have between 2 and %d columns (tokens), got %d"
                             % (_core.MAX_STATES, E.shape[1]))
        E = np.array(E, dtype=np.float64, order="C", copy=True)
        if not np.all(np.isfinite(E)):
            raise ValueError("emission must be finite")
        if np.any(E < 0):
            h, v = np.argwhere(E < 0)[0]
            raise ValueError("emission[%d, %d] = %r is negative" % (h, v, E[h, v]))
        sums = E.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > ROW_SUM_TOL):
            h = int(np.argmax(np.abs(sums - 1.0)))
            raise ValueError("emission row %d sums to %.17g, not 1 (tolerance %g)"
                             % (h, sums[h], ROW_SUM_TOL))
        E.setflags(write=False)
        marginal = hidden.stationary @ E
        marginal.setflags(write=False)
        self._hidden, self._E, self._marginal, self._noise = hidden, E, marginal, noise

    @classmethod
    def _build(cls, hidden, emission, noise):
        task = cls.__new__(cls)
        task._init(hidden, emission, noise)
        return task

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def noisy(cls, n_states, xi, noise, chain="lazy", seed=0):
        """Tokens are the hidden states, replaced by a uniform token with probability
        ``noise``: ``emission = (1 - noise) I + noise / V``, H = V = ``n_states``.

        ``noise = 0`` is the hidden chain itself (same samples, same posterior); ``noise = 1``
        gives i.i.d. uniform tokens. The hidden chain is ``MarkovChain.lazy(n_states, xi)``, or
        ``MarkovChain.random(n_states, xi, seed=seed)`` with ``chain="random"``.

        >>> task = HiddenMarkovTask.noisy(8, xi=1.0, noise=0.2)
        >>> task.emission[0, :3].round(6).tolist()
        [0.825, 0.025, 0.025]
        """
        noise = as_real(noise, "noise", low=0.0, high=1.0)
        hidden = _hidden_chain(chain, n_states, xi, seed)
        V = hidden.n_states
        E = (1.0 - noise) * np.eye(V) + noise / V
        return cls._build(hidden, E, noise)

    @classmethod
    def random(cls, n_hidden, n_states, xi, noise=0.0, chain="lazy", seed=0):
        """A random emission: rows drawn from Dirichlet(1, ..., 1) (``numpy.random.
        default_rng(seed)``), mixed with the uniform law: ``(1 - noise) R + noise / V``.
        H = ``n_hidden`` hidden states (chain as for :meth:`noisy`), V = ``n_states`` tokens.

        >>> HiddenMarkovTask.random(n_hidden=3, n_states=5, xi=2.0, seed=1).emission.shape
        (3, 5)
        """
        noise = as_real(noise, "noise", low=0.0, high=1.0)
        H = as_count(n_hidden, "n_hidden", minimum=2)
        if H > _core.MAX_STATES:
            raise ValueError("n_hidden must lie in [2, %d], got %d" % (_core.MAX_STATES, H))
        hidden = _hidden_chain(chain, H, xi, seed)
        V = as_count(n_states, "n_states", minimum=2)
        if V > _core.MAX_STATES:
            raise ValueError("n_states must lie in [2, %d], got %d" % (_core.MAX_STATES, V))
        check_memory(8.0 * hidden.n_states * V, "emission (n_hidden, n_states) float64")
        R = np.random.default_rng(as_seed(seed)).dirichlet(np.ones(V), size=hidden.n_states)
        R /= R.sum(axis=1, keepdims=True)
        return cls._build(hidden, (1.0 - noise) * R + noise / V, noise)

    # -- properties ---------------------------------------------------------------------------

    @property
    def hidden(self):
        """The :class:`MarkovChain` of the hidden states."""
        return self._hidden

    @property
    def emission(self):
        """(H, V) float64 read-only: ``emission[h, v] = P(token v | hidden state h)``."""
        return self._E

    @property
    def noise(self):
        """The emission noise of :meth:`noisy` and :meth:`random`; None for a task built
        from matrices."""
        return self._noise

    @property
    def n_hidden(self):
        """Number of hidden states H."""
        return self._hidden.n_states

    @property
    def n_states(self):
        """Number of tokens V (the model's vocabulary; the mask id is V)."""
        return self._E.shape[1]

    @property
    def transition(self):
        """(H, H) the hidden chain's transition matrix."""
        return self._hidden.transition

    @property
    def hidden_stationary(self):
        """(H,) the hidden chain's stationary law (the law of the first hidden state)."""
        return self._hidden.stationary

    @property
    def stationary(self):
        """(V,) float64 read-only: the law of any one token, ``hidden_stationary @
        emission``."""
        return self._marginal

    @property
    def correlation_length(self):
        """The hidden chain's correlation length xi: token correlations decay as
        ``exp(-distance / xi)`` too, unless the emission hides that mode."""
        return self._hidden.correlation_length

    @property
    def unigram_entropy(self):
        """H(stationary) in nats: the masked-token loss of a model that ignores its input."""
        p = self._marginal[self._marginal > 0]
        return float(-(p * np.log(p)).sum())

    def __repr__(self):
        return "HiddenMarkovTask(n_hidden=%d, n_states=%d, correlation_length=%.4g%s)" % (
            self.n_hidden, self.n_states, self.correlation_length,
            "" if self._noise is None else ", noise=%g" % self._noise)

    # -- sampling and inference ---------------------------------------------------------------

    def _source(self):
        """(transition, initial law, emission): what the C samplers draw from."""
        return self._hidden.transition, self._hidden.stationary, self._E

    def sample(self, n, length, seed=0, n_threads=1, hidden_states=False):
        """Sample ``n`` token sequences of ``length``.

        The hidden states are exactly ``self.hidden.sample(n, length, seed)``; each token is
        then drawn from its state's emission row on a stream of its own, so sequence i is a
        function of (seed, i) alone (prefix-stable in ``n``, independent of ``n_threads``).

        Returns
        -------
        tokens : (n, length) int32 in [0, V); with ``hidden_states=True``, ``(tokens,
        states)``, states (n, length) int32 in [0, H).

        >>> task = HiddenMarkovTask.noisy(4, xi=2.0, noise=0.0)
        >>> bool((task.sample(3, 6, seed=1) == task.hidden.sample(3, 6, seed=1)).all())
        True
        """
        seed = as_seed(seed)
        n_threads = as_count(n_threads, "n_threads")
        n = as_count(n, "n")
        length = as_count(length, "length")
        with_states = as_flag(hidden_states, "hidden_states")
        if n < 2 * n_threads:
            n_threads = 1
        T, pi, E = self._source()

        def part(a, b):
            out = _core.chain_sample(T, pi, b - a, length, seed, first=a, emission=E,
                                     hidden_states=with_states)
            return np.stack(out) if with_states else out
        if not with_states:
            return split_map(part, n, n_threads)
        both = split_map(lambda a, b: part(a, b).transpose(1, 0, 2), n, n_threads)
        return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])

    def posterior(self, masked_tokens, mask):
        """Exact posterior of every token given the visible ones (forward-backward over the
        hidden states, normalised at every step: no underflow at any length).

        Parameters
        ----------
        masked_tokens : (n, length) integer array; visible positions hold tokens in [0, V),
            masked positions may hold anything in [0, V] (the mask id V, usually).
        mask : (n, length) bool array, True where the token is hidden.

        Returns
        -------
        (n, length, V) float64: rows sum to 1; one-hot at visible positions.

        Raises ValueError if the visible tokens of a sequence are impossible under the task.

        >>> task = HiddenMarkovTask.noisy(3, xi=2.0, noise=0.3)
        >>> x = task.sample(2, 6, seed=0)
        >>> masked, mask = mask_tokens(x, rate=0.3, seed=1, mask_id=3)
        >>> task.posterior(masked, mask).shape
        (2, 6, 3)
        """
        shape = shape2(masked_tokens)
        if shape is not None:
            check_memory(8.0 * shape[0] * shape[1] * (self.n_states + self.n_hidden + 2),
                         "posterior of masked_tokens: n * length * V = %d x %d x %d float64"
                         % (shape[0], shape[1], self.n_states))
        T, pi, E = self._source()
        return _core.chain_posterior(T, pi, E, masked_tokens, mask)

    def bayes_loss(self, tokens, mask):
        """Mean cross-entropy (nats) of the true tokens at masked positions under the exact
        posterior given the visible ones: the floor for any model on this masked batch.
        Arguments as for :meth:`MarkovChain.bayes_loss`.

        >>> task = HiddenMarkovTask.noisy(8, xi=7.0, noise=0.3)
        >>> x = task.sample(256, 32, seed=0)
        >>> _, mask = mask_tokens(x, rate=0.15, seed=1, mask_id=8)
        >>> 0 < task.bayes_loss(x, mask) < task.adjacent_loss(x, mask) < task.unigram_entropy
        True
        """
        T, pi, E = self._source()
        total, count = _core.chain_bayes_nll(T, pi, E, tokens, mask)
        if count == 0:
            raise ValueError("mask hides no token: the loss over masked positions is undefined")
        return total / count

    def adjacent_loss(self, tokens, mask):
        """Mean cross-entropy (nats) at masked positions of the adjacent-token rule: the exact
        prediction from the two neighbouring tokens alone, each used when visible
        (``p(x_t = j | x_{t-1} = a, x_{t+1} = b)`` under the stationary process, a hidden or
        missing neighbour marginalised out). Unlike on a plain chain, the rule is not
        Bayes-optimal even where both neighbours are visible: farther tokens still inform the
        hidden state. Arguments as for :meth:`MarkovChain.adjacent_loss`."""
        return float(np.mean(self.adjacent_nll(tokens, mask)))

    def adjacent_nll(self, tokens, mask):
        """Per-token cross-entropy (nats) of the adjacent-token rule (see
        :meth:`adjacent_loss`): (count,) float64 over the masked positions in row-major order.
        """
        T, pi, E = self._source()
        # p(state h at t, token a at t-1) ∝ sum_g pi_g E[g, a] T[g, h]; p(token b at t+1 | h)
        left = (pi[:, None] * E).T @ T
        right = T @ E
        return _adjacent_nll(tokens, mask, self.n_states, left, pi, right, E)


def _hidden_chain(chain, n_states, xi, seed):
    if chain == "lazy":
        return MarkovChain.lazy(n_states, xi)
    if chain == "random":
        return MarkovChain.random(n_states, xi, seed=seed)
    raise ValueError("chain must be 'lazy' or 'random', got %r" % (chain,))


def _adjacent_nll(tokens, mask, n_states, left, init, right, emission):
    """-log p(true token | its visible neighbours) at every masked position, for a process
    whose hidden state h at a masked position is weighted by ``left[a, h]`` given the token a
    before it (``init[h]`` when that is hidden or absent) and ``right[h, b]`` given the token b
    after it (1 when hidden or absent), and emits token j with ``emission[h, j]`` (None: the
    state is the token)."""
    tokens, mask = _tokens_and_mask(tokens, mask, n_states)
    rows, pos = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("mask hides no token: the loss over masked positions is undefined")
    length = tokens.shape[1]
    has_left = pos > 0
    has_left[has_left] = ~mask[rows[has_left], pos[has_left] - 1]
    has_right = pos < length - 1
    has_right[has_right] = ~mask[rows[has_right], pos[has_right] + 1]
    a = np.where(has_left, tokens[rows, np.maximum(pos - 1, 0)], 0)
    b = np.where(has_right, tokens[rows, np.minimum(pos + 1, length - 1)], 0)
    score = np.where(has_left[:, None], left[a], init[None, :])
    score = score * np.where(has_right[:, None], right[:, b].T, 1.0)
    if emission is not None:
        score = score @ emission
    total = score.sum(axis=1)
    if not np.all(total > 0.0):
        # the visible neighbours are impossible together (or one of them on its own): no
        # conditional law exists, as posterior and bayes_loss say for impossible tokens
        k = int(np.argmin(total > 0.0))
        raise ValueError("tokens: the visible neighbours of masked position (%d, %d) have "
                         "probability zero under the chain" % (rows[k], pos[k]))
    truth = score[np.arange(rows.size), tokens[rows, pos]] / total
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


# Influences below this (mean total variation) are left out of the decay fit: with the default
# 2048 sequences their relative sampling error is no longer small.
DECAY_FLOOR = 1e-4


@dataclass(frozen=True)
class ContextInfluence:
    """How far a visible token moves the exact posterior of a masked one
    (:func:`relevant_context`).

    distance : (R,) int, 1 .. R; influence : (R,) float64, the mean total-variation distance
    at each distance; threshold : float; length : int, the largest distance whose influence
    reaches the threshold (0 if none does); decay_length : float, tokens per e-fold of the
    influence beyond the nearest neighbours (-1 / slope of a least-squares line through
    log influence at distances >= 2 where it is >= DECAY_FLOOR; NaN with fewer than two such
    points, as on a Markov chain, whose influence is 0 beyond distance 1).
    """
    distance: np.ndarray
    influence: np.ndarray
    threshold: float
    length: int
    decay_length: float


def relevant_context(task, threshold=0.01, max_distance=32, n=2048, seed=0):
    """The relevant context of the masked-token task: how far, in tokens, a visible token
    still moves the exact posterior of a masked one.

    For ``n`` stationary sequences of length ``2 * max_distance + 1`` whose centre token is
    masked and every other token visible, ``influence[r - 1]`` is the mean total-variation
    distance between the centre's posterior and its posterior when the token at distance r is
    hidden too (averaged over both sides). On a Markov chain only the neighbours matter
    (influence exactly 0 beyond r = 1, up to rounding); on a :class:`HiddenMarkovTask` with
    emission noise it decays with r, more slowly for longer xi and more noise (at V = 8, noise
    0.3: decay length 0.6 tokens at xi = 1, 1.4 at xi = 15; it nears xi only as the noise
    nears 1).

    ``max_distance`` sets the window, not only the distances reported: the sequences end at
    distance R, so no farther token stands in for a hidden one, and every influence is larger
    than in a longer window unless the influence at R is negligible (noisy(8, 7, 0.3):
    influence[0] 0.099 at R = 3, 0.087 at R = 10). ``length == max_distance`` therefore means
    "R or more"; choose R well beyond it.

    Parameters
    ----------
    task : MarkovChain or HiddenMarkovTask.
    threshold : float in (0, 1], the total-variation distance that counts as moving the
        posterior.
    max_distance : int >= 1, R.
    n : int >= 1, sequences; seed : int, their seed (mask-free: the centre is always hidden).

    Returns
    -------
    ContextInfluence

    >>> relevant_context(MarkovChain.lazy(8, 7.0), n=256).length
    1
    >>> relevant_context(HiddenMarkovTask.noisy(8, 7.0, noise=0.3), n=256).length > 1
    True
    """
    if not isinstance(task, (MarkovChain, HiddenMarkovTask)):
        raise TypeError("task must be a MarkovChain or a HiddenMarkovTask, got %s"
                        % type(task).__name__)
    threshold = as_real(threshold, "threshold", low=0.0, high=1.0, low_open=True)
    R = as_count(max_distance, "max_distance")
    n = as_count(n, "n")
    length = 2 * R + 1
    check_memory(8.0 * n * length * (task.n_states + 4), "relevant_context: n * (2 "
                 "max_distance + 1) * V float64 posteriors")
    tokens = task.sample(n, length, seed=seed)
    mask = np.zeros((n, length), dtype=bool)
    mask[:, R] = True
    masked = np.where(mask, task.n_states, tokens).astype(np.int32)
    base = task.posterior(masked, mask)[:, R]
    influence = np.zeros(R)
    for r in range(1, R + 1):
        for side in (R - r, R + r):
            more = mask.copy()
            more[:, side] = True
            moved = task.posterior(np.where(more, task.n_states, tokens).astype(np.int32),
                                   more)[:, R]
            influence[r - 1] += 0.25 * np.abs(moved - base).sum(axis=1).mean()
    above = np.nonzero(influence >= threshold)[0]
    distance = np.arange(1, R + 1)
    fit = (distance >= 2) & (influence >= DECAY_FLOOR)
    decay = math.nan
    if fit.sum() >= 2:
        slope = np.polyfit(distance[fit], np.log(influence[fit]), 1)[0]
        decay = float(-1.0 / slope) if slope < 0 else math.inf
    return ContextInfluence(distance, influence, threshold,
                            int(above[-1] + 1) if above.size else 0, decay)
